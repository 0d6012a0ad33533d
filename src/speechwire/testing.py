"""Tiny random models written to disk, for tests, benchmarks and offline smoke runs (`speechwire demo --tiny`).

    folder = save_tiny_whisper(tmp_path / "whisper")    # then EncoderConfig(name="whisper", model=str(folder))
    llm = save_tiny_llm(tmp_path / "llm")               # then LLMConfig(model=str(llm))

They use the real Hugging Face classes and `save_pretrained`, so tests and demos exercise the same
`from_pretrained`-style loading as the real checkpoints (which the hub serves and we cannot reach
offline). Weights are random: outputs are meaningless, shapes and code paths are real. Nothing here
downloads anything.

Contents, in reading order: speech encoders (Whisper, SeamlessM4T v2, wav2vec 2.0), then the causal
LLM with its byte-level tokenizer, then `tiny_experiment_overrides` (an ExperimentConfig shrunk to
test size).
"""

from __future__ import annotations

from pathlib import Path

import torch

# --- speech encoders ------------------------------------------------------------------------------


def save_tiny_whisper(
    path: str | Path,
    num_mel_bins: int = 80,
    d_model: int = 64,
    layers: int = 2,
    seed: int = 0,
    full: bool = True,
) -> Path:
    """Write a tiny random Whisper checkpoint plus its `WhisperFeatureExtractor` config.

    Args:
        path: folder to create (or overwrite).
        num_mel_bins: 80 (tiny..large-v2) or 128 (large-v3).
        d_model: width of encoder and decoder.
        layers: encoder and decoder layers.
        seed: torch seed for the random weights.
        full: True: a `WhisperForConditionalGeneration` (keys `model.encoder.*`, like hub checkpoints);
            False: an encoder-only `WhisperEncoder` checkpoint.

    Returns:
        The folder.
    """
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    path = Path(path)
    config = WhisperConfig(
        vocab_size=128, num_mel_bins=num_mel_bins, d_model=d_model,
        encoder_layers=layers, decoder_layers=layers, encoder_attention_heads=2, decoder_attention_heads=2,
        encoder_ffn_dim=2 * d_model, decoder_ffn_dim=2 * d_model,
        max_source_positions=1500, max_target_positions=64,  # 1500 encoder frames = 30 s, as the real ones
        pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1,
        suppress_tokens=[], begin_suppress_tokens=[],
    )
    torch.manual_seed(seed)
    (WhisperForConditionalGeneration if full else WhisperEncoder)(config).save_pretrained(path)
    WhisperFeatureExtractor(feature_size=num_mel_bins).save_pretrained(path)
    return path


def save_tiny_seamless(path: str | Path, seed: int = 0, full: bool = False) -> Path:
    """Write a tiny random SeamlessM4T v2 speech encoder (conformer + length adaptor) checkpoint.

    Args:
        path: folder to create (or overwrite).
        seed: torch seed for the random weights.
        full: True: a `SeamlessM4Tv2ForSpeechToText` (keys `speech_encoder.*` beside a tiny text
            decoder, like hub checkpoints); False: a `SeamlessM4Tv2SpeechEncoder`-only checkpoint.

    Returns:
        The folder.
    """
    from transformers import SeamlessM4TFeatureExtractor, SeamlessM4Tv2Config, SeamlessM4Tv2ForSpeechToText
    from transformers.models.seamless_m4t_v2.modeling_seamless_m4t_v2 import SeamlessM4Tv2SpeechEncoder

    path = Path(path)
    config = SeamlessM4Tv2Config(
        vocab_size=64, t2u_vocab_size=64, char_vocab_size=64, hidden_size=32,
        speech_encoder_layers=2, speech_encoder_attention_heads=2, speech_encoder_intermediate_size=64,
        encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
        encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64,
        t2u_encoder_layers=1, t2u_decoder_layers=1, t2u_encoder_attention_heads=2,
        t2u_decoder_attention_heads=2, t2u_encoder_ffn_dim=32, t2u_decoder_ffn_dim=32,
        left_max_position_embeddings=16, right_max_position_embeddings=4,
        conv_depthwise_kernel_size=5, num_adapter_layers=1, adaptor_kernel_size=8, adaptor_stride=8,
        feature_projection_input_dim=160,  # 80 fbank bins stacked x2
    )
    torch.manual_seed(seed)
    (SeamlessM4Tv2ForSpeechToText if full else SeamlessM4Tv2SpeechEncoder)(config).save_pretrained(path)
    SeamlessM4TFeatureExtractor().save_pretrained(path)
    return path


def save_tiny_wav2vec2(path: str | Path, seed: int = 0, feat_extract_norm: str = "layer") -> Path:
    """Write a tiny random wav2vec 2.0 checkpoint (standard 7-layer conv front end, 320x stride).

    Args:
        path: folder to create (or overwrite).
        seed: torch seed for the random weights.
        feat_extract_norm: "layer" (large / lv60 style, takes an attention mask) or "group"
            (wav2vec2-base style, no attention mask).

    Returns:
        The folder.
    """
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    path = Path(path)
    layer = feat_extract_norm == "layer"
    config = Wav2Vec2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        conv_dim=(16,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
        feat_extract_norm=feat_extract_norm, do_stable_layer_norm=layer, conv_bias=layer,
        vocab_size=32,
    )
    torch.manual_seed(seed)
    Wav2Vec2Model(config).save_pretrained(path)
    Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=layer).save_pretrained(path)
    return path


# --- causal LLM ------------------------------------------------------------------------------------

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
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    if with_tokenizer:
        tok.save_pretrained(path)
    return path


def tiny_experiment_overrides(encoder_dir: Path, llm_dir: Path, adapter: str = "base", encoder: str = "whisper") -> list[str]:
    """Dotted overrides that shrink every part of an ExperimentConfig to test size (for the adapter,
    only the fields it reads: others would draw an AdapterFieldWarning)."""
    from speechwire.adapters import config_fields

    small = {"hidden_size": 32, "num_layers": 1, "num_heads": 4, "ffn_size": 64, "dropout": 0.0, "qformer_layers": 1}
    reads = config_fields(adapter)
    return [
        f"encoder.name={encoder}", f"encoder.model={encoder_dir}",
        f"llm.model={llm_dir}",
        f"adapter.name={adapter}", *(f"adapter.{k}={v}" for k, v in small.items() if k in reads),
    ]
