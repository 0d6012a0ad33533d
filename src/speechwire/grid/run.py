"""Run a grid (see grid.py for the file format): caches first, then each run, train -> evaluate.

    run_grid(load_grid("configs/small_real_grid.yaml"), out=None, shard=(0, 1))

(`--dry-run`, the plan and its estimated cost, is estimate.py.)

Per run folder: the Trainer's files (config.yaml, log.jsonl, checkpoints/, trainable.safetensors,
train_summary.json), eval-<test>/{predictions.jsonl, metrics.json}, and grid_run.json with the
levels, train time, peak memory, trainable parameters, and per test set the metrics, compression
(mean encoder frames / adapter outputs) and real-time factor (decode + the SFM's own, measured once).

Several workers may run one grid folder at once (with or without --shard, on one machine or over a
shared file system with working flock): a worker claims a run with an flock on <run>/.claim before
touching it, skips runs claimed by others and, once its own are done, waits for those and reads
their results (taking a run over, from its checkpoints, if its worker died). The feature cache is
built under its own lock. `grid_events.jsonl` logs who started and finished what.
"""

from __future__ import annotations

import gc
import json
from pathlib import Path
from typing import Any, Collection

from tqdm.auto import tqdm

from speechwire.data import load_manifest
from speechwire.encoders import build_encoder
from speechwire.errors import one_line
from speechwire.evaluate import evaluate_utterances
from speechwire.features import FeatureCache
from speechwire.files import fault_point, read_text, try_lock, write_atomic
from speechwire.grid.layout import RUN_FILE, cache_root, encoder_level, log_event, output_root, read_result, run_status
from speechwire.grid.spec import GridSpec, Run, run_config, shard_plan, test_manifests, write_task_manifests
from speechwire.grid.worker import placement
from speechwire.memory import peak_memory_gib, reset_peak_memory
from speechwire.model import SpeechLLM
from speechwire.schema import ExperimentConfig, resolve_device
from speechwire.train import train

# --- caches -------------------------------------------------------------------------------------


def sfm_utterances(spec: GridSpec, runs: list[Run], out: Path, cache: str) -> dict[str, tuple[Run, ExperimentConfig, list]]:
    """Per SFM level, in plan order: its first run and that run's config, and the utterances of
    every manifest its runs read (train, dev, test sets): what the SFM's feature cache must hold."""
    levels: dict[str, tuple[Run, ExperimentConfig, list]] = {}
    for r in runs:
        cfg = run_config(spec, r, out, cache)
        utts = levels.setdefault(encoder_level(r), (r, cfg, []))[2]
        for m in (cfg.data.train_manifest, cfg.data.dev_manifest, *test_manifests(spec, r, out).values()):
            if m:
                utts += load_manifest(m, skip_invalid=cfg.data.skip_invalid)
    return levels


def prepare_caches(spec: GridSpec, runs: list[Run], out: Path, cache: str | None, progress: bool) -> dict[str, float]:
    """Encode every manifest of `runs` once per SFM; measure each SFM's real-time factor once.

    Returns:
        encoder level -> SFM real-time factor (seconds of encoding per second of audio); with the
        cache off it is 0 (evaluation from audio already includes the SFM).
    """
    if cache is None:
        return {encoder_level(r): 0.0 for r in runs}
    rtf: dict[str, float] = {}
    for level, (first, cfg, utts) in sfm_utterances(spec, runs, out, cache).items():
        fc = FeatureCache.for_config(cfg)
        timing = fc.dir / "sfm_timing.json"
        encoder = None
        with fc.locked():  # another worker building this SFM's cache finishes first; we then find its entries
            todo = fc.missing(utts)
            if todo or not timing.is_file() or fc.read_meta() is None:
                encoder = build_encoder(cfg.encoder).to(resolve_device(cfg.train.device))
                fc.build(encoder, todo, cfg.data.max_batch_seconds, cfg.data.max_batch_size, cfg.data.num_workers,
                         progress)
                log_event(out, "cache", sfm=level, written=fc.stats.writes, dir=str(fc.dir))
            if not timing.is_file():
                tests = test_manifests(spec, first, out)
                sample = load_manifest(next(iter(tests.values())))[:16] if tests else utts[:16]
                probe = FeatureCache.for_config(cfg)  # times a few items again, writes nothing
                probe.build(encoder, sample, cfg.data.max_batch_seconds, cfg.eval.batch_size, progress=False,
                            store=False)
                stats = probe.stats_dict()
                write_atomic(timing, json.dumps({k: stats[k] for k in ("encoder_rtf", "audio_seconds")}), "SFM timing")
        try:
            rtf[level] = float(json.loads(read_text(timing, "SFM timing"))["encoder_rtf"] or 0.0)
        except (ValueError, KeyError, TypeError):
            rtf[level] = 0.0  # a damaged timing file costs only the report's RTF column
        del encoder
        gc.collect()
    return rtf


# --- one run ------------------------------------------------------------------------------------


class _LengthMeter:
    """Forward hook on the adapter: sums input frames and output vectors (compression ratio)."""

    def __init__(self) -> None:
        self.inputs = self.outputs = 0

    def __call__(self, module: Any, args: tuple, output: Any) -> None:
        self.inputs += int(args[1].sum())
        self.outputs += int(output.lengths.sum())

    @property
    def ratio(self) -> float | None:
        return round(self.inputs / self.outputs, 4) if self.outputs else None


