"""Config: YAML + dotted overrides, type checks, all problems reported at once, every preset loads."""

from __future__ import annotations

from pathlib import Path

import pytest

from speechwire.config import ConfigError, ExperimentConfig, load_config, save_config

CONFIGS = sorted(p for p in (Path(__file__).parents[1] / "configs").glob("*.yaml")
                 if not p.stem.endswith("_grid"))  # grid files: tests/test_grid.py


def test_defaults_are_the_papers():
    cfg = ExperimentConfig()
    assert (cfg.adapter.hidden_size, cfg.adapter.num_layers, cfg.adapter.num_heads, cfg.adapter.ffn_size) == (768, 4, 12, 3072)
    assert (cfg.train.lr, cfg.train.warmup_ratio, cfg.train.grad_clip, cfg.eval.max_new_tokens) == (1e-4, 0.03, 1.0, 200)
    assert cfg.encoder.mode == "trimmed"


def test_yaml_and_overrides(tmp_path):
    p = tmp_path / "x.yaml"
    p.write_text("adapter:\n  name: conv\ntrain:\n  lr: 3.0e-4\n")
    cfg = load_config(p, ["adapter.num_layers=2", "train.lr=2e-4", "data.task_weights={asr: 1, st: 2}",
                          "llm.lora_target_modules=[q_proj]"])
    assert cfg.adapter.name == "conv" and cfg.adapter.num_layers == 2 and cfg.train.lr == 2e-4
    assert cfg.data.task_weights == {"asr": 1.0, "st": 2.0} and cfg.llm.lora_target_modules == ["q_proj"]
    save_config(cfg, tmp_path / "saved.yaml")
    assert load_config(tmp_path / "saved.yaml") == cfg


@pytest.mark.parametrize("override,message", [
    ("adapter.nme=conv", "unknown key.*adapter.nme"),
    ("adaptr.name=conv", "unknown key.*adaptr"),
    ("adapter.num_layers=two", "adapter.num_layers='two' must be of type int"),
    ("train.lr=true", "must be of type float"),
    ("llm.lora=1", "must be true or false"),
    ("adapter.window_s", "must look like section.key=value"),
    ("adapter.window_seconds=0", "window_seconds=0.0 must be > 0; the paper uses 0.333"),
])
def test_bad_values_are_named(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_all_problems_at_once():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["train.lr=-1", "train.warmup_ratio=2", "train.grad_accum=0"])
    assert "lr=-1" in str(e.value) and "warmup_ratio=2" in str(e.value) and "grad_accum=0" in str(e.value)


def test_missing_file():
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("nope.yaml")


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_preset_loads(path):
    load_config(path)
