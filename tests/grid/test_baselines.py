"""speechwire grid --baselines: plain Whisper per SFM level and the cascade per LLM level, on the grid's clips."""

from __future__ import annotations

import json

import pytest
import yaml

from speechwire.cli import main
from speechwire.data import load_manifest
from speechwire.demo import baselines as demo_baselines
from speechwire.grid import load_grid
from speechwire.grid.baselines import BASELINES, baseline_lines, grid_baselines, read_baselines


class _TinyWhisper(demo_baselines.PlainWhisper):
    """The tiny random Whisper has no tokenizer: its ids are its words."""

    def __init__(self, folder, **kw):
        super().__init__(folder, max_new_tokens=4, decode=lambda ids: " ".join(f"w{i}" for i in ids))


@pytest.fixture
def mixed_grid(grid_file, tmp_path):
    """The grid fixture without its task factor: the test set holds ASR and ST items."""
    grid = yaml.safe_load(grid_file.read_text())
    del grid["factors"]["task"]
    grid["test_max_items"] = 12
    path = grid_file.parent / f"mixed-{tmp_path.name}.yaml"
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    return path


def test_baselines_per_sfm_and_llm_level_resume_and_reach_the_report(mixed_grid, tmp_path, monkeypatch):
    monkeypatch.setattr(demo_baselines, "PlainWhisper", _TinyWhisper)
    spec = load_grid(mixed_grid)
    out = tmp_path / "grid"
    got = grid_baselines(spec, out, progress=False)
    items = load_manifest(spec.test_sets["a"])[:12]
    n_st = sum(u.task == "st" for u in items)
    assert 0 < n_st < 12
    assert set(got) == {"w32", "w48"}
    for sfm in got.values():
        assert set(sfm) == {"a", "b"}
        for systems in sfm.values():
            assert set(systems) == {"plain whisper", "cascade (tiny)"}
            assert systems["plain whisper"]["num_utterances"] == 12 - n_st and systems["plain whisper"]["rtf"] > 0
            assert systems["cascade (tiny)"]["num_utterances"] == n_st and "chrf" in systems["cascade (tiny)"]
    assert read_baselines(out) == json.loads((out / BASELINES).read_text()) == got

    class Broken:
        def __init__(self, *a, **k):
            raise AssertionError("a finished baseline is computed again")

    monkeypatch.setattr(demo_baselines, "PlainWhisper", Broken)
    assert grid_baselines(spec, out, progress=False) == got  # resumed: nothing left to do
    lines = baseline_lines(got)
    assert lines[1] == "## Baselines on the same clips"
    assert sum(line.startswith("| w32 | cascade (tiny) |") for line in lines) == 2
    assert baseline_lines({}) == []


def test_baselines_flag_goes_alone(grid_file, capsys):
    assert main(["grid", str(grid_file), "--baselines", "--dry-run"]) == 2
    assert "--dry-run and --baselines do not go together" in capsys.readouterr().err
