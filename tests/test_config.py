"""Config: YAML + dotted overrides, type checks, all problems reported at once, every preset loads."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest

from speechwire import config as config_module
from speechwire.config import (
    DTYPES,
    AdapterFieldWarning,
    ConfigError,
    ExperimentConfig,
    apply_overrides,
    flatten,
    load_config,
    resolve_device,
    save_config,
    torch_dtype,
    unread_adapter_fields,
)

CONFIGS_DIR = Path(__file__).parents[1] / "configs"
CONFIGS = sorted(p for p in CONFIGS_DIR.glob("*.yaml")
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
    ("train.device=gpu", r"train.device='gpu' must be auto, cpu, cuda or cuda:N"),
    ("train.device=cuda:x", r"train.device='cuda:x' must be auto, cpu, cuda or cuda:N"),
    ("train.device=1", "train.device=1 must be of type str"),
])
def test_bad_values_are_named(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_device_field_and_its_resolution(tmp_path, monkeypatch):
    import torch

    assert ExperimentConfig().train.device == "auto"
    old = tmp_path / "config.yaml"  # a run folder's config written before train.device existed
    old.write_text("train:\n  lr: 1.0e-3\n")
    assert load_config(old).train.device == "auto"
    for value in ("cpu", "cuda", "cuda:0", "cuda:12"):
        assert load_config(None, [f"train.device={value}"]).train.device == value
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu") and resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match="train.device=cuda:1: torch finds no CUDA GPU.*train.device=auto or cpu"):
        resolve_device("cuda:1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == torch.device("cuda") and resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ConfigError, match=r"train.device=cuda:2: this machine has 2 CUDA GPU\(s\), cuda:0 .. cuda:1"):
        resolve_device("cuda:2")
    with pytest.raises(ConfigError, match="train.device='tpu' must be"):
        resolve_device("tpu")


def test_all_problems_at_once():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["train.lr=-1", "train.warmup_ratio=2", "train.grad_accum=0"])
    assert "lr=-1" in str(e.value) and "warmup_ratio=2" in str(e.value) and "grad_accum=0" in str(e.value)


def test_missing_file():
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("nope.yaml")


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_preset_loads_with_its_own_values_and_shows_its_command(path):
    import os

    import yaml

    from speechwire.config import to_dict

    loaded = flatten(to_dict(load_config(path)))
    written = flatten({k: v for k, v in yaml.safe_load(path.read_text()).items() if k != "preset"})
    assert written and set(written) <= set(loaded), set(written) - set(loaded)
    for key, value in written.items():  # each value the file sets is the loaded one (~ expanded in paths)
        assert loaded[key] in (value, os.path.expanduser(value) if isinstance(value, str) else value), key
    header = "\n".join(line for line in path.read_text().splitlines() if line.startswith("#"))
    assert re.search(r"speechwire(\.cli)? (train|demo) ", header), f"{path.name}: the header shows no run command"


def test_flatten_opens_sections_only():
    data = {"adapter": {"name": "cif", "stack": 2}, "data": {"task_weights": {"asr": 1.0}}, "preset": "paper"}
    flat = flatten(data)
    assert flat == {"adapter.name": "cif", "adapter.stack": 2, "data.task_weights": {"asr": 1.0}, "preset": "paper"}
    overrides = [f"{k}={v}" for k, v in flat.items() if k != "preset"]
    assert apply_overrides({}, overrides) == {k: v for k, v in data.items() if k != "preset"}


def test_torch_dtype_names():
    import torch

    assert [torch_dtype(n) for n in DTYPES] == [torch.float32, torch.bfloat16, torch.float16]
    with pytest.raises(ConfigError, match=r"dtype='fp8' must be one of float32, bfloat16, float16"):
        torch_dtype("fp8")


# --- fields the chosen adapter does not read ----------------------------------------------------


@pytest.fixture()
def fresh_warnings(monkeypatch):
    """Forget what earlier tests were warned about (each warning is given once per process)."""
    monkeypatch.setattr(config_module, "_WARNED", set())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield caught


def _adapter_warnings(caught) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, AdapterFieldWarning)]


def test_field_for_another_adapter_warns_once(fresh_warnings):
    for _ in range(2):
        cfg = load_config(None, ["adapter.name=base", "adapter.conv_kernel=5", "adapter.qformer_layers=2"])
    assert cfg.adapter.conv_kernel == 5  # still loads: a warning, not an error
    assert _adapter_warnings(fresh_warnings) == [
        "overrides: the base adapter does not read adapter.conv_kernel=5 (read by conv), "
        "adapter.qformer_layers=2 (read by wlqformer); they have no effect: remove them or pick an adapter "
        "that reads them"]


def test_field_for_the_right_adapter_does_not_warn(fresh_warnings):
    load_config(None, ["adapter.name=conv", "adapter.conv_kernel=5", "adapter.hidden_size=64", "adapter.num_heads=4"])
    load_config(None, ["adapter.name=mlp", "adapter.stack=4", "adapter.hidden_size=64", "adapter.dropout=0.1"])
    assert _adapter_warnings(fresh_warnings) == []  # dropout=0.1 is the default: not set, nothing to say


def test_file_names_itself_and_the_readers(tmp_path, fresh_warnings):
    p = tmp_path / "x.yaml"
    p.write_text("adapter:\n  name: linear\n  hidden_size: 64\n  ctc_keep_blanks: false\n")
    load_config(p)
    (msg,) = _adapter_warnings(fresh_warnings)
    assert msg.startswith(f"{p}: the linear adapter does not read adapter.hidden_size=64 (read by base, cif, conv, "
                          "ctc, mlp, wlqformer), adapter.ctc_keep_blanks=false (read by ctc)")


@pytest.mark.parametrize("adapter", ["base", "conv", "cif", "ctc", "wlqformer", "mlp", "linear"])
def test_shipped_configs_and_presets_do_not_warn(adapter, fresh_warnings):
    # the paper preset sets every adapter's fields at once: what a preset sets is not checked
    load_config(CONFIGS_DIR / "paper_mustc.yaml", [f"adapter.name={adapter}"])
    load_config(None, ["preset=paper", f"adapter.name={adapter}"])
    assert _adapter_warnings(fresh_warnings) == []


def test_shipped_configs_and_checkpoints_do_not_warn(fresh_warnings):
    assets = Path(config_module.__file__).parent / "assets"
    for path in [*CONFIGS, *sorted(assets.glob("demo_*/config.yaml"))]:
        load_config(path)
    assert _adapter_warnings(fresh_warnings) == []


def test_unread_adapter_fields_of_a_whole_section(fresh_warnings):
    cfg = load_config(None, ["adapter.name=cif", "adapter.conv_final_relu=false", "adapter.cif_tail_rescale=true"])
    assert unread_adapter_fields(cfg.adapter) == ["conv_final_relu"]
    assert unread_adapter_fields(cfg.adapter, keys=["cif_tail_rescale"]) == []
