"""Export a trained demo run as the checkpoint shipped inside the package (a maintainer script).

    python scripts/ship_demo.py RUN_DIR src/speechwire/assets/demo_asr --command "speechwire train ..."

Writes trainable.safetensors (float16: half the bytes; loading casts back to the model's float32),
config.yaml with the data paths reset to the demo defaults (frozen parts stay `weights:NAME`),
train_log.jsonl, train_summary.json and COMMAND.txt (how it was made).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from speechwire.config import load_config, save_config
from speechwire.data.synth import DEFAULT_OUT
from speechwire.model import CONFIG_NAME, WEIGHTS_NAME

DEFAULT_DATA = DEFAULT_OUT.as_posix()  # "~/.cache/speechwire/demo_data", unexpanded: the shipped config is portable


def ship(run_dir: Path, dest: Path, command: str, checkpoint: str = "best") -> Path:
    """Copy the run's `checkpoint` ("best" on dev, or "final") into `dest`, small and portable.

    Raises:
        ValueError: the config names a frozen part by a local path instead of `weights:NAME`.
        FileNotFoundError: the run has no such checkpoint.
    """
    import torch
    from safetensors.torch import load_file, save_file

    run_dir, dest = Path(run_dir), Path(dest)
    src = run_dir / "best" if checkpoint == "best" and (run_dir / "best" / WEIGHTS_NAME).is_file() else run_dir
    if not (src / WEIGHTS_NAME).is_file():
        raise FileNotFoundError(f"{src}: no {WEIGHTS_NAME}; train first")
    cfg = load_config(src / CONFIG_NAME)
    for part, ref in (("encoder.model", cfg.encoder.model), ("llm.model", cfg.llm.model)):
        if not ref.startswith("weights:"):
            raise ValueError(f"{src / CONFIG_NAME}: {part}={ref!r} is a local reference; ship only configs that "
                             "name frozen parts as weights:NAME (portable)")
    task = "st" if "st" in Path(cfg.data.train_manifest or "").name.split(".") else "asr"
    train = f"demo_train.{task}.jsonl" if task == "asr" else "synth_train.st.jsonl"
    cfg.data.train_manifest = f"{DEFAULT_DATA}/{train}"
    cfg.data.dev_manifest = f"{DEFAULT_DATA}/demo_dev.{task}.jsonl"
    cfg.train.output_dir = f"runs/demo-{task}-train"
    cfg.train.init_from = None  # the recipe reruns the alignment stage itself (align.steps)
    if cfg.data.feature_cache:
        cfg.data.feature_cache = "~/.cache/speechwire/features"
    if cfg.align.lm_text:  # the n-gram LM itself is in the checkpoint; the recipe names the corpus's text
        cfg.align.lm_text = [f"{DEFAULT_DATA}/lm_text.txt"]
    dest.mkdir(parents=True, exist_ok=True)
    state = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in load_file(str(src / WEIGHTS_NAME)).items()}
    save_file(state, str(dest / WEIGHTS_NAME), metadata={"format": "pt", "speechwire": "trainable-only", "dtype": "float16"})
    save_config(cfg, dest / CONFIG_NAME)
    for name, out in (("log.jsonl", "train_log.jsonl"), ("train_summary.json", "train_summary.json")):
        if (run_dir / name).is_file():
            shutil.copyfile(run_dir / name, dest / out)
    (dest / "COMMAND.txt").write_text(command.strip() + "\n")
    n = sum(v.numel() for v in state.values())
    info = {"source": str(src), "checkpoint": checkpoint, "trainable_params": n,
            "bytes": (dest / WEIGHTS_NAME).stat().st_size, "dtype": str(torch.float16)}
    (dest / "ship.json").write_text(json.dumps(info, indent=2) + "\n")
    return dest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python scripts/ship_demo.py", description=__doc__.split("\n")[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("dest", type=Path)
    p.add_argument("--command", required=True, help="the exact command that trained the run")
    p.add_argument("--checkpoint", choices=["best", "final"], default="best")
    args = p.parse_args(argv)
    print(ship(args.run_dir, args.dest, args.command, args.checkpoint))
    return 0


if __name__ == "__main__":
    sys.exit(main())
