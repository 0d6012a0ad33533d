"""Faults lose nothing: a full disk (ENOSPC, injected) while writing a checkpoint, a cache entry,
predictions or a grid result; SIGKILL at fault points and at a random moment of training, cache
building and a grid run; two grid workers on one folder; resume files that would run code."""

from __future__ import annotations

import io
import json
import os
import random
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from speechwire.config import load_config
from speechwire.data import load_manifest
from speechwire.errors import DiskFullError
from speechwire.features import FeatureCache
from speechwire.grid import load_grid, plan
from speechwire.grid.layout import EVENTS
from speechwire.grid.run import run_grid
from speechwire.resume import load_resume
from speechwire.testing import save_tiny_llm, save_tiny_whisper
from speechwire.train import complete_checkpoints, train

from helpers import Forker, disk_full, mustc_manifest, write_experiment


def _weights(run: Path) -> dict:
    return load_file(str(run / "trainable.safetensors"))


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-6), k


@pytest.fixture(scope="module")
def forker(tmp_path_factory):
    f = Forker(tmp_path_factory.mktemp("forker") / "children.log")
    yield f
    f.close()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("faults")
    return tmp, mustc_manifest(tmp, "train.jsonl", tasks=("asr",), n=4)


DROPOUT = {"name": "conv", "stack": 1, "num_layers": 1, "num_heads": 4, "ffn_size": 64, "dropout": 0.3}  # draws random numbers


def experiment(corpus, name: str, **train_kw) -> Path:
    """A 4-step run (checkpoints every 2) whose adapter draws dropout masks: a resume is exact only if
    the random number state is restored where the interrupted run left it."""
    tmp, manifest = corpus
    return write_experiment(tmp, manifest, tmp / name, {"adapter": DROPOUT,
                                                        "train": {"max_steps": 4, "save_every": 2, "log_every": 1,
                                                                  "keep_last": 2, **train_kw}})


# --- a full disk ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ref4(corpus) -> Path:
    """An uninterrupted 4-step run (checkpoints at steps 2 and 4)."""
    train(load_config(experiment(corpus, "ref4")), progress=False)
    return corpus[0] / "ref4"


@pytest.fixture(scope="module")
def ref6(corpus) -> Path:
    """An uninterrupted 6-step run (checkpoints at steps 2, 4 and 6)."""
    train(load_config(experiment(corpus, "ref6", max_steps=6)), progress=False)
    return corpus[0] / "ref6"


def test_disk_full_during_a_checkpoint_keeps_the_previous_one(corpus, ref4):
    cfg = experiment(corpus, "full4")
    run = corpus[0] / "full4"
    with disk_full(f"{run}/checkpoints/step-000004.tmp/*"), pytest.raises(DiskFullError) as e:
        train(load_config(cfg), progress=False)
    msg = str(e.value)
    assert msg.startswith("disk full while writing checkpoint step-000004 (") and " it needs " in msg
    assert "finished work is kept" in msg and "\n" not in msg
    assert complete_checkpoints(run)[-1].name == "step-000002" and not (run / "checkpoints" / "step-000004.tmp").exists()
    train(load_config(cfg), progress=False)  # space is back: resume from step 2
    assert_same_weights(ref4, run)


def test_a_damaged_newest_checkpoint_is_skipped_and_the_resumed_run_is_exact(corpus, ref6, capsys):
    cfg = experiment(corpus, "fallback6", max_steps=6)
    run = corpus[0] / "fallback6"
    with disk_full(f"{run}/checkpoints/step-000006.tmp/*"), pytest.raises(DiskFullError):
        train(load_config(cfg), progress=False)  # stopped at the last checkpoint: steps 2 and 4 on disk
    newest = run / "checkpoints" / "step-000004"
    assert complete_checkpoints(run)[-1] == newest
    rng = bytearray((newest / "rng-rank0.safetensors").read_bytes())
    rng[-1] ^= 0x01  # one bit of the random number state's tensor bytes
    (newest / "rng-rank0.safetensors").write_bytes(bytes(rng))
    capsys.readouterr()
    with pytest.warns(UserWarning, match=r"step-000004.*rng-rank0.*resuming from the checkpoint before it"):
        train(load_config(cfg), progress=False)
    assert f"resumed from {run / 'checkpoints' / 'step-000002'} (step 2/6)" in capsys.readouterr().out
    assert_same_weights(ref6, run)  # nothing of the damaged checkpoint leaked into the resumed run


