"""`speechwire grid --dry-run`: the plan and what the runs still to do will cost on this machine.

    dry_run(load_grid("configs/small_real_grid.yaml"))   # prints the plan; returns the estimates

The cost of a run is its training steps, timed per SFM x adapter by a few probe steps from cached
features (as the runs train), plus the LLM's decoding of the test sets and the final dev score,
timed per LLM: one batch decoded for 1 step and for 16 steps gives the prefill cost per second of
audio and the cost of a decoding step, and each evaluation batch is then charged its prefill and
as many steps as its longest reference has tokens (what a model that does its job generates; a
weak one that babbles up to eval.max_new_tokens costs the upper bound, printed too). The feature
cache's missing clips are charged the SFM's real-time factor.
"""

from __future__ import annotations

import copy
import json
import math
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from speechwire.align import alignment_vocab
from speechwire.data import eval_loader, load_manifest, make_dataloader, utterance_duration, write_manifest
from speechwire.encoders import build_encoder
from speechwire.features import FeatureCache
from speechwire.files import read_text
from speechwire.grid.layout import cache_root, encoder_level, output_root, run_status
from speechwire.grid.run import sfm_utterances
from speechwire.grid.spec import GridSpec, Run, plan, role, run_config, shard_plan, test_manifests, write_task_manifests
from speechwire.model import SpeechLLM
from speechwire.schema import ExperimentConfig
from speechwire.tables import markdown_table
from speechwire.train import Trainer, stage_config


def _with_cache(cfg: ExperimentConfig, cache: str) -> Any:
    """The feature cache `cache` as cfg's SFM would use it (the probes' view of the grid's cache)."""
    return FeatureCache.for_config(replace(cfg, data=replace(cfg.data, feature_cache=cache)))


def count_steps(cfg: ExperimentConfig) -> int | None:
    """LM-stage optimizer steps of a run (max_steps, or epochs x batches / grad_accum), from durations
    only; None without a train manifest (the run itself then stops with the config error)."""
    if cfg.train.max_steps >= 0:
        return cfg.train.max_steps
    if not cfg.data.train_manifest:
        return None
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
    stage = stage_config(cfg)
    train_manifest = cfg.data.train_manifest
    with tempfile.TemporaryDirectory() as tmp:
        if cache is not None:
            train_utts = load_manifest(train_manifest, skip_invalid=cfg.data.skip_invalid)
            if _with_cache(cfg, cache).missing(train_utts):
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
                    _with_cache(cfg, cache).ensure(subset, progress=False, max_batch_seconds=cfg.data.max_batch_seconds,
                                                   max_batch_size=cfg.data.max_batch_size)
        train = replace(cfg.train, output_dir=str(Path(tmp) / "run"), max_steps=steps + 1, save_every=0,
                        eval_every=0, report_to="none", init_from=None)
        data = replace(cfg.data, train_manifest=train_manifest, feature_cache=cache, dev_manifest=None)
        stamps: list[float] = []  # the step boundaries, without the final validation and save
        t = Trainer(stage_config(replace(cfg, train=train, data=data, align=replace(cfg.align, steps=steps + 1))),
                    resume=False, progress=False, on_step=lambda step: stamps.append(time.perf_counter()))
        t.setup()
        t0 = time.perf_counter()
        t.train()
        if len(stamps) < 2:  # a train set too small for a second step: the one step, warm-up included
            return (stamps[-1] if stamps else time.perf_counter()) - t0
        return (stamps[-1] - stamps[0]) / (len(stamps) - 1)


@dataclass
class DecodeCost:
    """What one LLM's greedy decoding costs here, from probe_decoding."""

    prefill_per_audio_second: float  # seconds to read one second of speech (adapter + prompt forward)
    seconds_per_step: float  # one decoding step of a batch of up to `batch_size` items
    batch_size: int
    count_tokens: Callable[[str], int] = field(repr=False)  # the LLM's tokens of a reference text

    def batch_seconds(self, durations: list[float], steps: int) -> float:
        return self.prefill_per_audio_second * sum(durations) + self.seconds_per_step * steps


