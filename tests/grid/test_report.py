"""The grid report from finished run folders (grid_run.json files written here, no training)."""

from __future__ import annotations

import csv
import json

from speechwire.grid.report import cache_summary, collect, write_report


def _run(folder, encoder, adapter, seed, wer, hits=100, misses=0):
    name = f"encoder={encoder}__adapter={adapter}__seed={seed}"
    (folder / name).mkdir(parents=True)
    cache = {"reads": hits + misses, "hits": hits, "misses": misses}
    result = {"name": name, "levels": {"encoder": encoder, "adapter": adapter}, "seed": seed, "steps": 0,
              "train_seconds": 10.0, "trainable_params": 1000, "feature_cache": cache,
              "align": {"steps": 300, "train_seconds": 9.0, "feature_cache": cache,
                        "best_dev": {"step": 300, "metric": "asr/wer", "value": wer - 0.1}},
              "test": {"real": {"metrics": {"asr": {"wer": wer}}, "compression": 4.0, "rtf": 0.1}},
              "peak_memory_gib": 1.5}
    (folder / name / "grid_run.json").write_text(json.dumps(result))


def test_report_tables_seed_noise_and_cache(tmp_path):
    for enc, ad, seed, wer, misses in [("tiny", "mlp", 0, 0.6, 0), ("tiny", "mlp", 1, 0.64, 0),
                                       ("tiny", "conv", 0, 1.0, 0), ("base", "mlp", 0, 0.5, 3),
                                       ("base", "conv", 0, 1.0, 0)]:
        _run(tmp_path, enc, ad, seed, wer, misses=misses)
    rows, factors = collect(tmp_path)
    assert factors == ["encoder", "adapter"] and len(rows) == 5
    assert rows[0]["align_dev:asr.wer"] == rows[0]["real:asr.wer"] - 0.1
    caches = {c["sfm"]: c for c in cache_summary(rows, factors)}
    assert caches["base"]["misses"] == 6 and caches["tiny"]["hit_rate"] == "100.0%"  # align + LM stage
    report = write_report(tmp_path, plots=False).read_text()
    assert "Seed noise of WER (asr, real) (1 combination(s) run with 2+ seeds): pooled SD 0.0283" in report
    assert "## WER (asr, align_dev)" in report  # the LLM-free alignment score is analysed like a test set
    assert "## Feature cache" in report and "| base | 2 | 406 | 400 | 6 | 98.5% |" in report
    table = list(csv.DictReader(open(tmp_path / "results.csv")))
    assert {r["adapter"] for r in table} == {"mlp", "conv"} and "align_dev:asr.wer" in table[0]
