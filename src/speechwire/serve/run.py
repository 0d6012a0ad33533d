"""What a run folder can serve: its model id and the tasks (and ST target languages) it was trained for.

    info = describe_run("runs/demo-asr", model.cfg)     # RunInfo(id="demo-asr", tasks=("asr",), ...)

Tasks come from, in order: the `tasks` argument (`speechwire serve --tasks`), else the run's
training manifest (`data.train_manifest`: the task of each line, and the target languages of its
ST lines), else the run's own result files (`metrics.json` of `speechwire demo`, the dev metrics
in `train_summary.json`), filtered by `data.task_weights` (a weight of 0 means the task was not
trained); else both tasks (nothing says; a warning suggests --tasks).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from speechwire.schema import TASKS, ExperimentConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunInfo:
    id: str  # model id clients see in GET /v1/models: the run folder's name
    path: str
    created: int  # unix time of the checkpoint file
    tasks: tuple[str, ...]  # subset of ("asr", "st")
    tgt_langs: tuple[str, ...]  # ST target languages of the training data; () when unknown
    tasks_from: str  # where `tasks` came from, for the log and /health


def manifest_tasks(path: str | Path) -> tuple[set[str], set[str]] | None:
    """Tasks and ST target languages in a JSONL manifest; None when the file is not readable."""
    p = Path(path).expanduser()
    if not p.is_file():
        return None
    tasks, langs = set(), set()
    try:
        with p.open(encoding="utf-8") as f:
            for line in f:
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if not isinstance(obj, dict):
                    continue
                task = obj.get("task") or ("st" if obj.get("translation") is not None else "asr")
                tasks.add(task)
                if task == "st" and obj.get("tgt_lang"):
                    langs.add(str(obj["tgt_lang"]))
    except OSError:
        return None
    return tasks, langs


def result_tasks(run_dir: Path) -> set[str]:
    """Tasks named by a run's result files: `metrics.json` {"task": ...} (the demo), or the dev
    metric names ("asr", "st-de", "asr/wer") in `train_summary.json`."""
    found: set[str] = set()
    for name in ("metrics.json", "train_summary.json"):
        try:
            data = json.loads((run_dir / name).read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(data, dict):
            continue
        if data.get("task") in TASKS:
            found.add(data["task"])
        names = list(data["final_dev"]) if isinstance(data.get("final_dev"), dict) else []  # "asr", "st-de", ...
        if isinstance(data.get("best_dev"), dict):
            names.append(str(data["best_dev"].get("metric", "")))  # "asr/wer"
        found |= {t for t in TASKS for n in names if str(n).split("/")[0].split("-")[0] == t}
    return found


def describe_run(run_dir: str | Path, cfg: ExperimentConfig, tasks: list[str] | None = None) -> RunInfo:
    """The run's id, creation time, and the tasks it answers (see the module docstring)."""
    run_dir = Path(run_dir)
    weights = run_dir / "trainable.safetensors"
    created = int(weights.stat().st_mtime) if weights.is_file() else int(time.time())
    langs: set[str] = set()
    if tasks:
        bad = sorted(set(tasks) - set(TASKS))
        if bad:
            raise ValueError(f"--tasks {bad}: unknown; choose from {TASKS}")
        found, how = set(tasks), "--tasks"
    else:
        scanned = manifest_tasks(cfg.data.train_manifest) if cfg.data.train_manifest else None
        if scanned and scanned[0]:
            found, langs = scanned
            how = f"training manifest {cfg.data.train_manifest}"
        elif result_tasks(run_dir):
            found, how = result_tasks(run_dir), f"result files in {run_dir}"
        else:
            found, how = set(TASKS), "default (training manifest not found)"
            log.warning("%s: the training manifest %s is not readable here; serving both ASR and ST "
                        "(restrict with --tasks)", run_dir, cfg.data.train_manifest)
        found -= {t for t, w in cfg.data.task_weights.items() if w == 0}
    return RunInfo(id=run_dir.resolve().name, path=str(run_dir), created=created,
                   tasks=tuple(t for t in TASKS if t in found), tgt_langs=tuple(sorted(langs)), tasks_from=how)
