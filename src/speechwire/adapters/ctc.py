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

The head's CTC reads the log-probabilities of the blank and the transcript tokens only: `VocabHead`
returns each frame's argmax, the logits of the blank and the batch's transcript tokens, and the
log-sum-exp of all other tokens as one bucket, keeping the (frames x vocabulary) logits as its one
tensor of that size, where the full log_softmax path makes four. The loss and its gradients are
those of CTC over the full log_softmax (tested); benchmarks/ctc_head.py measures the speed and
memory against it (with Qwen's 151k-token vocabulary at 50 frames/s the head is most of a step).

Training segments (ctc_train_segments): `argmax`, as above (the authors'), or `aligned`: the frames
are labelled by the head's best CTC path through the transcript (Viterbi, `forced_frame_labels`)
instead of each frame's argmax, so a training item has at least one segment per transcript token
from the first step. The LLM-free alignment stage needs this: its loss scores the pooled outputs
against the transcript and cannot where there are fewer segments than tokens, and an untrained
head's argmax is blank everywhere within a few steps (one segment per item). Evaluation always
segments by argmax. (CIF does the same with its target count in training.)

Blank runs are kept by default, each averaged into one vector, as in the authors' code
(`CtcAdapter._ctc_compress_sequence`; their comment: blanks are not removed, as in the original
CTC-compression paper, Gaido et al. 2021); ctc_keep_blanks=False drops them (a shorter output).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from torch import nn

from speechwire.adapters.interface import (
    Adapter,
    AdapterContext,
    AdapterOutput,
    AdapterTargets,
    check_input,
    compression_ratio,
    lengths_to_mask,
)
from speechwire.adapters.transformer import STACK_FIELDS, TransformerStack
from speechwire.registry import ADAPTERS
from speechwire.schema import AdapterConfig


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


def forced_frame_labels(log_probs: torch.Tensor, lengths: torch.Tensor, labels: torch.Tensor,
                        label_lengths: torch.Tensor, blank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each frame's label on the best CTC path through the transcript (Viterbi alignment).

    Args:
        log_probs: (B, T, U) per-frame log-probabilities; labels index its last dimension.
        lengths: (B,) valid frames; labels (B, L) padded anyhow past label_lengths (B,); blank: the
            blank's index.
    Returns:
        frame labels (B, T) long (blank past the valid frames), and aligned (B,) bool: False where
        no path exists (more tokens, with the blanks repeats need, than frames): those items'
        labels are each frame's argmax instead.
    """
    B, T, _ = log_probs.shape
    L = labels.shape[1]
    S = 2 * L + 1
    dev = log_probs.device
    ext = torch.full((B, S), blank, dtype=torch.long, device=dev)  # blank, y1, blank, y2, ..., blank
    ext[:, 1::2] = labels.clamp(min=0)
    states = torch.arange(S, device=dev)
    n_states = 2 * label_lengths + 1  # (B,)
    live = states[None] < n_states[:, None]  # (B, S)
    skip = torch.zeros(B, S, dtype=torch.bool, device=dev)  # s-2 -> s: into a token unlike the one before
    skip[:, 2:] = (ext[:, 2:] != blank) & (ext[:, 2:] != ext[:, :-2])
    emit = log_probs.float().gather(2, ext[:, None, :].expand(B, T, S))  # (B, T, S)
    neg = torch.tensor(-math.inf, device=dev)
    score = torch.where(states[None] < 2, emit[:, 0], neg)
    score = torch.where(live, score, neg)
    back = torch.zeros(B, T, S, dtype=torch.long, device=dev)  # how far back each state came from
    for t in range(1, T):
        one = nn.functional.pad(score[:, :-1], (1, 0), value=-math.inf)
        two = torch.where(skip, nn.functional.pad(score[:, :-2], (2, 0), value=-math.inf), neg)
        best, step = torch.stack([score, one, two]).max(0)  # (B, S)
        running = (t < lengths)[:, None]
        score = torch.where(running, torch.where(live, best + emit[:, t], neg), score)
        back[:, t] = torch.where(running, step, 0)
    last = (n_states - 1).clamp(min=0)
    end_scores = torch.stack([score.gather(1, last[:, None])[:, 0],
                              score.gather(1, (last - 1).clamp(min=0)[:, None])[:, 0]])  # (2, B)
    end_best, end_pick = end_scores.max(0)
    aligned = torch.isfinite(end_best) & (label_lengths > 0)
    state = last - end_pick * (label_lengths > 0)  # (B,)
    path = torch.zeros(B, T, dtype=torch.long, device=dev)
    for t in range(T - 1, -1, -1):
        path[:, t] = state
        state = state - back[:, t].gather(1, state[:, None])[:, 0]
    frame = ext.gather(1, path)  # (B, T)
    frame = torch.where(aligned[:, None], frame, log_probs.argmax(-1))
    return frame.masked_fill(~lengths_to_mask(lengths, T), blank), aligned


class _VocabScores(torch.autograd.Function):
    """(picked, rest, best) of logits = x @ weight.T + bias: picked (N, U) = logits[:, columns], rest
    (N,) the log-sum-exp of the other columns, best (N,) the argmax. Backward: d logit_j = d picked_j
    for j in columns, else exp(logit_j - rest) * d rest. The (N, V) logits are the only tensor of
    that size kept; the elementwise work runs in row chunks small enough that their temporaries come
    from the heap, not from fresh page-faulted mappings (the full log_softmax path spent half its
    CPU time in the kernel zeroing pages)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, columns: torch.Tensor,
                chunk: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        with torch.autocast(x.device.type, enabled=False):  # float32 scores whatever the autocast dtype
            logits = torch.addmm(bias.to(weight.dtype), x.to(weight.dtype), weight.t()).float()  # (N, V)
            picked = logits.index_select(1, columns)  # (N, U)
            best = logits.argmax(dim=1)  # (N,)
            rest = torch.empty(x.shape[0], dtype=torch.float32, device=x.device)
            for s in range(0, x.shape[0], chunk):
                block = logits[s : s + chunk].index_fill_(1, columns, -math.inf)
                rest[s : s + chunk] = torch.logsumexp(block, dim=1)
                block.index_copy_(1, columns, picked[s : s + chunk])  # restored: backward reads the logits
        ctx.save_for_backward(x, weight, bias, columns, logits, rest)
        ctx.chunk = chunk
        ctx.mark_non_differentiable(best)
        return picked, rest, best

    @staticmethod
    def backward(ctx: Any, d_picked: torch.Tensor | None, d_rest: torch.Tensor | None, _: Any) -> tuple:
        x, weight, bias, columns, logits, rest = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        with torch.autocast(x.device.type, enabled=False):
            d_logits = torch.zeros_like(logits) if d_rest is None else torch.empty_like(logits)  # (N, V)
            for s in range(0, x.shape[0], ctx.chunk):
                block = d_logits[s : s + ctx.chunk]
                if d_rest is not None:  # where every column is picked, rest = -inf: overwritten just below
                    torch.sub(logits[s : s + ctx.chunk], rest[s : s + ctx.chunk, None], out=block)
                    block.exp_().mul_(d_rest[s : s + ctx.chunk, None])
                block.index_copy_(1, columns, d_picked[s : s + ctx.chunk] if d_picked is not None
                                  else block.new_zeros(block.shape[0], columns.numel()))
            dx = (d_logits.to(weight.dtype) @ weight).to(x.dtype) if need_x else None
            dw = (d_logits.t() @ x.float()).to(weight.dtype) if need_w else None
            db = d_logits.sum(dim=0).to(bias.dtype) if need_b else None
        return dx, dw, db, None, None


class VocabHead(nn.Linear):
    """The CTC head, a Linear(d_enc, V) whose forward returns only what the adapter reads (see the
    module docstring); a module of its own so that ZeRO-3 gathers its weights around the call."""

    def forward(self, x: torch.Tensor, columns: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Args:
            x: (N, d_enc) frames; columns: (U,) distinct long vocabulary ids.
        Returns:
            picked (N, U) float32 logits[:, columns], rest (N,) float32 log-sum-exp of the other
            logits (-inf when columns hold the whole vocabulary), best (N,) long argmax.
            log_softmax(cat([picked, rest])) is the head's distribution with the other tokens as
            one bucket: CTC over it has the loss and gradients of CTC over the full vocabulary.
        """
        chunk = max(1, CHUNK_ELEMENTS // self.out_features)
        return _VocabScores.apply(x, self.weight, self.bias, columns, chunk)


CHUNK_ELEMENTS = 1 << 22  # elementwise work per chunk: 16 MiB of float32, under glibc's 32 MiB mmap threshold


@ADAPTERS.register("ctc")
class CTCAdapter(Adapter):
    """CTC-guided mean pooling before the Base stack (data-dependent length).

    Config fields: ctc_loss_weight (0.1), ctc_blank_id (None = ctx.pad_id), ctc_keep_blanks
    (True), ctc_train_segments (argmax), plus the stack's fields; needs ctx.vocab_size. Its output's `ratio` is
    sum(input frames) / sum(outputs).
    """

    deterministic_length = False
    config_fields = ("ctc_loss_weight", "ctc_blank_id", "ctc_keep_blanks", "ctc_train_segments", "targets_add_special_tokens",
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
        self.head = VocabHead(ctx.in_dim, ctx.vocab_size)
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
        valid = check_input(hidden, lengths, self.ctx.in_dim, "ctc adapter")  # (B, T)
        x = hidden * valid[..., None]  # (B, T, C)
        labels, columns = None, torch.tensor([self.blank], device=x.device)
        if self.training:
            labels, label_lengths = self.check_targets(targets, lengths)
            real = lengths_to_mask(label_lengths, labels.shape[1])  # (B, L)
            columns = torch.unique(torch.cat([labels[real], columns]))  # (U,) sorted: the blank + used tokens
        picked, rest, best = self.head(x[valid], columns)  # (N, U), (N,), (N,) over the N valid frames

        aux_loss, aux_losses = None, {}
        if self.training:
            # CTC reads only the blank and the transcript tokens: the other tokens form one bucket, so the
            # distribution stays normalised (torch's CTC gradient assumes a normalised input)
            log_probs = x.new_zeros(*valid.shape, columns.numel() + 1, dtype=torch.float32)  # (B, T, U + 1)
            log_probs[valid] = torch.cat([picked, rest[:, None]], dim=1).log_softmax(dim=1)
            local = torch.searchsorted(columns, labels.masked_fill(~real, self.blank))  # ids -> columns
            blank = int(torch.searchsorted(columns, columns.new_tensor(self.blank)))
            ctc = nn.functional.ctc_loss(log_probs.transpose(0, 1), local, lengths, label_lengths, blank=blank,
                                         reduction="mean", zero_infinity=True)
            aux_losses = {"ctc": ctc}
            aux_loss = self.cfg.ctc_loss_weight * ctc

        frame_labels = torch.full(valid.shape, self.blank, dtype=torch.long, device=x.device)  # (B, T)
        frame_labels[valid] = best
        if self.training and self.cfg.ctc_train_segments == "aligned":
            with torch.no_grad():
                path, aligned = forced_frame_labels(log_probs.detach(), lengths, local, label_lengths, blank)
            # an aligned item's path holds only the blank and its tokens, never the last (bucket) column;
            # the others keep `best` below, so the clamp only keeps their unused indices in range
            on_path = columns[path.clamp(max=columns.numel() - 1)]
            frame_labels = torch.where(aligned[:, None] & valid, on_path, frame_labels)
        seg, keep, counts = segment_ids(frame_labels, lengths, self.blank, self.cfg.ctc_keep_blanks)
        pooled = segment_mean(x, seg, keep, counts)  # (B, K, C)
        return AdapterOutput(self.stack(pooled, counts), counts, aux_loss, aux_losses,
                             ratio=compression_ratio(lengths, counts))

    def check_targets(self, targets: AdapterTargets | None, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The CTC labels (B, L) and their lengths (B,), checked; warns about unalignable items.

        Raises:
            ValueError: no labels, ids outside the vocabulary, or the blank id inside a transcript.
        """
        if targets is None or targets.ctc_labels is None or targets.ctc_label_lengths is None:
            raise ValueError(
                "ctc adapter: training needs targets.ctc_labels and ctc_label_lengths (the source "
                "transcript in the LLM's tokenizer); the data must carry the source `transcript` "
                "field for every item (for ST too), or call .eval() to pool without the CTC loss"
            )
        labels = targets.ctc_labels.to(lengths.device)
        label_lengths = targets.ctc_label_lengths.to(lengths.device)
        real = lengths_to_mask(label_lengths, labels.shape[1])  # (B, L)
        vocab = self.head.out_features
        if bool(((labels[real] < 0) | (labels[real] >= vocab)).any()):
            raise ValueError(
                f"ctc adapter: transcript token ids must be in [0, {vocab}) (the LLM vocabulary "
                "the head was built with); check AdapterContext.vocab_size against the tokenizer"
            )
        if bool((labels[real] == self.blank).any()):
            raise ValueError(
                f"ctc adapter: a transcript contains the blank id {self.blank} (the LLM's pad token "
                "unless adapter.ctc_blank_id is set); set adapter.ctc_blank_id to an unused token id"
            )
        too_long = (label_lengths > lengths).nonzero().flatten().tolist()
        if too_long:
            warnings.warn(
                f"ctc adapter: items {too_long} have more transcript tokens than encoder frames "
                f"(labels {label_lengths[too_long].tolist()} > frames {lengths[too_long].tolist()}); "
                "CTC cannot align them and their loss is set to 0 (zero_infinity)",
                stacklevel=3,
            )
        return labels, label_lengths
