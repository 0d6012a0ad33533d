import json, sys
from speechwire.metrics import score
rows = json.load(open(sys.argv[1]))
groups = {}
for r in rows: groups.setdefault(r["id"].split("-")[0], []).append(r)
for g, rs in groups.items():
    picks = []
    for r in rs:
        best = min(r["cands"], key=lambda c: score("asr", [r["ref"]], [c["text"]])["wer_percent"]) if r["cands"] else {"text": ""}
        picks.append(best["text"])
    print(g, "oracle", round(score("asr", [r["ref"] for r in rs], picks)["wer_percent"], 1), "ncands", sum(len(r["cands"]) for r in rs) / len(rs))
