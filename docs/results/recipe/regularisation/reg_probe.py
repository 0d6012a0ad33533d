"""Alignment-stage probes of this round (a record, not a tool): python reg_probe.py NAME STEPS [overrides...].
NAME parts: dinP (dropout P on the mlp input), dmidP (dropout P after its GELU), cmvn (per-utterance feature
normalisation); the shipped recipe (configs/demo_asr.yaml, greedy CTC dev scoring) otherwise."""
import sys, json, re
import torch
from torch import nn

torch.set_num_threads(1)
from speechwire.adapters import projector as pm
from speechwire.config import load_config
from speechwire.train import train

name, steps, *over = sys.argv[1:]
parts = name.split("+")
drop_in = drop_mid = 0.0
cmvn = False
for p in parts:
    m = re.fullmatch(r"din([0-9.]+)", p)
    if m: drop_in = float(m.group(1))
    m = re.fullmatch(r"dmid([0-9.]+)", p)
    if m: drop_mid = float(m.group(1))
    if p == "cmvn": cmvn = True
oi = pm._Projector.__init__
def pi(self, cfg, ctx):
    oi(self, cfg, ctx)
    if drop_mid:
        self.proj = nn.Sequential(self.proj[0], self.proj[1], nn.Dropout(drop_mid), *self.proj[2:])
    self.din = nn.Dropout(drop_in)
pm._Projector.__init__ = pi
of = pm._Projector.forward
def pf(self, hidden, lengths, targets=None):
    if cmvn:
        mask = pm.lengths_to_mask(lengths, hidden.shape[1])[..., None].to(hidden.dtype)
        n = mask.sum(1, keepdim=True).clamp(min=1)
        mu = (hidden * mask).sum(1, keepdim=True) / n
        var = (((hidden - mu) * mask) ** 2).sum(1, keepdim=True) / n
        hidden = (hidden - mu) / (var + 1e-5).sqrt() * mask
    hidden = self.din(hidden)
    return of(self, hidden, lengths, targets)
pm._Projector.forward = pf
out = f"/work/exp/reg/runs/{name}"
cfg = load_config("/work/main/configs/demo_asr.yaml", ["train.stage=align", f"align.steps={steps}",
    f"train.output_dir={out}", "align.decode=greedy", "align.lm_order=0", "train.eval_every=500",
    f"train.save_every={steps}", "train.log_every=50", *over])
s = train(cfg, resume=False, progress=False)
print(json.dumps(s)[:800])
