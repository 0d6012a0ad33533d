"""Whisper encoder (any Hugging Face Whisper checkpoint, 80 or 128 mel bins), frozen.

Letters: B batch, S samples (16 kHz), M mel frames (100/s), C mel bins, T encoder frames (50/s), d width.

    waveforms (B, S) -> log-mel (B, M, C) -> conv1, conv2 (stride 2) -> + positions -> layers -> (B, T, d)

Three modes (`EncoderConfig.mode`):
- "trimmed" (default; the paper's "unrestricted" Whisper): encode only up to the longest item in the
  batch, positional table sliced to that length. Each item is computed exactly as if it were alone:
  its log-mel is normalised over its own frames, mel and conv1 frames past its end are zeroed (what
  the convolutions' zero padding sees when the item is alone) and attention ignores padded frames.
- "padded": the standard Whisper input, every item zero-padded to 30 s (3000 mel frames), no
  attention mask, exactly as `WhisperFeatureExtractor` + `WhisperEncoder`; output sliced to the
  real frames. The real frames then also attend to silence, so they differ from trimmed mode
  (cosine ~0.9-1.0 on random weights; 0.99 measured on tiny.en, see DESIGN.md section 5).
- "padded_full": as "padded", but all 1500 output frames (30 s) go to the adapter, silence
  included, and every item's length is 1500: the authors' standard Whisper (the `paper` preset).

Log-mel features follow `WhisperFeatureExtractor` to ~1e-5: centred STFT (n_fft 400, hop 160,
periodic Hann, reflect padding at both ends of the item), power spectrum, Slaney mel filters, log10
clamped at 1e-10, floor at (max - 8), then (x + 4) / 4. Mel frames = samples // 160 (the STFT's
last frame is dropped, as Hugging Face does); encoder frames = ceil(mel frames / 2).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from speechwire.adapters.interface import lengths_to_mask
from speechwire.encoders.interface import SAMPLE_RATE, SpeechEncoder
from speechwire.encoders.loading import load_submodule, resolve_folder
from speechwire.registry import ENCODERS
from speechwire.schema import WHISPER_MODES, EncoderConfig, torch_dtype

N_FFT = 400  # 25 ms window
HOP_LENGTH = 160  # 10 ms hop: 100 mel frames/s
CHUNK_SECONDS = 30  # Whisper's fixed input length
N_SAMPLES = CHUNK_SECONDS * SAMPLE_RATE  # 480000
N_FRAMES = N_SAMPLES // HOP_LENGTH  # 3000 mel frames -> 1500 encoder frames


def mel_frames(num_samples: torch.Tensor) -> torch.Tensor:
    """Mel frames `WhisperFeatureExtractor` makes from `num_samples` samples: (S // 160 + 1) - 1 dropped."""
    return torch.div(num_samples, HOP_LENGTH, rounding_mode="floor")


def log_mel(waveforms: torch.Tensor, num_samples: torch.Tensor, mel_filters: torch.Tensor) -> torch.Tensor:
    """Whisper log-mel spectrogram of each item as if it were alone, batched.

    Args:
        waveforms: (B, S) float32; samples at or beyond `num_samples` are treated as zeros.
        num_samples: (B,) the length each item is framed at (its real length, or 480000 in padded mode);
            the STFT reflects the signal around position num_samples - 1, as `torch.stft(center=True)`
            does on the item alone.
        mel_filters: (N_FFT // 2 + 1, C) Slaney mel filter bank.

    Returns:
        (B, M, C) float32 with M = max(num_samples // 160); frames past an item's own count are 0.
    """
    B, S = waveforms.shape
    dev = waveforms.device
    n = num_samples.to(dev).long()  # (B,)
    m_item = mel_frames(n)  # (B,)
    M = int(m_item.max())
    width = max(S, int(n.max()))
    keep = torch.arange(S, device=dev)[None, :] < n[:, None]
    wav = F.pad(torch.where(keep, waveforms.float(), 0.0), (0, width - S))  # (B, width)
    # sample index of tap k of frame m, centred frames: m * hop - n_fft / 2 + k, reflected at both ends
    idx = (torch.arange(M, device=dev)[:, None] * HOP_LENGTH - N_FFT // 2
           + torch.arange(N_FFT, device=dev)[None, :])  # (M, N_FFT)
    idx = idx.abs()[None].expand(B, M, N_FFT)  # left reflection: -j -> j
    end = (n - 1)[:, None, None]
    idx = torch.where(idx > end, 2 * end - idx, idx)  # right reflection around the item's last sample
    idx = idx.clamp(0, width - 1)  # frames past a shorter item's own count: any index, zeroed below
    frames = wav.gather(1, idx.reshape(B, -1)).view(B, M, N_FFT)  # (B, M, N_FFT)
    window = torch.hann_window(N_FFT, device=dev)
    power = torch.fft.rfft(frames * window, n=N_FFT).abs() ** 2  # (B, M, N_FFT // 2 + 1)
    spec = (power @ mel_filters.to(dev)).clamp(min=1e-10).log10()  # (B, M, C)
    valid = (torch.arange(M, device=dev)[None, :] < m_item[:, None])[..., None]  # (B, M, 1)
    peak = spec.masked_fill(~valid, float("-inf")).amax(dim=(1, 2), keepdim=True)  # (B, 1, 1)
    spec = (torch.maximum(spec, peak - 8.0) + 4.0) / 4.0
    return spec.masked_fill(~valid, 0.0)


def _is_ctranslate2(folder: Path) -> bool:
    """A CTranslate2 Whisper folder: `model.bin` and no Hugging Face `config.json` (CT2 may ship its own)."""
    if not (folder / "model.bin").is_file():
        return False
    cfg = folder / "config.json"
    return not cfg.is_file() or "model_type" not in json.loads(cfg.read_text())


@ENCODERS.register("whisper")
class WhisperSpeechEncoder(SpeechEncoder):
    """Frozen Whisper encoder, "trimmed" (real length) or "padded"/"padded_full" (30 s) input.

    Args:
        encoder: a Hugging Face `WhisperEncoder` (weights loaded).
        mode: "trimmed", "padded" (real frames out) or "padded_full" (all 1500 frames out).
        max_seconds: longest accepted input, at most 30 s.
        model_id: what it was loaded from (feature-cache key).
    """

    name = "whisper"
    frame_rate = SAMPLE_RATE / HOP_LENGTH / 2  # 50 encoder frames/s
    min_samples = N_FFT  # 25 ms: one mel frame and a valid reflection at both ends

    def __init__(self, encoder, mode: str = "trimmed", max_seconds: float = 30.0, model_id: str = "") -> None:
        super().__init__()
        from transformers import WhisperFeatureExtractor

        if mode not in WHISPER_MODES:
            raise ValueError(f"whisper: mode={mode!r} must be one of {', '.join(WHISPER_MODES)}")
        self.encoder = encoder
        self.mode = mode
        self.model_id = model_id
        self.dim = encoder.config.d_model
        num_bins = encoder.config.num_mel_bins
        max_frames = encoder.config.max_source_positions  # 1500
        self.max_samples = int(min(max_seconds, CHUNK_SECONDS, max_frames / self.frame_rate) * SAMPLE_RATE)
        # plain attribute, not a buffer: `.to(bfloat16)` on the module must not round the filter bank
        self.mel_filters = torch.from_numpy(WhisperFeatureExtractor(feature_size=num_bins).mel_filters).float()

    @classmethod
    def from_config(cls, cfg: EncoderConfig) -> "WhisperSpeechEncoder":
        """Load the encoder weights only (no decoder) from a hub id, HF folder, or CTranslate2 folder.

        Args:
            cfg: `cfg.model` (hub id or folder), `cfg.dtype`, `cfg.mode`, `cfg.max_seconds`.

        Returns:
            The encoder on CPU, in `cfg.dtype`; `build_encoder` freezes it.
        """
        from transformers import WhisperConfig
        from transformers.models.whisper.modeling_whisper import WhisperEncoder

        folder = resolve_folder(cfg.model)
        if _is_ctranslate2(folder):
            try:
                from speechwire.weights.ct2_whisper import ensure_hf_whisper
            except ImportError as e:
                raise ImportError(
                    f"encoder.model={cfg.model!r} is a CTranslate2 Whisper folder (model.bin); converting it needs "
                    f"speechwire.weights.ct2_whisper, which failed to import ({e}); or point encoder.model at a "
                    "Hugging Face Whisper folder"
                ) from e
            folder = Path(ensure_hf_whisper(folder))
        config = WhisperConfig.from_pretrained(folder)
        if config.model_type != "whisper":
            raise ValueError(f"{folder}: config.json has model_type={config.model_type!r}, not a Whisper checkpoint; "
                             "use encoder.name=seamless or hf for other families")
        config._attn_implementation = "sdpa"  # takes the additive padding mask built in forward
        encoder = load_submodule(WhisperEncoder, config, folder, anchor="conv1.weight", dtype=torch_dtype(cfg.dtype))
        return cls(encoder, mode=cfg.mode, max_seconds=cfg.max_seconds, model_id=cfg.model)

    def output_length(self, num_samples: torch.Tensor) -> torch.Tensor:
        """(B,) samples -> (B,) encoder frames (trimmed and padded: the real frames, ceil(mel / 2) after the
        stride-2 conv; padded_full: 1500, the 30 s window, for every item). Pure."""
        if self.mode == "padded_full":
            return torch.full_like(num_samples, N_FRAMES // 2)
        return torch.div(mel_frames(num_samples) + 1, 2, rounding_mode="floor")

    def encode(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T_in, d) hidden states and (B,) encoder frames (padded_full: 1500 for every item, nothing zeroed)."""
        enc = self.encoder
        out_lengths = self.output_length(lengths)  # (B,)
        trimmed = self.mode == "trimmed"
        framed_at = lengths if trimmed else torch.full_like(lengths, N_SAMPLES)  # padded: every item is 30 s
        feats = log_mel(waveforms, framed_at, self.mel_filters)  # (B, M, C)

        x = F.gelu(enc.conv1(feats.transpose(1, 2).to(enc.conv1.weight.dtype)))  # (B, d, M)
        if trimmed:  # conv2 must see zeros past the item's end, as its own zero padding when alone
            x = x * lengths_to_mask(mel_frames(lengths), x.shape[2])[:, None, :].to(x.dtype)
        x = F.gelu(enc.conv2(x)).transpose(1, 2)  # (B, ceil(M / 2), d)
        x = x + enc.embed_positions.weight[: x.shape[1]]  # (B, T_in, d)

        mask = None
        if trimmed:  # additive key-padding mask (B, 1, T_in, T_in): padded frames get no attention
            T_in = x.shape[1]
            pad = ~lengths_to_mask(out_lengths, T_in)  # (B, T_in)
            mask = torch.zeros(pad.shape, dtype=x.dtype, device=x.device).masked_fill(pad, torch.finfo(x.dtype).min)
            mask = mask[:, None, None, :].expand(-1, 1, T_in, -1)
        for layer in enc.layers:
            x = layer(x, mask)
        return enc.layer_norm(x), out_lengths
