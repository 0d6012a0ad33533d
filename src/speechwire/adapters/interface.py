"""The contract every adapter keeps.

Letters: B batch, T encoder frames, T' adapter outputs, d_enc encoder width, d_llm LLM width.

    out = adapter(hidden, lengths, targets=AdapterTargets(...))   # targets only in training
    out.embeds   # (B, T', d_llm), zero beyond out.lengths
    out.lengths  # (B,) valid outputs per item
    out.aux_loss # weighted sum of the adapter's auxiliary losses, or None
    out.aux_losses  # {name: unweighted loss} for logging
    out.ratio    # CIF, CTC: sum(input frames) / sum(outputs) of this batch; None: use output_length

Padding never changes a real item's output: an utterance alone or in a padded batch gives the
same embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from speechwire.schema import AdapterConfig


@dataclass
class AdapterContext:
    """What an adapter may know about its neighbours, fixed when the model is built."""

    in_dim: int  # d_enc: the speech encoder's width
    out_dim: int  # d_llm: the LLM's embedding width
    frame_rate: float  # encoder frames per second (converts window_seconds to frames)
    vocab_size: int = 0  # LLM vocabulary size (CTC head)
    pad_id: int = 0  # LLM pad token id (CTC blank by default)


@dataclass
class AdapterTargets:
    """Training-time targets some adapters need for their auxiliary loss."""

    target_lengths: torch.Tensor | None = None  # (B,) number of target tokens (CIF)
    ctc_labels: torch.Tensor | None = None  # (B, L) source transcript in LLM token ids, padded
    ctc_label_lengths: torch.Tensor | None = None  # (B,)


@dataclass
class AdapterOutput:
    embeds: torch.Tensor  # (B, T', d_llm)
    lengths: torch.Tensor  # (B,)
    aux_loss: torch.Tensor | None = None
    aux_losses: dict[str, torch.Tensor] = field(default_factory=dict)
    # data-dependent adapters (CIF, CTC): the measured compression sum(input frames) / sum(outputs)
    # of this batch; deterministic ones leave it None (their rate is output_length)
    ratio: float | None = None
    # the text an alignment head's beam spelt, per item (model.py, align.vocab=chars): what the LLM read
    heard: list[str] | None = None


def compression_ratio(lengths: torch.Tensor, out_lengths: torch.Tensor) -> float:
    """sum(input frames) / sum(outputs) of a batch, for AdapterOutput.ratio. (B,), (B,) -> float."""
    return float(lengths.sum()) / float(out_lengths.sum())


# AdapterConfig fields that count for every adapter (model.py reads match_output_scale)
COMMON_CONFIG_FIELDS = ("name", "match_output_scale")


class Adapter(nn.Module):
    """Base class. Subclasses set `deterministic_length` and `config_fields` and implement forward/output_length."""

    deterministic_length: bool = True
    # training emits one output per target token (CIF): the alignment stage scores them position by
    # position, and the model warns when an ST item's target count falls back to its translation
    one_output_per_token: bool = False
    # the AdapterConfig fields this adapter reads besides COMMON_CONFIG_FIELDS; a config that sets
    # another one gets an AdapterFieldWarning (config.warn_unread_adapter_fields)
    config_fields: tuple[str, ...] = ()

    def __init__(self, cfg: AdapterConfig, ctx: AdapterContext) -> None:
        super().__init__()
        self.cfg = cfg
        self.ctx = ctx

    def forward(
        self, hidden: torch.Tensor, lengths: torch.Tensor, targets: AdapterTargets | None = None
    ) -> AdapterOutput:
        raise NotImplementedError

    def output_length(self, lengths: torch.Tensor) -> torch.Tensor | None:
        """(B,) input frames -> (B,) outputs, or None when data-dependent (CIF, CTC)."""
        return None


def lengths_to_mask(lengths: torch.Tensor, max_len: int | None = None) -> torch.Tensor:
    """(B,) -> (B, T) bool, True on valid positions."""
    max_len = int(lengths.max()) if max_len is None else max_len
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


def check_input(hidden: torch.Tensor, lengths: torch.Tensor, in_dim: int, who: str) -> torch.Tensor:
    """Clear errors for the mistakes a user can make when wiring an SFM to an adapter; returns the
    (B, T) valid mask of `hidden`."""
    if hidden.dim() != 3:
        raise ValueError(f"{who}: expected hidden states (B, T, d_enc), got shape {tuple(hidden.shape)}")
    if hidden.shape[-1] != in_dim:
        raise ValueError(
            f"{who}: speech encoder width {hidden.shape[-1]} does not match the adapter's input "
            f"width {in_dim}; build the adapter with the encoder's `dim`"
        )
    if lengths.shape != hidden.shape[:1]:
        raise ValueError(f"{who}: lengths {tuple(lengths.shape)} must be (B,) = ({hidden.shape[0]},)")
    return lengths_to_mask(lengths, hidden.shape[1])