def probe_decoding(cfg: ExperimentConfig, manifest: str, cache: str | None = None, steps: int = 16) -> DecodeCost:
    """Time the greedy decoding of the first eval.batch_size clips of `manifest` (one batch, an
    untrained adapter) for 1 and for `steps` steps, with the stop tokens and the loop guard off so
    that both run their full length; their difference is the cost of `steps - 1` steps."""
    utts = load_manifest(manifest, skip_invalid=cfg.data.skip_invalid)[: cfg.eval.batch_size]
    fc = _with_cache(cfg, cache) if cache is not None else None
    fc = None if fc is None or fc.missing(utts) else fc
    probe_cfg = copy.deepcopy(cfg)
    probe_cfg.eval.max_repeats = 0
    model = SpeechLLM(probe_cfg, encoder=fc.stub_encoder() if fc else None)
    if getattr(model, "align_head", None) is not None:  # a posterior readout needs its vocabulary, as in training
        model.align_head.set_vocab(alignment_vocab(cfg.align.vocab, [u.transcript for u in utts if u.transcript],
                                                   model.prompter))
    stop_ids, model.prompter.stop_ids = model.prompter.stop_ids, set()
    loader, _ = eval_loader(utts, probe_cfg, fc, model.batch_tokenizer(training=False))
    batch = next(iter(loader))
    seconds = []
    try:
        for n in (1, 1, steps):  # the first decode warms up (allocations, kernel choice) and is not counted
            t0 = time.perf_counter()
            model.generate_output(batch, max_new_tokens=n)
            seconds.append(time.perf_counter() - t0)
    finally:
        model.prompter.stop_ids = stop_ids
    per_step = max(seconds[2] - seconds[1], 0.0) / max(steps - 1, 1)
    audio = sum(utterance_duration(u) for u in utts)
    prefill = max(seconds[1] - per_step, 0.0) / max(audio, 1e-9)
    prompter = model.prompter
    return DecodeCost(prefill, per_step, len(utts), lambda text: len(prompter.text_ids(text)))


def decoding_seconds(utts: list, cfg: ExperimentConfig, cost: DecodeCost) -> tuple[float, float]:
    """(expected, upper bound) seconds to decode `utts` as evaluation does: batches of
    eval.batch_size sorted by duration; each batch runs as many steps as its longest reference has
    tokens, plus the stop token (expected), or eval.max_new_tokens (upper bound)."""
    order = sorted(utts, key=utterance_duration)
    size, cap = cfg.eval.batch_size, cfg.eval.max_new_tokens
    expected = upper = 0.0
    for i in range(0, len(order), size):
        batch = order[i:i + size]
        durations = [utterance_duration(u) for u in batch]
        steps = min(cap, 1 + max(cost.count_tokens(u.target) for u in batch))
        expected += cost.batch_seconds(durations, steps)
        upper += cost.batch_seconds(durations, cap)
    return expected, upper


def _eval_utterances(spec: GridSpec, run: Run, out: Path, cfg: Any) -> list:
    """Utterances a run decodes with the LLM: every test set, plus the LM stage's final dev score."""
    utts = [u for m in test_manifests(spec, run, out).values() for u in load_manifest(m)[: spec.test_max_items]]
    if cfg.data.dev_manifest:
        utts += load_manifest(cfg.data.dev_manifest)[: cfg.train.eval_max_items]
    return utts


def _level(run: Run, kind: str) -> str:
    return next((lvl for f, lvl in run.levels.items() if role(f) == kind), "-")


def _cache_cost(spec: GridSpec, runs: list[Run], out: Path, cache: str) -> dict[str, dict[str, float]]:
    """Per SFM level: clips and audio seconds the feature cache still lacks, and the seconds to
    encode them (the SFM's real-time factor from the cache's timing file, else from 8 clips)."""
    costs: dict[str, dict[str, float]] = {}
    for level, (_, cfg, utts) in sfm_utterances(spec, runs, out, cache).items():
        fc = FeatureCache.for_config(cfg)
        todo = fc.missing(utts)
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


