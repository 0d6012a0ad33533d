"""Adapter cost and compression on Whisper-like and Seamless-like encoder outputs.

    .venv/bin/python benchmarks/adapters.py            # paper sizes, 10 s, batch 8, CPU
    .venv/bin/python benchmarks/adapters.py --reps 1 --seconds 5

For every adapter (base, mlp with stack 4, conv, cif, ctc, wlqformer) at the paper's sizes (hidden
768, 12 heads, FFN 3072, 4 layers) and LLM width 4096 (CTC vocabulary 32768): trainable parameters,
forward+backward time in training mode (median of --reps after one warm-up), output length and
compression ratio (input frames / output vectors). Random weights, random inputs.

Data-dependent rates: CIF runs in training mode with a target of --tokens-per-second x seconds
tokens (2/s -> 20 tokens for 10 s), so it fires exactly that many vectors. CTC (blank runs kept,
the default) runs twice: with its random-init head (argmax changes almost every frame, ratio ~1:
not the trained behaviour) and with the blank logit biased so that the paper's rate is reached on
this input (a stand-in for a trained head; the timing then reflects the paper's output length).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from speechwire.adapters import Adapter, AdapterContext, AdapterTargets, build_adapter  # noqa: E402
from speechwire.adapters.ctc import segment_ids  # noqa: E402
from speechwire.config import AdapterConfig  # noqa: E402

# name, frame rate (Hz), d_enc, paper's CTC rate (DESIGN.md section 2)
SFMS = [("whisper-like", 50.0, 1280, 13.0), ("seamless-like", 6.25, 1024, 2.0)]
ADAPTERS = [("base", {}), ("mlp", {"stack": 4}), ("conv", {}), ("cif", {}), ("ctc", {}),
            ("ctc", {"blank_bias": True}), ("wlqformer", {})]


def bias_blank(adapter: Adapter, hidden: torch.Tensor, lengths: torch.Tensor, rate: float) -> None:
    """Raise the blank logit until the pooled output is about 1/rate of the frames long, counting
    segments as the adapter does (blank runs too, unless ctc_keep_blanks is off): bisection on the bias."""
    with torch.no_grad():
        # the full (B, T, V) logits: VocabHead.forward returns only the columns CTC reads
        logits = torch.nn.functional.linear(hidden, adapter.head.weight, adapter.head.bias).float()
        blank = adapter.blank
        other = logits.clone()
        other[..., blank] = float("-inf")
        best, best_id = other.max(-1)  # (B, T) the best non-blank label
        margin = best - logits[..., blank]  # (B, T) frames with margin <= bias turn blank
        target = float(lengths.sum()) / rate

        def segments(bias: float) -> int:
            labels = torch.where(margin <= bias, torch.full_like(best_id, blank), best_id)
            return int(segment_ids(labels, lengths, blank, adapter.cfg.ctc_keep_blanks)[2].sum())

        lo, hi = float(margin.min()) - 1.0, float(margin.max()) + 1.0  # all labels / all blank
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if segments(mid) > target else (lo, mid)
        adapter.head.bias[blank] += hi


def time_step(adapter: Adapter, hidden, lengths, targets, reps: int) -> tuple[list[float], object]:
    """Median-ready list of forward+backward milliseconds, and the last output."""
    times, out = [], None
    for i in range(reps + 1):  # first run is a warm-up
        adapter.zero_grad(set_to_none=True)
        if hidden.is_cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = adapter(hidden, lengths, targets)
        loss = out.embeds.float().pow(2).mean() + (out.aux_loss if out.aux_loss is not None else 0.0)
        loss.backward()
        if hidden.is_cuda:
            torch.cuda.synchronize()
        if i:
            times.append(1000 * (time.perf_counter() - t0))
    return times, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--d-llm", type=int, default=4096)
    ap.add_argument("--vocab", type=int, default=32768)
    ap.add_argument("--tokens-per-second", type=float, default=2.0)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--tiny", action="store_true", help="small sizes, one repeat: a smoke run (tests)")
    args = ap.parse_args()
    if args.tiny:
        args.batch, args.seconds, args.d_llm, args.vocab, args.reps = 2, 2.0, 64, 256, 1
    print("command: " + " ".join([Path(sys.executable).name, *sys.argv]))
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    n_tok = max(1, round(args.tokens_per_second * args.seconds))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, "
          f"{args.seconds:g} s, d_llm {args.d_llm}, CTC vocab {args.vocab}, {n_tok} target tokens\n")
    print("| SFM | adapter | device | dtype | input B x T x d_enc | output B x T' x d_llm | "
          "out len | ratio | params (M) | fwd+bwd ms |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    g = torch.Generator().manual_seed(0)
    for sfm, rate, d_enc, ctc_rate in SFMS:
        T = max(1, round(args.seconds * rate + 0.4999))  # ceil: a partial frame still exists
        hidden = torch.randn(args.batch, T, d_enc, generator=g).to(device, dtype)
        lengths = torch.full((args.batch,), T, device=device)
        labels = torch.randint(1, args.vocab, (args.batch, n_tok), generator=g).to(device)
        targets = AdapterTargets(target_lengths=torch.full((args.batch,), n_tok, device=device),
                                 ctc_labels=labels, ctc_label_lengths=torch.full((args.batch,), n_tok, device=device))
        for name, extra in ADAPTERS:
            torch.manual_seed(0)
            small = {"hidden_size": 32, "num_heads": 4, "ffn_size": 64, "num_layers": 1, "qformer_layers": 1}
            cfg = AdapterConfig(name=name, stack=extra.get("stack", 1), **(small if args.tiny else {}))
            ctx = AdapterContext(in_dim=d_enc, out_dim=args.d_llm, frame_rate=rate, vocab_size=args.vocab, pad_id=0)
            adapter = build_adapter(cfg, ctx).to(device, dtype).train()
            label = name + (f" (stack {cfg.stack})" if cfg.stack > 1 else "")
            if name == "ctc":
                label += " (blank-biased to paper rate)" if extra.get("blank_bias") else " (random init)"
                if extra.get("blank_bias"):
                    bias_blank(adapter, hidden, lengths, ctc_rate)
            params = sum(p.numel() for p in adapter.parameters() if p.requires_grad) / 1e6
            times, out = time_step(adapter, hidden, lengths, targets, args.reps)
            n_out = float(out.lengths.float().mean())
            print(f"| {sfm} ({rate:g} Hz) | {label} | {device.type} | {args.dtype} | "
                  f"{args.batch} x {T} x {d_enc} | {args.batch} x {out.embeds.shape[1]} x {out.embeds.shape[2]} | "
                  f"{n_out:.1f} | {T / n_out:.1f}:1 | {params:.1f} | {statistics.median(times):.0f} |", flush=True)
            del adapter, out


if __name__ == "__main__":
    main()
