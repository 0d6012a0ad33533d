"""Whisper encoder: features vs WhisperFeatureExtractor, padded vs HF, trimmed padding invariance, lengths, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from speechwire.config import EncoderConfig
from speechwire.encoders import build_encoder
from speechwire.encoders.whisper import N_SAMPLES, log_mel
from speechwire.registry import ENCODERS
from speechwire.testing import save_tiny_whisper

SR = 16000


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return save_tiny_whisper(tmp_path_factory.mktemp("whisper"))


@pytest.fixture(scope="module")
def trimmed(folder):
    return build_encoder(EncoderConfig(name="whisper", model=str(folder)))


@pytest.fixture(scope="module")
def padded(folder):
    return build_encoder(EncoderConfig(name="whisper", model=str(folder), mode="padded"))


def _audio(lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(lengths), max(lengths), generator=g) * 0.1  # (B, S)
    for i, n in enumerate(lengths):
        x[i, n:] = 0.0
    return x, torch.tensor(lengths)


def test_importing_encoders_registers_all_families():
    assert {"whisper", "seamless", "hf"} <= set(ENCODERS.available())


def test_unknown_encoder_lists_available(folder):
    with pytest.raises(ValueError, match="available: .*hf.*seamless.*whisper"):
        build_encoder(EncoderConfig(name="wav2letter", model=str(folder)))


@pytest.mark.parametrize("n", [400, 12345, 3 * SR])
def test_log_mel_matches_hf_feature_extractor(folder, trimmed, n):
    from transformers import WhisperFeatureExtractor

    fe = WhisperFeatureExtractor.from_pretrained(folder)
    x, lengths = _audio([3 * SR, n])
    alone = fe(x[1, :n].numpy(), sampling_rate=SR, padding="longest", return_tensors="np").input_features[0]
    ours = log_mel(x, lengths, trimmed.mel_filters)[1, : n // 160].T.numpy()  # (C, M)
    np.testing.assert_allclose(ours, alone, atol=1e-4)
    full = fe(x[1, :n].numpy(), sampling_rate=SR, return_tensors="np").input_features[0]  # 30 s
    ours = log_mel(x, torch.full_like(lengths, N_SAMPLES), trimmed.mel_filters)[1].T.numpy()
    np.testing.assert_allclose(ours, full, atol=1e-4)


def test_128_bins_encoder_only_checkpoint(tmp_path):
    from transformers import WhisperFeatureExtractor

    folder = save_tiny_whisper(tmp_path, num_mel_bins=128, full=False)
    enc = build_encoder(EncoderConfig(name="whisper", model=str(folder)))
    x, lengths = _audio([SR])
    ref = WhisperFeatureExtractor.from_pretrained(folder)(x[0].numpy(), sampling_rate=SR, padding="longest",
                                                         return_tensors="np").input_features[0]
    assert ref.shape[0] == 128
    np.testing.assert_allclose(log_mel(x, lengths, enc.mel_filters)[0].T.numpy(), ref, atol=1e-4)
    assert enc(x, lengths).hidden.shape == (1, 50, 64)


def test_padded_mode_equals_hf_whisper_encoder(folder, padded):
    from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration

    x, lengths = _audio([2 * SR, 7777])
    fe = WhisperFeatureExtractor.from_pretrained(folder)
    feats = fe([x[i, :n].numpy() for i, n in enumerate(lengths.tolist())], sampling_rate=SR, return_tensors="pt")
    hf = WhisperForConditionalGeneration.from_pretrained(folder).model.encoder.eval()
    with torch.no_grad():
        ref = hf(feats.input_features).last_hidden_state  # (B, 1500, d)
    out = padded(x, lengths)
    assert out.lengths.tolist() == [100, 24]  # 7777 // 160 = 48 mel frames
    for i, t in enumerate(out.lengths.tolist()):
        torch.testing.assert_close(out.hidden[i, :t], ref[i, :t], atol=1e-5, rtol=1e-5)


def test_padded_full_hands_all_1500_frames_like_the_authors(folder, padded):
    # speechlmm WhisperEncoder (standard, 30 s): the adapter gets every frame, silence included
    full = build_encoder(EncoderConfig(name="whisper", model=str(folder), mode="padded_full"))
    x, lengths = _audio([2 * SR, 7777])
    out, real = full(x, lengths), padded(x, lengths)
    assert out.lengths.tolist() == [1500, 1500] and out.hidden.shape[1] == 1500
    assert full.output_length(lengths).tolist() == [1500, 1500]
    for i, t in enumerate(real.lengths.tolist()):
        torch.testing.assert_close(out.hidden[i, :t], real.hidden[i, :t])  # the same encoder pass
    assert out.hidden[1, 24:].abs().sum() > 0  # the silence frames are there, not zeroed


def test_padded_vs_trimmed_similarity(padded, trimmed):
    # padded mode attends to 30 s of silence, trimmed only to the real frames: close, not equal.
    # Measured on this tiny random model: mean cosine >= 0.999, min >= 0.998 (tiny.en real: 0.99).
    x, lengths = _audio([3 * SR, SR, 5000])
    p, t = padded(x, lengths), trimmed(x, lengths)
    assert torch.equal(p.lengths, t.lengths)
    for i, n in enumerate(t.lengths.tolist()):
        cos = torch.nn.functional.cosine_similarity(p.hidden[i, :n], t.hidden[i, :n], dim=-1)
        assert cos.mean() > 0.995 and cos.min() > 0.99, (i, cos.mean(), cos.min())


def test_trimmed_item_alone_equals_item_in_batch(trimmed):
    x, lengths = _audio([8 * SR, 4321, SR + 7])
    batch = trimmed(x, lengths)
    assert batch.hidden.shape == (3, 400, 64)
    for i, n in enumerate(lengths.tolist()):
        alone = trimmed(x[i : i + 1, :n], lengths[i : i + 1])
        t = int(alone.lengths[0])
        assert batch.lengths[i] == t
        torch.testing.assert_close(batch.hidden[i, :t], alone.hidden[0], atol=1e-5, rtol=1e-5)
        assert not batch.hidden[i, t:].any()


def test_garbage_past_lengths_is_ignored(trimmed, padded):
    x, lengths = _audio([SR, 6000])
    noisy = x.clone()
    noisy[1, 6000:] = 5.0
    for enc in (trimmed, padded):
        torch.testing.assert_close(enc(noisy, lengths).hidden, enc(x, lengths).hidden)


@settings(max_examples=12, deadline=None)
@given(n=st.integers(min_value=400, max_value=3 * SR))
def test_output_length_matches_forward(trimmed, n):
    x, lengths = _audio([n])
    out = trimmed(x, lengths)
    assert out.lengths.tolist() == trimmed.output_length(lengths).tolist() == [out.hidden.shape[1]]
    assert out.hidden.shape[1] == -(-(n // 160) // 2)  # ceil(mel / 2)


def test_frame_rate_and_dims(trimmed):
    assert trimmed.frame_rate == 50.0 and trimmed.dim == 64 and trimmed.name == "whisper"
    assert trimmed.output_length(torch.tensor([N_SAMPLES, SR, 400])).tolist() == [1500, 50, 1]  # 400 // 160 = 2 mel frames -> 1


def test_frozen_even_after_train(trimmed):
    assert not any(p.requires_grad for p in trimmed.parameters())
    trimmed.train()
    assert not trimmed.training and not any(m.training for m in trimmed.modules())


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: (torch.full((1, SR), float("nan")), torch.tensor([SR])), "NaN"),
        (lambda: (torch.zeros(2, SR), torch.tensor([SR, 399])), r"item\(s\) \[1\].*minimum is 400"),
        (lambda: (torch.zeros(1, 2, SR), torch.tensor([SR])), r"mono 16 kHz waveforms shaped \(B, S\)"),
        (lambda: (torch.zeros(1, 2 * SR), torch.tensor([2 * SR])), r"item\(s\) \[0\].*2.0. s.*maximum is 1.0 s"),
    ],
)
def test_bad_inputs_give_clear_errors(folder, make, match):
    enc = build_encoder(EncoderConfig(name="whisper", model=str(folder), max_seconds=1.0))
    with pytest.raises(ValueError, match=match):
        enc(*make())


def test_bfloat16_weights(folder):
    enc = build_encoder(EncoderConfig(name="whisper", model=str(folder), dtype="bfloat16"))
    x, lengths = _audio([SR])
    out = enc(x, lengths)
    assert out.hidden.dtype == torch.bfloat16 and enc.mel_filters.dtype == torch.float32


def test_ctranslate2_folder_is_converted_first(folder, tmp_path, monkeypatch):
    import speechwire.weights.ct2_whisper as ct2

    ct2_dir = tmp_path / "ct2"
    ct2_dir.mkdir()
    (ct2_dir / "model.bin").write_bytes(b"\0")
    (ct2_dir / "config.json").write_text('{"suppress_ids": []}')  # CTranslate2's own config, not HF's
    calls = []
    monkeypatch.setattr(ct2, "ensure_hf_whisper", lambda p: calls.append(p) or folder)
    enc = build_encoder(EncoderConfig(name="whisper", model=str(ct2_dir)))
    assert calls == [ct2_dir] and enc.dim == 64
