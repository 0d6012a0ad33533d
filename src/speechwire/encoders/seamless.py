"""SeamlessM4T v2 speech encoder (w2v-BERT 2.0 conformer + its length adaptor), frozen.

Letters: B batch, S samples (16 kHz), F fbank frames (100/s), L stacked frames (50/s),
T output frames (about 6.25/s), d width.

    waveforms (B, S) -> fbank (B, F, 80) -> per-bin mean/var norm -> stack x2 (B, L, 160)
        -> feature projection -> conformer layers -> + 0.5 FFN -> length adaptor (stride 8) -> (B, T, d)

Features follow `SeamlessM4TFeatureExtractor` (Kaldi fbank: 25 ms povey window, 10 ms hop, no
centring, DC removal, pre-emphasis 0.97, 512-point FFT, 80 Kaldi mel bins from 20 Hz, natural log,
samples scaled to 16-bit range; then each bin normalised over the item's own frames, ddof=1).
Frames: F = 1 + (S - 400) // 160, L = F // 2 (an odd last fbank frame is dropped: Hugging Face keeps
it half zero-padded but masks it out), and each adaptor layer maps L -> (L + 2 * (stride // 2) - kernel)
// stride + 1 (8 -> 8: L // 8 + 1).

Padding invariance: the conformer gets the attention mask (it zeroes padded frames before its
depthwise convolutions); the adaptor's strided convolutions, which Hugging Face runs over padded
frames unmasked, here see zeros past each item's end - exactly what they see when the item is alone.
"""

from __future__ import annotations

import torch

from speechwire.adapters.conv import conv_output_length
from speechwire.adapters.interface import lengths_to_mask
from speechwire.encoders.interface import SAMPLE_RATE, SpeechEncoder
from speechwire.encoders.loading import load_submodule, resolve_folder
from speechwire.registry import ENCODERS
from speechwire.schema import EncoderConfig, torch_dtype

FRAME_LENGTH = 400  # 25 ms
HOP_LENGTH = 160  # 10 ms: 100 fbank frames/s
N_FFT = 512
NUM_BINS = 80
STACK = 2  # consecutive fbank frames stacked into one model input (80 x 2 = 160 features)
PREEMPHASIS = 0.97
MEL_FLOOR = 1.192092955078125e-07  # float32 epsilon, as Kaldi


def fbank_frames(num_samples: torch.Tensor) -> torch.Tensor:
    """Kaldi fbank frames (no centring) for `num_samples` samples; 0 below one window. Pure."""
    return (torch.div(num_samples - FRAME_LENGTH, HOP_LENGTH, rounding_mode="floor") + 1).clamp(min=0)


