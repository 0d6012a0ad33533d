"""A tiny end-to-end experiment on disk: real wav files, a MuST-C-layout corpus, tiny models, YAML."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import yaml

from speechwire.encoders.tiny import save_tiny_whisper
from speechwire.tiny import save_tiny_llm

SENTENCES = [
    ("Hello there.", "Hallo."), ("Good morning.", "Guten Morgen."), ("The cat sleeps.", "Die Katze schläft."),
    ("I like tea.", "Ich mag Tee."), ("See you soon.", "Bis bald."), ("It is cold.", "Es ist kalt."),
    ("Thank you.", "Danke."), ("Where is it?", "Wo ist es?"),
]


def write_mustc(root: Path, split: str = "train", n: int = 8, seed: int = 0) -> Path:
    """MuST-C layout: one talk wav per 4 segments, txt/{split}.yaml + .en + .de."""
    rng = np.random.default_rng(seed)
    data = root / "en-de" / "data" / split
    (data / "wav").mkdir(parents=True, exist_ok=True)
    (data / "txt").mkdir(parents=True, exist_ok=True)
    segs, en, de = [], [], []
    for talk in range(0, n, 4):
        pieces, offset = [], 0.0
        for k in range(min(4, n - talk)):
            i = talk + k
            dur = 0.6 + 0.2 * (i % 4)
            t = np.arange(int(dur * 16000)) / 16000
            wave = 0.3 * np.sin(2 * np.pi * (200 + 150 * i) * t) + 0.01 * rng.standard_normal(len(t))
            pieces.append(wave)
            segs.append({"duration": round(dur, 3), "offset": round(offset, 3), "speaker_id": f"spk{talk}",
                         "wav": f"ted_{talk}.wav"})
            offset += dur
            en.append(SENTENCES[i % len(SENTENCES)][0])
            de.append(SENTENCES[i % len(SENTENCES)][1])
        sf.write(data / "wav" / f"ted_{talk}.wav", np.concatenate(pieces).astype(np.float32), 16000)
    (data / "txt" / f"{split}.yaml").write_text(yaml.safe_dump(segs))
    (data / "txt" / f"{split}.en").write_text("\n".join(en) + "\n")
    (data / "txt" / f"{split}.de").write_text("\n".join(de) + "\n")
    return root


def write_experiment(tmp: Path, manifest: Path, run_dir: Path, extra: dict | None = None) -> Path:
    """Tiny Whisper + tiny LLM on disk and a YAML config pointing at them and the manifest."""
    whisper = tmp / "models" / "whisper"
    llm = tmp / "models" / "llm"
    if not whisper.exists():
        save_tiny_whisper(whisper, d_model=32, layers=1)
        save_tiny_llm(llm)
    cfg = {
        "encoder": {"name": "whisper", "model": str(whisper)},
        "llm": {"model": str(llm)},
        "adapter": {"name": "mlp", "hidden_size": 32, "stack": 2, "dropout": 0.1},
        "data": {"train_manifest": str(manifest), "max_batch_seconds": 2.5, "max_batch_size": 4},
        "train": {"output_dir": str(run_dir), "max_steps": 12, "lr": 3e-3, "save_every": 4,
                  "log_every": 2, "keep_last": 2, "seed": 0},
        "eval": {"max_new_tokens": 8, "batch_size": 4},
    }
    for section, values in (extra or {}).items():
        cfg.setdefault(section, {}).update(values)
    path = tmp / f"{run_dir.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def mustc_manifest(tmp: Path, name: str, tasks: tuple[str, ...] = ("asr", "st"), n: int = 8) -> Path:
    """Write a MuST-C-layout corpus under `tmp` and import it with `speechwire data import mustc`."""
    from speechwire.cli import main

    write_mustc(tmp / "MUSTC", "train", n=n)
    manifest = tmp / name
    assert main(["data", "import", "mustc", "--root", str(tmp / "MUSTC"), "--tgt-lang", "de", "--split", "train",
                 "--out", str(manifest), "--tasks", *tasks]) == 0
    return manifest
