"""Demo output: side-by-side examples, the metrics table, predictions.jsonl, metrics.json, the plot."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..metrics import chrf, normalize_text, wer, wer_per_utterance


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


def metrics_table(metrics: dict, task: str) -> str:
    """Markdown table: one row per (test set, system)."""
    if task == "asr":
        head = "| test set | system | WER % | real-time factor | utterances |\n|---|---|---:|---:|---:|"
        rows = [f"| {s} | {name} | {m['wer'] * 100:.1f} | {m['rtf']:.3f} | {m['n']} |"
                for s, systems in metrics["sets"].items() for name, m in systems.items()]
    else:
        head = "| test set | system | BLEU | chrF | real-time factor | utterances |\n|---|---|---:|---:|---:|---:|"
        rows = [f"| {s} | {name} | {m['bleu']:.1f} | {m['chrf']:.1f} | {m['rtf']:.3f} | {m['n']} |"
                for s, systems in metrics["sets"].items() for name, m in systems.items()]
    return "\n".join([head, *rows])


def asr_scores(refs: list[str], hyps: list[str], seconds: float, audio_seconds: float) -> dict:
    out = wer(refs, hyps)
    return {"wer": out["wer"], "substitutions": out["substitutions"], "deletions": out["deletions"],
            "insertions": out["insertions"], "ref_words": out["ref_words"], "n": len(refs),
            "decode_seconds": round(seconds, 3), "audio_seconds": round(audio_seconds, 3),
            "rtf": seconds / max(audio_seconds, 1e-9)}


def st_scores(refs: list[str], hyps: list[str], seconds: float, audio_seconds: float, tgt_lang: str = "de") -> dict:
    from ..metrics import bleu

    b, c = bleu(refs, hyps, tgt_lang=tgt_lang), chrf(refs, hyps)
    return {"bleu": b["score"], "chrf": c["score"], "bleu_signature": b.get("signature"), "n": len(refs),
            "decode_seconds": round(seconds, 3), "audio_seconds": round(audio_seconds, 3),
            "rtf": seconds / max(audio_seconds, 1e-9)}


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


__all__ = ["asr_scores", "metrics_table", "normalize_text", "plot_by_length", "side_by_side", "st_scores",
           "write_outputs"]
