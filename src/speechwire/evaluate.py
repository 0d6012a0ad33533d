"""Batched greedy evaluation: predictions.jsonl + metrics.json (WER for ASR, BLEU/chrF/COMET for ST).

    speechwire evaluate runs/demo --manifest test.jsonl

Utterances are decoded in batches sorted by duration (little padding); metrics are computed per
task (and per target language for ST) with speechwire.metrics, plus real-time factor and tokens/s.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path

from tqdm.auto import tqdm

from speechwire.data import Utterance, eval_loader, load_manifest
from speechwire.files import write_atomic
from speechwire.metrics import score
from speechwire.model import SpeechLLM
from speechwire.schema import ExperimentConfig, resolve_device


def generate_predictions(model: SpeechLLM, utts: list[Utterance], cfg: ExperimentConfig,
                         progress: bool = True, feature_cache=None) -> tuple[list[dict], dict]:
    """Decode every utterance; returns one record per utterance (input order) and timing totals.
    With a speechwire.features.FeatureCache the SFM outputs come from it (timing then excludes the SFM)."""
    loader, batches = eval_loader(utts, cfg, feature_cache, model.batch_tokenizer(training=False))
    records: dict[str, dict] = {}
    seconds, audio_seconds, tokens = 0.0, 0.0, 0
    for batch in tqdm(loader, total=len(batches), desc="evaluate", disable=not progress, dynamic_ncols=True):
        if not batch.ids:
            continue
        t0 = time.perf_counter()
        out = model.generate_output(batch, max_new_tokens=cfg.eval.max_new_tokens)
        seconds += time.perf_counter() - t0
        tokens += out.num_tokens
        audio_seconds += sum(batch.durations)
        for i, hyp in enumerate(out.texts):
            records[batch.ids[i]] = {
                "id": batch.ids[i], "task": batch.tasks[i], "tgt_lang": batch.tgt_langs[i],
                "reference": batch.targets[i], "hypothesis": hyp, "source": batch.transcripts[i],
                "duration": round(batch.durations[i], 3),
            }
    ordered = [records[u.id] for u in utts if u.id in records]
    timing = {"decode_seconds": round(seconds, 3), "audio_seconds": round(audio_seconds, 3),
              "real_time_factor": round(seconds / max(audio_seconds, 1e-9), 4),
              "generated_tokens": tokens, "tokens_per_second": round(tokens / max(seconds, 1e-9), 2),
              "skipped": len(utts) - len(ordered)}
    return ordered, timing


def compute_metrics(records: list[dict], comet_model: str | None = None) -> dict:
    """Metrics per task: {"asr": {...wer...}, "st": {...bleu, chrf...}} (ST split by target language
    when there are several, e.g. "st-de", "st-fr")."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        groups[r["task"]].append(r)
    out = {}
    for task, rs in sorted(groups.items()):
        by_lang: dict[str | None, list[dict]] = defaultdict(list)
        for r in rs:
            by_lang[r["tgt_lang"] if task == "st" else None].append(r)
        for lang, items in by_lang.items():
            key = task if len(by_lang) == 1 else f"{task}-{lang}"
            out[key] = score(task, [r["reference"] for r in items], [r["hypothesis"] for r in items],
                             srcs=[r["source"] for r in items], tgt_lang=lang,
                             comet_model=comet_model if task == "st" else None)
    return out


def primary_metric(metrics: dict) -> tuple[str, float, bool]:
    """The number that picks the best checkpoint: ASR WER (lower is better) else ST BLEU."""
    for task, name, higher in (("asr", "wer", False), ("st", "bleu", True)):
        for key, m in metrics.items():
            if key.startswith(task):
                return f"{key}/{name}", float(m[name]), higher
    raise ValueError(f"no ASR or ST metric in {sorted(metrics)}")


def evaluate_utterances(model: SpeechLLM, utts: list[Utterance], cfg: ExperimentConfig,
                        out_dir: str | Path | None = None, progress: bool = True, feature_cache=None) -> dict:
    """Generate, score, and (with out_dir) write predictions.jsonl and metrics.json."""
    if not utts:
        raise ValueError("nothing to evaluate: the manifest has no utterances")
    records, timing = generate_predictions(model, utts, cfg, progress=progress, feature_cache=feature_cache)
    metrics = {**compute_metrics(records, cfg.eval.comet_model), "timing": timing, "num_utterances": len(records)}
    if out_dir is not None:
        write_results(out_dir, records, metrics)
    return metrics


def write_results(out_dir: str | Path, records: list[dict], metrics: dict) -> None:
    """out_dir/predictions.jsonl (one record a line) and out_dir/metrics.json, each whole or absent (full disk)."""
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    write_atomic(Path(out_dir) / "predictions.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records),
                 "predictions")
    write_atomic(Path(out_dir) / "metrics.json", json.dumps(metrics, indent=2), "metrics")


def evaluate_run(run_dir: str | Path, manifest: str | Path, out_dir: str | Path | None = None,
                 overrides: list[str] | None = None, progress: bool = True) -> dict:
    """`speechwire evaluate`: load a run's final (or any checkpoint folder's) weights and score."""
    model = SpeechLLM.from_pretrained(run_dir, overrides)
    model.to(resolve_device(model.cfg.train.device))
    utts = load_manifest(manifest, skip_invalid=model.cfg.data.skip_invalid)
    out = Path(out_dir) if out_dir else Path(run_dir) / f"eval-{Path(manifest).stem}"
    metrics = evaluate_utterances(model, utts, model.cfg, out, progress=progress)
    metrics["output_dir"] = str(out)
    return metrics
