"""Alignment-stage plateau diagnostics: python plateau.py NAME STEPS [overrides...] with patches by NAME."""
import sys, json
from pathlib import Path
import torch
from torch import nn
sys.path.insert(0, "/work/main/src")
from speechwire.adapters import conv as convmod
from speechwire.config import load_config
from speechwire.train import train

name, steps, *over = sys.argv[1:]
patches = set(name.split("+"))
if "nolnconv" in patches:
    orig = convmod.ConvBlock.__init__
    def init(self, *a, **k):
        orig(self, *a, **k); self.norm = nn.Identity()
    convmod.ConvBlock.__init__ = init
if "gelu" in patches:
    orig2 = convmod.ConvBlock.__init__
    def init2(self, *a, **k):
        orig2(self, *a, **k)
        if isinstance(self.act, nn.ReLU): self.act = nn.GELU()
    convmod.ConvBlock.__init__ = init2
if "stackfront" in patches:
    from speechwire.adapters.projector import stack_frames
    from speechwire.adapters.transformer import TransformerStack
    from speechwire.adapters.interface import AdapterOutput
    oi = convmod.ConvAdapter.__init__
    def ci(self, cfg, ctx):
        oi(self, cfg, ctx)
        self.convs = nn.ModuleList()
        self.stack = TransformerStack(cfg, ctx.in_dim * 4, ctx.out_dim)
    def cf(self, hidden, lengths, targets=None):
        x, lengths = stack_frames(hidden, lengths, 4)
        return AdapterOutput(self.stack(x, lengths), lengths)
    convmod.ConvAdapter.__init__ = ci; convmod.ConvAdapter.forward = cf
if "gelumid" in patches:
    from speechwire.adapters import transformer as tmod
    ot = tmod.TransformerStack.__init__
    def ti(self, cfg, in_dim, out_dim):
        ot(self, cfg, in_dim, out_dim)
        self.in_proj = nn.Sequential(nn.Linear(in_dim, cfg.hidden_size), nn.GELU())
    tmod.TransformerStack.__init__ = ti
if "prenorm" in patches:
    from speechwire.adapters import transformer as tmod2
    OrigLayer = nn.TransformerEncoderLayer
    class PreLN(OrigLayer):
        def __init__(self, *a, **k):
            k["norm_first"] = True; super().__init__(*a, **k)
    tmod2.nn = type("NN", (), {**{k: getattr(nn, k) for k in dir(nn) if not k.startswith("__")}, "TransformerEncoderLayer": PreLN})
out = f"/work/exp/runs/{name}"
cfg = load_config("/work/main/configs/demo_asr.yaml", ["data.train_manifest=/work/exp/sub_train.asr.jsonl",
    "train.stage=align", f"align.steps={steps}", f"train.output_dir={out}", "align.decode=greedy",
    "align.lm_order=0", f"train.eval_every={steps}", f"train.save_every={steps}", "train.log_every=25",
    *over])
print(cfg.adapter)
s = train(cfg, resume=False, progress=False)
print(json.dumps(s)[:500])
