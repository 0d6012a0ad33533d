"""Tiny random checkpoints of every encoder family, written offline in well under a second.

    folder = save_tiny_whisper(tmp_path / "whisper")    # then EncoderConfig(name="whisper", model=str(folder))

They use the real Hugging Face classes and `save_pretrained`, so tests and demos exercise the same
`from_pretrained`-style loading as the real checkpoints (which the hub serves and we cannot reach
offline). Weights are random: outputs are meaningless, shapes and code paths are real.
"""

from __future__ import annotations

from pathlib import Path

import torch


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
    model = WhisperForConditionalGeneration(config) if full else WhisperEncoder(config)
    model.save_pretrained(path)
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
    model = SeamlessM4Tv2ForSpeechToText(config) if full else SeamlessM4Tv2SpeechEncoder(config)
    model.save_pretrained(path)
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
