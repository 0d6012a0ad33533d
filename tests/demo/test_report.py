"""demo/report.py: the results table reads the evaluator's metric dicts."""

from __future__ import annotations


def test_metrics_table_reads_the_evaluators_metric_dicts():
    """Each system's scores are evaluate.compute_metrics + timing + num_utterances; the table reads them."""
    from speechwire.demo.report import decode_timing, metrics_table, system_metrics

    def rec(i: int, lang: str, hyp: str) -> dict:
        return {"id": f"u{i}", "task": "st", "tgt_lang": lang, "reference": "ein kleiner Hund", "hypothesis": hyp,
                "source": "a small dog"}

    ours = [rec(0, "de", "ein kleiner Hund"), rec(1, "fr", "ein kleiner Hund"), rec(2, "fr", "ein Hund")]
    theirs = [{**r, "hypothesis": "nichts"} for r in ours]
    metrics = {"sets": {"synthetic": {"speechwire": system_metrics(ours, decode_timing(1.0, 4.0)),
                                      "cascade": system_metrics(theirs, decode_timing(2.0, 4.0))}}}
    m = metrics["sets"]["synthetic"]["speechwire"]
    assert set(m) == {"st-de", "st-fr", "timing", "num_utterances"} and m["num_utterances"] == 3
    assert m["timing"] == {"decode_seconds": 1.0, "audio_seconds": 4.0, "real_time_factor": 0.25}
    lines = metrics_table(metrics, "st").splitlines()
    assert lines[:2] == ["| test set | system | BLEU | chrF | real-time factor | utterances |",
                         "|---|---|---:|---:|---:|---:|"]
    assert lines[2] == f"| synthetic | speechwire (de) | {m['st-de']['bleu']:.1f} | {m['st-de']['chrf']:.1f} | 0.250 | 1 |"
    assert lines[3].startswith("| synthetic | speechwire (fr) |") and lines[3].endswith("| 0.250 | 2 |")
    assert len(lines) == 6 and lines[5].startswith("| synthetic | cascade (fr) |")
