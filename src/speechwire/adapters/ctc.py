"""The paper's CTC-based compression adapter: a CTC head picks segments, frames are mean-pooled per
segment, then the Base transformer stack.

Letters: B batch, T encoder frames, K pooled segments (T' = K), C = d_enc, V = LLM vocabulary,
L = transcript tokens.

    logits = Linear(C, V)(hidden)                       # (B, T, V), the CTC head
    labels = argmax(logits)                             # (B, T)
    runs of equal consecutive labels -> one segment, blank runs too (ctc_keep_blanks=False: dropped)
    pooled[k] = mean of the frames of segment k         # (B, K, C), scatter-add, no Python loop
    -> TransformerStack -> (B, K, d_llm)

Training adds the CTC loss (weight ctc_loss_weight = 0.1) of the head against the source
transcript in the LLM's own tokenizer (targets.ctc_labels), blank = ctc_blank_id or the LLM's pad
id. Items whose transcript is longer than their frames cannot be aligned: their loss is zeroed
(zero_infinity=True) and a warning names them. An item whose frames are all blank still yields one
vector: the mean of all its frames.

Blank runs are kept by default, each averaged into one vector, as in the authors' code
(`CtcAdapter._ctc_compress_sequence`; their comment: blanks are not removed, as in the original
CTC-compression paper, Gaido et al. 2021); ctc_keep_blanks=False drops them (a shorter output).
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from ..config import AdapterConfig
from ..registry import ADAPTERS
from .interface import (
    Adapter,
    AdapterContext,
    AdapterOutput,
    AdapterTargets,
    check_input,
    compression_ratio,
    lengths_to_mask,
)
from .transformer import STACK_FIELDS, TransformerStack


def segment_ids(
    labels: torch.Tensor, lengths: torch.Tensor, blank: int, keep_blanks: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Assign each frame to its pooled segment.

    Args:
        labels: (B, T) long frame labels (the CTC head's argmax).
        lengths: (B,) valid frames.
        blank: the blank label; its runs are segments too unless keep_blanks is False.
    Returns:
        seg: (B, T) long segment index of each frame (meaningless where keep is False).
        keep: (B, T) bool, frames that belong to an output segment.
        counts: (B,) number of segments (>= 1: an all-blank item is one segment of all its frames).
    """
    valid = lengths_to_mask(lengths, labels.shape[1])  # (B, T)
    start = torch.ones_like(valid)
    start[:, 1:] = labels[:, 1:] != labels[:, :-1]  # (B, T) a new run begins here
    keep = valid if keep_blanks else valid & (labels != blank)
    seg = torch.cumsum(start & keep, dim=1) - 1  # (B, T) index among kept runs
    counts = (start & keep).sum(dim=1)  # (B,)
    empty = counts == 0  # all blank: one segment with every real frame
    keep = keep | (empty[:, None] & valid)
    seg = torch.where(empty[:, None], torch.zeros_like(seg), seg)
    return seg, keep, counts.clamp(min=1)


