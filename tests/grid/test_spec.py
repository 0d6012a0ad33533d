"""grid/spec.py: grid files load, plans are named, sharded and shaped, bad grids name the culprit."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from speechwire.config import ConfigError
from speechwire.grid.spec import load_grid, parse_shard, plan, run_config

GRIDS = sorted((Path(__file__).parents[2] / "configs").glob("*_grid.yaml"))


@pytest.mark.parametrize("path", GRIDS, ids=[p.name for p in GRIDS])
def test_every_grid_file_loads(path):
    spec = load_grid(path)
    runs = plan(spec)
    assert len(runs) == {"paper_grid": 40, "small_real_grid": 20, "small_real_chars_grid": 22}.get(path.stem, len(runs))
    for run in runs:  # every run's experiment config is valid
        run_config(spec, run, Path("runs") / path.stem, None)


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
    message = r"factor 'adapter' value 'cnv': unknown adapter 'cnv'; did you mean 'conv'\? available: .*conv"
    with pytest.raises(ConfigError, match=message):
        load_grid(bad)
    raw["factors"]["adapter"] = ["base"]
    raw["overrides"] = ["train.lr=-1"]
    bad.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="train.lr=-1"):
        load_grid(bad)


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

