"""Grid end to end on CPU: 2 tiny SFMs x 2 adapters x 1 tiny LLM -> runs -> resume -> report."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from speechwire.cli import main
from speechwire.config import ConfigError
from speechwire.grid.spec import load_grid, parse_shard, plan
from speechwire.testing import save_tiny_llm, save_tiny_whisper

from helpers import mustc_manifest


@pytest.fixture(scope="module")
def grid_file(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("grid")
    manifest = mustc_manifest(tmp, "all.jsonl")
    save_tiny_whisper(tmp / "w32", d_model=32, layers=1, seed=0)
    save_tiny_whisper(tmp / "w48", d_model=48, layers=1, seed=1)
    save_tiny_llm(tmp / "llm")
    grid = {
        "base": {"data": {"train_manifest": str(manifest), "max_batch_seconds": 3.0, "max_batch_size": 4},
                 "adapter": {"hidden_size": 32, "num_layers": 1, "num_heads": 4, "ffn_size": 64, "dropout": 0.0},
                 "train": {"max_steps": 2, "lr": 3e-3, "save_every": 0, "log_every": 1},
                 "eval": {"max_new_tokens": 16, "batch_size": 8}},
        "overrides": ["data.feature_cache_dtype=float32"],
        "presets": {"w32": {"encoder.name": "whisper", "encoder.model": str(tmp / "w32")}},
        "factors": {"encoder": {"w32": None, "w48": {"encoder": {"name": "whisper", "model": str(tmp / "w48")}}},
                    "adapter": ["mlp", "conv"], "llm": {"tiny": {"llm.model": str(tmp / "llm")}},
                    "task": ["asr"]},
        "test_sets": {"a": str(manifest), "b": str(manifest)},
    }
    path = tmp / "grid.yaml"
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    return path


GRIDS = sorted((Path(__file__).parents[2] / "configs").glob("*_grid.yaml"))


@pytest.mark.parametrize("path", GRIDS, ids=[p.name for p in GRIDS])
def test_every_grid_file_loads(path):
    runs = plan(load_grid(path))
    assert len(runs) == {"paper_grid": 40, "small_real_grid": 20}.get(path.stem, len(runs))


def test_plan_names_and_shards(grid_file):
    runs = plan(load_grid(grid_file))
    assert [r.name for r in runs][:2] == ["encoder=w32__adapter=mlp__llm=tiny__task=asr__seed=0",
                                          "encoder=w32__adapter=conv__llm=tiny__task=asr__seed=0"]
    assert parse_shard("1/3") == (1, 3)
    with pytest.raises(ValueError, match="0 <= i < n"):
        parse_shard("3/3")


def test_bad_grid_names_the_culprit(grid_file, tmp_path):
    raw = yaml.safe_load(grid_file.read_text())
    raw["factors"]["adapter"] = ["base", "cnv"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"factor 'adapter' value 'cnv': unknown adapter 'cnv'; did you mean 'conv'\? available: .*conv"):
        load_grid(bad)
    raw["factors"]["adapter"] = ["base"]
    raw["overrides"] = ["train.lr=-1"]
    bad.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="train.lr=-1"):
        load_grid(bad)


def test_grid_runs_resumes_and_reports(grid_file, tmp_path, capsys):
    out = tmp_path / "g"
    assert main(["grid", str(grid_file), "--out", str(out), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "| encoder=w48__adapter=conv__llm=tiny__task=asr__seed=0 | todo | 0 | 2 |" in printed
    assert "LM step (2-step probe)" in printed and "s/clip" in printed and "estimated time" in printed
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


def test_test_max_items_must_be_positive(tmp_path):
    from speechwire.config import ConfigError
    from speechwire.grid import load_grid

    grid = tmp_path / "g.yaml"
    grid.write_text("base: {}\nfactors: {adapter: [mlp]}\ntest_max_items: 0\n")
    with pytest.raises(ConfigError, match="test_max_items=0 must be a positive integer"):
        load_grid(grid)


def test_extra_seeds_and_exclude_shape_the_plan(grid_file, tmp_path):
    raw = yaml.safe_load(grid_file.read_text())
    raw["extra_seeds"] = {"seeds": [7], "where": {"adapter": ["conv"]}}
    raw["exclude"] = [{"encoder": ["w48"], "adapter": ["mlp"]}]
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    names = [r.name for r in plan(load_grid(path))]
    assert names == ["encoder=w32__adapter=mlp__llm=tiny__task=asr__seed=0",
                     "encoder=w32__adapter=conv__llm=tiny__task=asr__seed=0",
                     "encoder=w48__adapter=conv__llm=tiny__task=asr__seed=0",
                     "encoder=w32__adapter=conv__llm=tiny__task=asr__seed=7",  # extra seeds come last
                     "encoder=w48__adapter=conv__llm=tiny__task=asr__seed=7"]
    for bad, match in ((["extra_seeds", {"seeds": [1], "where": {"adaptr": ["conv"]}}], "did you mean 'adapter'"),
                       (["exclude", [{"adapter": ["cnv"]}]], "exclude\\[0\\] adapter level 'cnv'"),
                       (["exclude", [{"adapter": ["mlp", "conv"]}]], "exclude leaves no combination")):
        path.write_text(yaml.safe_dump({**raw, bad[0]: bad[1]}, sort_keys=False))
        with pytest.raises(ConfigError, match=match):
            load_grid(path)


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
