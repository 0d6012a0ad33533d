"""Run a grid (see grid.py for the file format): caches first, then each run, train -> evaluate.

    run_grid(load_grid("configs/small_real_grid.yaml"), out=None, shard=(0, 1))
    dry_run(spec, out=None, shard=(0, 1))     # the plan and its estimated cost; trains 2 probe steps

Per run folder: the Trainer's files (config.yaml, log.jsonl, checkpoints/, trainable.safetensors,
train_summary.json), eval-<test>/{predictions.jsonl, metrics.json}, and grid_run.json with the
levels, train time, peak memory, trainable parameters, and per test set the metrics, compression
(mean encoder frames / adapter outputs) and real-time factor (decode + the SFM's own, measured once).
"""

from __future__ import annotations

import gc
import json
import os
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .grid import (RUN_FILE, GridSpec, Run, cache_root, count_steps, output_root, plan, probe_seconds_per_step,
                   role, run_config, run_status, test_manifests, write_task_manifests)


def _shard(runs: list[Run], shard: tuple[int, int]) -> list[Run]:
    i, n = shard
    return runs[i::n]


def _encoder_level(run: Run) -> str:
    return next((lvl for f, lvl in run.levels.items() if role(f) == "encoder"), "sfm")


# --- memory -------------------------------------------------------------------------------------


def reset_peak_memory() -> None:
    """GPU: reset the allocator's peak; CPU (Linux): reset the process's peak RSS (VmHWM)."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        return
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_memory_gib() -> float | None:
    if torch.cuda.is_available():
        return round(torch.cuda.max_memory_allocated() / 2**30, 3)
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 2**20, 3)  # kB -> GiB
    except OSError:
        pass
    return None


# --- caches -------------------------------------------------------------------------------------


def prepare_caches(spec: GridSpec, runs: list[Run], out: Path, cache: str | None, progress: bool) -> dict[str, float]:
    """Encode every manifest of `runs` once per SFM; measure each SFM's real-time factor once.

    Returns:
        encoder level -> SFM real-time factor (seconds of encoding per second of audio); with the
        cache off it is 0 (evaluation from audio already includes the SFM).
    """
    from .data import load_manifest
    from .encoders import build_encoder
    from .features import FeatureCache

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
        todo = fc.missing(utts)
        encoder = None
        if todo or not timing.is_file():
            device = "cuda" if torch.cuda.is_available() else "cpu"
            encoder = build_encoder(cfg.encoder).to(device)
            fc.build(encoder, todo, cfg.data.max_batch_seconds, cfg.data.max_batch_size, cfg.data.num_workers, progress)
        if not timing.is_file():
            tests = test_manifests(spec, rs[0], out)
            sample = load_manifest(next(iter(tests.values())))[:16] if tests else utts[:16]
            probe = FeatureCache.for_config(cfg)  # re-encodes (and rewrites, identically) a few items
            probe.build(encoder, sample, cfg.data.max_batch_seconds, cfg.eval.batch_size, progress=False)
            stats = probe.stats_dict()
            timing.write_text(json.dumps({"encoder_rtf": stats["encoder_rtf"], "audio_seconds": stats["audio_seconds"]}))
        rtf[level] = float(json.loads(timing.read_text())["encoder_rtf"] or 0.0)
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
    from .data import load_manifest
    from .evaluate import evaluate_utterances
    from .features import FeatureCache
    from .model import SpeechLLM
    from .train import Trainer

    cfg = run_config(spec, run, out, cache)
    run_dir = Path(cfg.train.output_dir)
    reset_peak_memory()
    summary_file = run_dir / "train_summary.json"
    if summary_file.is_file():  # trained by an earlier, interrupted grid: only evaluation is left
        fc = FeatureCache.for_config(cfg) if cache else None
        model = SpeechLLM(cfg, encoder=fc.stub_encoder() if fc else None)
        model.load_trainable(run_dir)
        model.to("cuda" if torch.cuda.is_available() else "cpu")
        is_main = True
    else:
        trainer = Trainer(cfg, resume=True, progress=progress)
        trainer.setup()
        trainer.train()
        model, fc, is_main = trainer.unwrapped, trainer.feature_cache, trainer.acc.is_main_process
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
    result: dict[str, Any] = {
        "name": run.name, "levels": run.levels, "seed": run.seed, "steps": summary.get("steps"),
        "train_seconds": summary.get("train_seconds"), "trainable_params": summary.get("trainable_params"),
        "feature_cache": summary.get("feature_cache"), "test": {},
    }
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
    tmp = run_dir / f".{RUN_FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, run_dir / RUN_FILE)
    return result


# --- the grid -----------------------------------------------------------------------------------


def run_grid(spec: GridSpec, out: str | Path | None = None, shard: tuple[int, int] = (0, 1),
             use_cache: bool = True, progress: bool = True) -> list[dict]:
    """Run this shard's unfinished combinations; finished ones (grid_run.json) are skipped."""
    out = output_root(spec, out)
    out.mkdir(parents=True, exist_ok=True)
    runs = _shard(plan(spec), shard)
    (out / "grid.yaml").write_text(spec.path.read_text())  # the grid as run, for the report
    write_task_manifests(spec, runs, out)
    todo = [r for r in runs if run_status(out / r.name) != "done"]
    cache = cache_root(spec, out) if use_cache else None
    sfm_rtf = prepare_caches(spec, todo, out, cache, progress) if todo else {}
    results = []
    bar = tqdm(runs, desc="grid", disable=not progress, dynamic_ncols=True)
    for run in bar:
        bar.set_postfix_str(run.name)
        done = out / run.name / RUN_FILE
        if done.is_file():
            results.append(json.loads(done.read_text()))
            continue
        results.append(run_one(spec, run, out, cache, sfm_rtf.get(_encoder_level(run), 0.0)))
        gc.collect()
    return results


