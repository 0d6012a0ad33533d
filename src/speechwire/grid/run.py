"""Run a grid (see grid.py for the file format): caches first, then each run, train -> evaluate.

    run_grid(load_grid("configs/small_real_grid.yaml"), out=None, shard=(0, 1))
    dry_run(spec, out=None, shard=(0, 1))     # the plan and its estimated cost; trains 2 probe steps

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

import copy
import gc
import json
import math
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..config import ExperimentConfig, resolve_device
from ..files import append_line, fault_point, read_text, try_lock, write_atomic
from ..memory import peak_memory_gib, reset_peak_memory
from ..tables import markdown_table
from .spec import (RUN_FILE, GridSpec, Run, cache_root, output_root, plan, role, run_config, run_status, test_manifests,
                   write_task_manifests)

EVENTS = "grid_events.jsonl"  # one line per run start/finish and cache build, from every worker


def _shard(runs: list[Run], shard: tuple[int, int]) -> list[Run]:
    i, n = shard
    return runs[i::n]


def _encoder_level(run: Run) -> str:
    return next((lvl for f, lvl in run.levels.items() if role(f) == "encoder"), "sfm")


def log_event(out: Path, event: str, **fields: Any) -> None:
    record = {"time": round(time.time(), 3), "host": socket.gethostname(), "pid": os.getpid(), "event": event,
              **fields}
    append_line(out / EVENTS, json.dumps(record), "the grid event log")


def read_result(path: Path) -> dict:
    """A finished run's grid_run.json (written atomically, so whole or absent)."""
    return json.loads(read_text(path, "grid result"))


# --- caches -------------------------------------------------------------------------------------


def prepare_caches(spec: GridSpec, runs: list[Run], out: Path, cache: str | None, progress: bool) -> dict[str, float]:
    """Encode every manifest of `runs` once per SFM; measure each SFM's real-time factor once.

    Returns:
        encoder level -> SFM real-time factor (seconds of encoding per second of audio); with the
        cache off it is 0 (evaluation from audio already includes the SFM).
    """
    from ..data import load_manifest
    from ..encoders import build_encoder
    from ..features import FeatureCache

    rtf: dict[str, float] = {}
    by_encoder: dict[str, list[Run]] = {}
    for r in runs:
        by_encoder.setdefault(_encoder_level(r), []).append(r)
    for level, rs in by_encoder.items():
        if cache is None:
            rtf[level] = 0.0
            continue
        cfg = run_config(spec, rs[0], out, cache)
        utts: list = []
        for r in rs:
            c = run_config(spec, r, out, cache)
            for m in (c.data.train_manifest, c.data.dev_manifest, *test_manifests(spec, r, out).values()):
                if m:
                    utts += load_manifest(m, skip_invalid=c.data.skip_invalid)
        fc = FeatureCache.for_config(cfg)
        timing = fc.dir / "sfm_timing.json"
        encoder = None
        with fc.locked():  # another worker building this SFM's cache finishes first; we then find its entries
            todo = fc.missing(utts)
            if todo or not timing.is_file() or fc.read_meta() is None:
                device = resolve_device(cfg.train.device)
                encoder = build_encoder(cfg.encoder).to(device)
                fc.build(encoder, todo, cfg.data.max_batch_seconds, cfg.data.max_batch_size, cfg.data.num_workers,
                         progress)
                log_event(out, "cache", sfm=level, written=fc.stats.writes, dir=str(fc.dir))
            if not timing.is_file():
                tests = test_manifests(spec, rs[0], out)
                sample = load_manifest(next(iter(tests.values())))[:16] if tests else utts[:16]
                probe = FeatureCache.for_config(cfg)  # times a few items again, writes nothing
                probe.build(encoder, sample, cfg.data.max_batch_seconds, cfg.eval.batch_size, progress=False,
                            store=False)
                stats = probe.stats_dict()
                write_atomic(timing, json.dumps({"encoder_rtf": stats["encoder_rtf"],
                                                 "audio_seconds": stats["audio_seconds"]}), "SFM timing")
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
    from ..data import load_manifest
    from ..evaluate import evaluate_utterances
    from ..features import FeatureCache
    from ..model import SpeechLLM
    from ..train import train

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
             use_cache: bool = True, progress: bool = True) -> list[dict]:
    """Run this shard's unfinished combinations; finished ones (grid_run.json) are skipped, and runs
    another worker has claimed are waited for (see the module docstring)."""
    out = output_root(spec, out)
    out.mkdir(parents=True, exist_ok=True)
    runs = _shard(plan(spec), shard)
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
    for run in others:  # ours are done: wait for theirs (or take a run over if its worker died)
        if progress:
            bar.write(f"waiting for {run.name} (claimed by another worker)")
        _claim_and_run(spec, run, out, cache, sfm_rtf, results, block=True)
    return [results[r.name] for r in runs]


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
        log_event(out, "start", run=run.name, status=run_status(out / run.name))
        results[run.name] = run_one(spec, run, out, cache, sfm_rtf.get(_encoder_level(run), 0.0))
        log_event(out, "done", run=run.name)
    gc.collect()
    return True


