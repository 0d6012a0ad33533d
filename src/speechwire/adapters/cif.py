"""The paper's CIF-based adapter: Continuous Integrate-and-Fire, then the Base transformer stack.

Letters: B batch, T encoder frames, K fired vectors (T' = K), C = d_enc, beta = cif_threshold.

A weight alpha_t in (0, 1) per frame comes from Conv1d(C, C, 3) -> LayerNorm -> ReLU -> Linear(C, 1)
-> Sigmoid (padded frames get alpha 0). Frames are integrated left to right; each time the running
sum crosses a multiple of beta one vector fires, and the frame that crosses is split: the part up
to the boundary goes to the vector that fires, the rest carries over to the next one.

Vectorised form (exactly the same thing): with cumulative sums c_t = alpha_1 + ... + alpha_t
(c_0 = 0), frame t covers the interval [c_{t-1}, c_t) and fired vector k the interval
[k*beta, (k+1)*beta), so

    weight[t, k] = max(0, min(c_t, (k+1)*beta) - max(c_{t-1}, k*beta))
    fired[k]     = sum_t weight[t, k] * h_t          # one batched matmul (B, K, T) @ (B, T, C)

which also handles alphas > beta (one frame firing several times; possible after training-time
scaling). Cost is O(B * T * K) memory for the weight matrix.

Fire counts (S = sum of alphas):
- eval: K = floor(S / beta + eps) full vectors, plus one tail vector holding the leftover weight
  r = S - floor * beta when r >= cif_tail_threshold (0.5). With cif_tail_rescale (the authors' port
  of torch_cif, `preset: paper`) the tail vector is scaled by beta / r, so it weighs as much as a
  full one; by default it is not.
- training: alphas are scaled so S equals the target token count N (targets.target_lengths) and
  K = N exactly (N = 0, an empty target, counts as 1). eps = 1e-4 absorbs float rounding that would
  otherwise make floor(S) = N - 1.
- at least one vector per item: an item that would fire nothing (S < tail threshold) fires one
  vector holding all of its integrated weight, so the LLM always gets audio.

Auxiliary loss (training): quantity loss mean_b |S_b - N_b| on the UNscaled alphas, weighted by
quantity_loss_weight (1.0).
"""

from __future__ import annotations

import torch
from torch import nn

from speechwire.adapters.interface import Adapter, AdapterContext, AdapterOutput, AdapterTargets, check_input, compression_ratio
from speechwire.adapters.transformer import STACK_FIELDS, TransformerStack
from speechwire.registry import ADAPTERS
from speechwire.schema import AdapterConfig

FIRE_EPS = 1e-4  # slack on floor(S / beta): sums that are an integer up to rounding fire that integer


def cif_fire_counts(
    alpha_sum: torch.Tensor, threshold: float, tail_threshold: float, eps: float = FIRE_EPS
) -> torch.Tensor:
    """Number of vectors CIF fires for each item.

    Args:
        alpha_sum: (B,) sum of each item's alphas.
    Returns:
        (B,) long: floor(S / beta + eps), +1 when the leftover is >= tail_threshold, and at least 1.
    """
    full = torch.floor(alpha_sum / threshold + eps)
    tail = (alpha_sum - full * threshold) >= tail_threshold
    return torch.clamp(full + tail.to(full.dtype), min=1).long()


def cif_weights(alphas: torch.Tensor, counts: torch.Tensor, threshold: float) -> torch.Tensor:
    """Integration weights of every frame in every fired vector.

    Args:
        alphas: (B, T) non-negative per-frame weights, 0 on padding.
        counts: (B,) number of vectors each item fires.
    Returns:
        (B, K, T) weights, K = max(counts); rows k >= counts[b] are zero. A leftover weight that
        does not fire (below the tail threshold) is dropped, as in CIF.
    """
    K = int(counts.max())
    c_hi = torch.cumsum(alphas, dim=1)  # (B, T): c_t
    c_lo = nn.functional.pad(c_hi[:, :-1], (1, 0))  # (B, T): c_{t-1}, the same floats as c_hi
    k = torch.arange(K, device=alphas.device, dtype=alphas.dtype)  # (K,)
    lo = (k * threshold)[None, :, None]  # (1, K, 1)
    hi = ((k + 1) * threshold)[None, :, None]  # (1, K, 1)
    w = (torch.minimum(c_hi[:, None, :], hi) - torch.maximum(c_lo[:, None, :], lo)).clamp(min=0)  # (B, K, T)
    fired = torch.arange(K, device=alphas.device)[None, :] < counts[:, None]  # (B, K)
    return w * fired[..., None]


