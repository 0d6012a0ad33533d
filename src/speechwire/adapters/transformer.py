"""The paper's shared transformer stack: in-proj -> N BERT-style layers -> out-proj.

BERT-style = post-LayerNorm encoder layers with GELU FFN and no positional encoding (hidden 768,
12 heads, FFN 3072 by default). Projections are Linear + LayerNorm into and out of the stack.

Three config fields choose between PyTorch's and BERT's details (the authors build these layers
with transformers' BertModel; `preset: paper` sets BERT's):
- init_std: None keeps PyTorch's init; 0.02 draws every weight of the layers from normal(0, 0.02)
  with zero biases and unit LayerNorms (BERT's `_init_weights`). The projections keep PyTorch's
  init either way (in the authors' code they sit outside the BertModel).
- layer_norm_eps: the layers' LayerNorm epsilon (PyTorch 1e-5, BERT 1e-12).
- bert_dropout: BERT puts dropout on the attention probabilities and on each sub-layer's output;
  PyTorch's layer also has one between the FFN's two Linears, which this switch turns off.
"""

from __future__ import annotations

import torch
from torch import nn

from speechwire.adapters.interface import lengths_to_mask
from speechwire.schema import AdapterConfig

# the AdapterConfig fields TransformerStack reads (the adapters built on it add these to theirs)
STACK_FIELDS = ("hidden_size", "num_layers", "num_heads", "ffn_size", "dropout", "init_std", "layer_norm_eps",
                "bert_dropout", "residual_init")


def bert_init_(module: nn.Module, std: float) -> None:
    """BERT's init on every Linear, MultiheadAttention and LayerNorm inside `module`, in place:
    weights ~ normal(0, std), biases 0, LayerNorm weight 1 / bias 0."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.Linear):
                m.weight.normal_(0.0, std)
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, nn.MultiheadAttention):  # its out_proj is an nn.Linear, handled above
                for name in ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight"):
                    w = getattr(m, name)
                    if w is not None:
                        w.normal_(0.0, std)
                if m.in_proj_bias is not None:
                    m.in_proj_bias.zero_()
            elif isinstance(m, nn.LayerNorm) and m.elementwise_affine:
                m.weight.fill_(1.0)
                m.bias.zero_()


def zero_residual_branches_(layers: nn.TransformerEncoder) -> None:
    """Zero the last Linear of every layer's attention and FFN branch, in place: each layer then
    starts as x -> LayerNorm(x), so the whole stack starts frame-local (like the mlp adapter) and
    learns to mix frames from there (ReZero/Fixup-style). Measured: it does not by itself take the
    conv adapter off the alignment stage's blank plateau (docs/demo.md, "A context adapter: measured, not adopted")."""
    with torch.no_grad():
        for layer in layers.layers:
            for p in (*layer.self_attn.out_proj.parameters(), *layer.linear2.parameters()):
                p.zero_()


class ReZeroLayer(nn.Module):
    """x + a1 * SelfAttention(x), then x + a2 * FFN(x), with no LayerNorm and learnable gates a1, a2
    that start at 0 (ReZero, Bachlechner et al. 2020): the layer starts as the identity.

    Unlike zeroed output weights (`residual_init: zero`), a zero gate also holds the branch's own
    weights still (their gradients carry the gate as a factor), so the branches grow only as fast
    as one scalar per branch lets them. Measured in the alignment stage (docs/demo.md): the
    post-LayerNorm layers hold the CTC outputs on the blank plateau, zeroed branches do not free
    them, ReZero layers do (the conv adapter then trains like its convolutions alone).
    """

    def __init__(self, d: int, heads: int, ffn: int, dropout: float, bert_dropout: bool) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d, heads, dropout=dropout, batch_first=True)
        self.ffn = nn.Sequential(nn.Linear(d, ffn), nn.GELU(), nn.Dropout(0.0 if bert_dropout else dropout),
                                 nn.Linear(ffn, d))
        self.dropout = nn.Dropout(dropout)
        self.gates = nn.Parameter(torch.zeros(2))

    def forward(self, x: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        """(B, T, d), (B, T) True where padded -> (B, T, d)."""
        h, _ = self.self_attn(x, x, x, key_padding_mask=padding, need_weights=False)
        x = x + self.gates[0] * self.dropout(h)
        return x + self.gates[1] * self.dropout(self.ffn(x))


class ReZeroStack(nn.Module):
    def __init__(self, cfg: AdapterConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            ReZeroLayer(cfg.hidden_size, cfg.num_heads, cfg.ffn_size, cfg.dropout, cfg.bert_dropout)
            for _ in range(cfg.num_layers)
        )

    def forward(self, x: torch.Tensor, src_key_padding_mask: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, src_key_padding_mask)
        return x


class TransformerStack(nn.Module):
    def __init__(self, cfg: AdapterConfig, in_dim: int, out_dim: int) -> None:
        super().__init__()
        h = cfg.hidden_size
        self.in_proj = nn.Sequential(nn.Linear(in_dim, h), nn.LayerNorm(h))
        layer = nn.TransformerEncoderLayer(
            d_model=h, nhead=cfg.num_heads, dim_feedforward=cfg.ffn_size, dropout=cfg.dropout,
            activation="gelu", batch_first=True, norm_first=False, layer_norm_eps=cfg.layer_norm_eps,
        )
        if cfg.bert_dropout:
            layer.dropout.p = 0.0  # the one inside the FFN (BERT has none there); attention + outputs keep theirs
        # enable_nested_tensor=False: nested tensors drop padded rows and make outputs batch-dependent
        self.layers: nn.Module | None = None
        if cfg.num_layers and cfg.residual_init == "rezero":
            self.layers = ReZeroStack(cfg)
        elif cfg.num_layers:
            self.layers = nn.TransformerEncoder(layer, cfg.num_layers, enable_nested_tensor=False)
        if self.layers is not None and cfg.init_std is not None:
            bert_init_(self.layers, cfg.init_std)
        if self.layers is not None and cfg.residual_init == "zero":
            zero_residual_branches_(self.layers)
        self.out_proj = nn.Sequential(nn.Linear(h, out_dim), nn.LayerNorm(out_dim))

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, T, in_dim), (B,) -> (B, T, out_dim), zero on padded positions."""
        valid = lengths_to_mask(lengths, x.shape[1])  # (B, T)
        x = self.in_proj(x)  # (B, T, h)
        if self.layers is not None:
            x = self.layers(x, src_key_padding_mask=~valid)
        x = self.out_proj(x)  # (B, T, out_dim)
        return x * valid[..., None]
