"""Training end to end: MuST-C import -> train -> SIGKILL -> resume (same weights) -> evaluate; DDP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from speechwire.cli import main
from speechwire.train import latest_checkpoint, lr_factor

from helpers import mustc_manifest, write_experiment

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TRANSFORMERS_VERBOSITY": "error"}
CLI = [sys.executable, "-m", "speechwire.cli"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pipeline")
    return tmp, mustc_manifest(tmp, "train.jsonl")


def test_lr_schedule_warmup_then_cosine():
    assert lr_factor(0, 100, 10) == pytest.approx(1 / 11)
    assert lr_factor(10, 100, 10) == pytest.approx(1.0)
    assert lr_factor(55, 100, 10) == pytest.approx(0.5)
    assert lr_factor(100, 100, 10) == pytest.approx(0.0, abs=1e-12)


def _weights(run: Path) -> dict:
    return load_file(str(run / "trainable.safetensors"))


def test_sigkill_then_resume_gives_the_same_weights(corpus):
    tmp, manifest = corpus
    ref_cfg = write_experiment(tmp, manifest, tmp / "ref", {"train": {"max_steps": 24}})
    subprocess.run([*CLI, "train", str(ref_cfg), "--quiet"], check=True, env=ENV, capture_output=True)

    run = tmp / "killed"
    cfg = write_experiment(tmp, manifest, run, {"train": {"max_steps": 24}})
    proc = subprocess.Popen([*CLI, "train", str(cfg), "--quiet"], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not (run / "checkpoints" / "step-000008").exists():
        assert proc.poll() is None, "training ended before it could be killed"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (run / "trainable.safetensors").exists(), "the run finished before the kill"
    ckpt = latest_checkpoint(run)
    assert ckpt is not None and int(ckpt.name.split("-")[1]) < 24
    out = subprocess.run([*CLI, "train", str(cfg), "--quiet"], check=True, env=ENV, capture_output=True, text=True)
    assert "resumed from" in out.stdout
    ref, resumed = _weights(tmp / "ref"), _weights(run)
    assert ref.keys() == resumed.keys()
    for k in ref:
        assert torch.allclose(ref[k], resumed[k], atol=1e-6), k
    assert len(list((run / "checkpoints").glob("step-*"))) <= 2  # keep_last
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert {"loss", "lm_loss", "lr", "audio_s_per_s", "compression"} <= set(log[-1])


def test_evaluate_writes_predictions_and_metrics(corpus, tmp_path):
    tmp, manifest = corpus
    cfg = write_experiment(tmp, manifest, tmp / "short", {"train": {"max_steps": 3}})
    assert main(["train", str(cfg), "--quiet"]) == 0
    assert main(["evaluate", str(tmp / "short"), "--manifest", str(manifest), "--out", str(tmp_path / "ev"),
                 "--quiet"]) == 0
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert {"asr", "st", "timing"} <= set(metrics)
    assert 0 <= metrics["asr"]["wer"] and "bleu" in metrics["st"] and metrics["timing"]["real_time_factor"] > 0
    preds = [json.loads(x) for x in (tmp_path / "ev" / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 16 and {"id", "reference", "hypothesis"} <= set(preds[0])


def test_train_device_picks_the_device_of_every_command(corpus, tmp_path, capsys, monkeypatch):
    tmp, manifest = corpus
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


def test_transcribe_reports_bad_files_and_continues(corpus, tmp_path, capsys):
    import numpy as np
    import soundfile as sf

    tmp, manifest = corpus
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


def test_two_process_ddp_on_cpu(corpus):
    tmp, manifest = corpus
    run = tmp / "ddp"
    cfg = write_experiment(tmp, manifest, run, {"train": {"max_steps": 4, "save_every": 0},
                                                "data": {"max_batch_size": 2, "max_batch_seconds": 10.0}})
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           "-m", "speechwire.cli", "train", str(cfg), "--quiet"]
    res = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    ranks = [json.loads((run / "ranks" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"]
    assert set(ranks[0]["ids_seen"]) != set(ranks[1]["ids_seen"])
    assert json.loads((run / "train_summary.json").read_text())["processes"] == 2


def test_validation_keeps_the_best_checkpoint(corpus):
    tmp, manifest = corpus
    run = tmp / "val"
    cfg = write_experiment(tmp, manifest, run, {"train": {"max_steps": 4, "eval_every": 2, "save_every": 0},
                                                "data": {"dev_manifest": str(manifest)}})
    assert main(["train", str(cfg), "--quiet"]) == 0
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["best_dev"]["metric"] == "asr/wer" and summary["final_dev"]["step"] == 4
    assert (run / "best" / "trainable.safetensors").is_file()
    dev_lines = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines() if '"dev"' in x]
    assert [d["step"] for d in dev_lines] == [2, 4]


def test_bf16_mixed_precision_runs_on_cpu(corpus):
    tmp, manifest = corpus
    run = tmp / "bf16"
    cfg = write_experiment(tmp, manifest, run, {"train": {"max_steps": 2, "mixed_precision": "bf16"}})
    assert main(["train", str(cfg), "--quiet"]) == 0
    log = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in log)


def test_missing_train_manifest_is_clear(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train: {output_dir: %s}\n" % (tmp_path / "r"))
    assert main(["train", str(cfg)]) == 2
    assert "data.train_manifest is not set" in capsys.readouterr().err


def test_report_to_without_the_package_is_clear(tmp_path, monkeypatch):
    import importlib.util

    from speechwire.config import load_config
    from speechwire.train import Trainer

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    cfg = load_config(None, ["train.report_to=wandb", f"data.train_manifest={tmp_path / 'x.jsonl'}"])
    with pytest.raises(ValueError, match=r"pip install 'speechwire\[tracking\]'"):
        Trainer(cfg).setup()
