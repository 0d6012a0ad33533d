"""The grid tests' fixture: a grid file of 2 tiny Whisper SFMs x 2 adapters x 1 tiny LLM on a MuST-C corpus."""

from __future__ import annotations

import pytest
import yaml

from speechwire.testing import save_tiny_llm, save_tiny_whisper

from helpers import mustc_manifest


@pytest.fixture(scope="module")
def grid_file(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("grid")
    manifest = mustc_manifest(tmp, "all.jsonl")
    save_tiny_whisper(tmp / "w32", d_model=32, layers=1, seed=0)
    save_tiny_whisper(tmp / "w48", d_model=48, layers=1, seed=1)
    save_tiny_llm(tmp / "llm")
    grid = {
        "base": {"data": {"train_manifest": str(manifest), "max_batch_seconds": 3.0, "max_batch_size": 4},
                 "adapter": {"hidden_size": 32, "num_layers": 1, "num_heads": 4, "ffn_size": 64, "dropout": 0.0},
                 "train": {"max_steps": 2, "lr": 3e-3, "save_every": 0, "log_every": 1},
                 "eval": {"max_new_tokens": 16, "batch_size": 8}},
        "overrides": ["data.feature_cache_dtype=float32"],
        "presets": {"w32": {"encoder.name": "whisper", "encoder.model": str(tmp / "w32")}},
        "factors": {"encoder": {"w32": None, "w48": {"encoder": {"name": "whisper", "model": str(tmp / "w48")}}},
                    "adapter": ["mlp", "conv"], "llm": {"tiny": {"llm.model": str(tmp / "llm")}},
                    "task": ["asr"]},
        "test_sets": {"a": str(manifest), "b": str(manifest)},
    }
    path = tmp / "grid.yaml"
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    return path
