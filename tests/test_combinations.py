"""Any SFM x any adapter x any LLM family: one training step and batched generation end to end."""

from __future__ import annotations

import pytest
import torch

from speechwire.config import load_config
from speechwire.model import SpeechLLM
from speechwire.testing import save_tiny_llm, save_tiny_seamless, save_tiny_wav2vec2, save_tiny_whisper

from helpers import TINY_ADAPTER, make_batch, select

ENCODERS = {"whisper": save_tiny_whisper, "seamless": save_tiny_seamless, "hf": save_tiny_wav2vec2}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("combos")
    enc = {name: make(tmp / name) for name, make in ENCODERS.items()}
    llm = {arch: save_tiny_llm(tmp / arch, arch=arch) for arch in ("llama", "mistral", "qwen2")}
    return enc, llm


@pytest.mark.parametrize("encoder,adapter,arch", [
    ("whisper", "cif", "llama"), ("whisper", "ctc", "qwen2"), ("whisper", "wlqformer", "mistral"),
    ("seamless", "conv", "llama"), ("seamless", "cif", "qwen2"), ("seamless", "wlqformer", "llama"),
    ("hf", "ctc", "mistral"), ("hf", "base", "qwen2"), ("hf", "mlp", "llama"),
])
def test_train_step_and_generation(folders, encoder, adapter, arch):
    enc, llm = folders
    torch.manual_seed(0)
    cfg = load_config(None, [f"encoder.name={encoder}", f"encoder.model={enc[encoder]}", f"llm.model={llm[arch]}",
                             f"adapter.name={adapter}", "adapter.stack=2", *TINY_ADAPTER])
    model = SpeechLLM(cfg)
    batch = make_batch([16000, 40000, 24000], ["one", "two words", "drei"], tasks=["asr", "asr", "st"],
                       tgt_langs=[None, None, "de"], transcripts=["one", "two words", "three"])
    model.train()
    out = model(batch)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    grads = [p.grad for p in model.adapter.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    assert model.audio_markers.grad is not None
    model.eval()
    batched = model.generate(batch, max_new_tokens=6)
    assert batched == [model.generate(select(batch, [i]), max_new_tokens=6)[0] for i in range(3)]
