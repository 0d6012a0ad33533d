"""Frozen speech encoders (SFMs) behind one interface; `build_encoder` picks one by name."""

from ..config import EncoderConfig
from ..registry import ENCODERS
from .interface import SAMPLE_RATE, EncoderOutput, SpeechEncoder


def build_encoder(cfg: EncoderConfig) -> SpeechEncoder:
    return ENCODERS.get(cfg.name).from_config(cfg).freeze()


__all__ = ["SAMPLE_RATE", "EncoderOutput", "SpeechEncoder", "build_encoder"]
