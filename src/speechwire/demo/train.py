"""Demo training: the standard Trainer plus two opt-in auxiliary losses for short CPU runs.

(The adapter's output scale starts at the LLM's token-embedding scale for every run:
`speechwire.model.match_output_scale`; measured here first: SmolLM2-135M embeddings have std
0.136 vs 1.0 for a LayerNorm output, Qwen2.5-0.5B 0.017.)

A frozen LLM also needs thousands of steps before it starts to read projected speech at all (the
loss sits at the text-only level meanwhile; measured in docs/demo.md). `TiedCTC` shortens that:
during training it adds a CTC loss of the adapter outputs against the transcript, scored by cosine
similarity with the LLM's own (frozen) token embeddings, so each output vector is pulled towards
the embedding of the token spoken there. It adds no parameters: the trained adapter is a plain
`mlp` checkpoint that loads anywhere; inference never runs it.
"""

from __future__ import annotations

import torch
from torch import nn

from ..adapters import AdapterOutput
from ..config import ExperimentConfig
from ..train import Trainer

TIED_CTC_WEIGHT = 0.0  # off by default: no gain measured in 180 steps (docs/demo.md); > 0 adds it to the LLM loss
TIED_CTC_TEMPERATURE = 0.1  # logits = cosine / temperature, in [-10, 10]


class TiedCTC:
    """Adapter forward hook: adds weight * CTC(cosine(adapter outputs, LLM token embeddings)) in training.

    Letters: B batch, T' adapter outputs, V LLM vocabulary, d LLM width. Blank = the LLM's pad id
    (as the paper's CTC adapter).

    Args:
        model: the SpeechLLM; its LLM embedding table is read once (frozen).
        weight: loss weight.
        temperature: cosine similarities are divided by it.
    """

    def __init__(self, model, weight: float = TIED_CTC_WEIGHT, temperature: float = TIED_CTC_TEMPERATURE) -> None:
        table = model.llm.get_input_embeddings().weight.detach().float()  # (V, d)
        self.table = nn.functional.normalize(table, dim=-1)
        self.blank = int(model.tokenizer.pad_token_id)
        self.weight, self.temperature = weight, temperature

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict, out: AdapterOutput) -> AdapterOutput:
        targets = kwargs.get("targets")
        if not module.training or targets is None or targets.ctc_labels is None:
            return out
        y = nn.functional.normalize(out.embeds.float(), dim=-1)  # (B, T', d)
        logits = y @ self.table.to(y.device).T / self.temperature  # (B, T', V)
        logp = logits.log_softmax(-1).transpose(0, 1)  # (T', B, V)
        labels = targets.ctc_labels.clamp(min=0)  # (B, L); padding past the lengths is ignored
        loss = nn.functional.ctc_loss(logp, labels, out.lengths, targets.ctc_label_lengths, blank=self.blank,
                                      zero_infinity=True)
        aux = self.weight * loss if out.aux_loss is None else out.aux_loss + self.weight * loss
        return AdapterOutput(out.embeds, out.lengths, aux, {**out.aux_losses, "tied_ctc": loss.detach()})


class UniformAlign:
    """Adapter forward hook: pulls output t towards the LLM embedding of the transcript token spoken
    at the same relative position (tokens assumed evenly spread over the utterance), in training.

    loss = weight * mean over valid outputs of (1 - cosine(y_t, E[token at floor((t + 0.5) * L / T')]))

    Args:
        model: the SpeechLLM; its LLM embedding table is read once (frozen).
        weight: loss weight.
    """

    def __init__(self, model, weight: float = 1.0) -> None:
        self.table = model.llm.get_input_embeddings().weight.detach().float()  # (V, d)
        self.weight = weight

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict, out: AdapterOutput) -> AdapterOutput:
        targets = kwargs.get("targets")
        if not module.training or targets is None or targets.ctc_labels is None:
            return out
        y = out.embeds.float()  # (B, T', d)
        B, T, _ = y.shape
        n_out = out.lengths.clamp(min=1).float()[:, None]  # (B, 1)
        n_tok = targets.ctc_label_lengths.clamp(min=1).float()[:, None]  # (B, 1)
        t = torch.arange(T, device=y.device, dtype=torch.float32)[None, :]  # (1, T')
        idx = ((t + 0.5) * n_tok / n_out).floor().long().clamp(max=targets.ctc_labels.shape[1] - 1)  # (B, T')
        idx = torch.minimum(idx, (n_tok.long() - 1))
        ids = targets.ctc_labels.clamp(min=0).gather(1, idx)  # (B, T')
        goal = self.table.to(y.device)[ids]  # (B, T', d)
        valid = (t < out.lengths[:, None]).float()  # (B, T')
        cos = nn.functional.cosine_similarity(y, goal, dim=-1)  # (B, T')
        loss = ((1 - cos) * valid).sum() / valid.sum().clamp(min=1)
        aux = self.weight * loss if out.aux_loss is None else out.aux_loss + self.weight * loss
        return AdapterOutput(out.embeds, out.lengths, aux, {**out.aux_losses, "uniform_align": loss.detach()})


class DemoTrainer(Trainer):
    """Trainer whose fresh adapter output starts at the LLM's embedding scale, with the TiedCTC loss."""

    def __init__(self, cfg: ExperimentConfig, resume: bool = True, progress: bool = True,
                 tied_ctc_weight: float = TIED_CTC_WEIGHT, align_weight: float = 0.0) -> None:
        super().__init__(cfg, resume=resume, progress=progress)
        self.tied_ctc_weight = tied_ctc_weight
        self.align_weight = align_weight

    def setup(self) -> None:
        super().setup()
        model = self.unwrapped  # (the adapter's output scale already starts at the LLM's: model.match_output_scale)
        if self.tied_ctc_weight > 0:
            model.adapter.register_forward_hook(TiedCTC(model, self.tied_ctc_weight), with_kwargs=True)
        if self.align_weight > 0:
            model.adapter.register_forward_hook(UniformAlign(model, self.align_weight), with_kwargs=True)


def train_demo(cfg: ExperimentConfig, resume: bool = False, progress: bool = True,
               tied_ctc_weight: float = TIED_CTC_WEIGHT, align_weight: float = 0.0) -> dict:
    """Like speechwire.train.train, with DemoTrainer; returns the training summary."""
    trainer = DemoTrainer(cfg, resume=resume, progress=progress, tied_ctc_weight=tied_ctc_weight,
                          align_weight=align_weight)
    trainer.setup()
    return trainer.train()


if __name__ == "__main__":  # python -m speechwire.demo.train CONFIG [overrides]: the recipe without the demo around it
    import json
    import sys

    from ..config import load_config

    import os

    weight = float(os.environ.get("SPEECHWIRE_TIED_CTC", TIED_CTC_WEIGHT))  # 0 turns it off (ablation)
    align = float(os.environ.get("SPEECHWIRE_ALIGN", 0.0))
    summary = train_demo(load_config(sys.argv[1], sys.argv[2:]), resume=True, tied_ctc_weight=weight,
                         align_weight=align)
    print(json.dumps(summary, indent=2))
