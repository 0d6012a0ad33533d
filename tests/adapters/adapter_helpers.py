"""Shared tiny setup for the adapter tests: seeded configs, batches with garbage padding, targets.

Dims: d_enc 16, hidden 32, 2 layers, 4 heads, FFN 64, d_llm 24, vocab 40 (blank = pad = 0).
"""

from __future__ import annotations

import torch

from speechwire.adapters import Adapter, AdapterContext, AdapterTargets, build_adapter
from speechwire.config import AdapterConfig

D_ENC, D_LLM, VOCAB, PAD = 16, 24, 40, 0


def tiny_cfg(name: str, **kw) -> AdapterConfig:
    base = dict(name=name, hidden_size=32, num_layers=2, num_heads=4, ffn_size=64, qformer_layers=2, dropout=0.0)
    return AdapterConfig(**{**base, **kw})


def tiny_ctx(frame_rate: float = 50.0) -> AdapterContext:
    return AdapterContext(in_dim=D_ENC, out_dim=D_LLM, frame_rate=frame_rate, vocab_size=VOCAB, pad_id=PAD)


def build(name: str, seed: int = 0, frame_rate: float = 50.0, **kw) -> Adapter:
    torch.manual_seed(seed)
    return build_adapter(tiny_cfg(name, **kw), tiny_ctx(frame_rate))


def make_batch(lengths: list[int], seed: int = 0, d: int = D_ENC) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, max(lengths), d) normal frames; padding is large garbage so any leak shows."""
    g = torch.Generator().manual_seed(seed)
    lens = torch.tensor(lengths)
    x = torch.randn(len(lengths), max(lengths), d, generator=g)
    pad = torch.arange(max(lengths))[None, :] >= lens[:, None]
    x[pad] = 100.0 * torch.randn(int(pad.sum()), d, generator=g)
    return x, lens


def make_targets(lengths: torch.Tensor, seed: int = 0) -> AdapterTargets:
    """CIF target lengths and CTC labels of about one token per 4 frames (never the blank 0)."""
    g = torch.Generator().manual_seed(seed)
    n = (lengths // 4).clamp(min=1)
    labels = torch.randint(1, VOCAB, (len(lengths), int(n.max())), generator=g)
    return AdapterTargets(target_lengths=n, ctc_labels=labels, ctc_label_lengths=n)
