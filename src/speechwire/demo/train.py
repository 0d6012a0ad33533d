"""Demo training: the standard Trainer, plus one init that makes short CPU runs converge.

Adapters end in LayerNorm, whose output has RMS ~1 per dimension; LLM token embeddings are far
smaller (SmolLM2-135M: std 0.136, row norm 3.2 vs the adapter's 24; Qwen2.5-0.5B: std 0.017, row
norm 0.5 vs 30). With lr 1e-3 the LayerNorm gain needs ~1000 steps just to shrink to that scale,
and the speech looks like noise to the LLM meanwhile. Starting the gain at the embedding std
removes that phase (measured in docs/demo.md).
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import ExperimentConfig
from ..train import Trainer


@torch.no_grad()
def match_embedding_scale(model) -> float | None:
    """Set the gain of the adapter's last output LayerNorm to the std of the LLM's token embeddings.

    Args:
        model: a SpeechLLM (untrained adapter).

    Returns:
        the std used, or None when the adapter has no LayerNorm of the LLM's width (left as is).
    """
    table = model.llm.get_input_embeddings().weight
    d_llm = table.shape[1]
    norms = [m for m in model.adapter.modules()
             if isinstance(m, nn.LayerNorm) and tuple(m.normalized_shape) == (d_llm,) and m.weight is not None]
    if not norms:
        return None
    std = float(table.float().std())
    norms[-1].weight.fill_(std)
    return std


class DemoTrainer(Trainer):
    """Trainer whose fresh (not resumed) adapter output starts at the LLM's embedding scale."""

    def setup(self) -> None:
        super().setup()
        if self.step == 0:
            std = match_embedding_scale(self.unwrapped)
            if std is not None and self.acc.is_main_process:
                print(f"adapter output LayerNorm gain set to the LLM embedding std {std:.4f}")


def train_demo(cfg: ExperimentConfig, resume: bool = False, progress: bool = True) -> dict:
    """Like speechwire.train.train, with DemoTrainer; returns the training summary."""
    trainer = DemoTrainer(cfg, resume=resume, progress=progress)
    trainer.setup()
    return trainer.train()


if __name__ == "__main__":  # python -m speechwire.demo.train CONFIG [overrides]: the recipe without the demo around it
    import json
    import sys

    from ..config import load_config

    summary = train_demo(load_config(sys.argv[1], sys.argv[2:]), resume=True)
    print(json.dumps(summary, indent=2))