def segment_mean(x: torch.Tensor, seg: torch.Tensor, keep: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Mean-pool frames by segment with one scatter-add over the flattened batch.

    Args:
        x: (B, T, C) frames; seg, keep, counts from `segment_ids`.
    Returns:
        (B, K, C), K = max(counts); zero beyond counts[b].
    """
    B, T, C = x.shape
    K = int(counts.max())
    flat = (torch.arange(B, device=x.device)[:, None] * K + seg.clamp(min=0))[keep]  # (N,) kept frames
    sums = x.new_zeros(B * K, C).index_add_(0, flat, x[keep])  # (B*K, C)
    n = x.new_zeros(B * K).index_add_(0, flat, x.new_ones(flat.shape[0]))  # (B*K,)
    return (sums / n.clamp(min=1)[:, None]).view(B, K, C)


@ADAPTERS.register("ctc")
class CTCAdapter(Adapter):
    """CTC-guided mean pooling before the Base stack (data-dependent length).

    Config fields: ctc_loss_weight (0.1), ctc_blank_id (None = ctx.pad_id), ctc_keep_blanks
    (True), plus the stack's fields; needs ctx.vocab_size. Its output's `ratio` is
    sum(input frames) / sum(outputs).
    """

    deterministic_length = False
    config_fields = ("ctc_loss_weight", "ctc_blank_id", "ctc_keep_blanks", "targets_add_special_tokens",
                     *STACK_FIELDS)  # model.py makes the labels

    def __init__(self, cfg: AdapterConfig, ctx: AdapterContext) -> None:
        super().__init__(cfg, ctx)
        if ctx.vocab_size < 2:
            raise ValueError(
                f"ctc adapter: AdapterContext.vocab_size={ctx.vocab_size}; the CTC head needs the "
                "LLM's vocabulary size (len(tokenizer))"
            )
        self.blank = cfg.ctc_blank_id if cfg.ctc_blank_id is not None else ctx.pad_id
        if not 0 <= self.blank < ctx.vocab_size:
            raise ValueError(
                f"ctc adapter: blank id {self.blank} is outside the vocabulary [0, {ctx.vocab_size}); "
                "set adapter.ctc_blank_id to an unused token id"
            )
        self.head = nn.Linear(ctx.in_dim, ctx.vocab_size)
        self.stack = TransformerStack(cfg, ctx.in_dim, ctx.out_dim)

    def forward(
        self, hidden: torch.Tensor, lengths: torch.Tensor, targets: AdapterTargets | None = None
    ) -> AdapterOutput:
        """Args:
            hidden: (B, T, d_enc); lengths: (B,) valid frames.
            targets: in training, ctc_labels (B, L) and ctc_label_lengths (B,).
        Returns:
            AdapterOutput: embeds (B, K, d_llm), lengths (B,) segment counts, ratio; in training
            also aux_loss = ctc_loss_weight * ctc and aux_losses = {"ctc": ...}.
        Raises:
            ValueError: training without CTC labels, or labels containing the blank id.
        """
        check_input(hidden, lengths, self.ctx.in_dim, "ctc adapter")
        valid = lengths_to_mask(lengths, hidden.shape[1])  # (B, T)
        x = hidden * valid[..., None]  # (B, T, C)
        logits = self.head(x)  # (B, T, V)

        aux_loss, aux_losses = None, {}
        if self.training:
            ctc = self.ctc_loss(logits, lengths, targets)
            aux_losses = {"ctc": ctc}
            aux_loss = self.cfg.ctc_loss_weight * ctc

        labels = logits.detach().argmax(dim=-1)  # (B, T)
        seg, keep, counts = segment_ids(labels, lengths, self.blank, self.cfg.ctc_keep_blanks)
        pooled = segment_mean(x, seg, keep, counts)  # (B, K, C)
        return AdapterOutput(self.stack(pooled, counts), counts, aux_loss, aux_losses,
                             ratio=compression_ratio(lengths, counts))

    def ctc_loss(self, logits: torch.Tensor, lengths: torch.Tensor, targets: AdapterTargets | None) -> torch.Tensor:
        """CTC loss (mean over items of loss / label length), float32, zero_infinity=True.

        Args:
            logits: (B, T, V); lengths: (B,); targets with ctc_labels (B, L), ctc_label_lengths (B,).
        """
        if targets is None or targets.ctc_labels is None or targets.ctc_label_lengths is None:
            raise ValueError(
                "ctc adapter: training needs targets.ctc_labels and ctc_label_lengths (the source "
                "transcript in the LLM's tokenizer); the data must carry the source `transcript` "
                "field for every item (for ST too), or call .eval() to pool without the CTC loss"
            )
        labels = targets.ctc_labels.to(logits.device)
        label_lengths = targets.ctc_label_lengths.to(logits.device)
        real = lengths_to_mask(label_lengths, labels.shape[1])  # (B, L)
        if bool(((labels[real] < 0) | (labels[real] >= logits.shape[-1])).any()):
            raise ValueError(
                f"ctc adapter: transcript token ids must be in [0, {logits.shape[-1]}) (the LLM vocabulary "
                "the head was built with); check AdapterContext.vocab_size against the tokenizer"
            )
        if bool((labels[real] == self.blank).any()):
            raise ValueError(
                f"ctc adapter: a transcript contains the blank id {self.blank} (the LLM's pad token "
                "unless adapter.ctc_blank_id is set); set adapter.ctc_blank_id to an unused token id"
            )
        labels = labels.masked_fill(~real, 0)  # padding (e.g. -100) -> a valid id; ignored past the lengths
        too_long = (label_lengths > lengths).nonzero().flatten().tolist()
        if too_long:
            warnings.warn(
                f"ctc adapter: items {too_long} have more transcript tokens than encoder frames "
                f"(labels {label_lengths[too_long].tolist()} > frames {lengths[too_long].tolist()}); "
                "CTC cannot align them and their loss is set to 0 (zero_infinity)",
                stacklevel=3,
            )
        log_probs = torch.log_softmax(logits.float(), dim=-1).transpose(0, 1)  # (T, B, V)
        return nn.functional.ctc_loss(
            log_probs, labels, lengths, label_lengths, blank=self.blank, reduction="mean", zero_infinity=True,
        )
