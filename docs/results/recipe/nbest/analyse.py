import json, sys, itertools
sys.path.insert(0, "/work/main/src")
from speechwire.metrics import score
items = json.load(open(sys.argv[1]))
TOPN = 8
def subset(uid): return uid.split("-")[0]
groups = {}
for it in items: groups.setdefault(subset(it["id"]), []).append(it)
def wer(its, pick):
    r = score("asr", [i["ref"] for i in its], [pick(i) for i in its]); return r["wer_percent"]
def oracle(i):
    best, bw = None, 1e9
    for h in i["hyps"][:TOPN]:
        w = score("asr", [i["ref"]], [h["text"]])["wer_percent"]
        if w < bw: best, bw = h["text"], w
    return best
print("subset first oracle8")
for g, its in sorted(groups.items()):
    print(g, round(wer(its, lambda i: i["hyps"][0]["text"]), 1), round(wer(its, oracle), 1))
res = []
for lam, mu in itertools.product([0, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0], [0, 0.5, 1.0, 2.0, 3.0]):
    def pick(i):
        hs = i["hyps"][:TOPN]
        return max(hs, key=lambda h: h["score"] + lam * h["llm"] + mu * h["llm_tokens"])["text"]
    row = {g: round(wer(its, pick), 1) for g, its in sorted(groups.items())}
    row["mean"] = round(sum(row.values()) / len(row), 1)
    res.append((lam, mu, row))
for lam, mu, row in sorted(res, key=lambda r: r[2]["mean"])[:15]:
    print(lam, mu, row)
print("no rescoring:", [r for r in res if r[0] == 0 and r[1] == 0][0][2])
