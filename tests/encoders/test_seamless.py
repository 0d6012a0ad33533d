"""SeamlessM4T v2 speech encoder: fbank vs SeamlessM4TFeatureExtractor, equality with HF, padding invariance, lengths."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from speechwire.config import EncoderConfig
from speechwire.encoders import build_encoder
from speechwire.encoders.seamless import fbank_features
from speechwire.testing import save_tiny_seamless

SR = 16000


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return save_tiny_seamless(tmp_path_factory.mktemp("seamless"))


@pytest.fixture(scope="module")
def enc(folder):
    return build_encoder(EncoderConfig(name="seamless", model=str(folder)))


def _audio(lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(lengths), max(lengths), generator=g) * 0.1  # (B, S)
    for i, n in enumerate(lengths):
        x[i, n:] = 0.0
    return x, torch.tensor(lengths)


@pytest.mark.parametrize("n", [560, 12345, 2 * SR])  # F = 2 (even), 75 (odd), 199 (odd)
def test_fbank_matches_hf_feature_extractor(folder, enc, n):
    from transformers import SeamlessM4TFeatureExtractor

    fe = SeamlessM4TFeatureExtractor.from_pretrained(folder)
    x, lengths = _audio([2 * SR, n])
    ref = fe(x[1, :n].numpy(), sampling_rate=SR, return_tensors="np")
    valid = int(ref.attention_mask.sum())  # stacked frames HF marks as real: F // 2
    ours = fbank_features(x, lengths, enc.mel_filters)[1]  # (L, 160)
    np.testing.assert_allclose(ours[:valid].numpy(), ref.input_features[0, :valid], atol=1e-4)
    assert not ours[valid:].any()


def test_equals_hf_speech_encoder(folder, enc):
    from transformers import SeamlessM4TFeatureExtractor
    from transformers.models.seamless_m4t_v2.modeling_seamless_m4t_v2 import SeamlessM4Tv2SpeechEncoder

    n = 3 * SR  # 298 fbank frames: even, so HF adds no half-padded frame
    x, lengths = _audio([n])
    feats = SeamlessM4TFeatureExtractor.from_pretrained(folder)(x[0].numpy(), sampling_rate=SR, return_tensors="pt")
    hf = SeamlessM4Tv2SpeechEncoder.from_pretrained(folder).eval()
    with torch.no_grad():
        ref = hf(feats.input_features, attention_mask=feats.attention_mask).last_hidden_state
    out = enc(x, lengths)
    assert out.hidden.shape == ref.shape == (1, 19, 32)
    torch.testing.assert_close(out.hidden, ref, atol=1e-4, rtol=1e-4)


def test_full_checkpoint_loads_its_speech_encoder(tmp_path):
    from transformers import SeamlessM4TFeatureExtractor, SeamlessM4Tv2ForSpeechToText

    folder = save_tiny_seamless(tmp_path, full=True)  # keys speech_encoder.* beside a text decoder
    enc = build_encoder(EncoderConfig(name="seamless", model=str(folder)))
    assert sum(p.numel() for p in enc.parameters()) < sum(
        p.numel() for p in SeamlessM4Tv2ForSpeechToText.from_pretrained(folder).parameters())
    x, lengths = _audio([SR])  # 1 + (16000 - 400) // 160 = 98 fbank frames: even
    feats = SeamlessM4TFeatureExtractor.from_pretrained(folder)(x[0].numpy(), sampling_rate=SR, return_tensors="pt")
    hf = SeamlessM4Tv2ForSpeechToText.from_pretrained(folder).speech_encoder.eval()
    with torch.no_grad():
        ref = hf(feats.input_features, attention_mask=feats.attention_mask).last_hidden_state
    torch.testing.assert_close(enc(x, lengths).hidden, ref, atol=1e-4, rtol=1e-4)


def test_item_alone_equals_item_in_batch(enc):
    x, lengths = _audio([6 * SR, 4321, SR + 7])
    batch = enc(x, lengths)
    for i, n in enumerate(lengths.tolist()):
        alone = enc(x[i : i + 1, :n], lengths[i : i + 1])
        t = int(alone.lengths[0])
        assert batch.lengths[i] == t
        torch.testing.assert_close(batch.hidden[i, :t], alone.hidden[0], atol=1e-5, rtol=1e-5)
        assert not batch.hidden[i, t:].any()


@settings(max_examples=12, deadline=None)
@given(n=st.integers(min_value=560, max_value=3 * SR))
def test_output_length_matches_forward(enc, n):
    x, lengths = _audio([n])
    out = enc(x, lengths)
    assert out.lengths.tolist() == enc.output_length(lengths).tolist() == [out.hidden.shape[1]]
    assert out.hidden.shape[1] == ((n - 400) // 160 + 1) // 2 // 8 + 1


def test_frame_rate_dims_frozen(enc):
    assert enc.frame_rate == 6.25 and enc.dim == 32 and enc.min_samples == 560
    assert not any(p.requires_grad for p in enc.parameters())
    enc.train()
    assert not any(m.training for m in enc.modules())


@pytest.mark.parametrize(
    "x, lengths, match",
    [
        (torch.full((1, SR), float("inf")), torch.tensor([SR]), "NaN or inf"),
        (torch.zeros(1, SR), torch.tensor([559]), "minimum is 560"),
        (torch.zeros(SR), torch.tensor([SR]), r"shaped \(B, S\)"),
        (torch.zeros(1, 2 * SR), torch.tensor([2 * SR]), "maximum is 1.0 s"),
    ],
)
def test_bad_inputs_give_clear_errors(folder, x, lengths, match):
    enc = build_encoder(EncoderConfig(name="seamless", model=str(folder), max_seconds=1.0))
    with pytest.raises(ValueError, match=match):
        enc(x, lengths)


def test_wrong_family_is_named(tmp_path):
    from speechwire.testing import save_tiny_whisper

    with pytest.raises(ValueError, match="model_type='whisper', not seamless_m4t_v2"):
        build_encoder(EncoderConfig(name="seamless", model=str(save_tiny_whisper(tmp_path))))
