"""`speechwire grid CONFIG --status`: where each planned run stands, whichever launcher ran it.

    rows = grid_status(spec, out)     # [RunState(name, state, job, detail), ...] in plan order
    print(status_table(rows))

States, from the run folder, the grid's logs and (for Slurm jobs) the scheduler:
- done      grid_run.json is written.
- running   a worker holds the run's claim lock, or Slurm says its job is RUNNING (job id shown).
- queued    its Slurm job is waiting (PENDING, REQUEUED after a pre-emption).
- failed    its last attempt raised (the error, from grid_events.jsonl), its job ended without a
            result (the scheduler's state and the last line of the job's log), or its worker
            died mid-run (the last line of the log).
- planned   nothing is running it; the detail says how far it got (todo, partial: checkpoints,
            trained: awaiting evaluation). A rerun or a new submission resumes from there.

The scheduler is asked with `squeue` (live jobs) and `sacct` (finished ones) about the jobs in
grid_jobs.jsonl; on a machine without them the folder and the logs still give every state but
queued.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from speechwire.files import read_jsonl
from speechwire.grid.layout import EVENTS, JOBS, output_root, run_status
from speechwire.grid.spec import GridSpec, shard_plan
from speechwire.tables import markdown_table

QUEUED = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "RESIZING", "SUSPENDED"}
LIVE = {"RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING"}


@dataclass
class RunState:
    name: str
    state: str  # done | running | queued | failed | planned
    job: str | None = None
    detail: str = ""


# --- what the files say -------------------------------------------------------------------------


def claim_held(run_dir: Path) -> bool:
    """Whether some worker holds the run's claim lock (tested without creating anything)."""
    path = run_dir / ".claim"
    if not path.is_file():
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False  # a file system without flock: the scheduler's word is all we have
    finally:
        os.close(fd)  # releases it if we took it
    return False


def last_line(path: str | Path | None, max_bytes: int = 8192) -> str | None:
    """The last non-empty line of a log file, or None when there is no such file."""
    if not path:
        return None
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - max_bytes))
            lines = [ln.strip() for ln in f.read().decode("utf-8", "replace").splitlines() if ln.strip()]
    except OSError:
        return None
    return lines[-1][:300] if lines else "(empty log)"


def job_logs(out: Path) -> dict[str, str]:
    """job id -> its log file, for every job a launcher submitted (grid_jobs.jsonl)."""
    return {str(r.get("job")): str(r.get("log")) for r in read_jsonl(out / JOBS) if r.get("log")}


def last_run_events(out: Path) -> dict[str, dict]:
    """run -> its latest start, done or failed event (grid_events.jsonl)."""
    last: dict[str, dict] = {}
    for e in read_jsonl(out / EVENTS):
        if e.get("event") in ("start", "done", "failed"):
            last[str(e.get("run"))] = e
    return last


def failed_since(out: Path, since: float) -> set[str]:
    """Runs whose last attempt raised (a "failed" event) at or after `since`."""
    return {run for run, e in last_run_events(out).items()
            if e["event"] == "failed" and float(e.get("time", 0)) >= since}


def failure_reason(out: Path, run: str, log: str | None = None) -> str:
    """Why a run that was started has no result: its error event, else the last line of the log
    (`log`, or that of the job that last started it)."""
    last = last_run_events(out).get(run, {})
    if last.get("event") == "failed":
        return str(last.get("error"))
    log = log or job_logs(out).get(str(last.get("job")))
    line = last_line(log)
    return f"stopped without a result; last line of {log}: {line}" if line else "stopped without a result (killed?)"


# --- what the scheduler says --------------------------------------------------------------------


