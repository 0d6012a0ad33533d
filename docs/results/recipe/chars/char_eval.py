"""Per-subset dev WER at the CTC level for a char-head run: greedy and beam + char n-gram LM grid.
python char_eval.py RUN_DIR ORDER 'w:b,w:b,...' [beam] [manifest]"""
import json, sys, time, os
from pathlib import Path
import torch
torch.set_num_threads(int(os.environ.get('THREADS', '1')))
import char_probe as cp
from speechwire.model import SpeechLLM
from speechwire.data import load_manifest, eval_loader
from speechwire.features import FeatureCache
from speechwire.align import build_head_lm, read_lm_text, greedy_decode
from speechwire.decoding import ctc_beam_search
from speechwire.metrics import score
run, order, grid = sys.argv[1], int(sys.argv[2]), [tuple(map(float, g.split(":"))) for g in sys.argv[3].split(",")]
beam = int(sys.argv[4]) if len(sys.argv) > 4 else 8
D = Path.home() / ".cache/speechwire/demo_data"
man = sys.argv[5] if len(sys.argv) > 5 else str(D / "demo_dev.asr.jsonl")
model = SpeechLLM.from_pretrained(run).eval()
cfg, head = model.cfg, model.align_head
tok = model.prompter.tok
cp.G["tok"] = tok
cp.G["map"] = {c: tok.encode(c, add_special_tokens=False)[0] for c in cp.CHARS}
train = load_manifest(cfg.data.train_manifest)
texts = [u.transcript for u in train if u.transcript] + read_lm_text([str(D / "lm_text.txt")])
t0 = time.time()
head.set_lm(build_head_lm(head, texts, model.prompter.text_ids, order))
print("lm", len(head.lm), "grams", round(time.time() - t0, 1), "s", file=sys.stderr)
utts = load_manifest(man)
loader, _ = eval_loader(utts, cfg, FeatureCache.for_config(cfg), model.batch_tokenizer(training=False))
rows = {}
dec_time = 0.0
with torch.no_grad():
    for batch in loader:
        hidden, lengths = model.encode_audio(batch)
        o = model.adapter(hidden.float(), lengths)
        logits = head(o.embeds)
        lp = logits.float().log_softmax(-1).numpy()
        greedy = greedy_decode(head, logits, o.lengths)
        for b, uid in enumerate(batch.ids):
            n = int(o.lengths[b])
            r = rows.setdefault(uid.split("-")[0], {"ref": [], "greedy": []})
            r["ref"].append(batch.transcripts[b])
            r["greedy"].append(model.prompter.decode(greedy[b]))
            for w, bo in grid:
                t1 = time.time()
                best = ctc_beam_search(lp[b, :n], beam=beam, lm=head.lm, lm_weight=w, token_bonus=bo)
                dec_time += time.time() - t1
                r.setdefault(f"{w}:{bo}", []).append(model.prompter.decode(head.token_ids(torch.tensor(best))) if best else "")
keys = ["greedy"] + [f"{w}:{bo}" for w, bo in grid]
out = {}
for g, r in sorted(rows.items()):
    out[g] = {k: round(score("asr", r["ref"], r[k])["wer_percent"], 1) for k in keys}
out["mean"] = {k: round(sum(v[k] for v in out.values()) / len(out), 1) for k in keys}
print(json.dumps(out))
print("decode s per clip per setting", round(dec_time / max(1, sum(len(r['ref']) for r in rows.values())) / len(grid), 3), file=sys.stderr)
json.dump(rows, open(Path(run) / f"eval_{order}_{beam}.json", "w"))
