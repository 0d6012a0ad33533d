"""Self-supervised waveform encoders from Hugging Face (wav2vec 2.0, HuBERT, WavLM, data2vec-audio), frozen.

Letters: B batch, S samples (16 kHz), T encoder frames (50/s for the standard 320x conv stack), d width.

    waveforms (B, S) -> [per-utterance zero-mean unit-variance] -> conv feature encoder -> transformer -> (B, T, d)

Input normalisation follows the checkpoint's `Wav2Vec2FeatureExtractor` config (`do_normalize`):
(x - mean) / sqrt(var + 1e-7) over the item's real samples, zeros past its end.

Padding invariance depends on the conv feature encoder's normalisation (`config.feat_extract_norm`):
- "layer" (large / lv60 / HuBERT-large / WavLM-large / data2vec-audio): per-frame layer norm; the
  whole batch runs at once with an attention mask, and each item equals its alone result.
- "group" (wav2vec2-base, HuBERT-base, WavLM-base): the first conv layer's group norm normalises
  over all time steps, padding included, and these models take no attention mask. Items are
  therefore encoded in groups of equal length (one item per group in general): exact, slower.
Output frames come from the model's own `_get_feat_extract_output_lengths` (conv formula).
"""

from __future__ import annotations

import math

import torch

from speechwire.adapters.interface import lengths_to_mask
from speechwire.encoders.interface import SAMPLE_RATE, SpeechEncoder
from speechwire.registry import ENCODERS
from speechwire.schema import EncoderConfig, torch_dtype


def normalize_waveforms(waveforms: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Zero-mean unit-variance per item over its real samples, as `Wav2Vec2FeatureExtractor(do_normalize=True)`.

    Args:
        waveforms: (B, S) float32; lengths: (B,) valid samples.

    Returns:
        (B, S) float32, zero past each item's end.
    """
    valid = lengths_to_mask(lengths, waveforms.shape[1])  # (B, S)
    x = waveforms.double().masked_fill(~valid, 0.0)
    n = lengths.to(x.dtype)[:, None]
    mean = x.sum(1, keepdim=True) / n
    var = ((x - mean).masked_fill(~valid, 0.0) ** 2).sum(1, keepdim=True) / n  # population variance, as numpy
    return ((x - mean) / torch.sqrt(var + 1e-7)).masked_fill(~valid, 0.0).float()


@ENCODERS.register("hf")
class HFSSLEncoder(SpeechEncoder):
    """Frozen Hugging Face self-supervised speech encoder taking raw waveforms (`input_values`).

    Args:
        model: the Hugging Face base model (`Wav2Vec2Model`, `HubertModel`, `WavLMModel`, `Data2VecAudioModel`).
        do_normalize: per-utterance normalisation, from the checkpoint's feature-extractor config.
        max_seconds: longest accepted input.
        model_id: what it was loaded from (feature-cache key).
    """

    name = "hf"

    def __init__(self, model, do_normalize: bool = True, max_seconds: float = 30.0, model_id: str = "") -> None:
        super().__init__()
        self.model = model
        self.model_id = model_id
        self.do_normalize = do_normalize
        config = model.config
        adapter = bool(getattr(config, "add_adapter", False))
        self.dim = (getattr(config, "output_hidden_size", None) or config.hidden_size) if adapter else config.hidden_size
        stride = math.prod(config.conv_stride)  # 320 for the standard 7-layer stack
        if adapter:
            stride *= config.adapter_stride**config.num_adapter_layers
        self.frame_rate = SAMPLE_RATE / stride  # 50 for standard configs
        # "layer" norm (or data2vec-audio, always layer norm) takes an attention mask; "group" does not
        self.use_mask = getattr(config, "feat_extract_norm", "layer") == "layer"
        self.max_samples = int(max_seconds * SAMPLE_RATE)
        probe = torch.arange(1, 8 * stride + 1)
        self.min_samples = int(probe[self.output_length(probe) >= 1][0])  # the receptive field: 400

    @classmethod
    def from_config(cls, cfg: EncoderConfig) -> "HFSSLEncoder":
        """Load any waveform SSL model through `AutoModel` (a `*ForCTC` checkpoint gives its base model).

        Args:
            cfg: `cfg.model` (hub id or folder), `cfg.dtype`, `cfg.max_seconds`.

        Returns:
            The encoder on CPU, in `cfg.dtype`; `build_encoder` freezes it.
        """
        from transformers import AutoFeatureExtractor, AutoModel

        model = AutoModel.from_pretrained(cfg.model, dtype=torch_dtype(cfg.dtype))
        if getattr(model, "main_input_name", "") != "input_values" or not hasattr(model, "_get_feat_extract_output_lengths"):
            raise ValueError(
                f"encoder.model={cfg.model!r} ({type(model).__name__}) does not take raw waveforms; encoder.name=hf "
                "serves wav2vec2 / HuBERT / WavLM / data2vec-audio; use encoder.name=whisper or seamless for those"
            )
        try:
            do_normalize = bool(getattr(AutoFeatureExtractor.from_pretrained(cfg.model), "do_normalize", True))
        except (OSError, ValueError):  # no preprocessor_config.json: the Wav2Vec2FeatureExtractor default
            do_normalize = True
        return cls(model, do_normalize=do_normalize, max_seconds=cfg.max_seconds, model_id=cfg.model)

    def output_length(self, num_samples: torch.Tensor) -> torch.Tensor:
        """(B,) samples -> (B,) frames by the model's conv formula (floor((n - k) / s) + 1 per layer). Pure."""
        return self.model._get_feat_extract_output_lengths(num_samples).long().clamp(min=0)

    def _run(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        dtype = next(self.model.parameters()).dtype
        return self.model(x.to(dtype), attention_mask=mask).last_hidden_state  # (b, t, d)

    def encode(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = normalize_waveforms(waveforms, lengths) if self.do_normalize else waveforms
        out_lengths = self.output_length(lengths)  # (B,)
        if self.use_mask:
            return self._run(x, lengths_to_mask(lengths, x.shape[1]).long()), out_lengths  # (B, T', d)
        # group norm sees the padding: encode each set of equal-length items on its own
        hidden = None
        for n in lengths.unique().tolist():
            rows = (lengths == n).nonzero().flatten()
            h = self._run(x[rows, :n], None)  # (b, t_n, d)
            if hidden is None:
                hidden = h.new_zeros(x.shape[0], int(out_lengths.max()), h.shape[-1])
            hidden[rows, : h.shape[1]] = h
        return hidden, out_lengths