def _run_tool(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return ""  # no Slurm here, or it does not answer: the files still tell most
    return done.stdout if done.returncode == 0 else ""


def parse_states(text: str) -> dict[str, str]:
    """`JOBID|STATE` lines (squeue --format=%i|%T, sacct --parsable2 -o JobID,State) -> job -> state.

    Array ranges as Slurm prints them ("4242_[3-5%2]") are expanded; "CANCELLED by 0" -> CANCELLED.
    """
    from submitit.slurm.slurm import read_job_id

    states: dict[str, str] = {}
    for line in text.splitlines():
        job, sep, state = line.strip().partition("|")
        if not sep or not job or "." in job:  # job steps (4242_0.batch) repeat their job
            continue
        state = (state.split() or ["UNKNOWN"])[0].rstrip("+")
        try:
            ids = read_job_id(job)
        except ValueError:
            continue
        for parts in ids:
            if len(parts) == 3:
                for k in range(int(parts[1]), int(parts[2]) + 1):
                    states[f"{parts[0]}_{k}"] = state
            else:
                states["_".join(parts[:2])] = state
    return states


def scheduler_states(jobs: Iterable[str]) -> dict[str, str]:
    """Slurm's state of each job id ("4242_3"): squeue for live jobs, sacct for the finished ones."""
    parents = sorted({j.split("_")[0] for j in jobs})
    if not parents:
        return {}
    ids = ",".join(parents)
    states = parse_states(_run_tool(["sacct", "--noheader", "--parsable2", "--allocations",
                                     "--format=JobID,State", f"--jobs={ids}"]))
    states.update(parse_states(_run_tool(["squeue", "--noheader", "--array", "--format=%i|%T", f"--jobs={ids}"])))
    return states


# --- the table ----------------------------------------------------------------------------------


def grid_status(spec: GridSpec, out: str | Path | None = None, shard: tuple[int, int] = (0, 1)) -> list[RunState]:
    """Each planned run's state (module docstring), in plan order."""
    out = output_root(spec, out)
    latest_job: dict[str, dict] = {}
    for rec in read_jsonl(out / JOBS):
        for name in rec.get("runs") or ():
            latest_job[str(name)] = rec
    slurm = scheduler_states(str(r["job"]) for r in latest_job.values() if r.get("launcher") == "slurm")
    last_event = last_run_events(out)
    return [_state(out, run.name, latest_job.get(run.name), slurm, last_event.get(run.name))
            for run in shard_plan(spec, shard)]


def _state(out: Path, name: str, job: dict | None, slurm: dict[str, str], event: dict | None) -> RunState:
    run_dir = out / name
    progress = run_status(run_dir)
    job_id = str(job["job"]) if job else None
    log = job.get("log") if job else None
    if progress == "done":
        return RunState(name, "done", (event or {}).get("job") or job_id)
    sched = slurm.get(job_id or "") if job and job.get("launcher") == "slurm" else None
    if claim_held(run_dir) or sched in LIVE:
        return RunState(name, "running", (event or {}).get("job") or job_id, progress)
    if sched in QUEUED:
        return RunState(name, "queued", job_id, f"{sched.lower()}; {progress}")
    if sched is not None:  # the job ended (COMPLETED, FAILED, TIMEOUT, CANCELLED, OUT_OF_MEMORY, ...) without a result
        started = event and str(event.get("job")) == job_id  # else it died before starting the run
        reason = failure_reason(out, name, log) if started else f"last line of {log}: {last_line(log)}"
        return RunState(name, "failed", job_id, f"{sched}; {reason}")
    if event and event.get("event") in ("start", "failed"):  # started, not running, no result
        return RunState(name, "failed", event.get("job") or job_id, failure_reason(out, name))
    return RunState(name, "planned", None, progress)


def status_table(rows: list[RunState]) -> str:
    """A markdown table of the rows and a count per state."""
    table = "\n".join(markdown_table([{"run": r.name, "state": r.state, "job": r.job or "-", "detail": r.detail or "-"}
                                     for r in rows], ["run", "state", "job", "detail"]))
    counts = Counter(r.state for r in rows)
    order = ("done", "running", "queued", "failed", "planned")
    summary = ", ".join(f"{counts[s]} {s}" for s in order if s in counts)
    return f"{table}\n\n{len(rows)} run(s): {summary}"
