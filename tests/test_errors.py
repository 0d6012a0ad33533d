"""The error surface (issue 16's table): each mistake gets one true line and a non-zero exit; --debug
shows the traceback; old run folders still load."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from speechwire.cli import main
from speechwire.config import ConfigError, load_config
from speechwire.errors import did_you_mean
from speechwire.files import read_safetensors
from speechwire.registry import ADAPTERS

from helpers import ENV, tiny_run

OFFLINE = ("is not in the local Hugging Face cache and the hub cannot be reached (offline); download it where the "
           "hub is reachable")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("errors")
    cfg, manifest, run = tiny_run(tmp, steps=1, save_every=0)
    wav = sorted((tmp / "MUSTC").rglob("*.wav"))[0]
    return tmp, cfg, run, wav


def cli(capsys, *argv) -> tuple[int, list[str]]:
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:  # argparse
        code = e.code
    captured = capsys.readouterr()
    return code, [line for line in captured.err.splitlines() if line.strip()]


def copy_run(run: Path, dst: Path) -> Path:
    shutil.copytree(run, dst, ignore=shutil.ignore_patterns("checkpoints"))
    return dst


def test_adapter_typo_is_named_before_anything_else(world, capsys):
    _, cfg, _, _ = world
    code, err = cli(capsys, "config", cfg, "adapter.name=mlpp", "adapter.num_heads=7")
    known = ", ".join(ADAPTERS.available())
    assert code == 2 and err == [f"speechwire config: error: {cfg}: adapter.name: unknown adapter 'mlpp'; "
                                 f"did you mean 'mlp'? available: {known}"]
    with pytest.raises(ConfigError, match=r"unknown speech encoder 'wisper'; did you mean 'whisper'\?"):
        load_config(None, ["encoder.name=wisper"])
    with pytest.raises(ConfigError, match=r"unknown key\(s\) train.lrr; did you mean 'lr'\?"):
        load_config(None, ["train.lrr=1"])
    assert did_you_mean("zzz", ["mlp"]) == ""
    with pytest.raises(ValueError, match="unknown adapter 'cnv'; did you mean 'conv'"):
        ADAPTERS.get("cnv")


def test_cut_short_weights_get_one_line(world, capsys, tmp_path):
    _, _, run, wav = world
    bad = copy_run(run, tmp_path / "copied")
    data = (run / "trainable.safetensors").read_bytes()
    (bad / "trainable.safetensors").write_bytes(data[: len(data) // 2])  # an interrupted copy
    code, err = cli(capsys, "transcribe", bad, wav)
    assert code == 2 and len(err) == 1
    assert err[0].startswith(f"speechwire transcribe: error: {bad}/trainable.safetensors: trainable weights file is "
                             "damaged or cut short (")
    assert "copy the run folder again" in err[0] and "Traceback" not in err[0]
    flipped = bytearray(data)  # a bit flip inside the tensor bytes: caught by the stored sha256
    flipped[-3] ^= 0x10
    (bad / "trainable.safetensors").write_bytes(bytes(flipped))
    code, err = cli(capsys, "transcribe", bad, wav)
    assert code == 2 and "do not match the sha256 stored when it was written" in err[0]


def test_config_that_is_not_yaml_gets_its_line_and_column(world, capsys, tmp_path):
    _, _, run, wav = world
    bad = copy_run(run, tmp_path / "copied")
    (bad / "config.yaml").write_text("adapter:\n  name: mlp\n   stack: 2\n")
    code, err = cli(capsys, "transcribe", bad, wav)
    assert code == 2 and err == [f"speechwire transcribe: error: {bad}/config.yaml line 3, column 9: not valid YAML "
                                 "(mapping values are not allowed here); fix the syntax there"]
    (bad / "config.yaml").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    code, err = cli(capsys, "evaluate", bad, "--manifest", "m.jsonl")
    assert code == 2 and "not a UTF-8 text config file (byte 0x89 at offset 0)" in err[0]


def test_folder_where_a_file_belongs(world, capsys, tmp_path):
    _, cfg, run, wav = world
    code, err = cli(capsys, "transcribe", run, tmp_path, wav)
    assert code == 1 and err == [f"error: {tmp_path}: is a folder, not an audio file; pass the audio files "
                                 f"themselves (e.g. {tmp_path}/*.wav)"]  # the good file is still transcribed
    code, err = cli(capsys, "transcribe", run / "trainable.safetensors", wav)
    assert code == 2 and "is a file; pass the run folder that holds config.yaml" in err[0]
    code, err = cli(capsys, "config", tmp_path)
    assert code == 2 and err == [f"speechwire config: error: {tmp_path}: is a folder, not a config file; a run "
                                 "folder's config is FOLDER/config.yaml"]
    code, err = cli(capsys, "cache", "build", cfg, "data.feature_cache=" + str(tmp_path), "--manifest", tmp_path)
    assert code == 2 and "is a folder; pass a JSONL file" in err[0]


def _hub_run(run: Path, dst: Path) -> Path:
    hub = copy_run(run, dst)
    cfg = yaml.safe_load((hub / "config.yaml").read_text())
    cfg["encoder"]["model"] = "speechwire-tests/no-such-whisper"
    (hub / "config.yaml").write_text(yaml.safe_dump(cfg))
    return hub


@pytest.mark.slow
def test_hub_id_offline_same_line_with_or_without_hf_hub_offline(world, capsys, tmp_path):
    _, _, run, wav = world
    hub = _hub_run(run, tmp_path / "hub")
    code, err = cli(capsys, "transcribe", hub, wav)  # HF_HUB_OFFLINE=1 (conftest)
    expected = (f"speechwire transcribe: error: encoder.model='speechwire-tests/no-such-whisper' {OFFLINE} "
                "(`hf download speechwire-tests/no-such-whisper`) and set encoder.model to that folder")
    assert code == 2 and err == [expected]
    # no HF_HUB_OFFLINE, no network (a closed local port stands in for it): the same line, no traceback
    env = {k: v for k, v in ENV.items() if k != "HF_HUB_OFFLINE"} | {"HF_ENDPOINT": "http://127.0.0.1:9"}
    res = subprocess.run([sys.executable, "-m", "speechwire.cli", "transcribe", str(hub), str(wav)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and [line for line in res.stderr.splitlines() if line.strip()] == [expected]


def test_debug_flag_shows_the_traceback(world, capsys, monkeypatch):
    _, cfg, _, _ = world
    with pytest.raises(ConfigError, match="unknown adapter 'mlpp'"):
        main(["config", str(cfg), "adapter.name=mlpp", "--debug"])
    with pytest.raises(ConfigError):
        main(["--debug", "config", str(cfg), "adapter.name=mlpp"])
    monkeypatch.setenv("SPEECHWIRE_DEBUG", "1")  # no longer read: --debug is the only switch
    assert main(["config", str(cfg), "adapter.name=mlpp"]) == 2


def test_argument_mistakes_and_bugs_are_one_line(world, capsys, monkeypatch):
    _, cfg, _, _ = world
    code, err = cli(capsys, "train", cfg, "--nope")
    assert code == 2 and err == ["speechwire: error: unrecognized arguments: --nope (see speechwire --help)"]
    code, err = cli(capsys, "transcribe")
    assert code == 2 and len(err) == 1 and err[0].startswith("speechwire transcribe: error: the following arguments")
    import speechwire.config

    monkeypatch.setattr(speechwire.config, "load_config", lambda *a: 1 / 0)  # a bug, not a user mistake
    code, err = cli(capsys, "config", cfg)
    assert code == 1 and len(err) == 1 and "unexpected ZeroDivisionError" in err[0] and "--debug" in err[0]


def test_shipped_and_older_run_files_still_load(world, tmp_path):
    from safetensors.torch import load_file, save_file

    from speechwire.model import SpeechLLM

    assets = Path(__file__).parents[1] / "src" / "speechwire" / "assets"
    for name in ("demo_asr", "demo_st"):
        assert read_safetensors(assets / name / "trainable.safetensors", "trainable weights")[0]
        assert load_config(assets / name / "config.yaml").adapter.name
    old = copy_run(world[2], tmp_path / "old")  # weights written before checksums existed
    save_file(load_file(str(old / "trainable.safetensors")), str(old / "trainable.safetensors"),
              metadata={"format": "pt", "speechwire": "trainable-only"})
    assert "sha256" not in read_safetensors(old / "trainable.safetensors", "w")[1]
    SpeechLLM.from_pretrained(old)
