"""Adapters: (hidden (B,T,d_enc), lengths) -> (embeds (B,T',d_llm), lengths', aux loss).

Importing this package registers every adapter; `build_adapter` picks one by name.
"""

from speechwire.adapters import (  # noqa: F401  (registers the paper's other adapters)
    cif,
    conv,
    ctc,
    projector,  # noqa: F401  (registers base, mlp, linear)
    wlqformer,
)
from speechwire.adapters.interface import (
    COMMON_CONFIG_FIELDS,
    Adapter,
    AdapterContext,
    AdapterOutput,
    AdapterTargets,
    lengths_to_mask,
)
from speechwire.registry import ADAPTERS
from speechwire.schema import AdapterConfig


def build_adapter(cfg: AdapterConfig, ctx: AdapterContext) -> Adapter:
    return ADAPTERS.get(cfg.name)(cfg, ctx)


def config_fields(name: str) -> tuple[str, ...]:
    """The AdapterConfig fields adapter `name` reads, the common ones first; unknown names raise ValueError."""
    return COMMON_CONFIG_FIELDS + ADAPTERS.get(name).config_fields


__all__ = ["Adapter", "AdapterContext", "AdapterOutput", "AdapterTargets", "build_adapter", "config_fields",
           "lengths_to_mask"]
