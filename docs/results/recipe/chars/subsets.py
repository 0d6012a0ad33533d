"""Per-subset WER of a predictions.jsonl: python subsets.py PRED.jsonl"""
import json, sys
from speechwire.metrics import score
rows = {}
for l in open(sys.argv[1]):
    d = json.loads(l)
    g = d["id"].split("-")[0]
    r = rows.setdefault(g, {"ref": [], "hyp": []})
    r["ref"].append(d.get("reference") or d.get("ref") or d.get("target")); r["hyp"].append(d.get("hypothesis") or d.get("prediction") or "")
out = {g: round(score("asr", r["ref"], r["hyp"])["wer_percent"], 1) for g, r in sorted(rows.items())}
out["mean"] = round(sum(out.values()) / len(out), 1)
print(json.dumps(out))
