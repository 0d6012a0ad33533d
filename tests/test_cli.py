"""cli.py: every command runs on train.device; `speechwire transcribe` reports bad files and goes on."""

from __future__ import annotations

import json

import pytest
import torch

from speechwire.cli import main

from helpers import write_experiment


def test_train_device_picks_the_device_of_every_command(mustc_corpus, tmp_path, capsys, monkeypatch):
    tmp, manifest = mustc_corpus
    cfg = write_experiment(tmp, manifest, tmp / "dev_cpu", {"train": {"max_steps": 1, "device": "cpu"}})
    assert main(["train", str(cfg), "--quiet"]) == 0
    assert "device: cpu" in (tmp / "dev_cpu" / "config.yaml").read_text()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    capsys.readouterr()
    assert main(["evaluate", str(tmp / "dev_cpu"), "train.device=cuda", "--manifest", str(manifest),
                 "--out", str(tmp_path / "ev"), "--quiet"]) == 2
    assert "train.device=cuda: torch finds no CUDA GPU on this machine" in capsys.readouterr().err
    assert main(["transcribe", str(tmp / "dev_cpu"), str(tmp_path / "none.wav"), "--set", "train.device=cuda:1"]) == 2
    assert "train.device=cuda:1: torch finds no CUDA GPU" in capsys.readouterr().err


def test_transcribe_reports_bad_files_and_continues(mustc_corpus, tmp_path, capsys):
    import numpy as np
    import soundfile as sf

    tmp, manifest = mustc_corpus
    cfg = write_experiment(tmp, manifest, tmp / "tr", {"train": {"max_steps": 1}})
    assert main(["train", str(cfg), "--quiet"]) == 0
    stereo = tmp_path / "stereo44k.flac"
    sf.write(stereo, np.random.default_rng(0).standard_normal((44100, 2)).astype(np.float32) * 0.1, 44100)
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF....garbage")
    long_mp3 = tmp_path / "long.mp3"  # 40 s: longer than Whisper's 30 s, cut at a pause and decoded in pieces
    sf.write(long_mp3, np.random.default_rng(1).standard_normal(40 * 22050).astype(np.float32) * 0.1, 22050)
    code = main(["transcribe", str(tmp / "tr"), str(stereo), str(broken), str(tmp_path / "missing.wav"),
                 str(long_mp3), "--json"])
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{\"file\"")]
    assert code == 1
    assert "text" in lines[0] and "error" in lines[1] and "broken.wav" in lines[1]["error"]
    assert "missing.wav" in lines[2]["error"]
    assert "text" in lines[3]
    # noise is no speech: empty text and no segment (silero-vad), unless --decode-silence
    assert (lines[0]["text"], lines[0]["segments"], lines[3]["segments"]) == ("", [], [])
    assert main(["transcribe", str(tmp / "tr"), str(stereo), "--json", "--decode-silence"]) == 0
    decoded = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert [(s["start"], s["end"]) for s in decoded["segments"]] == [(0.0, 1.0)]


def test_overrides_may_follow_the_flags(monkeypatch, capsys):
    import speechwire.evaluate as evaluate

    seen = {}
    monkeypatch.setattr(evaluate, "evaluate_run", lambda **kw: seen.update(kw) or {"wer": 0})
    assert main(["evaluate", "RUN", "eval.batch_size=4", "--manifest", "m.jsonl", "llm.output_vocab=full", "--quiet"]) == 0
    # evaluate searches a batch's beams in one process per core (--beam-workers 0) unless told otherwise;
    # --beam-workers N is align.beam_workers=N, before the other overrides (an explicit --set wins)
    assert seen["overrides"] == ["align.beam_workers=0", "eval.batch_size=4", "llm.output_vocab=full"]
    assert seen["manifest"] == "m.jsonl"
    assert main(["evaluate", "RUN", "--manifest", "m.jsonl", "--beam-workers", "3", "align.beam_workers=1", "--quiet"]) == 0
    assert seen["overrides"] == ["align.beam_workers=3", "align.beam_workers=1"]
    import speechwire.serve.server as server

    monkeypatch.setattr(server, "run_server", lambda **kw: seen.update(kw))
    assert main(["serve", "RUN"]) == 0 and seen["beam_workers"] == 1  # serving gained nothing on 2 cores
    assert seen["decode_silence"] is False  # a recording without speech answers empty text
    assert main(["serve", "RUN", "--decode-silence"]) == 0 and seen["decode_silence"] is True
    assert main(["serve", "RUN", "--beam-workers", "0"]) == 0 and seen["beam_workers"] == 0
    for stray in (["--bogus"], ["word"]):  # not a key=value override: still an argparse error
        with pytest.raises(SystemExit) as e:
            main(["evaluate", "RUN", "--manifest", "m.jsonl", *stray])
        assert e.value.code == 2
        assert f"unrecognized arguments: {stray[0]}" in capsys.readouterr().err
