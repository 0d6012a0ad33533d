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

from speechwire.adapters.interface import lengths_to_mask
from speechwire.audio import SAMPLE_RATE


@dataclass
class EncoderOutput:
    hidden: torch.Tensor  # (B, T, d)
    lengths: torch.Tensor  # (B,)


class SpeechEncoder(nn.Module):
    dim: int
    frame_rate: float
    min_samples: int = 400  # shortest input that yields at least one frame
    max_samples: int  # longest accepted input
    name: str = ""  # registry key
    model_id: str = ""  # what it was loaded from (hub id or folder): part of the feature-cache key

    @torch.no_grad()
    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> EncoderOutput:
        """Encode a batch of 16 kHz waveforms: `encode` sees each item zero past its end, and its hidden
        states are cut to T = max(out lengths) and zeroed past each item's frames.

        Args:
            waveforms: (B, S) float32 at 16 kHz; values past `lengths` are ignored.
            lengths: (B,) valid samples per item.

        Returns:
            EncoderOutput with hidden (B, T, d), zero past each item's frames, and lengths (B,).
        """
        check_waveforms(waveforms, lengths, self.min_samples, self.max_samples, who=f"{self.name} encoder ({self.model_id})")
        lengths = lengths.to(waveforms.device)
        waveforms = waveforms[:, : int(lengths.max())].float()
        waveforms = waveforms.masked_fill(~lengths_to_mask(lengths, waveforms.shape[1]), 0.0)  # silence past each end
        hidden, out_lengths = self.encode(waveforms, lengths)
        T = int(out_lengths.max())
        return EncoderOutput(hidden=hidden[:, :T] * lengths_to_mask(out_lengths, T)[..., None].to(hidden.dtype),
                             lengths=out_lengths)

    def encode(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's part of `forward`: (B, S) float32 zero past `lengths`, (B,) samples ->
        hidden (B, >= T, d) and (B,) frames."""
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
