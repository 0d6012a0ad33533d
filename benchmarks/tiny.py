"""What every benchmark's `--tiny` runs on: tiny random models, an untrained run, tone clips.

`--tiny` checks that a benchmark still runs end to end (tests/test_benchmarks.py runs each one
that way in seconds); its numbers mean nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000


def tone_manifest(folder: Path, n: int = 4, name: str = "tones.asr.jsonl") -> Path:
    """n tone clips (0.6 s, 0.8 s, ...) with short transcripts, and their manifest."""
    import soundfile as sf

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        t = np.arange(int((0.6 + 0.2 * i) * SAMPLE_RATE)) / SAMPLE_RATE
        wav = 0.3 * np.sin(2 * np.pi * 220.0 * (i + 1) * t) + 0.01 * rng.standard_normal(t.shape)
        sf.write(folder / f"tone-{i}.wav", wav.astype(np.float32), SAMPLE_RATE, subtype="PCM_16")
        rows.append({"id": f"tone-{i}", "audio": f"tone-{i}.wav", "transcript": f"tone number {i}", "task": "asr"})
    (folder / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder / name


def tiny_models(folder: Path) -> tuple[Path, Path]:
    """(tiny Whisper folder, tiny LLM folder), written once under `folder`."""
    from speechwire.testing import save_tiny_llm, save_tiny_whisper

    folder = Path(folder)
    enc, llm = folder / "whisper", folder / "llm"
    if not (enc / "config.json").is_file():
        save_tiny_whisper(enc, full=True)
    if not (llm / "config.json").is_file():
        save_tiny_llm(llm)
    return enc, llm


def tiny_run(folder: Path, extra: list[str] | None = None) -> Path:
    """An untrained run folder (config.yaml + trainable.safetensors) on the tiny models."""
    from speechwire.config import load_config
    from speechwire.model import SpeechLLM
    from speechwire.testing import tiny_experiment_overrides

    folder = Path(folder)
    enc, llm = tiny_models(folder / "models")
    cfg = load_config(None, tiny_experiment_overrides(enc, llm, adapter="mlp") + [
        "eval.max_new_tokens=6", "eval.batch_size=2", "train.device=cpu", *(extra or [])])
    return SpeechLLM(cfg).save_pretrained(folder / "run")
