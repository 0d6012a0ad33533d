"""Demo output: side-by-side examples, the metrics table, predictions.jsonl, metrics.json, the plot.

Each system's scores on a test set are what `speechwire evaluate` writes to its metrics.json
(`system_metrics`: evaluate.compute_metrics + timing + num_utterances), and the table reads them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from speechwire.evaluate import compute_metrics
from speechwire.metrics import chrf, real_time_factor, wer, wer_per_utterance


def side_by_side(records: list[dict], task: str, n: int = 3) -> str:
    """A few clips per test set: reference / speechwire / baseline, one line each."""
    base = "plain whisper" if task == "asr" else "cascade"
    lines = []
    for name in dict.fromkeys(r["set"] for r in records):
        for r in [r for r in records if r["set"] == name][:n]:
            lines.append(f"[{name}] {r['id']} ({r['duration']:.1f} s)")
            if task == "st":
                lines.append(f"  {'source':<14} {r['source']}")
            lines.append(f"  {'reference':<14} {r['reference']}")
            lines.append(f"  {'speechwire':<14} {r['speechwire']}")
            lines.append(f"  {base:<14} {r['baseline']}")
    return "\n".join(lines)


def decode_timing(seconds: float, audio_seconds: float) -> dict:
    """The evaluator's timing keys (decode_seconds, audio_seconds, real_time_factor), rounded as it
    rounds them, for a system timed outside evaluate.generate_predictions (the baselines)."""
    return {"decode_seconds": round(seconds, 3), "audio_seconds": round(audio_seconds, 3),
            "real_time_factor": round(real_time_factor(seconds, max(audio_seconds, 1e-9)), 4)}


def system_metrics(records: list[dict], timing: dict, comet_model: str | None = None) -> dict:
    """One system's scores on one test set, as `speechwire evaluate` writes them to metrics.json.

    Args:
        records: evaluator-style records (task, tgt_lang, reference, hypothesis, source).
        timing: evaluate.generate_predictions' timing, or `decode_timing` for a baseline.
        comet_model: as eval.comet_model (ST adds COMET when set).

    Returns:
        {"asr": {"wer", ...} | "st": {"bleu", "chrf", ...} (per target language: "st-de"...),
        "timing": {..., "real_time_factor"}, "num_utterances": n}.
    """
    return {**compute_metrics(records, comet_model), "timing": timing, "num_utterances": len(records)}


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str) -> str:
    """A markdown table of pre-formatted cells; `align` has one "l" or "r" per column."""
    rule = "|" + "".join("---:|" if a == "r" else "---|" for a in align)
    return "\n".join(["| " + " | ".join(header) + " |", rule, *("| " + " | ".join(r) + " |" for r in rows)])


def metrics_table(metrics: dict, task: str) -> str:
    """Markdown table: one row per (test set, system[, target language]), read from the
    `system_metrics` dicts in metrics["sets"]."""
    scores = ["WER %"] if task == "asr" else ["BLEU", "chrF"]
    rows = []
    for name, systems in metrics["sets"].items():
        for system, m in systems.items():
            for key, s in m.items():
                if key.split("-")[0] != task or not isinstance(s, dict):
                    continue
                label = system if key == task else f"{system} ({key.split('-', 1)[1]})"
                cells = [f"{s['wer'] * 100:.1f}"] if task == "asr" else [f"{s['bleu']:.1f}", f"{s['chrf']:.1f}"]
                rows.append([name, label, *cells, f"{m['timing']['real_time_factor']:.3f}", str(s["num_utterances"])])
    return markdown_table(["test set", "system", *scores, "real-time factor", "utterances"], rows,
                          "ll" + "r" * (len(scores) + 2))


def plot_by_length(records: list[dict], task: str, path: Path, bins: int = 5) -> Path:
    """WER (ASR) or sentence chrF (ST) by utterance length, speechwire vs baseline, per test set.

    Utterances are cut into `bins` duration quantiles per test set; each point is the corpus
    score of one bin, at the bin's mean duration.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = list(dict.fromkeys(r["set"] for r in records))
    fig, axes = plt.subplots(1, len(sets), figsize=(5.5 * len(sets), 4), squeeze=False)
    base = "plain Whisper" if task == "asr" else "cascade (Whisper + LLM)"
    for ax, name in zip(axes[0], sets):
        rs = sorted((r for r in records if r["set"] == name), key=lambda r: r["duration"])
        groups = [g for g in np.array_split(np.arange(len(rs)), min(bins, len(rs))) if len(g)]
        x = [float(np.mean([rs[i]["duration"] for i in g])) for g in groups]
        for key, label, style in (("speechwire", "speechwire", "o-"), ("baseline", base, "s--")):
            ys = []
            for g in groups:
                refs, hyps = [rs[i]["reference"] for i in g], [rs[i][key] for i in g]
                ys.append(100 * wer(refs, hyps)["wer"] if task == "asr" else chrf(refs, hyps)["score"])
            ax.plot(x, ys, style, label=label)
        ax.set_title(f"{name} test set ({len(rs)} utterances)")
        ax.set_xlabel("utterance length (s), mean of each length quintile")
        ax.set_ylabel("WER %" if task == "asr" else "chrF")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def per_utterance_scores(records: list[dict], task: str) -> None:
    """Add each record's own WER (ASR) or chrF (ST) for both systems, in place."""
    if task == "asr":
        refs = [r["reference"] for r in records]
        for key in ("speechwire", "baseline"):
            for r, w in zip(records, wer_per_utterance(refs, [r[key] for r in records])):
                r[f"{key}_wer"] = round(w, 4)
    else:
        for r in records:
            for key in ("speechwire", "baseline"):
                r[f"{key}_chrf"] = round(chrf([r["reference"]], [r[key]])["score"], 2)


def write_outputs(out_dir: Path, records: list[dict], metrics: dict, task: str) -> dict[str, Path]:
    """predictions.jsonl, metrics.json and the PNG into `out_dir`; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    per_utterance_scores(records, task)
    preds = out_dir / "predictions.jsonl"
    with open(preds, "w") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    met = out_dir / "metrics.json"
    met.write_text(json.dumps(metrics, indent=2, ensure_ascii=False) + "\n")
    png = plot_by_length(records, task, out_dir / ("wer_by_length.png" if task == "asr" else "chrf_by_length.png"))
    return {"predictions": preds, "metrics": met, "plot": png}


__all__ = ["decode_timing", "markdown_table", "metrics_table", "plot_by_length", "side_by_side", "system_metrics",
           "write_outputs"]
