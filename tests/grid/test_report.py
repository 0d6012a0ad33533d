"""The grid report from finished run folders (grid_run.json files written here, no training)."""

from __future__ import annotations

import csv
import json

import pytest

from speechwire.cli import main
from speechwire.grid.report import cache_builds, cache_summary, collect, parse_where, write_report


def _run(folder, encoder, adapter, seed, wer, hits=100, misses=0, llm=None):
    levels = {"encoder": encoder, "adapter": adapter, **({"llm": llm} if llm else {})}
    name = "__".join(f"{k}={v}" for k, v in levels.items()) + f"__seed={seed}"
    (folder / name).mkdir(parents=True)
    cache = {"reads": hits + misses, "hits": hits, "misses": misses}
    result = {"name": name, "levels": levels, "seed": seed, "steps": 0,
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
    assert "## Feature cache" in report and "| base | 0 (0 build(s)) | 2 | 406 | 400 | 6 | 98.5% |" in report
    table = list(csv.DictReader(open(tmp_path / "results.csv")))
    assert {r["adapter"] for r in table} == {"mlp", "conv"} and "align_dev:asr.wer" in table[0]


def test_cache_builds_count_the_grids_sfm_passes(tmp_path):
    _run(tmp_path, "tiny", "mlp", 0, 0.6)
    events = [{"event": "cache", "sfm": "tiny", "written": 30}, {"event": "start", "run": "x"},
              {"event": "cache", "sfm": "tiny", "written": 0},  # a later build that found everything cached
              {"event": "cache", "sfm": "tiny", "written": 30}]  # a second machine
    lines = [json.dumps(e) for e in events] + ['{"event": "cache", "sfm": "ti']  # a line cut by a kill
    (tmp_path / "grid_events.jsonl").write_text("\n".join(lines) + "\n")
    assert cache_builds(tmp_path) == {"tiny": {"builds": 2, "encoded": 60}}
    assert "| tiny | 60 (2 build(s)) | 1 |" in write_report(tmp_path, plots=False).read_text()


def _llm_grid(folder):
    """A 2 SFM x 2 adapter design with one LLM, plus one LLM level that fails everywhere it runs."""
    for enc, ad, wer in [("tiny", "mlp", 0.6), ("tiny", "conv", 0.9), ("base", "mlp", 0.4), ("base", "conv", 0.7)]:
        _run(folder, enc, ad, 0, wer, llm="good")
    for enc, ad in [("tiny", "mlp"), ("base", "mlp")]:
        _run(folder, enc, ad, 0, 5.0, llm="bad")


def test_where_reports_a_sub_design_into_its_own_folder(tmp_path):
    _llm_grid(tmp_path)
    whole = write_report(tmp_path, plots=False)
    sub = write_report(tmp_path, plots=False, where=parse_where(["llm=good"]))
    assert sub.parent == tmp_path / "subset-llm=good" and whole == tmp_path / "report.md"
    text = sub.read_text()
    assert text.startswith("# Grid report: " + tmp_path.name + ", the runs with llm = good")
    assert "4 finished run(s)" in text and "llm`: 1 levels" in text
    rows = json.loads((sub.parent / "results.json").read_text())["rows"]
    assert sorted(r["llm"] for r in rows) == ["good"] * 4
    shares = {t["term"]: t["share"] for t in json.loads((sub.parent / "results.json").read_text())
              ["analysis"]["real:asr.wer"]["shares"]["terms"]}
    # balanced 2 x 2 with additive effects: SFM 0.2 apart, adapter 0.3 apart -> shares 0.04 : 0.09 of 0.13
    assert shares["encoder"] == pytest.approx(0.04 / 0.13) and shares["adapter"] == pytest.approx(0.09 / 0.13)
    assert "llm" not in shares  # a single level in the sub-design
    assert "6 finished run(s)" in whole.read_text()  # the whole grid's report is untouched


@pytest.mark.parametrize("where, culprit", [(["sfm=tiny"], "'sfm' is not a factor of this grid; its factors: "
                                                           "encoder, adapter, llm"),
                                            (["llm=huge"], "llm=huge: no finished run has that level; llm levels "
                                                           "of the finished runs: bad, good"),
                                            (["llm"], "'llm' must look like factor=level")])
def test_where_errors_name_the_culprit(tmp_path, capsys, where, culprit):
    _llm_grid(tmp_path)
    args = ["report", str(tmp_path), "--no-plots"] + [a for w in where for a in ("--where", w)]
    assert main(args) != 0
    assert culprit in capsys.readouterr().err
    assert not (tmp_path / "report.md").exists()


def test_where_from_the_command_line_with_out(tmp_path, capsys):
    _llm_grid(tmp_path)
    out = tmp_path / "reports" / "good-mlp"
    assert main(["report", str(tmp_path), "--no-plots", "--where", "llm=good", "--where", "adapter=mlp,conv",
                 "--out", str(out)]) == 0
    assert f"wrote {out / 'report.md'}" in capsys.readouterr().out
    assert "the runs with llm = good, adapter = mlp or conv" in (out / "report.md").read_text()


def test_learning_curves_are_read_from_the_runs_dev_logs(tmp_path):
    from speechwire.grid.report import dev_curve, learning_curves

    for enc, ad, seed, wer in [("tiny", "mlp", 0, 0.6), ("tiny", "conv", 0, 1.0), ("base", "mlp", 0, 0.5)]:
        _run(tmp_path, enc, ad, seed, wer)
    rows, factors = collect(tmp_path)
    assert learning_curves(tmp_path / "plots", tmp_path, rows, factors) == []  # no run logged a dev evaluation
    log = tmp_path / rows[0]["run"] / "align" / "log.jsonl"
    log.parent.mkdir()
    log.write_text("\n".join([json.dumps({"step": 25, "loss": 3.0}),
                              json.dumps({"step": 250, "dev": {"asr": {"wer": 0.9, "wer_percent": 90.0}}}),
                              '{"step": 500, "dev": {"asr": {"wer": 0.7',  # a line cut short by a kill
                              json.dumps({"step": 500, "dev": {"asr": {"wer": 0.7}}})]))
    assert dev_curve(tmp_path / rows[0]["run"]) == [(250, 90.0, "wer"), (500, 70.0, "wer")]
    (tmp_path / rows[1]["run"] / "log.jsonl").write_text(  # no alignment stage: the run's own log
        json.dumps({"step": 10, "dev": {"st": {"bleu": 3.0}}}) + "\n" + json.dumps({"step": 20, "dev": {"st": {"bleu": 5.0}}}))
    assert dev_curve(tmp_path / rows[1]["run"]) == [(10, 3.0, "bleu"), (20, 5.0, "bleu")]
    [png] = learning_curves(tmp_path / "plots", tmp_path, rows, factors)
    assert png.name == "learning_curves.png" and png.stat().st_size > 1000
    assert "learning_curves.png" in write_report(tmp_path).read_text()
