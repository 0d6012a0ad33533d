"""grid/launch.py and grid/status.py: the Slurm array (fake sbatch/squeue/sacct on PATH), the same
tasks run by submitit's local executor (real subprocesses: a kill mid-run, then a resubmission
that resumes it), `--launcher local --max-parallel 2` against the sequential run, and `--status`."""

from __future__ import annotations

import csv
import json
import os
import pickle
import stat
from collections import Counter
from pathlib import Path

import pytest
import yaml

from speechwire.cli import main
from speechwire.grid import load_grid, plan
from speechwire.grid.launch import (
    LaunchError,
    Slot,
    SlurmOptions,
    local_slots,
    parse_extra,
    parse_time,
    pending_runs,
    submit_runs,
)
from speechwire.grid.run import run_grid
from speechwire.grid.status import grid_status, parse_states


def events(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "grid_events.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def two_runs(grid_file, tmp_path_factory) -> Path:
    """The conftest grid cut to 1 SFM x 2 adapters, 4 test items; 4 steps, a checkpoint every 2."""
    raw = yaml.safe_load(grid_file.read_text())
    raw["factors"] = {**raw["factors"], "encoder": {"w32": None}}
    raw["test_sets"] = {"a": raw["test_sets"]["a"]}
    raw["test_max_items"] = 4
    raw["overrides"] += ["train.max_steps=4", "train.save_every=2"]
    path = tmp_path_factory.mktemp("two_runs") / "two.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def sequential(two_runs, tmp_path_factory) -> Path:
    """The reference: both runs one after another in this process, and their report."""
    out = tmp_path_factory.mktemp("seq") / "g"
    run_grid(load_grid(two_runs), out, progress=False)
    assert main(["report", str(out), "--no-plots"]) == 0
    return out


def report_rows(out: Path) -> dict[str, dict]:
    """results.csv without the columns that time the machine (seconds, memory, real-time factor)."""
    timing = ("train_seconds", "peak_memory_gib", "a:rtf")
    return {r["run"]: {k: v for k, v in r.items() if k not in timing} for r in csv.DictReader(open(out / "results.csv"))}


# --- options --------------------------------------------------------------------------------------


def test_slurm_times_and_extras_parse_or_say_what_is_wrong():
    assert [parse_time(t) for t in ("24:00:00", "90", "1:30", "2-00:00:00", "1-12", "0:01")] == [1440, 90, 2, 2880,
                                                                                                    2160, 1]
    for bad in ("1 day", "24h", "0", "-5"):
        with pytest.raises(LaunchError, match="--time"):
            parse_time(bad)
    assert parse_extra(["qos=high", "--account=speech", "mail-type=END"]) == {"qos": "high", "account": "speech",
                                                                            "mail-type": "END"}
    for bad in ("qos", "=high", "qos=", "q os=x"):
        with pytest.raises(LaunchError, match="key=value"):
            parse_extra([bad])
    with pytest.raises(LaunchError, match="--gpus-per-run -1 must be >= 0; --max-parallel 0 must be >= 1"):
        SlurmOptions(gpus_per_run=-1, max_parallel=0)


def test_local_slots_give_each_run_its_own_gpu_or_cpu_share():
    assert local_slots(2, gpus=[0, 1, 2]) == [Slot(0), Slot(1)]
    assert local_slots(2, gpus=[], cores=[0, 1, 2, 3, 4]) == [Slot(None, (0, 1, 2)), Slot(None, (3, 4))]
    assert local_slots(1, gpus=[], cores=[4, 5]) == [Slot(None, (4, 5))]
    with pytest.raises(LaunchError, match="only 2 GPU"):
        local_slots(3, gpus=[0, 1])
    with pytest.raises(LaunchError, match="only 2 CPU core"):
        local_slots(3, gpus=[], cores=[0, 1])


def test_scheduler_lines_parse_with_array_ranges():
    text = "4242_0|RUNNING\n4242_[1-3%2]|PENDING\n4242_4|CANCELLED by 1000\n4242_5.batch|FAILED\n4243|COMPLETED\n"
    assert parse_states(text) == {"4242_0": "RUNNING", "4242_1": "PENDING", "4242_2": "PENDING",
                                  "4242_3": "PENDING", "4242_4": "CANCELLED", "4243": "COMPLETED"}
    assert parse_states("garbage\n\n|x\n") == {}


def test_bad_launcher_flags_are_one_line_errors(grid_file, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    g = str(grid_file)
    cases = {("--launcher", "slurm"): "needs Slurm's sbatch and srun on PATH",
             ("--partition", "gpu"): "--partition only apply to --launcher slurm",
             ("--max-parallel", "2"): "--max-parallel needs --launcher",
             ("--launcher", "local", "--status"): "do not go together",
             ("--launcher", "slurm", "--slurm-extra", "qos"): "must be key=value",
             ("--launcher", "slurm", "--time", "soon"): "is not a Slurm time"}
    for flags, message in cases.items():
        assert main(["grid", g, "--out", str(tmp_path / "g"), *flags]) == 2, flags
        assert message in capsys.readouterr().err, flags
    with pytest.raises(SystemExit) as e:
        main(["grid", g, "--launcher", "pbs"])
    assert e.value.code == 2 and "invalid choice: 'pbs'" in capsys.readouterr().err


# --- slurm, with a fake sbatch --------------------------------------------------------------------


FAKE = {
    "sbatch": 'cp "$1" "$FAKE_SLURM/submitted.sh"; echo "Submitted batch job 4242"',
    "srun": 'echo "srun must not run here" >&2; exit 1',
    "squeue": 'echo "$@" >> "$FAKE_SLURM/calls"; cat "$FAKE_SLURM/squeue.txt" 2>/dev/null',
    "sacct": 'echo "$@" >> "$FAKE_SLURM/calls"; cat "$FAKE_SLURM/sacct.txt" 2>/dev/null',
}


@pytest.fixture()
def fake_slurm(tmp_path, monkeypatch) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in FAKE.items():
        tool = bin_dir / name
        tool.write_text(f"#!/bin/sh\n{body}\n")
        tool.chmod(tool.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM", str(tmp_path))
    return tmp_path


def test_slurm_submits_the_runs_not_done_as_one_array_and_status_reads_the_scheduler(grid_file, fake_slurm, capsys):
    out = fake_slurm / "g"
    names = [r.name for r in plan(load_grid(grid_file))]
    (out / names[0]).mkdir(parents=True)
    (out / names[0] / "grid_run.json").write_text(json.dumps({"name": names[0]}))  # done: never resubmitted
    argv = ["grid", str(grid_file), "--out", str(out)]
    assert main([*argv, "--launcher", "slurm", "--partition", "gpu", "--gpus-per-run", "1", "--cpus-per-run", "8",
                 "--time", "24:00:00", "--max-parallel", "2", "--slurm-extra", "qos=high", "account=speech"]) == 0
    assert "submitted 3 run(s) as Slurm job array 4242" in capsys.readouterr().out
    script = (fake_slurm / "submitted.sh").read_text()
    for line in ("#SBATCH --array=0-2%2", "#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=1",
                 "#SBATCH --cpus-per-task=8", "#SBATCH --time=1440", "#SBATCH --qos=high", "#SBATCH --account=speech",
                 f"#SBATCH --job-name=speechwire-{grid_file.stem}", f"#SBATCH --error={out}/jobs/%A_%a/%A_%a_0_log.err"):
        assert line in script.splitlines(), line
    command = script.splitlines()[-1]
    assert command.startswith("srun --unbuffered") and f"-u -m submitit.core._submit {out}/jobs/%j" in command
    for i, name in enumerate(names[1:]):  # array task i runs the i-th run that is not done
        task = pickle.loads((out / "jobs" / f"4242_{i}" / f"4242_{i}_submitted.pkl").read_bytes()).function
        assert task.runs == [name] and task.out == str(out) and task.cwd == os.getcwd()
    jobs = [json.loads(line) for line in (out / "grid_jobs.jsonl").read_text().splitlines()]
    assert [(j["job"], j["runs"]) for j in jobs] == [(f"4242_{i}", [n]) for i, n in enumerate(names[1:])]

    (fake_slurm / "squeue.txt").write_text("4242_0|RUNNING\n4242_[1]|PENDING\n")
    (fake_slurm / "sacct.txt").write_text("4242_0|RUNNING\n4242_1|PENDING\n4242_2|OUT_OF_MEMORY\n")
    log = out / "jobs" / "4242_2" / "4242_2_0_log.err"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("Traceback (most recent call last):\ntorch.OutOfMemoryError: CUDA out of memory.\n\n")
    rows = grid_status(load_grid(grid_file), out)
    assert [(r.state, r.job) for r in rows] == [("done", None), ("running", "4242_0"), ("queued", "4242_1"),
                                                ("failed", "4242_2")]
    assert rows[3].detail.startswith("OUT_OF_MEMORY; last line of") and "CUDA out of memory." in rows[3].detail
    assert main([*argv, "--status"]) == 0
    printed = capsys.readouterr().out
    assert f"| {names[2]} | queued | 4242_1 | pending; todo |" in printed
    assert "4 run(s): 1 done, 1 running, 1 queued, 1 failed" in printed
    calls = (fake_slurm / "calls").read_text()
    assert "--jobs=4242" in calls and "--array" in calls and "--parsable2" in calls

    for name in names[1:]:  # all done: nothing is submitted again
        (out / name / "grid_run.json").parent.mkdir(parents=True, exist_ok=True)
        (out / name / "grid_run.json").write_text("{}")
    (fake_slurm / "submitted.sh").unlink()
    assert main([*argv, "--launcher", "slurm"]) == 0
    assert "nothing to submit" in capsys.readouterr().out and not (fake_slurm / "submitted.sh").exists()


# --- the same tasks in real subprocesses ----------------------------------------------------------


@pytest.mark.slow
def test_local_executor_runs_the_slurm_tasks_a_killed_run_resumes_and_done_runs_stay(two_runs, tmp_path,
                                                                                    monkeypatch, capsys):
    from submitit import LocalExecutor

    spec = load_grid(two_runs)
    first, second = (r.name for r in plan(spec))
    out = tmp_path / "g"
    run_grid(spec, out, names=[first], progress=False)  # done before any submission

    def submit() -> list:
        executor = LocalExecutor(folder=out / "jobs" / "%j")
        executor.update_parameters(timeout_min=5)
        jobs = submit_runs(executor, spec, out, pending_runs(spec, out), "slurm")  # the Slurm path but sbatch
        for job in jobs:
            job.wait()
        return jobs

    monkeypatch.setenv("SPEECHWIRE_FAULTS", "checkpoint.before-prune@1")  # SIGKILL at the step-2 checkpoint
    (killed,) = submit()
    assert not (out / second / "grid_run.json").exists() and not killed.paths.result_pickle.exists()
    assert (out / second / "checkpoints" / "step-000002").is_dir()
    row = {r.name: r for r in grid_status(spec, out)}[second]
    assert row.state == "failed" and row.job == killed.job_id and "stopped without a result" in row.detail

    monkeypatch.delenv("SPEECHWIRE_FAULTS")
    (resumed,) = submit()  # only the unfinished run is submitted again
    assert resumed.result()[second]["steps"] == 4
    ev = events(out)
    starts = [(e["run"], e["status"], e.get("job")) for e in ev if e["event"] == "start"]
    assert starts == [(first, "todo", None), (second, "todo", killed.job_id), (second, "partial", resumed.job_id)]
    assert Counter(e["run"] for e in ev if e["event"] == "done") == {first: 1, second: 1}
    log = [json.loads(line) for line in (out / second / "log.jsonl").read_text().splitlines()]
    assert [x["step"] for x in log if "loss" in x and "step" in x][-2:] == [3, 4]  # steps 3-4 after the resume
    assert [r.state for r in grid_status(spec, out)] == ["done", "done"]


@pytest.mark.slow
def test_local_launcher_runs_two_at_once_each_once_with_the_sequential_report(two_runs, sequential, tmp_path, capsys):
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs 2 CPU cores")
    out = tmp_path / "g"
    assert main(["grid", str(two_runs), "--out", str(out), "--launcher", "local", "--max-parallel", "2",
                 "--quiet"]) == 0
    ev = events(out)
    workers = [e for e in ev if e["event"] == "worker"]
    assert sorted(tuple(w["cpus"]) for w in workers) == [(0,), (1,)] and all(w["threads"] == 1 for w in workers)
    names = [r.name for r in plan(load_grid(two_runs))]
    assert Counter(e["run"] for e in ev if e["event"] == "start") == {n: 1 for n in names}
    assert Counter(e["run"] for e in ev if e["event"] == "done") == {n: 1 for n in names}
    assert main(["report", str(out), "--no-plots"]) == 0
    assert report_rows(out) == report_rows(sequential)  # the same numbers whichever launcher ran them
    assert main(["grid", str(two_runs), "--out", str(out), "--status"]) == 0
    assert "2 run(s): 2 done" in capsys.readouterr().out
