import json, re, sys
from speechwire.metrics import score
heard = json.load(open(sys.argv[1])); preds = [json.loads(l) for l in open(sys.argv[2])]
def words(t): return re.sub(r"[^a-z0-9' ]", " ", t.lower()).split()
def dist(a, b):
    a, b = words(a), words(b)
    d = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, d[0] = d[0], i
        for j, y in enumerate(b, 1):
            prev, d[j] = d[j], min(d[j] + 1, d[j - 1] + 1, prev + (x != y))
    return d[len(b)] / max(len(a), 1)
for th in [0, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 99]:
    groups = {}
    n = 0
    for p in preds:
        h, hyp = heard[p["id"]], p["hypothesis"]
        if th < 99 and dist(h, hyp) > th: hyp, n = h, n + 1
        g = groups.setdefault(p["id"].split("-")[0], ([], []))
        g[0].append(p["reference"]); g[1].append(hyp)
    out = {g: round(score("asr", r, h)["wer_percent"], 1) for g, (r, h) in sorted(groups.items())}
    out["mean"] = round(sum(out.values()) / len(out), 1)
    print(th, n, out)
