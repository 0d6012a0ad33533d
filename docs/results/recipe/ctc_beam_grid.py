"""The prototype that chose align.decode=beam and its LM weight/bonus on dev (CTC level, no LLM): kept as the
record behind docs/results/recipe/ctc_beam_grid_*.txt. The product's code is speechwire.decoding.ctc_beam_search
and speechwire.ngram (the same search and smoothing; there the LM's text is the training transcripts + lm_text.txt).

    python docs/results/recipe/ctc_beam_grid.py RUN_DIR [ALPHA,BETA ...]   # needs the demo corpus' devsub_* manifests
"""
import json, math, sys, time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from speechwire.model import SpeechLLM
from speechwire.data import load_manifest
from speechwire.features import FeatureCache
from speechwire.data import eval_loader
from speechwire.align import greedy_decode
from speechwire.metrics import score
from speechwire.data.synth import sources

run = sys.argv[1]
GRID = [tuple(map(float, g.split(","))) for g in (sys.argv[2:] or ["0,0", "0.3,0.5", "0.5,1.0", "0.8,1.5", "1.0,2.0"])]
D = Path.home() / ".cache/speechwire/demo_data"
model = SpeechLLM.from_pretrained(run).eval()
head = model.align_head
tok = model.prompter
# ---- LM text: train transcripts + Ding sentences that are not dev/test + real train prompts
dev_test = set()
for n in ["synth_dev", "synth_test", "real_dev", "real_test"]:
    dev_test |= {json.loads(l)["transcript"].casefold() for l in open(D / f"{n}.asr.jsonl")}
texts = [p.english for p in sources.load_sentence_pairs() if p.english.casefold() not in dev_test]
texts += [json.loads(l)["transcript"] for l in open(D / "real_train.asr.jsonl")]
print("lm sentences", len(texts))
index = {int(v): k + 1 for k, v in enumerate(head.vocab_ids.tolist())}
ORDER = 3
counts = [defaultdict(int) for _ in range(ORDER + 1)]
ctx_tot = [defaultdict(int) for _ in range(ORDER + 1)]
ctx_types = [defaultdict(int) for _ in range(ORDER + 1)]
BOS = -1
for t in texts:
    ids = [index.get(i, 0) for i in tok.text_ids(t)]
    seq = [BOS] * (ORDER - 1) + ids + [-2]
    for i in range(ORDER - 1, len(seq)):
        for n in range(1, ORDER + 1):
            g = tuple(seq[i - n + 1: i + 1])
            if counts[n][g] == 0:
                ctx_types[n][g[:-1]] += 1
            counts[n][g] += 1
            ctx_tot[n][g[:-1]] += 1
K = len(head.vocab_ids)
N1 = sum(counts[1].values())
Dd = 0.75
cache = {}
def lp(ctx, w):
    key = (ctx, w)
    if key in cache:
        return cache[key]
    p = (counts[1].get((w,), 0) + 0.1) / (N1 + 0.1 * (K + 1))
    for n in range(2, ORDER + 1):
        h = ctx[-(n - 1):]
        tot = ctx_tot[n].get(h, 0)
        if tot:
            c = counts[n].get(h + (w,), 0)
            p = max(c - Dd, 0) / tot + Dd * ctx_types[n][h] / tot * p
    r = math.log(p)
    cache[key] = r
    return r

def beam_search(logp, beam=8, topk=8, alpha=0.5, beta=1.0):
    NEG = -1e30
    beams = {(): (0.0, NEG)}
    T = logp.shape[0]
    for t in range(T):
        row = logp[t]
        blank = row[0]
        cands = np.argpartition(-row[1:], topk)[:topk] + 1
        nxt = defaultdict(lambda: [NEG, NEG])
        for prefix, (pb, pnb) in beams.items():
            tot = np.logaddexp(pb, pnb)
            e = nxt[prefix]
            e[0] = np.logaddexp(e[0], tot + blank)
            if prefix:
                last = prefix[-1]
                e[1] = np.logaddexp(e[1], pnb + row[last])
            if blank > -0.001:
                continue
            ctx = ((BOS,) * (ORDER - 1) + prefix)[-(ORDER - 1):]
            for k in cands:
                k = int(k)
                lmw = alpha * lp(ctx, k) + beta
                new = prefix + (k,)
                if prefix and k == prefix[-1]:
                    s = pb + row[k] + lmw
                else:
                    s = tot + row[k] + lmw
                e2 = nxt[new]
                e2[1] = np.logaddexp(e2[1], s)
        beams = dict(sorted(nxt.items(), key=lambda kv: -np.logaddexp(*kv[1]))[:beam])
    # end-of-sentence LM
    best = max(beams.items(), key=lambda kv: np.logaddexp(*kv[1]) + alpha * lp(((BOS,) * (ORDER - 1) + kv[0])[-(ORDER - 1):], -2))
    return list(best[0])

results = {}
fc = FeatureCache.for_config(model.cfg)
for sub in ["synth", "real", "unseen"]:
    utts = load_manifest(D / f"devsub_{sub}.asr.jsonl")
    loader, _ = eval_loader(utts, model.cfg, fc, model.batch_tokenizer(training=False))
    logps, refs, greedy = [], [], []
    with torch.no_grad():
        for batch in loader:
            out = model.adapter(batch.hidden.float(), batch.hidden_lengths)
            logits = head(out.embeds)
            g = greedy_decode(head, logits, out.lengths)
            for b in range(len(batch.ids)):
                logps.append(logits[b, : int(out.lengths[b])].log_softmax(-1).numpy())
                refs.append(batch.transcripts[b])
                greedy.append(tok.decode(g[b]))
    results[(sub, "greedy")] = score("asr", refs, greedy)["wer"]
    for alpha, beta in GRID:
        t0 = time.time()
        hyps = [tok.decode(head.token_ids(torch.tensor(sq, dtype=torch.long))) if (sq := beam_search(lp_, alpha=alpha, beta=beta)) else "" for lp_ in logps]
        results[(sub, alpha, beta)] = score("asr", refs, hyps)["wer"]
        print(sub, alpha, beta, round(100 * results[(sub, alpha, beta)], 1), "greedy", round(100 * results[(sub, "greedy")], 1), f"{time.time()-t0:.1f}s", flush=True)
