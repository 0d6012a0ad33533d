"""Tiny random models written to disk, for tests and offline smoke runs.

They load through the same `from_pretrained` paths as real checkpoints, so the tests exercise the
code users run. Nothing here downloads anything.
"""

from __future__ import annotations

from pathlib import Path

import torch

CHATML_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_SPECIALS = ["<pad>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def tiny_tokenizer(chat_template: str | None = CHATML_TEMPLATE):
    """A byte-level tokenizer with no merges: 256 byte symbols + 4 specials; any text round-trips."""
    from tokenizers import Tokenizer, decoders, models
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(_SPECIALS + sorted(ByteLevel.alphabet()))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="<|im_end|>",
        additional_special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
    )
    if chat_template:
        tok.chat_template = chat_template
    return tok


def save_tiny_llm(
    path: str | Path,
    arch: str = "llama",
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    seed: int = 0,
    chat_template: str | None = CHATML_TEMPLATE,
    with_tokenizer: bool = True,
    initializer_range: float = 0.2,  # HF's 0.02 gives near-uniform logits a frozen tiny LLM cannot sharpen
) -> Path:
    """Write a random causal LM (llama | mistral | qwen2) + byte-level tokenizer to `path`."""
    from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, Qwen2Config

    path = Path(path)
    tok = tiny_tokenizer(chat_template)
    config_cls = {"llama": LlamaConfig, "mistral": MistralConfig, "qwen2": Qwen2Config}[arch]
    config = config_cls(
        vocab_size=len(tok), hidden_size=hidden_size, intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=max(num_heads // 2, 1),
        max_position_embeddings=2048, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
        bos_token_id=None, tie_word_embeddings=False,
        initializer_range=initializer_range,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(path)
    if with_tokenizer:
        tok.save_pretrained(path)
    return path


def tiny_experiment_overrides(encoder_dir: Path, llm_dir: Path, adapter: str = "base", encoder: str = "whisper") -> list[str]:
    """Dotted overrides that shrink every part of an ExperimentConfig to test size (for the adapter,
    only the fields it reads: others would draw an AdapterFieldWarning)."""
    from .adapters import config_fields

    small = {"hidden_size": 32, "num_layers": 1, "num_heads": 4, "ffn_size": 64, "dropout": 0.0, "qformer_layers": 1}
    reads = config_fields(adapter)
    return [
        f"encoder.name={encoder}", f"encoder.model={encoder_dir}",
        f"llm.model={llm_dir}",
        f"adapter.name={adapter}", *(f"adapter.{k}={v}" for k, v in small.items() if k in reads),
    ]
