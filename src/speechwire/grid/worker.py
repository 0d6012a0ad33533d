"""Where a grid worker runs: its scheduler job, the CPU cores and GPUs it may use.

    job_id()            # "4242_3" inside Slurm array task 3 of job 4242; submitit's local job id; else None
    placement()         # {"job": ..., "cpus": [0], "threads": 1, "gpus": "0"}: logged with every run start
    pin_cpus([0, 1])    # this process (and the threads torch starts later) runs on cores 0 and 1 only

The grid's event log records `placement()` beside each run start, so `--status` can name the job
that runs a run and the tests can check that parallel runs really sat on different cores.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def job_id() -> str | None:
    """The scheduler's id of the job this process belongs to: Slurm array task (`JOB_TASK`), Slurm
    job, submitit local job (the controller's pid), or None for a process started by hand."""
    env = os.environ
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env.get("SLURM_JOB_ID") or env.get("SUBMITIT_LOCAL_JOB_ID") or None


def cpu_cores() -> list[int]:
    """The cores this process may run on (its affinity mask; all cores where there is none)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # macOS has no affinity masks
        return list(range(os.cpu_count() or 1))


def pin_cpus(cores: Sequence[int]) -> None:
    """Run this process on `cores` only, with one torch thread per core.

    The thread variables are set too, for libraries that read them when they start (OpenMP, MKL).
    """
    import torch

    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, set(cores))
    for var in THREAD_VARS:
        os.environ[var] = str(len(cores))
    torch.set_num_threads(len(cores))


def placement() -> dict[str, Any]:
    """What the grid's event log records about the process that starts a run."""
    import torch

    return {"job": job_id(), "cpus": cpu_cores(), "threads": torch.get_num_threads(),
            "gpus": os.environ.get("CUDA_VISIBLE_DEVICES")}
