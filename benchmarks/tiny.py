"""What every benchmark's `--tiny` runs on: tiny random models, an untrained run, tone clips.

`--tiny` checks that a benchmark still runs end to end (tests/test_benchmarks.py runs each one
that way in seconds); its numbers mean nothing.
"""

from __future__ import annotations

from pathlib import Path


def tone_manifest(folder: Path, n: int = 4, name: str = "tones.asr.jsonl") -> Path:
    """An ASR manifest of the first n of the demo's tiny tone clips (0.6 s, 0.8 s, ...; written by
    demo.data.build_tiny_corpus into `folder`/tiny), beside them in `folder`."""
    from speechwire.demo.data import build_tiny_corpus

    folder = Path(folder)
    lines = build_tiny_corpus(folder, "asr").train.read_text().splitlines(keepends=True)
    (folder / name).write_text("".join(lines[:n]))
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
