"""The paper's shared transformer stack: in-proj -> N BERT-style layers -> out-proj.

BERT-style = post-LayerNorm encoder layers with GELU FFN and no positional encoding (hidden 768,
12 heads, FFN 3072 by default). Projections are Linear + LayerNorm into and out of the stack.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import AdapterConfig
from .interface import lengths_to_mask


class TransformerStack(nn.Module):
    def __init__(self, cfg: AdapterConfig, in_dim: int, out_dim: int) -> None:
        super().__init__()
        h = cfg.hidden_size
        self.in_proj = nn.Sequential(nn.Linear(in_dim, h), nn.LayerNorm(h))
        layer = nn.TransformerEncoderLayer(
            d_model=h, nhead=cfg.num_heads, dim_feedforward=cfg.ffn_size, dropout=cfg.dropout,
            activation="gelu", batch_first=True, norm_first=False,
        )
        # enable_nested_tensor=False: nested tensors drop padded rows and make outputs batch-dependent
        self.layers = nn.TransformerEncoder(layer, cfg.num_layers, enable_nested_tensor=False) if cfg.num_layers else None
        self.out_proj = nn.Sequential(nn.Linear(h, out_dim), nn.LayerNorm(out_dim))

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, T, in_dim), (B,) -> (B, T, out_dim), zero on padded positions."""
        valid = lengths_to_mask(lengths, x.shape[1])  # (B, T)
        x = self.in_proj(x)  # (B, T, h)
        if self.layers is not None:
            x = self.layers(x, src_key_padding_mask=~valid)
        x = self.out_proj(x)  # (B, T, out_dim)
        return x * valid[..., None]