# --- cost estimates (--dry-run) --------------------------------------------------------------


def count_steps(cfg: ExperimentConfig) -> int | None:
    """LM-stage optimizer steps of a run (max_steps, or epochs x batches / grad_accum), from durations
    only; None without a train manifest (the run itself then stops with the config error)."""
    if cfg.train.max_steps >= 0:
        return cfg.train.max_steps
    if not cfg.data.train_manifest:
        return None
    from ..data import load_manifest, make_dataloader

    batches = len(make_dataloader(load_manifest(cfg.data.train_manifest), cfg.data, seed=cfg.train.seed))
    return max(1, math.ceil(cfg.train.epochs * batches / cfg.train.grad_accum))


def probe_seconds_per_step(cfg: ExperimentConfig, steps: int = 2, cache: str | None = None,
                           scratch: str | Path | None = None) -> float:
    """Seconds per training step of cfg's stage (train.stage; "align" uses align.* as in training),
    timed over `steps` steps after one warm-up step, in a scratch folder.

    A grid run reads its SFM features from the cache, built before any run trains, so the probe
    does too: from `cache` when it holds the whole train set, else (with `scratch`, a folder kept
    across probes) from a scratch cache of the first clips, enough for the probe's batches. Only
    without a cache at all (the grid's cache switched off) are the steps timed from audio, the
    SFM's share included, as such a run pays it.
    """
    from dataclasses import replace

    from ..data import load_manifest, utterance_duration, write_manifest
    from ..features import FeatureCache
    from ..train import Trainer, stage_config

    stage = stage_config(cfg)
    train_manifest = cfg.data.train_manifest
    with tempfile.TemporaryDirectory() as tmp:
        if cache is not None:
            train_utts = load_manifest(train_manifest, skip_invalid=cfg.data.skip_invalid)
            if FeatureCache.for_config(replace(cfg, data=replace(cfg.data, feature_cache=cache))).missing(train_utts):
                cache = None
                if scratch is not None:  # the first clips, twice the audio the probe's batches take
                    need, subset = 2 * (steps + 1) * stage.data.max_batch_seconds, []
                    for u in train_utts:
                        subset.append(u)
                        need -= utterance_duration(u)
                        if need <= 0:
                            break
                    train_manifest = str(write_manifest(Path(tmp) / "probe_train.jsonl", subset))
                    cache = str(scratch)
                    FeatureCache.for_config(replace(cfg, data=replace(cfg.data, feature_cache=cache))).ensure(
                        subset, progress=False, max_batch_seconds=cfg.data.max_batch_seconds,
                        max_batch_size=cfg.data.max_batch_size)
        train = replace(cfg.train, output_dir=str(Path(tmp) / "run"), max_steps=steps + 1, save_every=0,
                        eval_every=0, report_to="none", init_from=None)
        data = replace(cfg.data, train_manifest=train_manifest, feature_cache=cache, dev_manifest=None)
        t = Trainer(stage_config(replace(cfg, train=train, data=data, align=replace(cfg.align, steps=steps + 1))),
                    resume=False, progress=False)
        t.setup()
        stamps: list[float] = []
        optimizer_step = t.optimizer.step

        def timed_step(*args: Any, **kwargs: Any) -> Any:
            result = optimizer_step(*args, **kwargs)
            stamps.append(time.perf_counter())
            return result

        t.optimizer.step = timed_step  # the step boundaries, without the final validation and save
        t0 = time.perf_counter()
        t.train()
        if len(stamps) < 2:  # a train set too small for a second step: the one step, warm-up included
            return (stamps[-1] if stamps else time.perf_counter()) - t0
        return (stamps[-1] - stamps[0]) / (len(stamps) - 1)


