"""The two simplest adapters.

- `base`: the paper's Base adapter - the transformer stack alone, no length change.
- `mlp` / `linear`: the peers' projector baseline (LLaVA/Ultravox style), with optional k:1 frame
  stacking: frames [t*k .. t*k+k-1] are concatenated (the last group zero-padded), so
  T' = ceil(T / k).
"""

from __future__ import annotations

import torch
from torch import nn

from speechwire.adapters.interface import Adapter, AdapterContext, AdapterOutput, AdapterTargets, check_input, lengths_to_mask
from speechwire.adapters.transformer import STACK_FIELDS, TransformerStack
from speechwire.registry import ADAPTERS
from speechwire.schema import AdapterConfig


@ADAPTERS.register("base")
class BaseAdapter(Adapter):
    config_fields = STACK_FIELDS

    def __init__(self, cfg: AdapterConfig, ctx: AdapterContext) -> None:
        super().__init__(cfg, ctx)
        self.stack = TransformerStack(cfg, ctx.in_dim, ctx.out_dim)

    def forward(self, hidden, lengths, targets: AdapterTargets | None = None) -> AdapterOutput:
        check_input(hidden, lengths, self.ctx.in_dim, "base adapter")
        return AdapterOutput(self.stack(hidden, lengths), lengths)

    def output_length(self, lengths: torch.Tensor) -> torch.Tensor:
        return lengths


def stack_frames(x: torch.Tensor, lengths: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T, C) -> (B, ceil(T/k), C*k); padded frames are zeroed first so they never leak in."""
    B, T, C = x.shape
    x = x * lengths_to_mask(lengths, T)[..., None]
    pad = (-T) % k
    x = nn.functional.pad(x, (0, 0, 0, pad))  # (B, T + pad, C)
    return x.reshape(B, (T + pad) // k, C * k), torch.div(lengths + k - 1, k, rounding_mode="floor")


class _Projector(Adapter):
    hidden_layers = 1

    def __init__(self, cfg: AdapterConfig, ctx: AdapterContext) -> None:
        super().__init__(cfg, ctx)
        d_in = ctx.in_dim * cfg.stack
        head = ([nn.Linear(d_in, cfg.hidden_size), nn.GELU(), nn.Linear(cfg.hidden_size, ctx.out_dim)] if self.hidden_layers
                else [nn.Linear(d_in, ctx.out_dim)])
        self.proj = nn.Sequential(*head, nn.LayerNorm(ctx.out_dim))

    def forward(self, hidden, lengths, targets: AdapterTargets | None = None) -> AdapterOutput:
        check_input(hidden, lengths, self.ctx.in_dim, f"{self.cfg.name} adapter")
        x, out_lengths = stack_frames(hidden, lengths, self.cfg.stack)  # (B, T', d_enc*k)
        y = self.proj(x) * lengths_to_mask(out_lengths, x.shape[1])[..., None]  # (B, T', d_llm)
        return AdapterOutput(y, out_lengths)

    def output_length(self, lengths: torch.Tensor) -> torch.Tensor:
        return torch.div(lengths + self.cfg.stack - 1, self.cfg.stack, rounding_mode="floor")


@ADAPTERS.register("mlp")
class MLPAdapter(_Projector):
    hidden_layers = 1
    config_fields = ("stack", "hidden_size")


@ADAPTERS.register("linear")
class LinearAdapter(_Projector):
    hidden_layers = 0
    config_fields = ("stack",)
