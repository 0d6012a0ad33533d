import json, sys
from speechwire.metrics import score
rows = json.load(open("dev16.json"))
groups = {}
for r in rows: groups.setdefault(r["id"].split("-")[0], []).append(r)
def run(w, n, delta):
    cost = 0
    picks = {}
    for r in rows:
        c = r["cands"][:n]
        if c:
            c = [x for x in c if x["head"] >= c[0]["head"] - delta]
        if len(c) > 1:
            cost += sum(len(x["text"]) for x in c)
            picks[r["id"]] = max(c, key=lambda x: x["head"] + w * x["llm"])["text"]
        else:
            picks[r["id"]] = c[0]["text"] if c else ""
    per = {g: round(score("asr", [r["ref"] for r in rs], [picks[r["id"]] for r in rs])["wer_percent"], 1) for g, rs in groups.items()}
    return round(sum(per.values()) / 3, 2), per, cost / len(rows)
for w, n in [(0.7, 8), (0.5, 8), (0.7, 16), (1.0, 8), (0.7, 4), (0.7, 3), (0.7, 2)]:
    for delta in [1, 2, 3, 5, 8, 1e9]:
        print(w, n, delta, *run(w, n, delta))
