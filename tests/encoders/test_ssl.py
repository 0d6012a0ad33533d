"""Generic HF self-supervised encoders (wav2vec2 family): equality with HF, padding invariance, lengths, errors."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from speechwire.config import EncoderConfig
from speechwire.encoders import build_encoder
from speechwire.testing import save_tiny_wav2vec2

SR = 16000


@pytest.fixture(scope="module", params=["layer", "group"])
def folder(request, tmp_path_factory):
    return save_tiny_wav2vec2(tmp_path_factory.mktemp(f"w2v-{request.param}"), feat_extract_norm=request.param)


@pytest.fixture(scope="module")
def enc(folder):
    return build_encoder(EncoderConfig(name="hf", model=str(folder)))


def _audio(lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(lengths), max(lengths), generator=g) * 0.1 + 0.02  # (B, S), DC offset to normalise
    for i, n in enumerate(lengths):
        x[i, n:] = 0.0
    return x, torch.tensor(lengths)


def test_equals_hf_model_on_hf_features(folder, enc):
    from transformers import AutoFeatureExtractor, AutoModel

    x, lengths = _audio([SR, 9999])
    fe = AutoFeatureExtractor.from_pretrained(folder)
    hf = AutoModel.from_pretrained(folder).eval()
    out = enc(x, lengths)
    for i, n in enumerate(lengths.tolist()):
        values = fe(x[i, :n].numpy(), sampling_rate=SR, return_tensors="pt").input_values  # item alone
        with torch.no_grad():
            ref = hf(values).last_hidden_state[0]
        t = int(out.lengths[i])
        assert ref.shape[0] == t
        torch.testing.assert_close(out.hidden[i, :t], ref, atol=1e-5, rtol=1e-4)
        assert not out.hidden[i, t:].any()


def test_item_alone_equals_item_in_batch(enc):
    x, lengths = _audio([3 * SR, 4321, 4321, SR + 7])
    batch = enc(x, lengths)
    assert batch.hidden.shape == (4, 149, 32)
    for i, n in enumerate(lengths.tolist()):
        alone = enc(x[i : i + 1, :n], lengths[i : i + 1])
        t = int(alone.lengths[0])
        torch.testing.assert_close(batch.hidden[i, :t], alone.hidden[0], atol=1e-5, rtol=1e-5)


@settings(max_examples=10, deadline=None)
@given(n=st.integers(min_value=400, max_value=2 * SR))
def test_output_length_matches_forward(enc, n):
    x, lengths = _audio([n])
    out = enc(x, lengths)
    assert out.lengths.tolist() == enc.output_length(lengths).tolist() == [out.hidden.shape[1]]


def test_frame_rate_dims_frozen(enc):
    assert enc.frame_rate == 50.0 and enc.dim == 32 and enc.min_samples == 400 and enc.name == "hf"
    assert enc.output_length(torch.tensor([400, SR])).tolist() == [1, 49]
    assert not any(p.requires_grad for p in enc.parameters())
    enc.train()
    assert not any(m.training for m in enc.modules())


def test_bad_inputs_give_clear_errors(enc):
    with pytest.raises(ValueError, match=r"item\(s\) \[1\] contain NaN"):
        enc(torch.tensor([[0.0] * 500, [float("nan")] * 500]), torch.tensor([500, 500]))
    with pytest.raises(ValueError, match="minimum is 400"):
        enc(torch.zeros(1, 500), torch.tensor([399]))
    with pytest.raises(ValueError, match=r"lengths \(2,\) must be \(B,\) = \(1,\)"):
        enc(torch.zeros(1, 500), torch.tensor([500, 500]))


def test_model_without_waveform_input_is_refused(tmp_path):
    from speechwire.testing import save_tiny_whisper

    with pytest.raises(ValueError, match="does not take raw waveforms.*encoder.name=whisper"):
        build_encoder(EncoderConfig(name="hf", model=str(save_tiny_whisper(tmp_path))))
