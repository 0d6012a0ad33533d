"""Launchers: the grid's unfinished runs as submitit jobs, one job per run, on Slurm or on this machine.

    launch_slurm(spec, out, SlurmOptions(partition="gpu", time="24:00:00", max_parallel=8))
    launch_local(spec, out, max_parallel=2)     # 2 runs at once, each on its own GPU or CPU cores

Both submit the same task, `GridTask`: `run_grid(spec, out, names=[run])` - the code a plain
`speechwire grid` runs, in the same run folder, under the same claim lock, logging to the same
`grid_events.jsonl`; so a finished grid's report does not depend on the launcher. A task resumes
its run from the newest checkpoint, whether Slurm requeued it after a pre-emption or time-out
(submitit's checkpoint-and-requeue: `GridTask` is `Checkpointable`) or the user submitted again.

- slurm: one job array of the runs that are not done (`--array=0-N%K` with --max-parallel K);
  the command returns once sbatch accepted it. `speechwire grid CONFIG --status` follows it.
- local: K runs at a time; each is pinned to its own GPU (CUDA_VISIBLE_DEVICES) when the machine
  has GPUs, else to its own share of the CPU cores (affinity + torch threads); the command waits
  for all of them and fails naming each failed run with the last line of its log.

Every submitted job is appended to `<out>/grid_jobs.jsonl` (launcher, job id, run, log file): what
`--status` reads to name a run's job and its log. submitit keeps its pickles and logs in `<out>/jobs/`.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from submitit.helpers import Checkpointable

from speechwire.files import append_line
from speechwire.grid.layout import JOBS, RUN_FILE, log_event, output_root, read_result, run_status
from speechwire.grid.spec import GridSpec, Run, shard_plan
from speechwire.grid.status import failed_since, failure_reason
from speechwire.grid.worker import cpu_cores, pin_cpus, placement

LAUNCHERS = ("local", "slurm")
LOCAL_TIMEOUT_MIN = 7 * 24 * 60  # submitit's local jobs are killed after timeout_min; a run has no such limit


class LaunchError(ValueError):
    """A launcher cannot start: a bad option, no sbatch on PATH, more parallel runs than devices."""


class RunsFailedError(ValueError):
    """Some locally launched runs failed (each named with its reason); a ValueError so that the
    command line prints it as one line, like any failure the user has to look at."""


# --- options ------------------------------------------------------------------------------------


def parse_time(text: str) -> int:
    """A Slurm time limit -> whole minutes (rounded up).

    Accepts Slurm's forms: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S (e.g. "24:00:00", "2-00:00:00", "90").
    """
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", str(text).strip())
    if not m:
        raise LaunchError(f"--time {text!r} is not a Slurm time; use minutes, H:M:S or D-H:M:S, e.g. --time 24:00:00")
    days, *rest = m.groups()
    parts = [int(x) for x in rest if x is not None]
    if days is None and len(parts) < 3:  # M, M:S: no hours
        parts = [0, *parts]
    h, mi, s = (parts + [0, 0])[:3]  # D-H, D-H:M: no minutes or seconds
    seconds = ((int(days or 0) * 24 + h) * 60 + mi) * 60 + s
    if seconds <= 0:
        raise LaunchError(f"--time {text!r} must be longer than 0")
    return -(-seconds // 60)


def parse_extra(items: Sequence[str] | None) -> dict[str, str]:
    """--slurm-extra key=value ... -> {key: value}, each an `#SBATCH --key=value` line (e.g. qos=high)."""
    extra: dict[str, str] = {}
    for item in items or ():
        key, sep, value = str(item).partition("=")
        key = key.strip().removeprefix("--")
        if not sep or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", key) or not value.strip():
            raise LaunchError(f"--slurm-extra {item!r} must be key=value with an sbatch option name as key, "
                              "e.g. --slurm-extra qos=high account=speech")
        if "\n" in value:
            raise LaunchError(f"--slurm-extra {key}: the value may not span lines")
        extra[key] = value.strip()
    return extra


@dataclass(frozen=True)
class SlurmOptions:
    """What each array task asks Slurm for (one task = one run)."""

    partition: str | None = None
    gpus_per_run: int = 1
    cpus_per_run: int | None = None  # None: the partition's default
    time: str = "24:00:00"  # per run; a run that needs longer is requeued and resumes (up to 3 times)
    max_parallel: int | None = None  # array tasks running at once (`%K`); None: all
    extra: dict[str, str] = field(default_factory=dict)  # more #SBATCH lines, e.g. {"qos": "high"}

    def __post_init__(self) -> None:
        problems = []
        if self.gpus_per_run < 0:
            problems.append(f"--gpus-per-run {self.gpus_per_run} must be >= 0")
        if self.cpus_per_run is not None and self.cpus_per_run < 1:
            problems.append(f"--cpus-per-run {self.cpus_per_run} must be >= 1")
        if self.max_parallel is not None and self.max_parallel < 1:
            problems.append(f"--max-parallel {self.max_parallel} must be >= 1")
        if problems:
            raise LaunchError("; ".join(problems))
        parse_time(self.time)

    def parameters(self, name: str, num_runs: int) -> dict[str, Any]:
        """submitit SlurmExecutor parameters for an array of `num_runs` tasks."""
        optional = {"partition": self.partition, "gpus_per_node": self.gpus_per_run, "cpus_per_task": self.cpus_per_run,
                    "additional_parameters": dict(self.extra)}  # left out when unset (0, None, empty)
        return {"job_name": name, "time": parse_time(self.time), "array_parallelism": self.max_parallel or num_runs,
                **{k: v for k, v in optional.items() if v}}


# --- the task -----------------------------------------------------------------------------------


class GridTask(Checkpointable):
    """Runs of a grid as one submitit job: what `speechwire grid` does for each, one after another.

    A Slurm array task holds one run; a local worker holds every pending run and takes those no
    other worker has claimed (the claim locks of run.py share them out), so each process pays its
    start-up (torch, transformers) once, not once per run. A run that fails is logged and left;
    the task goes on with the next one and raises at the end, naming the failed runs. A run that
    failed in a sibling worker of the same launch is not tried again by this one.

    Checkpointable: on a pre-emption or time-out signal submitit requeues the same task, which
    resumes its run from the newest checkpoint (the Trainer's exact resume).
    """

    def __init__(self, spec: GridSpec, out: str | Path, runs: Sequence[str], use_cache: bool = True,
                 cpus: Sequence[int] | None = None) -> None:
        self.spec = spec
        self.out = str(Path(out).absolute())
        self.runs = list(runs)
        self.use_cache = use_cache
        self.cpus = list(cpus) if cpus else None  # local launcher on CPUs: this worker's share of the cores
        self.cwd = os.getcwd()  # relative paths in the grid file mean what they meant where it was submitted
        self.since = time.time()  # failures logged after this are this launch's

    def __call__(self) -> dict[str, dict]:
        from speechwire.grid.run import run_grid

        os.chdir(self.cwd)
        if self.cpus:
            pin_cpus(self.cpus)
        log_event(Path(self.out), "worker", runs=len(self.runs), **placement())  # where it sits, before any run
        results: dict[str, dict] = {}
        failed: list[str] = []
        for name in self.runs:
            if name in failed_since(Path(self.out), self.since):  # a sibling worker's failure: not retried here
                continue
            try:
                for result in run_grid(self.spec, self.out, names=[name], use_cache=self.use_cache, progress=False,
                                       wait=False):
                    results[result["name"]] = result
            except Exception as e:  # logged as a "failed" event by run.py; the other runs still run
                failed.append(f"{name}: {type(e).__name__}: {e}")
        if failed:
            raise RuntimeError(f"{len(failed)} run(s) failed: " + " | ".join(failed))
        return results


def pending_runs(spec: GridSpec, out: Path, shard: tuple[int, int] = (0, 1)) -> list[Run]:
    """The shard's planned runs that are not done (no grid_run.json): what a launcher submits."""
    return [r for r in shard_plan(spec, shard) if run_status(out / r.name) != "done"]


def record_job(out: Path, launcher: str, job: Any, runs: list[str]) -> None:
    """One line of grid_jobs.jsonl: what --status needs to name a run's job and find its log."""
    record = {"time": round(time.time(), 3), "launcher": launcher, "job": str(job.job_id), "runs": runs,
              "log": str(job.paths.stderr)}
    append_line(out / JOBS, json.dumps(record), "the grid's job log")


def submit_runs(executor: Any, spec: GridSpec, out: Path, runs: list[Run], launcher: str,
                use_cache: bool = True) -> list[Any]:
    """Submit one GridTask per run as one job array (Slurm) or one job each (local executor)."""
    tasks = [GridTask(spec, out, [r.name], use_cache) for r in runs]
    jobs = executor.submit_array(tasks)
    for job, run in zip(jobs, runs):
        record_job(out, launcher, job, [run.name])
    return jobs


# --- slurm --------------------------------------------------------------------------------------


def launch_slurm(spec: GridSpec, out: str | Path | None, options: SlurmOptions, shard: tuple[int, int] = (0, 1),
                 use_cache: bool = True) -> list[Any]:
    """Submit the runs that are not done as one Slurm job array; returns the jobs (empty: all done)."""
    from submitit import SlurmExecutor

    missing = [tool for tool in ("sbatch", "srun") if shutil.which(tool) is None]
    if missing:
        raise LaunchError(f"--launcher slurm needs Slurm's {' and '.join(missing)} on PATH (not found); run it on "
                          "the cluster's login node, or use --launcher local on this machine")
    out = output_root(spec, out).absolute()
    runs = pending_runs(spec, out, shard)
    if not runs:
        return []
    out.mkdir(parents=True, exist_ok=True)
    executor = SlurmExecutor(folder=out / "jobs" / "%j", python=shlex.quote(sys.executable))
    executor.update_parameters(**options.parameters(f"speechwire-{spec.path.stem}", len(runs)))
    return submit_runs(executor, spec, out, runs, "slurm", use_cache)


# --- local --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Slot:
    """Where one of the K local runs goes: one GPU, or a share of the CPU cores."""

    gpu: int | None
    cpus: tuple[int, ...] = ()

    def describe(self) -> str:
        return f"GPU {self.gpu}" if self.gpu is not None else f"CPU {','.join(map(str, self.cpus))}"


def visible_gpus() -> list[int]:
    """The GPUs this process may use, as numbers for CUDA_VISIBLE_DEVICES."""
    import torch

    count = torch.cuda.device_count()
    mask = os.environ.get("CUDA_VISIBLE_DEVICES")
    if mask and all(x.strip().isdigit() for x in mask.split(",")):
        return [int(x) for x in mask.split(",")][:count]
    return list(range(count))


def local_slots(max_parallel: int, gpus: list[int] | None = None, cores: list[int] | None = None) -> list[Slot]:
    """K slots: one GPU each when there are GPUs, else the CPU cores dealt out in K contiguous shares."""
    gpus = visible_gpus() if gpus is None else gpus
    if gpus:
        if max_parallel > len(gpus):
            raise LaunchError(f"--max-parallel {max_parallel} but only {len(gpus)} GPU(s) are visible; each run "
                              f"gets its own GPU: use --max-parallel {len(gpus)} or less")
        return [Slot(g) for g in gpus[:max_parallel]]
    cores = cpu_cores() if cores is None else cores
    if max_parallel > len(cores):
        raise LaunchError(f"--max-parallel {max_parallel} but this process may use only {len(cores)} CPU core(s); "
                          f"each run gets at least one: use --max-parallel {len(cores)} or less")
    share, rest = divmod(len(cores), max_parallel)
    starts = [i * share + min(i, rest) for i in range(max_parallel + 1)]  # the first `rest` shares get one core more
    return [Slot(None, tuple(cores[a:b])) for a, b in zip(starts, starts[1:])]


def launch_local(spec: GridSpec, out: str | Path | None, max_parallel: int = 1, shard: tuple[int, int] = (0, 1),
                 use_cache: bool = True, progress: bool = True, poll_s: float = 0.5) -> list[dict]:
    """Run the shard's unfinished runs `max_parallel` at a time on this machine and wait for them;
    returns every run's result (as `run_grid` does).

    K workers (submitit local jobs), each pinned to its slot, take the pending runs in plan order;
    a run claimed by one worker is skipped by the others (run.py's claim locks).

    Raises:
        LaunchError: more parallel runs than GPUs / cores.
        RunsFailedError: some runs failed; names each with its error or the last line of its
            worker's log (the other runs finished).
    """
    from submitit import LocalExecutor

    if max_parallel < 1:
        raise LaunchError(f"--max-parallel {max_parallel} must be >= 1")
    out = output_root(spec, out).absolute()
    slots = local_slots(max_parallel)
    todo = [r.name for r in pending_runs(spec, out, shard)]
    out.mkdir(parents=True, exist_ok=True)
    executor = LocalExecutor(folder=out / "jobs" / "%j", python=shlex.quote(sys.executable))
    jobs = []
    for slot in slots[:len(todo)]:
        gpu = {"gpus_per_node": 1, "visible_gpus": (slot.gpu,)} if slot.gpu is not None else {"gpus_per_node": 0}
        executor.update_parameters(timeout_min=LOCAL_TIMEOUT_MIN, **gpu)
        job = executor.submit(GridTask(spec, out, todo, use_cache, cpus=slot.cpus or None))
        record_job(out, "local", job, todo)
        jobs.append(job)
        if progress:
            print(f"worker {len(jobs)} on {slot.describe()}: job {job.job_id}, log {job.paths.stderr}", flush=True)
    while not all(job.done() for job in jobs):
        time.sleep(poll_s)
    failed = [f"{name}: {failure_reason(out, name)}" for name in todo if not (out / name / RUN_FILE).is_file()]
    if failed:
        raise RunsFailedError(f"{len(failed)} of {len(todo)} run(s) failed (the others finished; rerun the same "
                              f"command to retry them): " + " | ".join(failed))
    return [read_result(out / r.name / RUN_FILE) for r in shard_plan(spec, shard)]