def probe_eval_seconds_per_item(cfg: ExperimentConfig, manifest: str, items: int = 16,
                                cache: str | None = None) -> float:
    """Decode the first `items` utterances of `manifest` with an untrained adapter; seconds per item.
    An untrained adapter's answers run longer than a trained one's: an upper bound."""
    from ..data import load_manifest
    from ..evaluate import evaluate_utterances
    from ..features import FeatureCache
    from ..model import SpeechLLM

    utts = load_manifest(manifest, skip_invalid=cfg.data.skip_invalid)[:items]
    fc = None
    if cache is not None:
        from dataclasses import replace

        fc = FeatureCache.for_config(replace(cfg, data=replace(cfg.data, feature_cache=cache)))
        fc = None if fc.missing(utts) else fc
    model = SpeechLLM(cfg, encoder=fc.stub_encoder() if fc else None)
    if getattr(model, "align_head", None) is not None:  # a posterior readout needs its vocabulary, as in training
        from ..align import transcript_vocab

        model.align_head.set_vocab(transcript_vocab([u.transcript for u in utts if u.transcript],
                                                    model.prompter.text_ids))
    t0 = time.perf_counter()
    evaluate_utterances(model, utts, cfg, None, progress=False, feature_cache=fc)
    return (time.perf_counter() - t0) / max(1, len(utts))


def _level(run: Run, kind: str) -> str:
    return next((lvl for f, lvl in run.levels.items() if role(f) == kind), "-")


def _cache_cost(spec: GridSpec, runs: list[Run], out: Path, cache: str | None) -> dict[str, dict[str, float]]:
    """Per SFM level: clips and audio seconds the feature cache still lacks, and the seconds to
    encode them (the SFM's real-time factor from the cache's timing file, else from 8 clips)."""
    from ..data import load_manifest, utterance_duration
    from ..encoders import build_encoder
    from ..features import FeatureCache

    costs: dict[str, dict[str, float]] = {}
    for level in dict.fromkeys(_encoder_level(r) for r in runs):
        rs = [r for r in runs if _encoder_level(r) == level]
        cfg = run_config(spec, rs[0], out, cache)
        utts = {}
        for r in rs:
            c = run_config(spec, r, out, cache)
            for m in (c.data.train_manifest, c.data.dev_manifest, *test_manifests(spec, r, out).values()):
                if m:
                    utts.update({u.id: u for u in load_manifest(m, skip_invalid=c.data.skip_invalid)})
        fc = FeatureCache.for_config(cfg)
        todo = fc.missing(list(utts.values()))
        seconds = sum(utterance_duration(u) for u in todo)
        rtf = 0.0
        if todo:
            timing = fc.dir / "sfm_timing.json"
            try:
                rtf = float(json.loads(read_text(timing, "SFM timing"))["encoder_rtf"])
            except (OSError, ValueError, KeyError, TypeError):
                encoder = build_encoder(cfg.encoder)
                probe = FeatureCache.for_config(cfg)
                probe.build(encoder, todo[:8], cfg.data.max_batch_seconds, cfg.eval.batch_size, progress=False,
                            store=False)
                rtf = float(probe.stats_dict()["encoder_rtf"] or 0.0)
                del encoder
        costs[level] = {"clips": len(todo), "audio_seconds": seconds, "est_seconds": seconds * rtf}
    return costs


def _eval_items(spec: GridSpec, run: Run, out: Path, cfg: Any) -> int:
    """Utterances a run decodes with the LLM: every test set, plus the LM stage's final dev score."""
    from ..data import load_manifest

    n = sum(len(load_manifest(m)[: spec.test_max_items]) for m in test_manifests(spec, run, out).values())
    if cfg.data.dev_manifest:
        n += min(cfg.train.eval_max_items, len(load_manifest(cfg.data.dev_manifest)))
    return n