def fbank_features(waveforms: torch.Tensor, lengths: torch.Tensor, mel_filters: torch.Tensor) -> torch.Tensor:
    """Normalised, stacked fbank features of each item as if it were alone, batched.

    Args:
        waveforms: (B, S) float32 at 16 kHz, zero past `lengths`.
        lengths: (B,) valid samples, each >= 560 (two fbank frames).
        mel_filters: (N_FFT // 2 + 1, 80) Kaldi mel filter bank.

    Returns:
        (B, L, 160) float32, L = max(F // 2); zero past each item's own stacked frames. Computed in
        float64 (float32 on MPS), where float32 alone would drift ~1e-4 from the reference.
    """
    B, S = waveforms.shape
    dev = waveforms.device
    n_frames = fbank_frames(lengths.to(dev))  # (B,)
    F_max = int(n_frames.max())
    ftype = torch.float32 if dev.type == "mps" else torch.float64  # float64 matches Hugging Face's numpy to ~1e-5
    frames = waveforms.to(ftype).unfold(1, FRAME_LENGTH, HOP_LENGTH)[:, :F_max] * 32768.0  # (B, F, 400) 16-bit scale
    frames = frames - frames.mean(dim=-1, keepdim=True)  # remove DC offset
    first = frames[..., :1] * (1.0 - PREEMPHASIS)
    frames = torch.cat([first, frames[..., 1:] - PREEMPHASIS * frames[..., :-1]], dim=-1)  # pre-emphasis
    window = torch.hann_window(FRAME_LENGTH, periodic=False, dtype=ftype, device=dev).pow(0.85)
    power = torch.fft.rfft(frames * window, n=N_FFT).abs() ** 2  # (B, F, 257)
    feats = (power @ mel_filters.to(dev, ftype)).clamp(min=MEL_FLOOR).log()  # (B, F, 80)

    valid = lengths_to_mask(n_frames, F_max)[..., None]  # (B, F, 1)
    count = n_frames.to(feats.dtype)[:, None, None]  # (B, 1, 1)
    mean = feats.masked_fill(~valid, 0.0).sum(1, keepdim=True) / count  # (B, 1, 80)
    var = ((feats - mean).masked_fill(~valid, 0.0) ** 2).sum(1, keepdim=True) / (count - 1)  # ddof=1
    feats = ((feats - mean) / torch.sqrt(var + 1e-7)).masked_fill(~valid, 0.0)

    L = F_max // STACK
    feats = feats[:, : L * STACK].reshape(B, L, STACK * NUM_BINS)  # (B, L, 160)
    keep = lengths_to_mask(n_frames // STACK, L)  # (B, L)
    return (feats * keep[..., None]).float()


@ENCODERS.register("seamless")
class SeamlessSpeechEncoder(SpeechEncoder):
    """Frozen SeamlessM4T v2 speech encoder with its length adaptor.

    Args:
        encoder: a Hugging Face `SeamlessM4Tv2SpeechEncoder` (weights loaded).
        max_seconds: longest accepted input.
        model_id: what it was loaded from (feature-cache key).
    """

    name = "seamless"
    min_samples = FRAME_LENGTH + HOP_LENGTH  # 560: two fbank frames, one stacked frame

    def __init__(self, encoder, max_seconds: float = 30.0, model_id: str = "") -> None:
        super().__init__()
        from transformers import SeamlessM4TFeatureExtractor

        self.encoder = encoder
        self.model_id = model_id
        config = encoder.config
        self.dim = config.hidden_size
        if config.feature_projection_input_dim != STACK * NUM_BINS:
            raise ValueError(f"seamless ({model_id}): feature_projection_input_dim="
                             f"{config.feature_projection_input_dim}, expected {STACK * NUM_BINS} (80 bins x 2)")
        n_adaptor = config.num_adapter_layers if config.add_adapter else 0
        self.adaptor_stride = config.adaptor_stride
        self.adaptor_kernel = config.adaptor_kernel_size
        self.frame_rate = SAMPLE_RATE / HOP_LENGTH / STACK / self.adaptor_stride**n_adaptor  # 6.25 for v2
        self.max_samples = int(max_seconds * SAMPLE_RATE)
        # plain attribute, not a buffer: `.to(bfloat16)` on the module must not round the filter bank
        self.mel_filters = torch.from_numpy(SeamlessM4TFeatureExtractor().mel_filters).float()

    @classmethod
    def from_config(cls, cfg: EncoderConfig) -> "SeamlessSpeechEncoder":
        """Load the speech encoder only from a full SeamlessM4T v2 checkpoint or an encoder-only one.

        Args:
            cfg: `cfg.model` (hub id or folder), `cfg.dtype`, `cfg.max_seconds`.

        Returns:
            The encoder on CPU, in `cfg.dtype`; `build_encoder` freezes it.
        """
        from transformers import AutoConfig
        from transformers.models.seamless_m4t_v2.modeling_seamless_m4t_v2 import SeamlessM4Tv2SpeechEncoder

        folder = resolve_folder(cfg.model)
        config = AutoConfig.from_pretrained(folder)
        if config.model_type != "seamless_m4t_v2":
            raise ValueError(f"{folder}: config.json has model_type={config.model_type!r}, not seamless_m4t_v2; "
                             "encoder.name=seamless needs a SeamlessM4T v2 checkpoint (facebook/seamless-m4t-v2-large)")
        config._attn_implementation = "sdpa"
        encoder = load_submodule(SeamlessM4Tv2SpeechEncoder, config, folder,
                                 anchor="feature_projection.projection.weight", dtype=torch_dtype(cfg.dtype))
        return cls(encoder, max_seconds=cfg.max_seconds, model_id=cfg.model)

    def _adaptor_length(self, n: torch.Tensor) -> torch.Tensor:
        return conv_output_length(n, self.adaptor_kernel, self.adaptor_stride, padding=self.adaptor_stride // 2)

    def output_length(self, num_samples: torch.Tensor) -> torch.Tensor:
        """(B,) samples -> (B,) output frames: fbank, stack x2, then each adaptor layer. Pure."""
        n = torch.div(fbank_frames(num_samples), STACK, rounding_mode="floor")
        if self.encoder.adapter is not None:
            for _ in self.encoder.adapter.layers:
                n = self._adaptor_length(n)
        return n

    def _adaptor_layer(self, layer, x: torch.Tensor, n: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`SeamlessM4Tv2ConformerAdapterLayer.forward` with zeros past each item's end before its convs.

        Args:
            layer: the adaptor layer.
            x: (B, L, d) hidden states; n: (B,) valid frames.

        Returns:
            (B, L', d) and (B,) valid frames after the strided convolutions.
        """
        from transformers.masking_utils import create_bidirectional_mask

        valid = lengths_to_mask(n, x.shape[1])[..., None]  # (B, L, 1)
        residual = layer.residual_layer_norm(x).masked_fill(~valid, 0.0)
        residual = layer.activation(layer.residual_conv(residual.transpose(1, 2))).transpose(1, 2)  # (B, L', d)
        h = layer.self_attn_layer_norm(x).masked_fill(~valid, 0.0)
        h = layer.activation(layer.self_attn_conv(h.transpose(1, 2))).transpose(1, 2)  # (B, L', d)
        n = self._adaptor_length(n)
        key_mask = lengths_to_mask(n, h.shape[1]).long()  # (B, L')
        mask = create_bidirectional_mask(config=layer.config, inputs_embeds=h, attention_mask=key_mask)
        h, _ = layer.self_attn(h, attention_mask=mask)
        h = h + residual
        return layer.ffn(layer.ffn_layer_norm(h)) + h, n

    def encode(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        enc = self.encoder
        feats = fbank_features(waveforms, lengths, self.mel_filters)  # (B, L, 160)
        n = torch.div(fbank_frames(lengths), STACK, rounding_mode="floor")  # (B,)
        mask = lengths_to_mask(n, feats.shape[1]).long()  # (B, L)
        x = enc.feature_projection(feats.to(enc.inner_layer_norm.weight.dtype))  # (B, L, d)
        x = enc.encoder(x, attention_mask=mask)  # (B, L, d)
        x = x + 0.5 * enc.intermediate_ffn(x)
        if enc.adapter is not None:
            for layer in enc.adapter.layers:
                x, n = self._adaptor_layer(layer, x, n)  # (B, T, d)
        assert torch.equal(n, self.output_length(lengths)), "seamless: output_length disagrees with forward"
        return enc.inner_layer_norm(x), n