def test_free_space_is_checked_before_a_checkpoint_is_written(tmp_path, monkeypatch):
    from speechwire import resume

    files = {"trainable.safetensors": b"w" * 1500, "state.json": b"{}"}
    previous = tmp_path / "checkpoints" / "step-000002"
    resume.write_checkpoint(files, previous, "checkpoint step-000002")
    monkeypatch.setattr(resume, "free_bytes", lambda path: 1000)  # the disk has less than the 1,502 bytes
    final = tmp_path / "checkpoints" / "step-000004"
    with disk_full(f"{tmp_path}/*", after_bytes=10**9) as disk, \
            pytest.raises(DiskFullError, match=r"^disk full while writing checkpoint step-000004 \(.*\): it needs 1\.5 KB"):
        resume.write_checkpoint(files, final, "checkpoint step-000004")
    assert disk["bytes"] == 0  # refused before a byte was written
    assert not final.exists() and not final.with_name("step-000004.tmp").exists()
    assert (previous / "trainable.safetensors").read_bytes() == files["trainable.safetensors"]
    monkeypatch.setattr(resume, "free_bytes", lambda path: 10**6)  # space is back: the same call writes it
    with disk_full(f"{tmp_path}/*", after_bytes=10**9) as disk:
        resume.write_checkpoint(files, final, "checkpoint step-000004")
    assert disk["bytes"] == 1502 and (final / "state.json").is_file()


def test_disk_full_while_caching_keeps_the_entries_written(corpus, tmp_path):
    cfg = load_config(experiment(corpus, "cache"))
    cfg.data.feature_cache = str(tmp_path)
    utts = load_manifest(corpus[1])
    cache = FeatureCache.for_config(cfg)
    with disk_full(f"{tmp_path}/*.safetensors.*.tmp", after_bytes=10_000) as disk, \
            pytest.raises(DiskFullError, match=r"feature-cache entry of utterance '.*' \(.*\): it needs \d+\.\d KB"):
        cache.ensure(utts, progress=False)  # entries of 4-8 KB: the disk fills up at the third
    assert disk["failures"] == 1
    written = [u for u in utts if cache.path(cache.key(u)).is_file()]
    assert 0 < len(written) < len(utts) and all(cache.get(u) is not None for u in written)
    assert not list(tmp_path.rglob("*.tmp"))
    cache.ensure(utts, progress=False)
    assert all(cache.get(u) is not None for u in utts)


def test_disk_full_while_writing_predictions_keeps_the_old_ones(corpus, ref4, tmp_path):
    from speechwire.evaluate import evaluate_utterances
    from speechwire.model import SpeechLLM

    model = SpeechLLM.from_pretrained(ref4)
    utts = load_manifest(corpus[1])
    evaluate_utterances(model, utts, model.cfg, tmp_path, progress=False)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with disk_full(f"{tmp_path}/predictions.jsonl.*"), pytest.raises(DiskFullError, match="while writing predictions"):
        evaluate_utterances(model, utts, model.cfg, tmp_path, progress=False)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


# --- grids ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def grid_world(corpus):
    tmp, manifest = corpus
    save_tiny_whisper(tmp / "w", d_model=32, layers=1, seed=0)
    save_tiny_llm(tmp / "llm")
    return tmp, manifest


def grid_file(grid_world, name: str, seeds: list[int]) -> Path:
    tmp, manifest = grid_world
    grid = {
        "base": {"data": {"train_manifest": str(manifest), "max_batch_seconds": 3.0, "max_batch_size": 4,
                          "feature_cache_dtype": "float32"},
                 "encoder": {"name": "whisper", "model": str(tmp / "w")}, "llm": {"model": str(tmp / "llm")},
                 "adapter": {"hidden_size": 32, "num_layers": 1, "num_heads": 4, "ffn_size": 64, "dropout": 0.0},
                 "train": {"max_steps": 2, "lr": 3e-3, "save_every": 1, "log_every": 1},
                 "eval": {"max_new_tokens": 4, "batch_size": 4}},
        "factors": {"adapter": ["mlp", "conv"]}, "seeds": seeds, "test_sets": {"a": str(manifest)},
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    return path


def events(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / EVENTS).read_text().splitlines()]


