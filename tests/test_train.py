"""Training end to end: MuST-C import -> train -> SIGKILL -> resume (same weights); DDP, validation, bf16.

The trained runs are scored in test_evaluate.py and transcribed in test_cli.py."""

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
from speechwire.train import complete_checkpoints, lr_factor

from helpers import write_experiment

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TRANSFORMERS_VERBOSITY": "error"}
CLI = [sys.executable, "-m", "speechwire.cli"]


def test_lr_schedule_warmup_then_cosine():
    assert lr_factor(0, 100, 10) == pytest.approx(1 / 11)
    assert lr_factor(10, 100, 10) == pytest.approx(1.0)
    assert lr_factor(55, 100, 10) == pytest.approx(0.5)
    assert lr_factor(100, 100, 10) == pytest.approx(0.0, abs=1e-12)


def _weights(run: Path) -> dict:
    return load_file(str(run / "trainable.safetensors"))


@pytest.mark.slow
def test_sigkill_then_resume_gives_the_same_weights(mustc_corpus):
    tmp, manifest = mustc_corpus
    dropout = {"name": "conv", "stack": 1, "num_layers": 1, "num_heads": 4, "ffn_size": 64, "dropout": 0.3}  # random masks
    ref_cfg = write_experiment(tmp, manifest, tmp / "ref", {"train": {"max_steps": 24}, "adapter": dropout})
    subprocess.run([*CLI, "train", str(ref_cfg), "--quiet"], check=True, env=ENV, capture_output=True)

    run = tmp / "killed"
    cfg = write_experiment(tmp, manifest, run, {"train": {"max_steps": 24}, "adapter": dropout})
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
    ckpt = complete_checkpoints(run)[-1]
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