def dry_run(spec: GridSpec, out: str | Path | None = None, shard: tuple[int, int] = (0, 1), probe: bool = True,
            print_fn: Any = print) -> dict:
    """Print the plan: runs, their status and steps, and (probe=True) the estimated cost of what is
    left: the feature cache's missing clips, each stage's steps (timed on this machine per SFM x
    adapter, from cached features as the runs train) and the LLM decoding of the test sets and the
    dev score (timed per LLM; expected and upper bound, see the module docstring)."""
    out = output_root(spec, out)
    runs = shard_plan(spec, shard)
    write_task_manifests(spec, runs, out)
    cache = cache_root(spec, out)
    todo = [r for r in runs if run_status(out / r.name) != "done"]
    cache_cost = _cache_cost(spec, todo, out, cache) if probe and cache and todo else {}
    align_probe: dict[str, float] = {}  # SFM/adapter -> seconds per step
    lm_probe: dict[str, float] = {}
    decode_probe: dict[str, DecodeCost] = {}
    rows, total = [], sum(c["est_seconds"] for c in cache_cost.values())
    upper_total = total
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
                key = f"{encoder_level(r)}/{_level(r, 'adapter')}"
                if align_steps and key not in align_probe:
                    align_cfg = replace(cfg, train=replace(cfg.train, stage="align"))
                    align_probe[key] = probe_seconds_per_step(align_cfg, steps=3, cache=cache, scratch=scratch)
                if lm_steps and key not in lm_probe:
                    lm_probe[key] = probe_seconds_per_step(cfg, steps=2, cache=cache, scratch=scratch)
                llm = _level(r, "llm")
                tests = test_manifests(spec, r, out)
                if tests and llm not in decode_probe:
                    decode_probe[llm] = probe_decoding(cfg, next(iter(tests.values())), cache=cache)
                expected, upper = (decoding_seconds(_eval_utterances(spec, r, out, cfg), cfg, decode_probe[llm])
                                   if llm in decode_probe else (0.0, 0.0))
                row.update(est_align=align_steps * align_probe.get(key, 0.0), est_lm=(lm_steps or 0) * lm_probe.get(key, 0.0),
                           est_eval=expected, est_eval_max=upper)
                row["est_seconds"] = row["est_align"] + row["est_lm"] + expected
                total += row["est_seconds"]
                upper_total += row["est_seconds"] - expected + upper
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
            print_fn("alignment step (3-step probe): " + ", ".join(f"{k}: {v:.2f} s" for k, v in align_probe.items()))
        if lm_probe:
            print_fn("LM step (2-step probe): " + ", ".join(f"{k}: {v:.2f} s" for k, v in lm_probe.items()))
        if decode_probe:
            print_fn("decoding (one batch probed; est. eval = outputs as long as the references): " + ", ".join(
                f"{k}: {c.seconds_per_step:.3f} s/step of {c.batch_size} clips + {c.prefill_per_audio_second:.4f} s "
                "per audio second" for k, c in decode_probe.items()))
        print_fn(f"estimated time of the runs still to do on this machine: {_fmt_seconds(total)} "
                 f"({len(todo)} run(s){', cache build included' if cache_cost else ''}); "
                 f"{_fmt_seconds(upper_total)} if every answer ran to eval.max_new_tokens")
    return {"runs": rows, "cache": cache_cost, "align_seconds_per_step": align_probe, "lm_seconds_per_step": lm_probe,
            "decoding": {k: {"seconds_per_step": c.seconds_per_step, "prefill_per_audio_second": c.prefill_per_audio_second,
                             "batch_size": c.batch_size} for k, c in decode_probe.items()},
            "total_seconds": total, "upper_bound_seconds": upper_total}


def _fmt_seconds(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.1f} h"
