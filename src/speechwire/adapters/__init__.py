"""Adapters: (hidden (B,T,d_enc), lengths) -> (embeds (B,T',d_llm), lengths', aux loss).

Importing this package registers every adapter; `build_adapter` picks one by name.
"""

from ..schema import AdapterConfig
from ..registry import ADAPTERS
from .interface import COMMON_CONFIG_FIELDS, Adapter, AdapterContext, AdapterOutput, AdapterTargets, lengths_to_mask
from . import projector  # noqa: F401  (registers base, mlp, linear)
from . import cif, conv, ctc, wlqformer  # noqa: F401  (registers the paper's other adapters)


def build_adapter(cfg: AdapterConfig, ctx: AdapterContext) -> Adapter:
    return ADAPTERS.get(cfg.name)(cfg, ctx)


def config_fields(name: str) -> tuple[str, ...]:
    """The AdapterConfig fields adapter `name` reads, the common ones first; unknown names raise ValueError."""
    return COMMON_CONFIG_FIELDS + ADAPTERS.get(name).config_fields


__all__ = ["Adapter", "AdapterContext", "AdapterOutput", "AdapterTargets", "build_adapter", "config_fields",
           "lengths_to_mask"]
