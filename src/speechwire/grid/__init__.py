"""The paper's experiment: SFM x adapter x LLM x task (x seed) over one base config, and which factor matters.

    spec.py      the grid file: factors, levels, presets, seeds, filters -> the planned runs and their configs
    run.py       run them (feature cache first, then train -> evaluate per run; resumable, shardable)
    launch.py    --launcher slurm|local: the runs as submitit jobs (a Slurm array; K pinned local workers)
    status.py    --status: done / running (job) / queued / failed (why) / planned, per run
    worker.py    where a worker runs: its job id, CPU cores and GPUs (logged with each run start)
    estimate.py  --dry-run: the plan and the cost of what is left, from probe steps and a decoding probe
    analysis.py  the share of a metric's variance each factor and pairwise interaction explains
    report.py    report.md, results.csv/json and plots from the finished run folders

    spec = load_grid("configs/small_real_grid.yaml")
    run_grid(spec)                     # speechwire grid configs/small_real_grid.yaml
    write_report("runs/small_real_grid")  # speechwire report runs/small_real_grid
"""

from speechwire.grid.estimate import dry_run
from speechwire.grid.report import write_report
from speechwire.grid.run import run_grid
from speechwire.grid.spec import GridSpec, Run, load_grid, plan

__all__ = ["GridSpec", "Run", "dry_run", "load_grid", "plan", "run_grid", "write_report"]
