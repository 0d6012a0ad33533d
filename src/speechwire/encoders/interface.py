"""The contract every speech encoder (SFM) keeps.

Letters: B batch, S samples (16 kHz), T encoder frames, d encoder width.

    out = encoder(waveforms, lengths)   # (B, S) float32 at 16 kHz, (B,) valid samples
    out.hidden   # (B, T, d), zero beyond out.lengths
    out.lengths  # (B,) valid frames per item
    encoder.dim, encoder.frame_rate   # d, frames per second
    encoder.output_length(num_samples)  # (B,) samples -> (B,) frames, pure

Encoders are frozen: built in eval mode with requires_grad=False everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from speechwire.audio import SAMPLE_RATE


@dataclass
class EncoderOutput:
    hidden: torch.Tensor  # (B, T, d)
    lengths: torch.Tensor  # (B,)


class SpeechEncoder(nn.Module):
    dim: int
    frame_rate: float
    min_samples: int = 400  # shortest input that yields at least one frame
    name: str = ""  # registry key
    model_id: str = ""  # what it was loaded from (hub id or folder): part of the feature-cache key

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> EncoderOutput:
        raise NotImplementedError

    def output_length(self, num_samples: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def freeze(self) -> "SpeechEncoder":
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)
        return self

    def train(self, mode: bool = True) -> "SpeechEncoder":
        # frozen: dropout stays off even when the surrounding SpeechLLM is put in train mode
        return super().train(False)


def check_waveforms(waveforms: torch.Tensor, lengths: torch.Tensor, min_samples: int, max_samples: int, who: str) -> None:
    """Clear errors for bad audio reaching an encoder (files are checked earlier, in audio.py)."""
    if waveforms.dim() != 2:
        raise ValueError(
            f"{who}: expected mono 16 kHz waveforms shaped (B, S), got {tuple(waveforms.shape)}; "
            "downmix and resample with speechwire.audio.load_audio"
        )
    if lengths.shape != waveforms.shape[:1]:
        raise ValueError(f"{who}: lengths {tuple(lengths.shape)} must be (B,) = ({waveforms.shape[0]},)")
    if not torch.isfinite(waveforms).all():
        bad = (~torch.isfinite(waveforms)).any(dim=1).nonzero().flatten().tolist()
        raise ValueError(f"{who}: waveforms of batch item(s) {bad} contain NaN or inf")
    short = (lengths < min_samples).nonzero().flatten().tolist()
    if short:
        raise ValueError(
            f"{who}: batch item(s) {short} have {lengths[short].tolist()} samples; the minimum is "
            f"{min_samples} ({min_samples / SAMPLE_RATE:.3f} s at 16 kHz)"
        )
    long = (lengths > max_samples).nonzero().flatten().tolist()
    if long:
        raise ValueError(
            f"{who}: batch item(s) {long} are {[round(n / SAMPLE_RATE, 2) for n in lengths[long].tolist()]} s "
            f"long; the maximum is {max_samples / SAMPLE_RATE:.1f} s - split long recordings into segments"
        )
