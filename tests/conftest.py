"""Shared fixtures: tiny random models written to disk once per session, real wav files."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import dataclasses

import pytest
import torch

torch.set_num_threads(1)  # pytest-xdist runs one worker per core; more threads only thrash

from speechwire.data import Batch
from speechwire.encoders.interface import EncoderOutput, SpeechEncoder, check_waveforms
from speechwire.tiny import save_tiny_llm


class ToyEncoder(SpeechEncoder):
    """A fast stand-in SFM: 20 ms frames (320 samples) -> Linear -> d=16. Frozen like real ones."""

    dim = 16
    frame_rate = 50.0
    min_samples = 320
    name = "toy"
    model_id = "toy"

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.proj = torch.nn.Linear(320, self.dim)
        with torch.no_grad():
            self.proj.weight.copy_(torch.randn(self.dim, 320, generator=g) * 0.1)
            self.proj.bias.zero_()

    def output_length(self, num_samples: torch.Tensor) -> torch.Tensor:
        return num_samples // 320

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> EncoderOutput:
        check_waveforms(waveforms, lengths, self.min_samples, 30 * 16000, "toy encoder")
        B, S = waveforms.shape
        T = S // 320
        x = self.proj(waveforms[:, : T * 320].reshape(B, T, 320))  # (B, T, d)
        out_lengths = self.output_length(lengths)
        valid = torch.arange(T)[None, :] < out_lengths[:, None]
        return EncoderOutput(x * valid[..., None], out_lengths)


@pytest.fixture(scope="session")
def tiny_llm_dir(tmp_path_factory):
    return save_tiny_llm(tmp_path_factory.mktemp("tiny_llm"), seed=0)


@pytest.fixture()
def toy_encoder():
    return ToyEncoder().freeze()


TINY_ADAPTER = ["adapter.hidden_size=32", "adapter.num_layers=1", "adapter.num_heads=4",
                "adapter.ffn_size=64", "adapter.dropout=0.0", "adapter.qformer_layers=1"]


def make_batch(lengths, texts, tasks=None, tgt_langs=None, seed=0, transcripts=None) -> Batch:
    """A Batch of random audio (seeded) with the given texts; no token ids (the model makes them)."""
    g = torch.Generator().manual_seed(seed)
    audio = torch.zeros(len(lengths), max(lengths))
    for i, n in enumerate(lengths):
        audio[i, :n] = torch.randn(n, generator=g) * 0.3
    B = len(lengths)
    return Batch(audio=audio, audio_lengths=torch.tensor(lengths), targets=list(texts),
                 transcripts=list(transcripts or texts), tasks=list(tasks or ["asr"] * B),
                 src_langs=["en"] * B, tgt_langs=list(tgt_langs or [None] * B), ids=[str(i) for i in range(B)])


def select(batch: Batch, idx: list[int]) -> Batch:
    """Sub-batch of items `idx`, re-padded to their own longest audio (token ids dropped)."""
    n = int(batch.audio_lengths[idx].max())
    out = {}
    for f in dataclasses.fields(batch):
        v = getattr(batch, f.name)
        if v is None or f.name == "tokens":
            continue
        if f.name == "audio":
            out[f.name] = v[idx][:, :n]
        elif torch.is_tensor(v):
            out[f.name] = v[idx]
        else:
            out[f.name] = [v[i] for i in idx]
    return Batch(**out)
