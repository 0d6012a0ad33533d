"""Feature cache vs none on a grid: 1 SFM x 3 adapters x 2 LLMs (tiny random models, CPU).

    python benchmarks/grid_cache.py [--steps 8] [--utts 16] [--whisper-dim 256 --whisper-layers 4]

Counts SFM forward passes (a global forward hook on every SpeechEncoder) and wall time of
`run_grid` (train + evaluate every run) with the cache on and off, and prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import torch  # noqa: E402
import yaml  # noqa: E402

from speechwire.encoders.interface import SpeechEncoder  # noqa: E402
from speechwire.grid import load_grid  # noqa: E402
from speechwire.grid.run import run_grid  # noqa: E402
from speechwire.testing import save_tiny_llm, save_tiny_whisper  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--utts", type=int, default=16)
    ap.add_argument("--whisper-dim", type=int, default=256)
    ap.add_argument("--whisper-layers", type=int, default=4)
    ap.add_argument("--tiny", action="store_true", help="1 step, 4 utterances, 2 runs: a smoke run (tests)")
    args = ap.parse_args()
    if args.tiny:
        args.steps, args.utts, args.whisper_dim, args.whisper_layers = 1, 4, 32, 1
    from speechwire.cli import main as cli

    from helpers import write_mustc

    calls = {"n": 0}

    def hook(module, inputs, output):
        if isinstance(module, SpeechEncoder):  # the cache's weightless stand-in never gets this far
            calls["n"] += 1

    torch.nn.modules.module.register_module_forward_hook(hook)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_mustc(tmp / "MUSTC", "train", n=args.utts)
        manifest = tmp / "train.jsonl"
        cli(["data", "import", "mustc", "--root", str(tmp / "MUSTC"), "--tgt-lang", "de", "--split", "train",
             "--out", str(manifest), "--tasks", "asr"])
        save_tiny_whisper(tmp / "whisper", d_model=args.whisper_dim, layers=args.whisper_layers)
        save_tiny_llm(tmp / "llm_a", seed=0)
        save_tiny_llm(tmp / "llm_b", arch="qwen2", seed=1)
        grid = {
            "base": {"encoder": {"name": "whisper", "model": str(tmp / "whisper")},
                     "data": {"train_manifest": str(manifest), "max_batch_seconds": 3.0, "max_batch_size": 4},
                     "adapter": {"hidden_size": 32, "num_layers": 1, "num_heads": 4, "ffn_size": 64},
                     "train": {"max_steps": args.steps, "save_every": 0, "log_every": 4},
                     "eval": {"max_new_tokens": 8, "batch_size": 8}},
            "factors": {"encoder": {"tiny": {}}, "adapter": ["mlp"] if args.tiny else ["mlp", "conv", "cif"],
                        "llm": {"llama": {"llm.model": str(tmp / "llm_a")}, "qwen2": {"llm.model": str(tmp / "llm_b")}}},
            "test_sets": {"test": str(manifest)},
        }
        (tmp / "grid.yaml").write_text(yaml.safe_dump(grid))
        spec = load_grid(tmp / "grid.yaml")
        for use_cache in (False, True):
            calls["n"] = 0
            t0, c0 = time.perf_counter(), time.process_time()
            run_grid(spec, tmp / f"out-{use_cache}", use_cache=use_cache, progress=False)
            rows.append((use_cache, time.perf_counter() - t0, calls["n"], time.process_time() - c0))
    base_t, base_n, base_c = rows[0][1], rows[0][2], rows[0][3]
    print(f"command: python {' '.join(sys.argv)}")
    print(f"device: cpu ({torch.get_num_threads()} threads), fp32; 6 runs x {args.steps} steps, {args.utts} utterances "
          f"(train = test), tiny Whisper d={args.whisper_dim} x {args.whisper_layers} layers, tiny LLMs d=64\n")
    print("| feature cache | wall time (s) | CPU time (s) | SFM forward passes | wall vs no cache | CPU vs no cache "
          "| SFM passes vs no cache |")
    print("|---|---|---|---|---|---|---|")
    for use_cache, t, n, c in rows:
        print(f"| {'on' if use_cache else 'off'} | {t:.1f} | {c:.1f} | {n} | {t / base_t:.2f}x | {c / base_c:.2f}x | "
              f"{base_n / max(n, 1):.1f}x fewer |")


if __name__ == "__main__":
    main()
