"""grid/run.py end to end on CPU: 2 tiny SFMs x 2 adapters x 1 tiny LLM -> runs -> resume -> report."""

from __future__ import annotations

import csv
import json

import pytest
import yaml

from speechwire.cli import main


@pytest.mark.slow
def test_grid_runs_resumes_and_reports(grid_file, tmp_path, capsys):
    out = tmp_path / "g"
    assert main(["grid", str(grid_file), "--out", str(out), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "| encoder=w48__adapter=conv__llm=tiny__task=asr__seed=0 | todo | 0 | 2 |" in printed
    assert "LM step (2-step probe)" in printed and "s/step of" in printed and "estimated time" in printed
    assert "if every answer ran to eval.max_new_tokens" in printed
    assert main(["grid", str(grid_file), "--out", str(out), "--shard", "0/2", "--quiet"]) == 0
    done = sorted(p.parent.name for p in out.glob("*/grid_run.json"))
    assert len(done) == 2 and all("adapter=mlp" in d for d in done)
    assert main(["grid", str(grid_file), "--out", str(out), "--shard", "1/2", "--quiet"]) == 0
    runs = sorted(out.glob("*/grid_run.json"))
    assert len(runs) == 4
    mtimes = [p.stat().st_mtime_ns for p in runs]
    assert main(["grid", str(grid_file), "--out", str(out), "--quiet"]) == 0  # all finished: skipped
    assert [p.stat().st_mtime_ns for p in runs] == mtimes
    # the cache encoded each utterance once per SFM; every run only read it
    summaries = [json.loads((p.parent / "train_summary.json").read_text()) for p in runs]
    assert all(s["feature_cache"]["misses"] == 0 and s["feature_cache"]["hits"] == 8 for s in summaries)

    assert main(["report", str(out)]) == 0
    report = (out / "report.md").read_text()
    assert "of WER (asr, a) variance" in report and "Best adapter per SFM x LLM pair" in report
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert len(rows) == 4 and "llm" in rows[0]
    for row in rows:  # the report's numbers are the run folders' numbers
        run = json.loads((out / row["run"] / "grid_run.json").read_text())
        metrics = json.loads((out / row["run"] / "eval-a" / "metrics.json").read_text())
        assert float(row["a:asr.wer"]) == pytest.approx(metrics["asr"]["wer"])
        assert float(row["a:compression"]) == pytest.approx(run["test"]["a"]["compression"])
        assert int(row["trainable_params"]) == run["trainable_params"] > 0
        assert float(row["a:rtf"]) > 0 and float(row["train_seconds"]) > 0
        ratio = run["test"]["a"]["compression"]
        assert ratio == pytest.approx(1.0 if "adapter=mlp" in row["run"] else 4.0, rel=0.25)
    res = json.loads((out / "results.json").read_text())
    shares = res["analysis"]["a:asr.wer"]["shares"]
    assert shares["dropped"] == ["llm", "task"] and {t["term"] for t in shares["terms"]} == {
        "encoder", "adapter", "encoder x adapter"}
    for png in ("variance_shares.png", "heatmap_a_asr_wer.png", "compression_a_asr_wer.png"):
        assert (out / "plots" / png).stat().st_size > 1000


@pytest.mark.slow
def test_grid_run_trains_both_stages(grid_file, tmp_path):
    """With align.steps the grid runs the alignment stage, then a 0-step LM stage, and records both."""
    raw = yaml.safe_load(grid_file.read_text())
    raw["overrides"] += ["align.steps=2", "train.max_steps=0", "align.max_batch_seconds=3.0"]
    raw["factors"] = {**raw["factors"], "encoder": {"w32": None}, "adapter": ["mlp"]}
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    out = tmp_path / "g"
    assert main(["grid", str(path), "--out", str(out), "--quiet"]) == 0
    (result,) = [json.loads(p.read_text()) for p in out.glob("*/grid_run.json")]
    assert result["align"]["steps"] == 2 and result["steps"] == 0
    assert result["train_seconds"] >= result["align"]["train_seconds"] > 0
    assert set(result["test"]) == {"a", "b"}


def test_step_probe_reads_cached_features_like_the_runs(grid_file, tmp_path):
    """--dry-run's step probe times steps from cached SFM features (a grid run builds its cache before
    training): with the grid's cache still empty it encodes only the probe's clips, into a scratch
    cache shared by the probes, and leaves the grid's cache untouched."""
    from speechwire.grid.estimate import probe_seconds_per_step
    from speechwire.grid.spec import load_grid, plan, run_config, write_task_manifests

    spec = load_grid(grid_file)
    run = plan(spec)[0]
    write_task_manifests(spec, [run], tmp_path / "g")
    cache, scratch = tmp_path / "cache", tmp_path / "scratch"
    cfg = run_config(spec, run, tmp_path / "g", None)
    seconds = probe_seconds_per_step(cfg, steps=2, cache=str(cache), scratch=scratch)
    assert 0 < seconds < 60
    entries = sorted(p.relative_to(scratch) for p in scratch.rglob("*") if p.is_file() and p.name != ".lock")
    assert any(p.name == "sfm.json" for p in entries) and len(entries) > 2
    assert not cache.exists() or not any(p.is_file() for p in cache.rglob("*"))
    mtimes = {p: (scratch / p).stat().st_mtime_ns for p in entries}
    assert probe_seconds_per_step(cfg, steps=2, cache=str(cache), scratch=scratch) > 0  # a second probe: no re-encoding
    assert {p: (scratch / p).stat().st_mtime_ns for p in entries} == mtimes