def dry_run(spec: GridSpec, out: str | Path | None = None, shard: tuple[int, int] = (0, 1), probe: bool = True,
            print_fn: Any = print) -> dict:
    """Print the plan: runs, their status and steps, and (probe=True) the estimated training time."""
    out = output_root(spec, out)
    runs = _shard(plan(spec), shard)
    write_task_manifests(spec, runs, out)
    sec_per_step: dict[str, float] = {}
    if probe:
        for r in runs:
            level = _encoder_level(r)
            if level not in sec_per_step:
                sec_per_step[level] = probe_seconds_per_step(run_config(spec, r, out, None))
    rows, total = [], 0.0
    for r in runs:
        cfg = run_config(spec, r, out, None)
        steps = count_steps(cfg)
        est = steps * sec_per_step[_encoder_level(r)] if probe else None
        total += est or 0.0
        rows.append({"run": r.name, "status": run_status(out / r.name), "steps": steps, "est_seconds": est})
    print_fn(f"grid {spec.path} -> {out}: {len(runs)} run(s) in shard {shard[0]}/{shard[1]} "
             f"(of {len(plan(spec))}); feature cache: {cache_root(spec, out) or 'off'}")
    print_fn("| run | status | steps | est. train time |")
    print_fn("|---|---|---|---|")
    for row in rows:
        est = "-" if row["est_seconds"] is None else _fmt_seconds(row["est_seconds"])
        print_fn(f"| {row['run']} | {row['status']} | {row['steps']} | {est} |")
    if probe:
        per = ", ".join(f"{k}: {v:.2f} s/step" for k, v in sec_per_step.items())
        print_fn(f"timing probe (2 steps from audio, this machine): {per}")
        print_fn(f"estimated training time, no cache, runs still to do: "
                 f"{_fmt_seconds(sum(r['est_seconds'] for r in rows if r['status'] != 'done'))} "
                 f"(evaluation not included; the feature cache removes the SFM share)")
    return {"runs": rows, "seconds_per_step": sec_per_step, "total_seconds": total}


def _fmt_seconds(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.1f} h"
