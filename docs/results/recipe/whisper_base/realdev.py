import json, sys
from speechwire.metrics import wer
for p in sys.argv[1:]:
    rows=[json.loads(l) for l in open(p+'/predictions.jsonl')]
    one=[r for r in rows if len(r['reference'].split())==1]
    many=[r for r in rows if len(r['reference'].split())>1]
    f=lambda rs: round(100*wer([r['reference'] for r in rs],[r['hypothesis'] for r in rs])['wer'],1)
    print(p, 'real dev (103):', f(rows), 'one-word', f(one), 'longer', f(many))
