"""`weights:NAME` references: resolved offline against fake artifacts (fetch monkeypatched)."""

from __future__ import annotations

from pathlib import Path

import pytest

from speechwire.config import LLMConfig
from speechwire.weights import resolve
from speechwire.weights.resolve import ensure_hf_llm, resolve_model


def test_plain_references_pass_through():
    assert resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct") == ("HuggingFaceTB/SmolLM2-135M-Instruct", None)
    assert resolve_model("/some/folder") == ("/some/folder", None)


def test_unknown_artifact_lists_known(monkeypatch):
    monkeypatch.setattr("speechwire.weights.fetch.fetch_artifact", lambda name: pytest.fail("no fetch"))
    with pytest.raises(KeyError, match="weights:whisper-tiny.en"):
        resolve_model("weights:no-such-model")


@pytest.fixture()
def fake_gguf(tmp_path, monkeypatch):
    """A fake GGUF artifact whose 'conversion' writes the tiny random LLM; counts conversions."""
    from speechwire.testing import save_tiny_llm

    gguf = tmp_path / "artifact" / "fake.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF fake bytes")
    fetched: list[str] = []
    converted: list[Path] = []

    def fake_fetch(name):
        fetched.append(name)
        return gguf

    def fake_convert(src, out_dir):
        converted.append(Path(src))
        return save_tiny_llm(out_dir, seed=0)

    monkeypatch.setenv("SPEECHWIRE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("speechwire.weights.fetch.fetch_artifact", fake_fetch)
    monkeypatch.setattr(resolve, "convert_gguf_llm", fake_convert)
    return gguf, fetched, converted


def test_gguf_artifact_converted_once_and_loadable(fake_gguf, tmp_path):
    gguf, fetched, converted = fake_gguf
    path, gguf_file = resolve_model("weights:qwen2.5-0.5b-instruct")  # an alias
    assert gguf_file is None
    assert Path(path).parent == tmp_path / "cache" / "hf-llm"
    assert (Path(path) / "model.safetensors").is_file()
    assert fetched == ["qwen2.5-coder-0.5b-instruct"]
    again, _ = resolve_model("weights:qwen2.5-0.5b-instruct")
    assert again == path and len(converted) == 1  # cached: no second conversion
    raw = resolve_model("weights:smollm2-135m-instruct", convert_gguf=False)
    assert raw == (str(gguf.parent), gguf.name)
    assert not list((tmp_path / "cache" / "hf-llm").glob(".*tmp"))  # no temp folder left behind

    from speechwire.llm import load_llm, load_tokenizer

    cfg = LLMConfig(model="weights:smollm2-135m-instruct")
    assert load_llm(cfg).config.vocab_size > 0
    assert load_tokenizer(cfg).chat_template


def test_whisper_artifact_goes_through_ct2_conversion(tmp_path, monkeypatch):
    ct2 = tmp_path / "whisper-tiny.en"
    ct2.mkdir()
    (ct2 / "model.bin").write_bytes(b"x")
    hf = tmp_path / "hf"
    monkeypatch.setattr("speechwire.weights.fetch.fetch_artifact", lambda name: ct2)
    monkeypatch.setattr("speechwire.weights.ct2_whisper.ensure_hf_whisper", lambda src: hf)
    assert resolve_model("weights:whisper-tiny.en") == (str(hf), None)

    from speechwire.encoders.loading import resolve_folder

    assert resolve_folder("weights:whisper-tiny.en") == hf


def test_ensure_hf_llm_missing_file_names_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="speechwire weights fetch"):
        ensure_hf_llm(tmp_path / "absent.gguf")
