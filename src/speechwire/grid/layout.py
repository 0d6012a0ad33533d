"""The grid's output folder: where each run, its result and the grid's logs live.

    <out>/                      output_root(spec, --out)
      grid_events.jsonl         EVENTS: run start/finish, cache builds, workers, from every process
      grid_jobs.jsonl           JOBS: one line per job a launcher submitted (launch.py)
      features/                 cache_root: the shared SFM feature cache, unless the spec names one
      <run name>/               a run's folder: config.yaml, checkpoints/, train_summary.json, ...
        grid_run.json           RUN_FILE: the finished run's result (read_result); run_status reads the rest

Every grid module (run, launch, status, estimate, report) reads and writes this layout through
here; spec.py turns a grid file into runs and knows nothing of folders.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from speechwire.files import append_line, read_text
from speechwire.grid.spec import GridSpec, Run, role

RUN_FILE = "grid_run.json"
EVENTS = "grid_events.jsonl"  # one line per run start/finish and cache build, from every worker
JOBS = "grid_jobs.jsonl"  # one line per job a launcher submitted: launcher, job id, run, log file (launch.py)


def output_root(spec: GridSpec, out: str | Path | None) -> Path:
    return Path(out or spec.output_dir or Path("runs") / spec.path.stem)


def cache_root(spec: GridSpec, out: Path) -> str | None:
    if spec.feature_cache is False:
        return None
    if isinstance(spec.feature_cache, str):
        return spec.feature_cache
    return spec.base.get("data", {}).get("feature_cache") or str(out / "features")


def run_status(run_dir: Path) -> str:
    """done (grid_run.json written) | trained (awaiting evaluation) | partial (checkpoints) | todo."""
    if (run_dir / RUN_FILE).is_file():
        return "done"
    if (run_dir / "train_summary.json").is_file():
        return "trained"
    return "partial" if (run_dir / "checkpoints").is_dir() else "todo"


def encoder_level(run: Run) -> str:
    """The run's SFM level (its cache): the level of the factor with the encoder role."""
    return next((lvl for f, lvl in run.levels.items() if role(f) == "encoder"), "sfm")


def log_event(out: Path, event: str, **fields: Any) -> None:
    record = {"time": round(time.time(), 3), "host": socket.gethostname(), "pid": os.getpid(), "event": event,
              **fields}
    append_line(out / EVENTS, json.dumps(record), "the grid event log")


def read_result(path: Path) -> dict:
    """A finished run's grid_run.json (written atomically, so whole or absent)."""
    return json.loads(read_text(path, "grid result"))