def test_disk_full_on_a_grid_result_keeps_the_finished_ones(grid_world, tmp_path):
    spec = load_grid(grid_file(grid_world, "enospc", [0]))
    first, second = plan(spec)
    with disk_full(f"{tmp_path}/{second.name}/grid_run.json.*"), \
            pytest.raises(DiskFullError, match=f"while writing the grid result of {second.name}"):
        run_grid(spec, tmp_path, progress=False)
    kept = json.loads((tmp_path / first.name / "grid_run.json").read_text())
    assert kept["name"] == first.name and not (tmp_path / second.name / "grid_run.json").exists()
    results = run_grid(spec, tmp_path, progress=False)  # the second run only evaluates now
    assert [r["name"] for r in results] == [first.name, second.name]
    starts = [e for e in events(tmp_path) if e["event"] == "start"]
    assert [e["status"] for e in starts] == ["todo", "todo", "trained"]


# --- SIGKILL ------------------------------------------------------------------------------------


def _to_old_format(ckpt: Path) -> None:
    """Rewrite a checkpoint's resume files as speechwire wrote them before (torch.save pickles)."""
    rng = load_resume(ckpt, "rng-rank0", "rng")
    version, mt, gauss = rng["python"]
    name, keys, pos, has_gauss, cached = rng["numpy"]
    import numpy as np

    old_rng = {"python": (version, tuple(mt), gauss),
               "numpy": (name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached), "torch": rng["torch"]}
    for stem, state in (("optimizer", load_resume(ckpt, "optimizer", "o")),
                        ("scheduler", load_resume(ckpt, "scheduler", "s")), ("rng-rank0", old_rng)):
        torch.save(state, ckpt / f"{stem}.pt")
        for suffix in (".json", ".safetensors"):
            (ckpt / f"{stem}{suffix}").unlink(missing_ok=True)


@pytest.mark.slow
def test_sigkill_at_fault_points_and_a_random_moment_then_resume(corpus, ref6, forker):
    tmp = corpus[0]
    cfg = experiment(corpus, "killed6", max_steps=6)
    run = tmp / "killed6"
    argv = ["train", cfg, "--quiet"]
    # 1: the second checkpoint is complete in step-000004.tmp but not yet renamed
    assert forker.run(argv, faults="checkpoint.before-rename@2")["by"] == "fault"  # the fault point, not a timeout
    assert complete_checkpoints(run)[-1].name == "step-000002" and (run / "checkpoints" / "step-000004.tmp").is_dir()
    _to_old_format(run / "checkpoints" / "step-000002")  # a checkpoint written before this format
    # 2: resumes from the old-format step 2, dies writing the 3rd file of step 4
    assert forker.run(argv, faults="write.before-replace@3")["by"] == "fault"
    assert complete_checkpoints(run)[-1].name == "step-000002"
    # 3: a random moment (seeded) of a run with 4 steps left, each held to >= 0.4 s: the kill lands
    # inside it (in setup, a step or a checkpoint), never after it finished
    kill_after = random.Random(16).uniform(0.3, 1.5)
    random_kill = forker.run(argv, kill_after=kill_after, step_sleep=0.4)
    assert random_kill["by"] == "timer" and not (run / "trainable.safetensors").exists(), random_kill
    # 4: a later checkpoint written (step 4, or the final step 6 when the random kill came after
    # step 4's), killed before the old ones are pruned and before the final weights
    assert forker.run(argv, faults="checkpoint.before-prune@1")["by"] == "fault"
    assert not (run / "trainable.safetensors").exists()
    done = forker.run(argv)
    assert done == {**done, "killed": False, "code": 0}
    assert_same_weights(ref6, run)
    assert len(list((run / "checkpoints").glob("step-*"))) <= 2
    print(f"kill points: rename@2, write@3, random at {kill_after:.2f} s, prune@1: all reached; final weights equal")


