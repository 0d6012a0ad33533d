"""Training throughput of a tiny config on CPU, and the data-parallel speedup (1 vs 2 processes).

    python benchmarks/train_throughput.py [--steps 30] [--utts 64]

Same data, same number of optimizer steps; 2 processes each take a batch per step (twice the
audio per step), so the speedup is audio-seconds/s of DDP over single-process, measured side by
side in one run. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import yaml

from speechwire.testing import save_tiny_llm, save_tiny_whisper


def corpus(root: Path, n: int) -> Path:
    rng = np.random.default_rng(0)
    lines = []
    for i in range(n):
        dur = rng.uniform(1.0, 4.0)
        t = np.arange(int(dur * 16000)) / 16000
        wav = 0.3 * np.sin(2 * np.pi * rng.uniform(150, 900) * t) + 0.01 * rng.standard_normal(len(t))
        sf.write(root / f"u{i}.wav", wav.astype(np.float32), 16000)
        lines.append(json.dumps({"audio": f"u{i}.wav", "transcript": f"utterance number {i}"}))
    (root / "train.jsonl").write_text("\n".join(lines) + "\n")
    return root / "train.jsonl"


def run(cfg: dict, tmp: Path, procs: int, threads: int) -> dict:
    out = tmp / f"run{procs}x{threads}"
    cfg = {**cfg, "train": {**cfg["train"], "output_dir": str(out)}}
    path = tmp / f"cfg{procs}x{threads}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
    if procs == 1:
        cmd = [sys.executable, "-m", "speechwire.cli", "train", str(path), "--quiet", "--no-resume"]
    else:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(procs), "--master_port",
               str(port), "-m", "speechwire.cli", "train", str(path), "--quiet", "--no-resume"]
    t0 = time.time()
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    wall = time.time() - t0
    summary = json.loads((out / "train_summary.json").read_text())
    return {**summary, "wall": wall}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--utts", type=int, default=64)
    ap.add_argument("--tiny", action="store_true", help="2 steps on 4 utterances, one process: a smoke run (tests)")
    args = ap.parse_args()
    if args.tiny:
        args.steps, args.utts = 2, 4
    tmp = Path(tempfile.mkdtemp())
    manifest = corpus(tmp, args.utts)
    whisper, llm = save_tiny_whisper(tmp / "whisper", d_model=64, layers=2), save_tiny_llm(tmp / "llm", hidden_size=128)
    cfg = {"encoder": {"model": str(whisper)}, "llm": {"model": str(llm)},
           "adapter": {"name": "conv", "hidden_size": 64, "num_heads": 4, "num_layers": 2, "ffn_size": 128},
           "data": {"train_manifest": str(manifest), "max_batch_seconds": 12.0, "max_batch_size": 8},
           "train": {"max_steps": args.steps, "save_every": 0, "log_every": 10, "lr": 1e-3}}
    rows = [("1 process, 1 thread", run(cfg, tmp, 1, 1))]
    if not args.tiny:  # the other rows start more processes: minutes, not seconds
        rows += [("1 process, 2 threads", run(cfg, tmp, 1, 2)), ("2 processes (DDP, gloo), 1 thread each", run(cfg, tmp, 2, 1))]
    print(f"`python benchmarks/train_throughput.py --steps {args.steps} --utts {args.utts}`  "
          f"({platform.processor() or platform.machine()}, {os.cpu_count()} cores, fp32, "
          "tiny Whisper d=64 + conv adapter + tiny Llama d=128)\n")
    print("| setup | steps | train s | audio s / s | speedup |\n|---|---:|---:|---:|---:|")
    base = rows[0][1]["audio_seconds_per_second"]
    for name, r in rows:
        print(f"| {name} | {r['steps']} | {r['train_seconds']:.1f} | {r['audio_seconds_per_second']:.1f} | "
              f"{r['audio_seconds_per_second'] / base:.2f}x |")


if __name__ == "__main__":
    main()
