import pickle, torch, warnings, collections
warnings.filterwarnings('ignore')
from speechwire.model import SpeechLLM
from speechwire.rescore import start_token
items = [it for it in pickle.load(open('/tmp/cands.pkl','rb')) if len(it) > 1]
flat = [c[0] for it in items for c in it][:16]
f = SpeechLLM.from_pretrained('src/speechwire/assets/demo_asr', ['llm.quantize=none']).eval()
start = start_token(f.tokenizer)
W = max(map(len, flat)) + 1
ids = torch.full((len(flat), W), start); mask = torch.zeros_like(ids)
for i, t in enumerate(flat): ids[i, 1:1+len(t)] = torch.tensor(t); mask[i, :1+len(t)] = 1
errs = collections.defaultdict(list)
def hook(name):
    def h(mod, inp, out):
        x = inp[0].reshape(-1, inp[0].shape[-1])[mask.reshape(-1).bool()]
        w = mod.weight
        s = w.abs().amax(1) / 127; wq = (w / s[:, None]).round().clamp(-127, 127)
        ref = x @ w.T
        # per-tensor 7-bit activations (fbgemm reduce_range), per-token 8-bit
        for kind, xs in (('tensor7', x.abs().max() / 63), ('token8', x.abs().amax(1, keepdim=True) / 127)):
            xq = (x / xs).round() * xs
            y = xq @ (wq * s[:, None]).T
            errs[(name.split('.')[-1], kind)].append(((y - ref).norm() / ref.norm()).item())
        errs[(name.split('.')[-1], 'w8 only')].append(((x @ (wq * s[:, None]).T - ref).norm() / ref.norm()).item())
        first = x.abs().amax(1)
        errs[(name.split('.')[-1], 'row absmax max/median')].append((first.max() / first.median()).item())
    return h
for n, m in f.llm.named_modules():
    if isinstance(m, torch.nn.Linear) and 'layers' in n: m.register_forward_hook(hook(n))
with torch.no_grad(): f.llm.get_decoder()(input_ids=ids, attention_mask=mask)
for k in sorted(errs): 
    v = errs[k]; print(k, 'mean', round(sum(v)/len(v), 4), 'max', round(max(v), 4))
