"""Frozen speech encoders (SFMs) behind one interface; `build_encoder` picks one by name.

Importing this package registers "whisper", "seamless" and "hf" (wav2vec2 / HuBERT / WavLM / data2vec-audio).
"""

from speechwire.encoders import seamless, ssl, whisper  # noqa: F401  (registers the encoder families)
from speechwire.encoders.interface import SAMPLE_RATE, EncoderOutput, SpeechEncoder
from speechwire.registry import ENCODERS
from speechwire.schema import EncoderConfig


def build_encoder(cfg: EncoderConfig) -> SpeechEncoder:
    """The frozen encoder named `cfg.name`, loaded from `cfg.model`; an unknown name lists the known ones."""
    from speechwire.errors import loading

    cls = ENCODERS.get(cfg.name)
    with loading("encoder.model", cfg.model):
        return cls.from_config(cfg).freeze()


__all__ = ["SAMPLE_RATE", "EncoderOutput", "SpeechEncoder", "build_encoder"]
