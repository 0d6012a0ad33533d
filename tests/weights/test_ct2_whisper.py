"""CTranslate2 Whisper -> Hugging Face conversion, on a tiny random Whisper (offline, fast).

The CTranslate2 folder is written by ctranslate2's own converter (the real writer), then read
back by our reader; the converted model must equal the original weights and match
`ctranslate2.models.Whisper` on the encoder and in greedy decoding.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

ctranslate2 = pytest.importorskip("ctranslate2")
pytest.importorskip("transformers")
from safetensors.torch import load_file  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers  # noqa: E402
from transformers import (  # noqa: E402
    WhisperConfig,
    WhisperForConditionalGeneration,
    WhisperProcessor,
)

from speechwire.cli import main  # noqa: E402
from speechwire.weights.ct2_whisper import (  # noqa: E402
    Ct2FormatError,
    ensure_hf_whisper,
    read_ct2_model,
)

SPECIALS = ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|de|>", "<|translate|>",
            "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>",
            "<|notimestamps|>"]


def _tiny_tokenizer(out: Path) -> dict[str, int]:
    """Byte-level BPE over a-z and space plus Whisper's special tokens."""
    vocab = {c: i for i, c in enumerate([chr(c) for c in range(97, 123)] + ["Ġ"])}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIALS)
    tok.save(str(out / "tokenizer.json"))
    eot = "<|endoftext|>"
    (out / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "WhisperTokenizer", "bos_token": eot, "eos_token": eot,
         "pad_token": eot, "unk_token": eot}))
    return {s: tok.token_to_id(s) for s in SPECIALS}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A tiny random HF Whisper, its CTranslate2 fp32 conversion, and our conversion back."""
    root = tmp_path_factory.mktemp("tiny_whisper")
    hf_dir, ct2_dir = root / "hf", root / "ct2"
    hf_dir.mkdir()
    ids = _tiny_tokenizer(hf_dir)
    eot, sot = ids["<|endoftext|>"], ids["<|startoftranscript|>"]
    config = WhisperConfig(
        vocab_size=64, num_mel_bins=80, d_model=32, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
        decoder_ffn_dim=64, max_source_positions=1500, max_target_positions=32,
        pad_token_id=eot, bos_token_id=eot, eos_token_id=eot, decoder_start_token_id=sot,
        suppress_tokens=[], begin_suppress_tokens=[eot],
        init_std=0.5,  # large random weights: greedy decoding wanders instead of repeating
    )
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(config).eval()
    with torch.no_grad():  # random biases (HF inits them to 0); layer-norm gammas stay 1,
        for name, p in model.named_parameters():  # so ctranslate2 writes them as aliases
            if name.endswith("bias"):
                p.normal_(0.0, 0.1)
    model.save_pretrained(hf_dir)
    converter = ctranslate2.converters.TransformersConverter(
        str(hf_dir), copy_files=["tokenizer.json"])
    converter.convert(str(ct2_dir), quantization="float32")
    out = ensure_hf_whisper(ct2_dir, cache_dir=root / "cache")
    return {"model": model, "ct2": ct2_dir, "out": out, "ids": ids, "root": root}


def test_ctranslate2_file_has_aliases_and_fused_layers(tiny: dict) -> None:
    ct2 = read_ct2_model(tiny["ct2"] / "model.bin")
    assert ct2.spec == "WhisperSpec"
    v = ct2.variables
    assert v["encoder/layer_0/self_attention/linear_0/weight"].shape == (96, 32)  # q,k,v fused
    assert v["decoder/layer_0/attention/linear_1/weight"].shape == (64, 32)  # k,v fused
    assert v["decoder/projection/weight"] is v["decoder/embeddings/weight"]  # alias resolved
    assert int(v["encoder/num_heads"]) == 4


def test_weights_round_trip_exactly(tiny: dict) -> None:
    original = {k: v for k, v in tiny["model"].state_dict().items() if k != "proj_out.weight"}
    converted = load_file(str(tiny["out"] / "model.safetensors"))
    assert set(converted) == set(original)
    for name, value in original.items():
        assert torch.equal(converted[name], value), name


def test_config_and_processor_are_inferred(tiny: dict) -> None:
    model, info = WhisperForConditionalGeneration.from_pretrained(
        tiny["out"], output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    cfg, ids = model.config, tiny["ids"]
    assert (cfg.d_model, cfg.encoder_layers, cfg.decoder_layers) == (32, 2, 2)
    assert (cfg.encoder_attention_heads, cfg.encoder_ffn_dim, cfg.num_mel_bins) == (4, 64, 80)
    assert (cfg.max_source_positions, cfg.max_target_positions) == (1500, 32)
    assert cfg.decoder_start_token_id == ids["<|startoftranscript|>"]
    assert cfg.eos_token_id == cfg.pad_token_id == ids["<|endoftext|>"]
    assert model.generation_config.no_timestamps_token_id == ids["<|notimestamps|>"]
    assert torch.equal(model.proj_out.weight, model.model.decoder.embed_tokens.weight)
    processor = WhisperProcessor.from_pretrained(tiny["out"])
    assert processor.feature_extractor.feature_size == 80
    assert processor.tokenizer.convert_tokens_to_ids("<|notimestamps|>") == ids["<|notimestamps|>"]


def _features(seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(2, 80, 3000, generator=gen)  # (B, n_mels, 30 s of frames)


def test_encoder_matches_ctranslate2(tiny: dict) -> None:
    model = WhisperForConditionalGeneration.from_pretrained(tiny["out"]).eval()
    feats = _features()
    with torch.no_grad():
        ours = model.model.encoder(feats).last_hidden_state.numpy()
    reference = ctranslate2.models.Whisper(str(tiny["ct2"]), device="cpu")
    theirs = np.array(reference.encode(ctranslate2.StorageView.from_array(feats.numpy())))
    assert ours.shape == theirs.shape == (2, 1500, 32)
    assert np.abs(ours - theirs).max() < 1e-4


def test_greedy_decoding_matches_ctranslate2(tiny: dict) -> None:
    model = WhisperForConditionalGeneration.from_pretrained(tiny["out"]).eval()
    feats = _features(1)[:1]
    prompt = [tiny["ids"]["<|startoftranscript|>"], tiny["ids"]["<|notimestamps|>"]]
    with torch.no_grad():
        ours = model.generate(feats, max_new_tokens=10)[0].tolist()
    ours = ours[len(prompt):] if ours[: len(prompt)] == prompt else ours
    reference = ctranslate2.models.Whisper(str(tiny["ct2"]), device="cpu")
    result = reference.generate(ctranslate2.StorageView.from_array(feats.numpy()), [prompt],
                                beam_size=1, max_length=20, suppress_blank=False)
    theirs = result[0].sequences_ids[0]
    assert len(ours) == len(theirs) == 10
    assert ours == theirs

def test_ensure_is_cached_by_model_hash(tiny: dict) -> None:
    stamp = (tiny["out"] / "model.safetensors").stat().st_mtime_ns
    again = ensure_hf_whisper(tiny["ct2"], cache_dir=tiny["root"] / "cache")
    assert again == tiny["out"]
    assert (again / "model.safetensors").stat().st_mtime_ns == stamp
    assert not [p for p in again.parent.iterdir() if p.name.endswith(".tmp")]


def test_truncated_file_names_the_variable(tiny: dict, tmp_path: Path) -> None:
    data = (tiny["ct2"] / "model.bin").read_bytes()
    bad = tmp_path / "model.bin"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(Ct2FormatError, match=r"truncated: expected \d+ bytes for variable "):
        read_ct2_model(bad)


def test_random_bytes_are_not_a_model(tmp_path: Path) -> None:
    bad = tmp_path / "model.bin"
    bad.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(Ct2FormatError, match=r"not a CTranslate2 model \(bad header\)"):
        read_ct2_model(bad)


def test_convert_cli(tiny: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["convert", "whisper-ct2", str(tiny["ct2"]), str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "model.safetensors").is_file()
    assert main(["convert", "whisper-ct2", str(tmp_path / "missing"), str(tmp_path / "out2")]) == 1
    assert "no model.bin" in capsys.readouterr().err
