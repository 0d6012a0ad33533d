"""evaluate.py through `speechwire evaluate`: a tiny trained run scored on a manifest (predictions, metrics)."""

from __future__ import annotations

import json

from speechwire.cli import main

from helpers import write_experiment


def test_evaluate_writes_predictions_and_metrics(mustc_corpus, tmp_path):
    tmp, manifest = mustc_corpus
    cfg = write_experiment(tmp, manifest, tmp / "short", {"train": {"max_steps": 3}})
    assert main(["train", str(cfg), "--quiet"]) == 0
    assert main(["evaluate", str(tmp / "short"), "--manifest", str(manifest), "--out", str(tmp_path / "ev"),
                 "--quiet"]) == 0
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert {"asr", "st", "timing"} <= set(metrics)
    assert 0 <= metrics["asr"]["wer"] and "bleu" in metrics["st"] and metrics["timing"]["real_time_factor"] > 0
    preds = [json.loads(x) for x in (tmp_path / "ev" / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 16 and {"id", "reference", "hypothesis"} <= set(preds[0])
