"""The paper's WLQ-Former adapter: a window-level Q-Former (SALMONN style).

Letters: B batch, T encoder frames, C = d_enc, W frames per window, N = ceil(T / W) windows,
Q queries per window, H = hidden_size, D = d_llm; T' = N * Q.

    LayerNorm(C) -> split into N non-overlapping windows of W frames  # (B*N, W, C) + key padding mask
    Q learned queries (+ LayerNorm) -> qformer_layers x QFormerLayer    # (B*N, Q, H)
    -> Linear(H, D)                                                     # (B, N*Q, D)

W = max(1, round(window_seconds * frame_rate)): 0.333 s is 17 frames at 50 Hz (Whisper) and 2 at
6.25 Hz (Seamless). Each window is processed on its own, so frames of one window never influence
another window's outputs; the last partial window attends only to its real frames, and windows that
hold no real frame are skipped (their outputs are zero padding).

QFormerLayer is BERT style (post-LayerNorm): self-attention over the queries, cross-attention from
the queries to the window's frames, then a GELU FFN; each sub-layer x = LayerNorm(x + f(x)).
init_std, layer_norm_eps and bert_dropout act on the layers and the query LayerNorm as on the Base
stack (transformer.py); bert_dropout also drops out the normed queries (BERT's embedding dropout).
"""

from __future__ import annotations

import torch
from torch import nn

from speechwire.adapters.interface import Adapter, AdapterContext, AdapterOutput, AdapterTargets, check_input, lengths_to_mask
from speechwire.adapters.transformer import bert_init_
from speechwire.registry import ADAPTERS
from speechwire.schema import AdapterConfig


def window_frames(window_seconds: float, frame_rate: float) -> int:
    """Frames per window: round(window_seconds * frame_rate), at least 1."""
    return max(1, round(window_seconds * frame_rate))


class QFormerLayer(nn.Module):
    """Post-LN block: self-attention (queries), cross-attention (queries -> frames), FFN."""

    def __init__(self, cfg: AdapterConfig, kv_dim: int) -> None:
        super().__init__()
        h, p = cfg.hidden_size, cfg.dropout
        self.self_attn = nn.MultiheadAttention(h, cfg.num_heads, dropout=p, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(
            h, cfg.num_heads, dropout=p, batch_first=True, kdim=kv_dim, vdim=kv_dim
        )
        inner = 0.0 if cfg.bert_dropout else p  # BERT has no dropout between the FFN's Linears
        self.ffn = nn.Sequential(nn.Linear(h, cfg.ffn_size), nn.GELU(), nn.Dropout(inner), nn.Linear(cfg.ffn_size, h))
        eps = cfg.layer_norm_eps
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(h, eps), nn.LayerNorm(h, eps), nn.LayerNorm(h, eps)
        self.dropout = nn.Dropout(p)

    def forward(self, q: torch.Tensor, frames: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        """(N, Q, H) queries, (N, W, C) frames, (N, W) bool True on padding -> (N, Q, H)."""
        q = self.norm1(q + self.dropout(self.self_attn(q, q, q, need_weights=False)[0]))
        ca = self.cross_attn(q, frames, frames, key_padding_mask=pad, need_weights=False)[0]
        q = self.norm2(q + self.dropout(ca))
        return self.norm3(q + self.dropout(self.ffn(q)))


@ADAPTERS.register("wlqformer")
class WLQFormerAdapter(Adapter):
    """Window-level Q-Former: Q outputs per window of window_seconds.

    Config fields: window_seconds (0.333), queries_per_window (1), qformer_layers (4),
    hidden_size (768), num_heads (12), ffn_size (3072), dropout; needs ctx.frame_rate.
    """

    deterministic_length = True
    config_fields = ("window_seconds", "queries_per_window", "qformer_layers", "hidden_size", "num_heads", "ffn_size",
                     "dropout", "init_std", "layer_norm_eps", "bert_dropout")

    def __init__(self, cfg: AdapterConfig, ctx: AdapterContext) -> None:
        super().__init__(cfg, ctx)
        if ctx.frame_rate <= 0:
            raise ValueError(
                f"wlqformer adapter: AdapterContext.frame_rate={ctx.frame_rate} must be > 0 (the speech "
                "encoder's frames per second) to turn window_seconds into frames"
            )
        self.window = window_frames(cfg.window_seconds, ctx.frame_rate)
        self.norm = nn.LayerNorm(ctx.in_dim)
        self.queries = nn.Parameter(torch.randn(cfg.queries_per_window, cfg.hidden_size) * 0.02)  # (Q, H)
        self.query_norm = nn.LayerNorm(cfg.hidden_size, cfg.layer_norm_eps)
        self.query_dropout = nn.Dropout(cfg.dropout if cfg.bert_dropout else 0.0)
        self.layers = nn.ModuleList(QFormerLayer(cfg, ctx.in_dim) for _ in range(cfg.qformer_layers))
        if cfg.init_std is not None:
            bert_init_(self.layers, cfg.init_std)
        self.out_proj = nn.Linear(cfg.hidden_size, ctx.out_dim)

    def forward(
        self, hidden: torch.Tensor, lengths: torch.Tensor, targets: AdapterTargets | None = None
    ) -> AdapterOutput:
        """Args:
            hidden: (B, T, d_enc); lengths: (B,) valid frames; targets: unused.
        Returns:
            AdapterOutput: embeds (B, ceil(T/W)*Q, d_llm), lengths (B,) = output_length(lengths).
        """
        check_input(hidden, lengths, self.ctx.in_dim, "wlqformer adapter")
        B, T, C = hidden.shape
        W, Q = self.window, self.cfg.queries_per_window
        N = -(-T // W)  # ceil(T / W) windows
        valid = lengths_to_mask(lengths, N * W)  # (B, N*W)
        x = nn.functional.pad(self.norm(hidden), (0, 0, 0, N * W - T)).view(B * N, W, C)  # (B*N, W, C)
        pad = ~valid.view(B * N, W)  # (B*N, W) True on padding
        live = (~pad).any(dim=1)  # (B*N,) windows with at least one real frame
        frames, pad = x[live], pad[live]  # (M, W, C), (M, W)

        q = self.query_dropout(self.query_norm(self.queries).expand(frames.shape[0], Q, -1))  # (M, Q, H)
        for layer in self.layers:
            q = layer(q, frames, pad)
        y = self.out_proj(q)  # (M, Q, D)

        out = y.new_zeros(B * N, Q, y.shape[-1]).index_copy(0, live.nonzero().flatten(), y)  # (B*N, Q, D)
        return AdapterOutput(out.view(B, N * Q, -1), self.output_length(lengths))

    def output_length(self, lengths: torch.Tensor) -> torch.Tensor:
        """ceil(lengths / W) * Q."""
        return torch.div(lengths + self.window - 1, self.window, rounding_mode="floor") * self.cfg.queries_per_window