def rescale_tail(
    w: torch.Tensor, alpha_sum: torch.Tensor, counts: torch.Tensor, threshold: float, tail_threshold: float,
    eps: float = FIRE_EPS,
) -> torch.Tensor:
    """Scale each item's fired tail vector to a full vector's weight (torch_cif, the authors' port).

    Args:
        w: (B, K, T) weights from `cif_weights` (eval mode, unscaled alphas).
        alpha_sum: (B,) sum of each item's alphas; counts: (B,) from `cif_fire_counts`.
    Returns:
        (B, K, T): row counts[b] - 1 multiplied by threshold / r_b where item b fired a tail of
        leftover weight r_b >= tail_threshold; every other row unchanged (also the one vector an
        item with r_b below the tail threshold is given, which would otherwise be blown up).
    """
    full = torch.floor(alpha_sum / threshold + eps)  # (B,) full vectors
    leftover = alpha_sum - full * threshold  # (B,) r
    tail = (counts.to(full.dtype) > full) & (leftover >= tail_threshold)  # (B,)
    scale = torch.where(tail, threshold / leftover.clamp(min=1e-6), torch.ones_like(leftover))  # (B,)
    last = torch.arange(w.shape[1], device=w.device)[None, :] == (counts - 1)[:, None]  # (B, K)
    factor = torch.where(last, scale[:, None], torch.ones_like(scale)[:, None])  # (B, K)
    return w * factor[..., None].to(w.dtype)


class AlphaPredictor(nn.Module):
    """Conv1d(k3) -> LayerNorm -> ReLU -> Linear -> Sigmoid: (B, T, C) -> (B, T) in (0, 1)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(channels, channels, 3, padding=1)
        self.norm = nn.LayerNorm(channels)
        self.proj = nn.Linear(channels, 1)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """(B, T, C) zero on padding, (B, T) bool -> (B, T) alphas, 0 on padding."""
        y = self.conv(x.transpose(1, 2)).transpose(1, 2)  # (B, T, C)
        y = self.proj(torch.relu(self.norm(y))).squeeze(-1)  # (B, T)
        return torch.sigmoid(y) * valid


@ADAPTERS.register("cif")
class CIFAdapter(Adapter):
    """Continuous Integrate-and-Fire compression before the Base stack (data-dependent length).

    Config fields: cif_threshold (1.0), cif_tail_threshold (0.5), cif_tail_rescale (False),
    quantity_loss_weight (1.0), plus the stack's fields. Its output's `ratio` is
    sum(input frames) / sum(outputs).
    """

    deterministic_length = False
    one_output_per_token = True
    config_fields = ("cif_threshold", "cif_tail_threshold", "cif_tail_rescale", "quantity_loss_weight",
                     "targets_add_special_tokens", *STACK_FIELDS)  # model.py counts the targets

    def __init__(self, cfg: AdapterConfig, ctx: AdapterContext) -> None:
        super().__init__(cfg, ctx)
        self.alpha = AlphaPredictor(ctx.in_dim)
        self.stack = TransformerStack(cfg, ctx.in_dim, ctx.out_dim)

    def forward(
        self, hidden: torch.Tensor, lengths: torch.Tensor, targets: AdapterTargets | None = None
    ) -> AdapterOutput:
        """Args:
            hidden: (B, T, d_enc); lengths: (B,) valid frames.
            targets: in training, targets.target_lengths (B,) = target token counts N.
        Returns:
            AdapterOutput: embeds (B, K, d_llm), lengths (B,) fire counts, ratio; in training also
            aux_loss = quantity_loss_weight * quantity and aux_losses = {"quantity": ...}.
        Raises:
            ValueError: training mode without targets.target_lengths.
        """
        valid = check_input(hidden, lengths, self.ctx.in_dim, "cif adapter")  # (B, T)
        cfg = self.cfg
        x = hidden * valid[..., None]  # (B, T, C), zero on padding
        alphas = self.alpha(x, valid).float()  # (B, T); integrate in float32 even under bf16
        alpha_sum = alphas.sum(dim=1)  # (B,)

        aux_loss, aux_losses = None, {}
        if self.training:
            if targets is None or targets.target_lengths is None:
                raise ValueError(
                    "cif adapter: training needs targets.target_lengths (number of target tokens per "
                    "item) to scale the alphas; pass AdapterTargets(target_lengths=...) or call .eval()"
                )
            n = targets.target_lengths.to(device=alphas.device)  # (B,)
            # on the unscaled alphas, in units of the threshold (N vectors need N * beta of weight)
            quantity = (alpha_sum / cfg.cif_threshold - n.to(alphas.dtype)).abs().mean()
            aux_losses = {"quantity": quantity}
            aux_loss = cfg.quantity_loss_weight * quantity
            counts = n.long().clamp(min=1)  # exactly N (an empty target still fires one vector)
            target_sum = counts.to(alphas.dtype) * cfg.cif_threshold
            alphas = alphas * (target_sum / alpha_sum.clamp(min=1e-6))[:, None]
        else:
            counts = cif_fire_counts(alpha_sum.detach(), cfg.cif_threshold, cfg.cif_tail_threshold)

        w = cif_weights(alphas, counts, cfg.cif_threshold)  # (B, K, T)
        if cfg.cif_tail_rescale and not self.training:
            w = rescale_tail(w, alpha_sum.detach(), counts, cfg.cif_threshold, cfg.cif_tail_threshold)
        fired = torch.bmm(w.to(x.dtype), x)  # (B, K, T) @ (B, T, C) -> (B, K, C)
        return AdapterOutput(self.stack(fired, counts), counts, aux_loss, aux_losses,
                             ratio=compression_ratio(lengths, counts))
