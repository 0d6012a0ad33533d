import pickle, torch
from speechwire.model import SpeechLLM
from speechwire.rescore import candidate_logprobs, text_logprobs, start_token
from speechwire.llm import RowSubsetHead
items = [it for it in pickle.load(open('/tmp/cands.pkl','rb')) if len(it) > 1]
texts = [[c[0] for c in it] for it in items]
flat = [t for ts in texts for t in ts]
m = SpeechLLM.from_pretrained('src/speechwire/assets/demo_asr').eval()
head, start = m._latin_rows(), start_token(m.tokenizer)
rows = head.rows.tolist()
with torch.no_grad():
    old = text_logprobs(m.llm, head, flat, start).tolist()
    new = [x for r in candidate_logprobs(m.llm, head, texts, start) for x in r]
del m
f = SpeechLLM.from_pretrained('src/speechwire/assets/demo_asr', ['llm.quantize=none']).eval()
fhead = RowSubsetHead(f.llm.get_output_embeddings().weight, rows)
with torch.no_grad():
    ref = text_logprobs(f.llm, fhead, flat, start).tolist()
    refnew = [x for r in candidate_logprobs(f.llm, fhead, texts, start) for x in r]
import numpy as np
ref, old, new, refnew = map(np.array, (ref, old, new, refnew))
print('fp32 new vs old max diff', np.abs(refnew-ref).max())
print('int8 old vs fp32: mean abs', np.abs(old-ref).mean(), 'max', np.abs(old-ref).max())
print('int8 new vs fp32: mean abs', np.abs(new-ref).mean(), 'max', np.abs(new-ref).max())
# choice agreement with fp32
def picks(lp):
    out=[]; k=0
    for it in items:
        n=len(it); tot=[it[j][1]+0.7*lp[k+j] for j in range(n)]; out.append(int(np.argmax(tot))); k+=n
    return out
pr=picks(ref); print('picks agree with fp32: old', sum(a==b for a,b in zip(picks(old),pr)), 'new', sum(a==b for a,b in zip(picks(new),pr)), 'of', len(pr))
