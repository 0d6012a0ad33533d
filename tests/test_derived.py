"""derived.py: derived inference weights written tensor by tensor and read back one at a time."""

from __future__ import annotations

import logging

import pytest
import torch
from safetensors.torch import load_file

from speechwire.derived import DerivedReader, derived_key, save_derived

TENSORS = {"int8": torch.randint(-127, 128, (5, 7), dtype=torch.int8), "scales": torch.rand(5, dtype=torch.float64),
           "zeros": torch.zeros(5, dtype=torch.int64), "bias": torch.randn(3), "half": torch.randn(2, 3).bfloat16(),
           "empty": torch.zeros(0, 4)}


def _specs(tensors):
    return [(name, t.dtype, tuple(t.shape)) for name, t in tensors.items()]


def test_a_streamed_file_is_plain_safetensors_and_reads_back(tmp_path, monkeypatch):
    monkeypatch.setenv("SPEECHWIRE_DERIVED", str(tmp_path))
    path = save_derived("k", _specs(TENSORS), TENSORS.__getitem__)
    loaded = load_file(str(path))  # what any safetensors reader sees
    reader = DerivedReader("k")
    for name, tensor in TENSORS.items():
        assert torch.equal(loaded[name], tensor) and torch.equal(reader.get(name), tensor)
    assert torch.equal(reader.get("int8", slice(1, 3)), TENSORS["int8"][1:3])
    assert "bias" in reader and reader.get("missing") is None


def test_a_wrong_tensor_leaves_no_file_and_a_damaged_file_reads_as_none(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("SPEECHWIRE_DERIVED", str(tmp_path))
    with pytest.raises(ValueError, match="announced"):
        save_derived("k", _specs(TENSORS), lambda name: TENSORS[name].float())
    assert list(tmp_path.iterdir()) == []  # no temp file, no half file
    (tmp_path / "k.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with caplog.at_level(logging.WARNING):
        assert DerivedReader("k").get("bias") is None
    assert "unreadable" in caplog.text


def test_an_unwritable_folder_or_off_only_costs_the_time(tmp_path, monkeypatch, caplog):
    (tmp_path / "file").write_text("a file where the folder should be")
    monkeypatch.setenv("SPEECHWIRE_DERIVED", str(tmp_path / "file"))
    with caplog.at_level(logging.WARNING):
        assert save_derived("k", _specs(TENSORS), TENSORS.__getitem__) is None
    assert "SPEECHWIRE_DERIVED" in caplog.text
    monkeypatch.setenv("SPEECHWIRE_DERIVED", "off")
    assert save_derived("k", _specs(TENSORS), TENSORS.__getitem__) is None and DerivedReader("k").get("bias") is None


def test_the_key_follows_the_sources_and_settings(tmp_path):
    source = tmp_path / "model.safetensors"
    source.write_bytes(b"weights")
    key = derived_key("int8-llm", [source], dtype="float32")
    assert key == derived_key("int8-llm", [source], dtype="float32") and key.startswith("int8-llm-")
    assert key != derived_key("int8-llm", [source], dtype="bfloat16")
    source.write_bytes(b"other weights")
    assert key != derived_key("int8-llm", [source], dtype="float32")