def _torchrun(cfg: Path, faults: str = "") -> subprocess.CompletedProcess:
    """`torchrun --nproc_per_node 2 -m speechwire.cli train CFG` on CPU (gloo); with `faults`
    (SPEECHWIRE_FAULTS) a process SIGKILLs itself at that fault point."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           "-m", "speechwire.cli", "train", str(cfg), "--quiet"]
    return subprocess.run(cmd, env={**ENV, "SPEECHWIRE_FAULTS": faults}, capture_output=True, text=True, timeout=600)


def _ranks(run: Path) -> list[dict]:
    return [json.loads((run / "ranks" / f"rank{r}.json").read_text()) for r in (0, 1)]


def _assert_same_weights(a: Path, b: Path, atol: float) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=atol), (k, (wa[k] - wb[k]).abs().max())


@pytest.mark.slow
def test_two_process_ddp_splits_the_data_as_one_process_with_two_micro_batches(mustc_corpus):
    tmp, manifest = mustc_corpus
    setup = {"train": {"max_steps": 4, "save_every": 0}, "data": {"max_batch_size": 2, "max_batch_seconds": 10.0}}
    ddp = tmp / "ddp"
    res = _torchrun(write_experiment(tmp, manifest, ddp, setup))
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads((ddp / "train_summary.json").read_text())["processes"] == 2
    ranks = _ranks(ddp)
    assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"]
    assert not set(ranks[0]["ids_seen"]) & set(ranks[1]["ids_seen"])  # 4 steps: less than an epoch, no overlap
    # rank r takes global batches r, r + 2, ... and a step averages the two ranks' gradients (the mlp
    # adapter draws no random numbers), so one process taking both batches of each step ends the same
    one = tmp / "ddp-one-process"
    cfg = write_experiment(tmp, manifest, one, {**setup, "train": {**setup["train"], "grad_accum": 2}})
    assert main(["train", str(cfg), "--quiet"]) == 0
    _assert_same_weights(ddp, one, atol=1e-5)


@pytest.mark.slow
def test_two_process_ddp_killed_then_resumed_equals_an_uninterrupted_run(mustc_corpus):
    tmp, manifest = mustc_corpus
    setup = {"adapter": {"name": "conv", "stack": 1, "num_layers": 1, "num_heads": 4, "ffn_size": 64, "dropout": 0.3},
             "train": {"max_steps": 6, "save_every": 2}, "data": {"max_batch_size": 2, "max_batch_seconds": 10.0}}
    ref = tmp / "ddp-ref"  # uninterrupted; dropout draws from each rank's random number state
    res = _torchrun(write_experiment(tmp, manifest, ref, setup))
    assert res.returncode == 0, res.stderr[-3000:]
    run = tmp / "ddp-killed"
    cfg = write_experiment(tmp, manifest, run, setup)
    res = _torchrun(cfg, faults="checkpoint.before-rename@2")  # kill -9 of rank 0: step 4 written, not renamed
    assert res.returncode != 0 and "SIGKILL" in res.stderr, res.stderr[-3000:]  # and torchrun ended rank 1
    assert complete_checkpoints(run)[-1].name == "step-000002" and (run / "checkpoints" / "step-000004.tmp").is_dir()
    assert not (run / "trainable.safetensors").exists()
    res = _torchrun(cfg)  # the same command again: both ranks resume from step 2
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"resumed from {run / 'checkpoints' / 'step-000002'} (step 2/6)" in res.stdout
    _assert_same_weights(ref, run, atol=1e-6)
    assert _ranks(run)[0]["weights_sha256"] == _ranks(run)[1]["weights_sha256"] == _ranks(ref)[0]["weights_sha256"]


def test_validation_keeps_the_best_checkpoint(mustc_corpus):
    tmp, manifest = mustc_corpus
    run = tmp / "val"
    cfg = write_experiment(tmp, manifest, run, {"train": {"max_steps": 4, "eval_every": 2, "save_every": 0},
                                                "data": {"dev_manifest": str(manifest)}})
    assert main(["train", str(cfg), "--quiet"]) == 0
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["best_dev"]["metric"] == "asr/wer" and summary["final_dev"]["step"] == 4
    assert (run / "best" / "trainable.safetensors").is_file()
    dev_lines = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines() if '"dev"' in x]
    assert [d["step"] for d in dev_lines] == [2, 4]


def test_eval_every_without_a_dev_manifest_trains_on(mustc_corpus):
    # the demo recipe sets eval_every; a user who drops the dev set (data.dev_manifest=null) must
    # still get a trained run, not a crash at the first evaluation step
    tmp, manifest = mustc_corpus
    run = tmp / "nodev"
    cfg = write_experiment(tmp, manifest, run, {"train": {"max_steps": 4, "eval_every": 2, "save_every": 0},
                                                "data": {"dev_manifest": None}})
    assert main(["train", str(cfg), "--quiet"]) == 0
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["steps"] == 4 and summary["best_dev"] is None and summary["final_dev"] is None
    assert (run / "trainable.safetensors").is_file() and not (run / "best").exists()
    assert not any('"dev"' in x for x in (run / "log.jsonl").read_text().splitlines())


def test_bf16_mixed_precision_runs_on_cpu(mustc_corpus):
    tmp, manifest = mustc_corpus
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


def test_on_step_hook_sees_every_optimizer_step_once(mustc_corpus):
    """Trainer(on_step=...) is called after each optimizer step (grad_accum micro-batches make one),
    before that step's checkpoint: the grid's estimator times steps with it."""
    from speechwire.config import load_config
    from speechwire.train import Trainer

    tmp, manifest = mustc_corpus
    run = tmp / "hooked"
    cfg = load_config(write_experiment(tmp, manifest, run, {"train": {"max_steps": 3, "grad_accum": 2, "save_every": 2}}))
    seen = []
    trainer = Trainer(cfg, resume=False, progress=False,
                      on_step=lambda step: seen.append((step, (run / "checkpoints" / f"step-{step:06d}").exists())))
    trainer.setup()
    trainer.train()
    assert seen == [(1, False), (2, False), (3, False)]