def run_one(spec: GridSpec, run: Run, out: Path, cache: str | None, sfm_rtf: float, progress: bool = False) -> dict:
    """Train (resuming) then evaluate one combination; returns what grid_run.json holds."""
    cfg = run_config(spec, run, out, cache)
    run_dir = Path(cfg.train.output_dir)
    reset_peak_memory()
    summary_file = run_dir / "train_summary.json"
    if not summary_file.is_file():  # else trained by an earlier, interrupted grid: only evaluation is left
        train(cfg, resume=True, progress=progress)  # both stages when the recipe has align.steps; resumes either
    from accelerate import PartialState

    is_main = PartialState().is_main_process
    fc = FeatureCache.for_config(cfg) if cache else None
    if is_main:
        model = SpeechLLM(cfg, encoder=fc.stub_encoder() if fc else None)
        model.load_trainable(run_dir)
        model.to(resolve_device(cfg.train.device))
    fault_point("grid.after-train")
    summary = json.loads(read_text(summary_file, "training summary")) if summary_file.is_file() else {}
    result: dict[str, Any] = {
        "name": run.name, "levels": run.levels, "seed": run.seed, "steps": summary.get("steps"),
        "train_seconds": summary.get("train_seconds"), "trainable_params": summary.get("trainable_params"),
        "feature_cache": summary.get("feature_cache"), "test": {},
    }
    align_file = run_dir / "align" / "train_summary.json"
    if align_file.is_file():  # the alignment stage's steps, time and best dev score (CTC greedy path, no LLM)
        a = json.loads(read_text(align_file, "alignment summary"))
        result["align"] = {k: a.get(k) for k in ("steps", "train_seconds", "best_dev", "feature_cache")}
        result["train_seconds"] = round((result["train_seconds"] or 0.0) + (a.get("train_seconds") or 0.0), 2)
    if not is_main:
        return result
    for name, manifest in test_manifests(spec, run, out).items():
        utts = load_manifest(manifest, skip_invalid=cfg.data.skip_invalid)[: spec.test_max_items]
        if fc is not None:
            fc.ensure(utts, progress=False)
        meter = _LengthMeter()
        hook = model.adapter.register_forward_hook(meter)
        try:
            metrics = evaluate_utterances(model, utts, cfg, run_dir / f"eval-{name}", progress=False, feature_cache=fc)
        finally:
            hook.remove()
        decode = float(metrics["timing"]["real_time_factor"])
        result["test"][name] = {"metrics": {k: v for k, v in metrics.items() if k not in ("timing",)},
                                "compression": meter.ratio, "rtf_decode": decode, "rtf_encoder": sfm_rtf,
                                "rtf": round(decode + sfm_rtf, 5)}
    result["peak_memory_gib"] = peak_memory_gib()
    fault_point("grid.before-result")
    write_atomic(run_dir / RUN_FILE, json.dumps(result, indent=2), f"the grid result of {run.name}")
    return result


# --- the grid -----------------------------------------------------------------------------------


def run_grid(spec: GridSpec, out: str | Path | None = None, shard: tuple[int, int] = (0, 1),
             use_cache: bool = True, progress: bool = True, names: Collection[str] | None = None,
             wait: bool = True) -> list[dict]:
    """Run this shard's unfinished combinations; finished ones (grid_run.json) are skipped, and runs
    another worker has claimed are waited for (see the module docstring).

    Args:
        names: only these runs of the shard (a launcher's task: launch.py).
        wait: False leaves runs claimed by other workers to them (the launchers' workers, whose
            launcher waits for all of them); their results are then missing from the list.
    """
    out = output_root(spec, out)
    out.mkdir(parents=True, exist_ok=True)
    runs = [r for r in shard_plan(spec, shard) if names is None or r.name in names]
    write_atomic(out / "grid.yaml", spec.path.read_bytes(), "the grid file's copy")  # the grid as run, for the report
    write_task_manifests(spec, runs, out)
    todo = [r for r in runs if run_status(out / r.name) != "done"]
    cache = cache_root(spec, out) if use_cache else None
    sfm_rtf = prepare_caches(spec, todo, out, cache, progress) if todo else {}
    results: dict[str, dict] = {}
    others: list[Run] = []
    bar = tqdm(runs, desc="grid", disable=not progress, dynamic_ncols=True)
    for run in bar:
        bar.set_postfix_str(run.name)
        if not _claim_and_run(spec, run, out, cache, sfm_rtf, results, block=False):
            others.append(run)  # another worker has it
    for run in others if wait else ():  # ours are done: wait for theirs (or take a run over if its worker died)
        if progress:
            bar.write(f"waiting for {run.name} (claimed by another worker)")
        _claim_and_run(spec, run, out, cache, sfm_rtf, results, block=True)
    return [results[r.name] for r in runs if r.name in results]


def _claim_and_run(spec: GridSpec, run: Run, out: Path, cache: str | None, sfm_rtf: dict[str, float],
                   results: dict[str, dict], block: bool) -> bool:
    """Run `run` unless it is done (then read it) or claimed by another worker (then return False)."""
    done = out / run.name / RUN_FILE
    if done.is_file():
        results[run.name] = read_result(done)
        return True
    with try_lock(out / run.name / ".claim", block=block) as mine:
        if not mine:
            return False
        if done.is_file():  # finished by another worker between our look and our claim
            results[run.name] = read_result(done)
            return True
        log_event(out, "start", run=run.name, status=run_status(out / run.name), **placement())
        try:
            results[run.name] = run_one(spec, run, out, cache, sfm_rtf.get(encoder_level(run), 0.0))
        except Exception as e:  # --status shows this line; a kill or a requeue (SystemExit) leaves no event
            log_event(out, "failed", run=run.name, error=f"{type(e).__name__}: {one_line(str(e))}"[:500])
            raise
        log_event(out, "done", run=run.name)
    gc.collect()
    return True
