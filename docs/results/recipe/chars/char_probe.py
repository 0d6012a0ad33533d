"""Char-level alignment head probe: python char_probe.py NAME STEPS [overrides...]"""
import sys, json, re
import torch
torch.set_num_threads(int(__import__('os').environ.get('THREADS', '1')))
from speechwire import align as al, train as tr
from speechwire.config import load_config
from speechwire.train import train

CHARS = "abcdefghijklmnopqrstuvwxyz0123456789' "
G = {}

def norm(text):
    text = text.lower().replace("-", " ")
    text = re.sub(r"[^a-z0-9' ]", "", text)
    return re.sub(r" +", " ", text).strip()

def char_vocab(kind, transcripts, prompter):
    tok = prompter.tok
    ids = [tok.encode(c, add_special_tokens=False) for c in CHARS]
    assert all(len(i) == 1 for i in ids), ids
    G["tok"], G["map"] = tok, {c: i[0] for c, i in zip(CHARS, ids)}
    return sorted(i[0] for i in ids)
tr.alignment_vocab = char_vocab

orig = al.TiedCTCHead.head_indices
def head_indices(self, token_ids):
    index = {int(v): k + 1 for k, v in enumerate(self.vocab_ids.tolist())}
    out = []
    for ids in token_ids:
        text = norm(G["tok"].decode(list(ids)))
        out.append([index[G["map"][c]] for c in text])
    return out
al.TiedCTCHead.head_indices = head_indices

if __name__ == "__main__":
    name, steps, *over = sys.argv[1:]
    out = f"/work/exp/chars/runs/{name}"
    cfg = load_config("/work/main/configs/demo_asr.yaml", ["train.stage=align", f"align.steps={steps}",
        f"train.output_dir={out}", "align.decode=greedy", "align.lm_order=0", "train.eval_every=500",
        f"train.save_every={steps}", "train.log_every=50", "adapter.stack=2", *over])
    s = train(cfg, resume=False, progress=False)
    print(json.dumps(s)[:800])
