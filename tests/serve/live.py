"""Shared by the serve tests: a tiny random run folder, short recordings, a live server with an OpenAI client."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import openai
import soundfile as sf
import torch

from speechwire.config import load_config
from speechwire.model import SpeechLLM
from speechwire.serve.server import BackgroundServer
from speechwire.testing import save_tiny_llm, save_tiny_whisper


def write_run(root: Path, tasks: tuple[str, ...], tgt_langs: tuple[str, ...] = ("de",), max_new_tokens: int = 6) -> Path:
    """A run folder (config.yaml + trainable.safetensors) of tiny random models, trained for `tasks`
    (ST into `tgt_langs`), answering up to `max_new_tokens` tokens."""
    whisper, llm = root / "whisper", root / "llm"
    if not whisper.exists():
        save_tiny_whisper(whisper, d_model=32, layers=1)
        save_tiny_llm(llm)
    name = "-".join(tasks) + ("-" + "-".join(tgt_langs) if "st" in tasks and tgt_langs != ("de",) else "")
    name += f"-{max_new_tokens}" if max_new_tokens != 6 else ""
    manifest = root / f"train-{name}.jsonl"
    lines = [{"audio": "a.wav", "transcript": "hello", "task": "asr"}] if "asr" in tasks else []
    if "st" in tasks:
        lines += [{"audio": "a.wav", "transcript": "hello", "translation": "hallo", "tgt_lang": lang} for lang in tgt_langs]
    manifest.write_text("".join(json.dumps(x) + "\n" for x in lines))
    cfg = load_config(None, [
        "encoder.name=whisper", f"encoder.model={whisper}", f"llm.model={llm}", "adapter.name=mlp",
        "adapter.hidden_size=32", "adapter.stack=2", f"eval.max_new_tokens={max_new_tokens}",
        f"data.train_manifest={manifest}",
    ])
    torch.manual_seed(0)
    model = SpeechLLM(cfg)
    with torch.no_grad():  # random but audio-dependent outputs
        for p in model.adapter.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    return model.save_pretrained(root / f"run-{name}")


def audio_files(folder: Path, n: int = 16) -> list[Path]:
    """n distinct short recordings in several formats, rates and channel counts."""
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    files = []
    for i in range(n):
        seconds = 0.4 + 0.17 * i
        sr, ext = [(16000, "wav"), (44100, "flac"), (8000, "wav"), (22050, "mp3")][i % 4]
        t = np.arange(int(seconds * sr)) / sr
        x = 0.3 * np.sin(2 * np.pi * (120 + 60 * i) * t) + 0.05 * rng.standard_normal(len(t))
        x = np.stack([x, x[::-1]], 1) if i % 3 == 0 else x  # some stereo
        path = folder / f"clip{i}.{ext}"
        sf.write(path, x.astype(np.float32), sr)
        files.append(path)
    return files


class LiveServer(BackgroundServer):
    """The app on a random loopback port, with an OpenAI client that never retries."""

    def client(self, api_key: str = "unused"):
        return openai.OpenAI(base_url=self.url + "/v1", api_key=api_key, max_retries=0, timeout=120)
