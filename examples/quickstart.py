"""Build a speech LLM from a config, take one training step, generate. Runs offline in seconds
with tiny random models; swap the two model paths for real ones (hub ids or folders)."""

import tempfile

import numpy as np
import torch

from speechwire.config import load_config
from speechwire.data import Batch
from speechwire.model import SpeechLLM
from speechwire.testing import save_tiny_llm, save_tiny_whisper

tmp = tempfile.mkdtemp()
cfg = load_config(None, [
    f"encoder.model={save_tiny_whisper(f'{tmp}/whisper')}",  # e.g. openai/whisper-large-v3
    f"llm.model={save_tiny_llm(f'{tmp}/llm')}",             # e.g. meta-llama/Llama-3.1-8B-Instruct
    "adapter.name=conv", "adapter.hidden_size=64", "adapter.num_heads=4", "adapter.num_layers=2",
])
model = SpeechLLM(cfg)

waves = [np.random.default_rng(i).standard_normal(16000 * (i + 1)).astype(np.float32) * 0.1 for i in range(2)]
batch = Batch(  # what speechwire.data's loaders yield (they also tokenise the text in their workers)
    audio=torch.nn.utils.rnn.pad_sequence([torch.from_numpy(w) for w in waves], batch_first=True),  # (B, S)
    audio_lengths=torch.tensor([len(w) for w in waves]),  # (B,)
    tasks=["asr", "st"], src_langs=["en", "en"], tgt_langs=[None, "de"],
    targets=["hello world", "hallo welt"], transcripts=["hello world", "hello world"],
)
optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
model.train()
out = model(batch)  # cross-entropy on the target tokens + the adapter's auxiliary loss
out.loss.backward()
optimizer.step()
print(f"loss {out.loss.item():.3f}, compression {out.encoder_frames / out.adapter_frames:.1f}x")

print(model.generate(waves, task="asr", max_new_tokens=10))  # greedy, batched, KV cache
model.save_pretrained(f"{tmp}/ckpt")  # adapter + 2 marker rows only (KBs-MBs), plus config.yaml
