"""A record, not a tool: the n-gram LM floor probe (python lm_floor_eval.py RUN TRAIN_MANIFEST none,-10,-8,-6). Per-subset dev WER at the CTC level (greedy and beam + 3-gram LM, the shipped decoding settings).
python subeval.py RUN_DIR [train_manifest] [ckpt subdir]"""
import json, sys
from pathlib import Path
import torch

torch.set_num_threads(1)
from speechwire.model import SpeechLLM
from speechwire.data import load_manifest
from speechwire.features import FeatureCache
from speechwire.evaluate import eval_loader
from speechwire.align import build_head_lm, read_lm_text, greedy_decode
from speechwire.decoding import ctc_beam_search
from speechwire.metrics import score
run = sys.argv[1]
D = Path.home() / ".cache/speechwire/demo_data"
model = SpeechLLM.from_pretrained(run).eval()
cfg, head = model.cfg, model.align_head
train = load_manifest(sys.argv[2] if len(sys.argv) > 2 else cfg.data.train_manifest)
texts = [u.transcript for u in train if u.transcript] + read_lm_text([str(D / "lm_text.txt")])
head.set_lm(build_head_lm(head, texts, model.prompter.text_ids, 3))
utts = load_manifest(str(D / "demo_dev.asr.jsonl"))
loader, _ = eval_loader(utts, cfg, FeatureCache.for_config(cfg), model.batch_tokenizer(training=False))
import math
from speechwire import ngram as ngmod
orig = ngmod.TokenNgramLM.logprob
FLOORS = [None if x == "none" else float(x) for x in sys.argv[3].split(",")] if len(sys.argv) > 3 else [None]
feats = []
with torch.no_grad():
    for batch in loader:
        hidden, lengths = model.encode_audio(batch)
        o = model.adapter(hidden.float(), lengths)
        logits = head(o.embeds)
        feats.append((batch.ids, batch.transcripts, logits.float().log_softmax(-1).numpy(), o.lengths))
for F in FLOORS:
  ngmod.TokenNgramLM.logprob = (lambda self, c, t, F=F: max(orig(self, c, t), F)) if F is not None else orig
  head.lm._cache = {}
  rows = {}
  for ids, refs, lp, lens in feats:
        for b, uid in enumerate(ids):
            n = int(lens[b])
            beam = ctc_beam_search(lp[b, :n], beam=8, lm=head.lm, lm_weight=0.5, token_bonus=1.0)
            r = rows.setdefault(uid.split("-")[0], {"ref": [], "beam": []})
            r["ref"].append(refs[b])
            r["beam"].append(model.prompter.decode(head.token_ids(torch.tensor(beam))) if beam else "")
  out = {}
  for g, r in sorted(rows.items()):
    sc = score("asr", r["ref"], r["beam"])
    out[g] = (round(sc["wer_percent"], 1), sc["deletions"], sc["insertions"])
  out["mean"] = round(sum(v[0] for v in out.values()) / len(out), 1)
  print(F, json.dumps(out), flush=True)
sys.exit(0)
rows = {}
with torch.no_grad():
    for batch in loader:
        hidden, lengths = model.encode_audio(batch)
        o = model.adapter(hidden.float(), lengths)
        logits = head(o.embeds)
        lp = logits.float().log_softmax(-1).numpy()
        greedy = greedy_decode(head, logits, o.lengths)
        for b, uid in enumerate(batch.ids):
            n = int(o.lengths[b])
            beam = ctc_beam_search(lp[b, :n], beam=8, lm=head.lm, lm_weight=0.5, token_bonus=1.0)
            r = rows.setdefault(uid.split("-")[0], {"ref": [], "greedy": [], "beam": []})
            r["ref"].append(batch.transcripts[b])
            r["greedy"].append(model.prompter.decode(greedy[b]))
            r["beam"].append(model.prompter.decode(head.token_ids(torch.tensor(beam))) if beam else "")
out = {}
for g, r in sorted(rows.items()):
    out[g] = {k: round(score("asr", r["ref"], r[k])["wer_percent"], 1) for k in ("greedy", "beam")}
out["mean"] = {k: round(sum(v[k] for v in out.values()) / len(out), 1) for k in ("greedy", "beam")}
print(json.dumps(out))
