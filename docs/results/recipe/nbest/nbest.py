"""A record, not a tool (it chose nothing for the product: LLM rescoring was measured and left out).
N-best probe on dev: oracle WER of the CTC beam's N-best, and rescoring by the frozen LLM's own
text log-probability. python nbest.py RUN_DIR OUT.json [beam] [threads]; then analyse.py OUT.json"""
import json, sys, time
from pathlib import Path
import numpy as np
import torch
sys.path.insert(0, "/work/main/src")
from speechwire.model import SpeechLLM
from speechwire.data import load_manifest
from speechwire.features import FeatureCache
from speechwire.data import eval_loader
from speechwire.ngram import EOS
from speechwire.metrics import score

run, out_path = sys.argv[1], sys.argv[2]
TOPN = 8
BEAM = int(sys.argv[3]) if len(sys.argv) > 3 else 16
torch.set_num_threads(int(sys.argv[4]) if len(sys.argv) > 4 else 1)
D = Path.home() / ".cache/speechwire/demo_data"
model = SpeechLLM.from_pretrained(run).eval()
cfg, head, a = model.cfg, model.align_head, model.cfg.align

def nbest(log_probs, beam, lm, lm_weight, token_bonus, top_k=8, blank_skip=0.999):
    neg = -np.inf
    beams = {(): (0.0, neg)}
    top_k = min(top_k, log_probs.shape[1] - 1)
    skip = np.log(blank_skip)
    for row in log_probs:
        blank = float(row[0])
        cands = [int(k) + 1 for k in np.argpartition(-row[1:], top_k - 1)[:top_k]] if blank < skip else []
        nxt = {}
        for prefix, (pb, pnb) in beams.items():
            total = np.logaddexp(pb, pnb)
            e = nxt.setdefault(prefix, [neg, neg])
            e[0] = np.logaddexp(e[0], total + blank)
            if prefix:
                e[1] = np.logaddexp(e[1], pnb + float(row[prefix[-1]]))
            if not cands:
                continue
            ctx = lm.context(prefix)
            for k in cands:
                fused = float(row[k]) + token_bonus + lm_weight * lm.logprob(ctx, k)
                s = (pb if prefix and k == prefix[-1] else total) + fused
                n = nxt.setdefault(prefix + (k,), [neg, neg])
                n[1] = np.logaddexp(n[1], s)
        ranked = sorted(nxt.items(), key=lambda kv: -np.logaddexp(kv[1][0], kv[1][1]))[:beam]
        beams = {p: (s[0], s[1]) for p, s in ranked}
    out = []
    for p, (pb, pnb) in beams.items():
        out.append((list(p), float(np.logaddexp(pb, pnb)) + lm_weight * lm.logprob(lm.context(p), EOS), len(p)))
    return sorted(out, key=lambda x: -x[1])

utts = load_manifest(str(D / "demo_dev.asr.jsonl"))
cache = FeatureCache.for_config(cfg)
loader, batches = eval_loader(utts, cfg, cache, model.batch_tokenizer(training=False))
items = []
t0 = time.time()
with torch.no_grad():
    for batch in loader:
        hidden, lengths = model.encode_audio(batch)
        o = model.adapter(hidden.float(), lengths)
        logits = head(o.embeds).float().log_softmax(-1).numpy()
        for b, uid in enumerate(batch.ids):
            n = int(o.lengths[b])
            hyps = nbest(logits[b, :n], BEAM, head.lm, a.lm_weight, a.lm_bonus)
            items.append({"id": uid, "ref": batch.transcripts[b],
                          "hyps": [{"text": model.prompter.decode(head.token_ids(torch.tensor(h))) if h else "",
                                    "score": s, "n": n_} for h, s, n_ in hyps]})
print("beams", time.time() - t0, "s", flush=True)
# LLM text log-probability of every hypothesis
tok = model.prompter.tok
llm = model.llm
eot = tok.convert_tokens_to_ids("<|endoftext|>")
t0 = time.time()
with torch.no_grad():
    for it in items:
        texts = [h["text"].strip() for h in it["hyps"][:TOPN]]
        seqs = [[eot] + tok(t, add_special_tokens=False)["input_ids"] + [eot] for t in texts]
        L = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), L), eot, dtype=torch.long)
        mask = torch.zeros(len(seqs), L, dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, :len(s)] = torch.tensor(s); mask[i, :len(s)] = 1
        logits = llm(input_ids=ids, attention_mask=mask).logits.float().log_softmax(-1)
        lp = logits[:, :-1].gather(-1, ids[:, 1:, None])[..., 0] * mask[:, 1:]
        for h, v, s in zip(it["hyps"], lp.sum(1).tolist(), seqs):
            h["llm"] = v; h["llm_tokens"] = len(s) - 1
print("llm", time.time() - t0, "s", flush=True)
Path(out_path).write_text(json.dumps(items))
