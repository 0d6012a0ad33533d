"""Plateau probe, third round (a record, not a tool): local attention, zeroed branches and ReZero layers
under the conv adapter and under 4:1 frame stacking. python plateau_probe2.py NAME STEPS [overrides]; NAME parts:
localK (attention only within K outputs), sinpos, stackfront, rezero; see plateau_probe.py for the data and schedule."""
import sys, json, math, re
import torch
from torch import nn

torch.set_num_threads(1)
from speechwire.adapters import transformer as tmod
from speechwire.adapters import conv as convmod
from speechwire.adapters.interface import lengths_to_mask, AdapterOutput
from speechwire.config import load_config
from speechwire.train import train

name, steps, *over = sys.argv[1:]
parts = name.split("+")
local = next((int(m.group(1)) for p in parts if (m := re.fullmatch(r"local(\d+)", p))), 0)
sinpos = "sinpos" in parts

def sinusoids(T, d, device):
    pos = torch.arange(T, device=device, dtype=torch.float32)[:, None]
    inv = torch.exp(-math.log(10000.0) * torch.arange(0, d, 2, device=device, dtype=torch.float32) / d)
    pe = torch.zeros(T, d, device=device)
    pe[:, 0::2] = torch.sin(pos * inv); pe[:, 1::2] = torch.cos(pos * inv)
    return pe

def fwd(self, x, lengths):
    valid = lengths_to_mask(lengths, x.shape[1])
    x = self.in_proj(x)
    if sinpos:
        x = x + sinusoids(x.shape[1], x.shape[2], x.device)[None]
    if self.layers is not None:
        mask = None
        if local:
            i = torch.arange(x.shape[1], device=x.device)
            mask = (i[:, None] - i[None, :]).abs() > local
        x = self.layers(x, mask=mask, src_key_padding_mask=~valid)
    x = self.out_proj(x)
    return x * valid[..., None]
tmod.TransformerStack.forward = fwd
if "rezero" in parts:
    class ReZeroLayer(nn.Module):
        """x + a1 * SA(x); x + a2 * FFN(x); no LayerNorm; a1, a2 learnable, start at 0 (ReZero)."""
        def __init__(self, d, heads, ffn, dropout):
            super().__init__()
            self.attn = nn.MultiheadAttention(d, heads, dropout=dropout, batch_first=True)
            self.ffn = nn.Sequential(nn.Linear(d, ffn), nn.GELU(), nn.Dropout(dropout), nn.Linear(ffn, d))
            self.drop = nn.Dropout(dropout)
            self.a1 = nn.Parameter(torch.zeros(())); self.a2 = nn.Parameter(torch.zeros(()))
        def forward(self, x, mask=None, src_key_padding_mask=None):
            h, _ = self.attn(x, x, x, attn_mask=mask, key_padding_mask=src_key_padding_mask, need_weights=False)
            x = x + self.a1 * self.drop(h)
            return x + self.a2 * self.drop(self.ffn(x))
    class Stack(nn.Module):
        def __init__(self, layers): super().__init__(); self.layers = nn.ModuleList(layers)
        def forward(self, x, mask=None, src_key_padding_mask=None):
            for l in self.layers: x = l(x, mask, src_key_padding_mask)
            return x
    oti = tmod.TransformerStack.__init__
    def ti(self, cfg, in_dim, out_dim):
        oti(self, cfg, in_dim, out_dim)
        self.layers = Stack([ReZeroLayer(cfg.hidden_size, cfg.num_heads, cfg.ffn_size, cfg.dropout) for _ in range(cfg.num_layers)])
    tmod.TransformerStack.__init__ = ti
if "stackfront" in parts:
    from speechwire.adapters.projector import stack_frames
    oi = convmod.ConvAdapter.__init__
    def ci(self, cfg, ctx):
        oi(self, cfg, ctx)
        self.convs = nn.ModuleList()
        self.stack = tmod.TransformerStack(cfg, ctx.in_dim * 4, ctx.out_dim)
    def cf(self, hidden, lengths, targets=None):
        x, lengths = stack_frames(hidden, lengths, 4)
        return AdapterOutput(self.stack(x, lengths), lengths)
    convmod.ConvAdapter.__init__ = ci; convmod.ConvAdapter.forward = cf
out = f"/work/exp/runs/{name}"
cfg = load_config("/work/main/configs/demo_asr.yaml", ["data.train_manifest=/work/exp/sub_train.asr.jsonl",
    "train.stage=align", f"align.steps={steps}", f"train.output_dir={out}", "align.decode=greedy",
    "align.lm_order=0", f"train.eval_every={steps}", f"train.save_every={steps}", "train.log_every=25",
    "adapter.name=conv", *over])
s = train(cfg, resume=False, progress=False)
print(json.dumps(s)[:500])
