"""speechwire: connect any speech foundation model to any causal LLM through a trainable adapter.

    from speechwire import Batch, SpeechLLM, load_config, make_dataloader

    cfg = load_config("configs/demo_asr.yaml", ["adapter.name=conv"])
    model = SpeechLLM(cfg)

Those names are imported on first use (module `__getattr__`), so `import speechwire` stays light:
no torch, no transformers until one of them is asked for.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {"load_config": "config", "SpeechLLM": "model", "make_dataloader": "data", "Batch": "data"}  # name -> module
__all__ = ["Batch", "SpeechLLM", "__version__", "load_config", "make_dataloader"]

if TYPE_CHECKING:
    from speechwire.config import load_config
    from speechwire.data import Batch, make_dataloader
    from speechwire.model import SpeechLLM


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'speechwire' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
