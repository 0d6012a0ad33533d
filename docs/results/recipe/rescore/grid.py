"""Offline grid over N-best rescoring weights. python grid.py dev16.json"""
import json, sys
from speechwire.metrics import score
rows = json.load(open(sys.argv[1]))
groups = {}
for r in rows:
    groups.setdefault(r["id"].split("-")[0], []).append(r)
def pick(r, w, e, wb, topn):
    c = r["cands"][:topn]
    if not c:
        return ""
    return max(c, key=lambda x: x["head"] + w * (x["llm"] + e * x["end"]) + wb * len(x["text"].split()))["text"]
res = []
for w in [0, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0]:
    for e in [0, 1]:
        for wb in [0, 0.5, 1.0, 2.0]:
            for topn in [4, 8, 16]:
                if w == 0 and (e or wb or topn != 16):
                    continue
                per = {g: round(score("asr", [r["ref"] for r in rs], [pick(r, w, e, wb, topn) for r in rs])["wer_percent"], 1) for g, rs in groups.items()}
                mean = round(sum(per.values()) / len(per), 2)
                res.append((mean, w, e, wb, topn, per))
res.sort(key=lambda x: x[0])
for x in res[:25] + [y for y in res if y[4] == 4][:5]:
    print(x)
print("baseline", [x for x in res if x[1] == 0])