def dry_run(spec: GridSpec, out: str | Path | None = None, shard: tuple[int, int] = (0, 1), probe: bool = True,
            print_fn: Any = print) -> dict:
    """Print the plan: runs, their status and steps, and (probe=True) the estimated cost of what is
    left: the feature cache's missing clips, each stage's steps (timed on this machine per SFM x
    adapter, from cached features as the runs train) and the LLM decoding of the test sets (timed
    per LLM, an upper bound)."""
    out = output_root(spec, out)
    runs = _shard(plan(spec), shard)
    write_task_manifests(spec, runs, out)
    cache = cache_root(spec, out)
    todo = [r for r in runs if run_status(out / r.name) != "done"]
    cache_cost = _cache_cost(spec, todo, out, cache) if probe and cache and todo else {}
    align_probe: dict[tuple[str, str], float] = {}
    lm_probe: dict[tuple[str, str], float] = {}
    eval_probe: dict[str, float] = {}
    rows, total = [], sum(c["est_seconds"] for c in cache_cost.values())
    # clips the probes read when the cache lacks the train set (a grid run builds its cache first)
    with tempfile.TemporaryDirectory(prefix="speechwire-probe-") as scratch:
        for r in runs:
            cfg = run_config(spec, r, out, None)
            status = run_status(out / r.name)
            align_steps = cfg.align.steps if not cfg.train.init_from else 0
            lm_steps = count_steps(cfg)
            row: dict[str, Any] = {"run": r.name, "status": status, "align_steps": align_steps, "lm_steps": lm_steps,
                                   "est_seconds": None}
            if probe and status != "done":
                key = (_encoder_level(r), _level(r, "adapter"))
                if align_steps and key not in align_probe:
                    align_probe[key] = probe_seconds_per_step(replace_stage(cfg, "align"), steps=3, cache=cache,
                                                              scratch=scratch)
                if lm_steps and key not in lm_probe:
                    lm_probe[key] = probe_seconds_per_step(cfg, steps=2, cache=cache, scratch=scratch)
                llm = _level(r, "llm")
                tests = test_manifests(spec, r, out)
                if tests and llm not in eval_probe:
                    eval_probe[llm] = probe_eval_seconds_per_item(cfg, next(iter(tests.values())), cache=cache)
                row.update(est_align=align_steps * align_probe.get(key, 0.0), est_lm=(lm_steps or 0) * lm_probe.get(key, 0.0),
                           est_eval=_eval_items(spec, r, out, cfg) * eval_probe.get(llm, 0.0))
                row["est_seconds"] = row["est_align"] + row["est_lm"] + row["est_eval"]
                total += row["est_seconds"]
            rows.append(row)
    print_fn(f"grid {spec.path} -> {out}: {len(runs)} run(s) in shard {shard[0]}/{shard[1]} "
             f"(of {len(plan(spec))}), {len(runs) - len(todo)} done; feature cache: {cache or 'off'}")
    cols = ["run", "status", "align_steps", "lm_steps", "est_align", "est_lm", "est_eval", "est_seconds"]
    shown = [{**row, **{k: _fmt_seconds(row[k]) for k in cols[4:] if row.get(k) is not None}} for row in rows]
    for line in markdown_table(shown, cols, ["run", "status", "align steps", "LM steps", "est. align", "est. LM",
                                             "est. eval", "est. total"]):
        print_fn(line)
    if probe:
        for level, c in cache_cost.items():
            print_fn(f"feature cache {level}: {c['clips']} clip(s) to encode ({c['audio_seconds'] / 3600:.2f} h of "
                     f"audio), ~{_fmt_seconds(c['est_seconds'])}")
        if align_probe:
            print_fn("alignment step (3-step probe): " + ", ".join(f"{e}/{a}: {v:.2f} s" for (e, a), v in align_probe.items()))
        if lm_probe:
            print_fn("LM step (2-step probe): " + ", ".join(f"{e}/{a}: {v:.2f} s" for (e, a), v in lm_probe.items()))
        if eval_probe:
            print_fn("decoding (16 test clips, untrained adapter: an upper bound): "
                     + ", ".join(f"{k}: {v:.2f} s/clip" for k, v in eval_probe.items()))
        print_fn(f"estimated time of the runs still to do on this machine: {_fmt_seconds(total)} "
                 f"({len(todo)} run(s){', cache build included' if cache_cost else ''})")
    return {"runs": rows, "cache": cache_cost, "align_seconds_per_step": {f"{e}/{a}": v for (e, a), v in align_probe.items()},
            "lm_seconds_per_step": {f"{e}/{a}": v for (e, a), v in lm_probe.items()},
            "eval_seconds_per_item": eval_probe, "total_seconds": total}


def replace_stage(cfg: Any, stage: str) -> Any:
    """cfg with train.stage set (its other fields untouched)."""
    out = copy.deepcopy(cfg)
    out.train.stage = stage
    return out


def _fmt_seconds(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.1f} h"
