"""The ctc adapter's CTC head: full (frames x vocabulary) log_softmax vs the chunked VocabHead.

    python benchmarks/ctc_head.py [--frames 4000] [--dim 384] [--vocab 151936] [--repeats 2]

One alignment-stage batch of the small real grid by default: 80 s of audio at 50 frames/s from
Whisper tiny.en (d 384) against Qwen2.5's 151,936-token vocabulary. Times forward and backward of
the head + CTC loss both ways in one process (the first, warm-up repeat dropped), with the peak
resident memory of each, and checks that the losses and gradients agree.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from speechwire.adapters.ctc import VocabHead
from speechwire.memory import peak_memory_gib, reset_peak_memory
from speechwire.tables import markdown_table


def full_loss(head: nn.Linear, x: torch.Tensor, labels, lengths, label_lengths, blank: int) -> torch.Tensor:
    """The straightforward version: the whole (T, B, V) log_softmax into torch's CTC."""
    logits = head(x)  # (B, T, V)
    logits.detach().argmax(dim=-1)  # the segmentation's labels
    log_probs = logits.float().log_softmax(dim=-1).transpose(0, 1)
    return nn.functional.ctc_loss(log_probs, labels, lengths, label_lengths, blank=blank, zero_infinity=True)


def chunked_loss(head: VocabHead, x: torch.Tensor, labels, lengths, label_lengths, blank: int) -> torch.Tensor:
    """What the ctc adapter does: the blank and used tokens' logits plus a bucket of the others."""
    columns = torch.unique(torch.cat([labels.flatten(), labels.new_tensor([blank])]))
    B, T, C = x.shape
    picked, rest, _ = head(x.reshape(B * T, C), columns)
    log_probs = torch.cat([picked, rest[:, None]], dim=1).log_softmax(dim=1).view(B, T, -1).transpose(0, 1)
    local = torch.searchsorted(columns, labels)
    local_blank = int(torch.searchsorted(columns, columns.new_tensor(blank)))
    return nn.functional.ctc_loss(log_probs, local, lengths, label_lengths, blank=local_blank, zero_infinity=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=4000, help="frames in the batch (80 s at 50 frames/s)")
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--vocab", type=int, default=151936)
    ap.add_argument("--repeats", type=int, default=2, help="timed repeats after one warm-up")
    ap.add_argument("--tiny", action="store_true", help="small sizes, one repeat: a smoke run (tests)")
    args = ap.parse_args()
    if args.tiny:
        args.frames, args.dim, args.vocab, args.repeats = 300, 32, 500, 1
    torch.manual_seed(0)
    T = 150
    B = max(1, args.frames // T)
    x = torch.randn(B, T, args.dim)
    labels = torch.randint(1, args.vocab, (B, 12))
    lengths, label_lengths = torch.full((B,), T), torch.full((B,), 12)
    full = nn.Linear(args.dim, args.vocab)
    chunked = VocabHead(args.dim, args.vocab)
    chunked.load_state_dict(full.state_dict())
    rows, results, step_seconds = [], {}, []
    for name, head, fn in (("full log_softmax", full, full_loss), ("chunked VocabHead", chunked, chunked_loss)):
        fwd, bwd = [], []
        reset_peak_memory()
        for _ in range(args.repeats + 1):
            head.zero_grad(set_to_none=True)
            t0 = time.perf_counter()
            loss = fn(head, x, labels, lengths, label_lengths, blank=0)
            t1 = time.perf_counter()
            loss.backward()
            fwd.append(t1 - t0)
            bwd.append(time.perf_counter() - t1)
        results[name] = (float(loss.detach()), head.weight.grad.clone())
        f, b = sum(fwd[1:]) / args.repeats, sum(bwd[1:]) / args.repeats
        step_seconds.append(f + b)
        rows.append({"head": name, "forward_s": f"{f:.2f}", "backward_s": f"{b:.2f}", "step_s": f"{f + b:.2f}",
                     "peak_rss_gib": f"{peak_memory_gib() or 0:.2f}"})
    (l_full, g_full), (l_chunk, g_chunk) = results.values()
    speedup = step_seconds[0] / max(step_seconds[1], 1e-9)  # from the unrounded times: a --tiny step rounds to 0.00
    print(f"{B} x {T} frames, d {args.dim}, vocabulary {args.vocab}, {torch.get_num_threads()} threads")
    for line in markdown_table(rows, list(rows[0]), list(rows[0])):
        print(line)
    rel = float((g_full - g_chunk).norm() / g_full.norm())
    print(f"speed-up {speedup:.2f}x; loss {l_full:.6f} vs {l_chunk:.6f}; head gradient relative difference {rel:.2e}")


if __name__ == "__main__":
    main()