@pytest.mark.slow
def test_sigkill_during_cache_building_and_grid_runs(grid_world, forker, tmp_path):
    path = grid_file(grid_world, "killgrid", [0])
    spec = load_grid(path)
    names = [r.name for r in plan(spec)]
    out = tmp_path / "g"
    argv = ["grid", path, "--out", out, "--quiet"]
    assert forker.run(argv, faults="cache.after-put@3")["by"] == "fault"  # 3 of 4 entries written
    cache = FeatureCache.for_config(_cfg_of(spec, out))
    utts = load_manifest(grid_world[1])
    on_disk = [u for u in utts if cache.path(cache.key(u)).is_file()]
    assert len(on_disk) == 3 and all(cache.get(u) is not None for u in on_disk)  # whole, never half
    assert forker.run(argv, faults="grid.after-train@1")["by"] == "fault"  # run 1 trained, not evaluated
    assert forker.run(argv, faults="grid.before-result@1")["by"] == "fault"  # run 1 evaluated, result not written
    assert forker.run(argv)["code"] == 0  # run 1 evaluated again, run 2 trained and evaluated
    ev = events(out)
    cache_writes = sum(e["written"] for e in ev if e["event"] == "cache")
    assert cache_writes == 1  # the entry the killed builder had not written, and only it
    done = Counter(e["run"] for e in ev if e["event"] == "done")
    assert done == {n: 1 for n in names}  # no run lost, none counted twice
    assert all(json.loads((out / n / "grid_run.json").read_text())["name"] == n for n in names)


def _cfg_of(spec, out: Path):
    from speechwire.grid.layout import cache_root
    from speechwire.grid.spec import run_config

    return run_config(spec, plan(spec)[0], out, cache_root(spec, out))


@pytest.mark.slow
def test_two_workers_on_one_grid_folder_do_each_run_once(grid_world, forker, tmp_path):
    path = grid_file(grid_world, "twoworkers", [0, 1])
    names = [r.name for r in plan(load_grid(path))]
    out = tmp_path / "g"
    second = Forker(tmp_path / "worker1.log")
    try:
        assert second.run(["--help"])["code"] == 0  # warm: both workers start together
        argvs = [["grid", path, "--out", out, "--quiet"], ["grid", path, "--out", out, "--quiet", "--shard", "1/2"]]
        workers = [forker, second]
        for w, argv in zip(workers, argvs):
            w.submit(argv)
        results = [w.result() for w in workers]
    finally:
        second.close()
    assert all(r["code"] == 0 for r in results), results
    ev = events(out)
    starts = Counter(e["run"] for e in ev if e["event"] == "start")
    done = Counter(e["run"] for e in ev if e["event"] == "done")
    assert starts == done == {n: 1 for n in names}  # duplicates: 0
    utts = load_manifest(grid_world[1])
    assert sum(e["written"] for e in ev if e["event"] == "cache") == len(utts)  # each entry written once
    by_worker = Counter(e["pid"] for e in ev if e["event"] == "done")
    assert len(by_worker) == 2, by_worker  # both did runs: they really ran side by side
    print(f"two workers: {len(done)} runs done, split {sorted(by_worker.values())}, duplicates 0")


# --- resume files that would run code -------------------------------------------------------------


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_crafted_resume_file_does_not_run(ref4, tmp_path, capsys):
    from speechwire.cli import main

    src = ref4
    run = tmp_path / "run"
    shutil.copytree(src, run)
    cfg = yaml.safe_load((src / "config.yaml").read_text())
    cfg["train"]["output_dir"], cfg["train"]["max_steps"] = str(run), 6
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    marker = tmp_path / "pwned"
    for ckpt in (run / "checkpoints").glob("step-*"):  # every checkpoint: no clean one to fall back on
        for stem in ("rng-rank0", "optimizer"):
            for suffix in (".json", ".safetensors"):
                (ckpt / f"{stem}{suffix}").unlink(missing_ok=True)
            buf = io.BytesIO()
            torch.save({"python": _Payload(marker)}, buf)
            (ckpt / f"{stem}.pt").write_bytes(buf.getvalue())
    code = main(["train", str(tmp_path / "run.yaml"), "--quiet"])
    err = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert code == 2 and len(err) == 1 and "refused to load this random number state: it is not plain data" in err[0]
    assert "posix.system" in err[0] or "os.system" in err[0]
    assert not marker.exists()
