"""Grid of experiments: SFM x adapter x LLM x task (x seed) over one base config.

    speechwire grid configs/small_real_grid.yaml --dry-run      # plan + cost from a timing probe
    speechwire grid configs/small_real_grid.yaml --shard 0/4     # every 4th run, from the first
    speechwire report runs/small_real_grid                       # report.md, results.csv, plots

A grid file (docs/grid.md has the full reference):

    base: demo_asr.yaml                 # a config path (next to the grid file, else the cwd) or a mapping
    overrides: {train.max_steps: 200}   # dotted keys (or a list of "key=value")
    presets: {tiny_en: {encoder.name: whisper, encoder.model: "weights:whisper-tiny.en"}}
    factors:
      encoder: [tiny_en]                # preset names, or {name: {dotted overrides}}
      adapter: [base, conv]             # plain names: adapter.name (llm: llm.model, encoder: encoder.model)
      task: [asr, st-en-de]             # filters the manifests' items by task (and languages)
    seeds: [0]
    extra_seeds: {seeds: [1], where: {adapter: [mlp, conv]}}   # more seeds for some combinations only
    exclude: [{llm: [big], adapter: [cif, ctc]}]               # combinations not run (each filter: all match)
    test_sets: {synth: data/demo/test.jsonl}
    feature_cache: runs/features        # default <out>/features; false: always encode audio

Each combination runs in <out>/<factor>=<level>__...__seed=<s>/: train (auto-resumes from its
checkpoints), then evaluate on every test set -> eval-<test>/metrics.json, then grid_run.json
(written last, atomically: its presence marks the run done, and a rerun skips it).
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from speechwire.config import ConfigError, ExperimentConfig, apply_presets, check_names, flatten, from_dict, parse_yaml, read_yaml
from speechwire.errors import unknown_name


@dataclass(frozen=True)
class Role:
    """What the runner and the report know of a factor: its names in grid files, its label in
    reports, and the config key a plain level name sets."""

    names: tuple[str, ...]
    label: str
    default_key: str | None


ROLES = {
    "encoder": Role(("encoder", "enc", "sfm"), "SFM", "encoder.model"),
    "adapter": Role(("adapter",), "adapter", "adapter.name"),
    "llm": Role(("llm",), "LLM", "llm.model"),
    "task": Role(("task",), "task", None),
}


def role(factor: str) -> str | None:
    """"encoder" | "adapter" | "llm" | "task" for the factors the runner and report understand."""
    return next((r for r, spec in ROLES.items() if factor in spec.names), None)


def label(factor: str) -> str:
    """A factor's name in reports: "SFM" for encoder/enc/sfm, "LLM" for llm, else itself."""
    r = role(factor)
    return ROLES[r].label if r else factor


@dataclass
class Run:
    name: str  # stable folder name, e.g. encoder=tiny_en__adapter=cif__llm=smollm2__task=asr__seed=0
    levels: dict[str, str]  # factor -> level name
    seed: int
    settings: dict[str, Any]  # dotted key -> value (presets of every level)
    task: str | None = None  # task filter ("asr", "st", "st-en-de") or None


@dataclass
class GridSpec:
    path: Path
    base: dict
    overrides: dict[str, Any]
    factors: dict[str, dict[str, dict[str, Any]]]  # factor -> level -> dotted overrides
    seeds: list[int] = field(default_factory=lambda: [0])
    test_sets: dict[str, str] = field(default_factory=dict)
    feature_cache: str | bool | None = None  # None: <out>/features; False: off
    output_dir: str | None = None
    test_max_items: int | None = None  # score only the first N items of each test set (CPU budgets)
    extra_seeds: list[int] = field(default_factory=list)  # run these seeds too, for the combinations in
    extra_where: dict[str, list[str]] = field(default_factory=dict)  # (factor -> levels; all must match)
    exclude: list[dict[str, list[str]]] = field(default_factory=list)  # combinations matching a filter are not run


# --- loading ------------------------------------------------------------------------------------


def _dotted(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, list):
        out = {}
        for item in value:
            k, sep, raw = str(item).partition("=")
            if not sep:
                raise ConfigError(f"{where}: {item!r} must look like section.key=value")
            out[k.strip()] = parse_yaml(raw, f"{where}: {item!r}")
        return out
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a mapping of dotted keys (e.g. train.lr: 1e-4) or a list of key=value")
    return flatten(value)


def _levels(spec_path: Path, factor: str, values: Any, presets: dict) -> dict[str, dict[str, Any]]:
    from speechwire.adapters import ADAPTERS

    where = f"{spec_path.name}: factor {factor!r}"
    if isinstance(values, dict):
        items = [(str(k), v) for k, v in values.items()]
    elif isinstance(values, list) and values:
        items = [(str(v), None) for v in values]
    else:
        raise ConfigError(f"{where} must be a non-empty list of level names or a mapping level -> overrides")
    out: dict[str, dict[str, Any]] = {}
    r = role(factor)
    for name, value in items:
        if not re.fullmatch(r"[A-Za-z0-9_.+-]+", name):
            raise ConfigError(f"{where} level {name!r}: use letters, digits and _.+- only (it names run folders)")
        value = presets.get(name) if value is None else value
        if value is not None:
            out[name] = _dotted(value, f"{where} level {name!r}")
        elif r == "task":
            if not re.fullmatch(r"asr|st|st-[a-z]{2,3}(-[a-z]{2,3})?", name):
                raise ConfigError(f"{where} value {name!r} is not a task; use asr, st, st-TGT or st-SRC-TGT "
                                  "(e.g. st-en-de), or define it under presets:")
            out[name] = {}
        elif r and ROLES[r].default_key:
            out[name] = {ROLES[r].default_key: name}
        else:
            raise ConfigError(f"{where} value {name!r} is not in presets:; define presets.{name} as dotted overrides")
        adapter = out[name].get("adapter.name")
        if isinstance(adapter, str) and adapter not in ADAPTERS:
            raise ConfigError(f"{where} value {name!r}: " + unknown_name("adapter", adapter, ADAPTERS.available()))
    return out


Filter = dict[Any, list | str | None]  # factor -> level or [levels]; names checked by _where


@dataclass
class ExtraSeeds:
    seeds: list[int] = field(default_factory=list)
    where: Filter | None = None

    def __post_init__(self) -> None:
        if not self.seeds:
            raise ConfigError("extra_seeds.seeds must be a non-empty list of integers, "
                              "e.g. extra_seeds: {seeds: [1], where: {adapter: [mlp, conv]}}")


@dataclass
class GridFile:
    """A grid file's keys as written: from_dict checks their types, __post_init__ what types cannot
    say; load_grid then reads the base config and checks the factors' levels and the filters' names."""

    factors: Any = None  # factor -> level names, or level -> dotted overrides (_levels)
    base: Any = None  # a config path or a mapping of sections (checked once read)
    overrides: Any = None  # dotted keys or a list of key=value (_dotted)
    presets: dict | None = None
    seeds: list[int] = field(default_factory=lambda: [0])
    extra_seeds: ExtraSeeds | None = None
    exclude: list[Filter] | None = None
    test_sets: dict[Any, str] | None = None
    test_max_items: int | None = None
    feature_cache: str | bool | None = None
    output_dir: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.factors, dict) or not self.factors:
            raise ConfigError("factors: must map factor names to levels, e.g. adapter: [base, conv]")
        if not self.seeds:
            raise ConfigError("seeds must be a non-empty list of integers, e.g. seeds: [0, 1]")
        if self.test_max_items is not None and self.test_max_items < 1:
            raise ConfigError(f"test_max_items={self.test_max_items} must be a positive integer (or left out: all items)")
        if self.feature_cache is True:
            raise ConfigError("feature_cache=true must be a folder path or false")


def load_grid(path: str | Path) -> GridSpec:
    """Read and check a grid file; every error names the file, the key and the fix."""
    path = Path(path)
    raw = read_yaml(path, "grid") or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping with factors: (and base:, test_sets:, ...)")
    unknown = {str(k) for k in raw} - {f.name for f in dataclasses.fields(GridFile)}
    if unknown and unknown <= {f.name for f in dataclasses.fields(ExperimentConfig)} | {"preset"}:
        raise ConfigError(f"{path}: this is an experiment config, not a grid file; a grid file names it under "
                          "base: and lists factors: (docs/grid.md)")
    try:
        grid = from_dict(GridFile, raw)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    base, base_dir = grid.base or {}, path.parent
    if isinstance(base, str):
        try:
            base_path = path.parent / base if (path.parent / base).is_file() else Path(base)
            found = base_path.is_file()
        except (OSError, ValueError):  # a name too long for the file system, a NUL byte
            found = False
        if not found:
            raise ConfigError(f"{path}: base config {base[:200]!r} not found next to the grid file or in the cwd")
        base, base_dir = read_yaml(base_path, "base config") or {}, base_path.parent
    if not isinstance(base, dict):
        raise ConfigError(f"{path}: base must be a config path or a mapping of sections")
    try:  # the base config's `preset:` (e.g. paper) goes under its own values, as in load_config
        base = apply_presets(base, base_dir)
    except ConfigError as e:
        raise ConfigError(f"{path}: base: {e}") from None
    for section, value in base.items():
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: base: {section} must be a mapping of keys (e.g. train: {{lr: 1e-4}}), "
                              f"got {value!r:.80}")
    factors = {str(f): _levels(path, str(f), v, grid.presets or {}) for f, v in grid.factors.items()}
    extra = grid.extra_seeds
    spec = GridSpec(path, base, _dotted(grid.overrides, f"{path.name}: overrides"), factors, grid.seeds,
                    {str(k): v for k, v in (grid.test_sets or {}).items()}, grid.feature_cache, grid.output_dir,
                    grid.test_max_items, extra.seeds if extra else [],
                    _where(path, "extra_seeds.where", extra and extra.where, factors),
                    [_where(path, f"exclude[{i}]", w, factors) for i, w in enumerate(grid.exclude or [])])
    runs = plan(spec)
    if not runs:
        raise ConfigError(f"{path}: exclude leaves no combination to run")
    for run in runs:  # every combination must make a valid config
        try:
            run_config(spec, run, Path("."), cache=None)
        except ConfigError as e:
            raise ConfigError(f"{path}: run {run.name}: {e}") from None
    return spec


def _where(path: Path, key: str, where: dict | None, factors: dict[str, dict]) -> dict[str, list[str]]:
    """A filter {factor: [levels]} with every factor and level checked against the grid's."""
    out: dict[str, list[str]] = {}
    for f, levels in (where or {}).items():
        if f not in factors:
            raise ConfigError(unknown_name(f"{key} factor", str(f), factors, str(path)))
        out[f] = [str(x) for x in ([levels] if isinstance(levels, str) else levels or [])]
        for lvl in out[f]:
            if lvl not in factors[f]:
                raise ConfigError(unknown_name(f"{key} {f} level", lvl, factors[f], str(path)))
    return out


# --- planning -----------------------------------------------------------------------------------


def matches(levels: dict[str, Any], where: dict[str, list[str]]) -> bool:
    """Whether a run's levels (factor -> level) pass a filter {factor: [levels]}: every factor must match."""
    return all(str(levels.get(f)) in lvls for f, lvls in where.items())


def plan(spec: GridSpec) -> list[Run]:
    """Every combination (factors in file order, seeds last) with its stable folder name; then the
    extra seeds' runs (combinations matching extra_where), so they come last in a time budget."""
    runs = []
    names = list(spec.factors)
    combos = list(itertools.product(*(spec.factors[f].items() for f in names)))
    extra = [s for s in spec.extra_seeds if s not in spec.seeds]
    for seeds, where in ((spec.seeds, {}), (extra, spec.extra_where)):  # {}: every combination matches
        for combo in combos:
            levels = {f: lvl for f, (lvl, _) in zip(names, combo)}
            if not matches(levels, where) or any(matches(levels, w) for w in spec.exclude):
                continue
            for seed in seeds:
                settings = {k: v for _, s in combo for k, v in s.items()}
                task = next((lvl for f, lvl in levels.items() if role(f) == "task" and not spec.factors[f][lvl]),
                            None)
                name = "__".join(f"{f}={lvl}" for f, lvl in levels.items()) + f"__seed={seed}"
                runs.append(Run(name, levels, seed, settings, task))
    return runs


def shard_plan(spec: GridSpec, shard: tuple[int, int] = (0, 1)) -> list[Run]:
    """Shard (i, n)'s runs: every n-th run of `plan`, starting at the i-th."""
    return plan(spec)[shard[0]::shard[1]]


def parse_shard(text: str | None) -> tuple[int, int]:
    """"i/n" -> (i, n) with 0 <= i < n (0-based, as $SLURM_ARRAY_TASK_ID)."""
    if not text:
        return 0, 1
    m = re.fullmatch(r"(\d+)/(\d+)", text.strip())
    if not m or not 0 <= int(m[1]) < int(m[2]):
        raise ValueError(f"--shard {text!r} must be i/n with 0 <= i < n, e.g. --shard 0/4 (0-based)")
    return int(m[1]), int(m[2])


def _set(data: dict, dotted: str, value: Any) -> None:
    *parents, leaf = str(dotted).split(".")
    node = data
    for p in parents:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{dotted}: {p} is not a section (it was set to {node!r})")
    node[leaf] = value


def run_config(spec: GridSpec, run: Run, out: Path, cache: str | None) -> ExperimentConfig:
    """base -> overrides -> the run's factor levels -> seed, output folder, cache, task manifests."""
    data = copy.deepcopy(spec.base)
    for k, v in {**spec.overrides, **run.settings}.items():
        _set(data, k, v)
    _set(data, "train.seed", run.seed)
    _set(data, "train.output_dir", str(out / run.name))
    _set(data, "data.feature_cache", cache)
    for key in ("train_manifest", "dev_manifest", "test_manifest"):
        if isinstance(data["data"].get(key), str):
            data["data"][key] = os.path.expanduser(data["data"][key])
    for key in ("train_manifest", "dev_manifest") if run.task else ():
        if data["data"].get(key):
            data["data"][key] = str(out / "manifests" / run.task / f"{key.split('_')[0]}.jsonl")
    check_names(data)
    return from_dict(ExperimentConfig, data)


def test_manifests(spec: GridSpec, run: Run, out: Path) -> dict[str, str]:
    tests = {k: os.path.expanduser(v) for k, v in spec.test_sets.items()}
    if not tests:
        base_test = spec.base.get("data", {}).get("test_manifest")
        tests = {"test": base_test} if base_test else {}
    if run.task:
        tests = {k: str(out / "manifests" / run.task / f"test-{k}.jsonl") for k in tests}
    return tests


def keep_task(u: Any, task: str) -> bool:
    kind, *langs = task.split("-")  # asr, st (any languages), st-TGT, st-SRC-TGT
    return u.task == kind and langs == [u.src_lang, u.tgt_lang][2 - len(langs):]


def write_task_manifests(spec: GridSpec, runs: list[Run], out: Path) -> None:
    """Per task level: the base manifests' items of that task, written once under <out>/manifests/."""
    from speechwire.data import load_manifest, write_manifest

    base_data = spec.base.get("data", {})
    sources = {k: spec.overrides.get(f"data.{k}", base_data.get(k)) for k in ("train_manifest", "dev_manifest")}
    for task in sorted({r.task for r in runs if r.task}):
        folder = out / "manifests" / task
        folder.mkdir(parents=True, exist_ok=True)
        files = {f"{k.split('_')[0]}.jsonl": v for k, v in sources.items() if v}
        files.update({f"test-{k}.jsonl": v for k, v in spec.test_sets.items()})
        for name, src in files.items():
            kept = [u for u in load_manifest(os.path.expanduser(src)) if keep_task(u, task)]
            if not kept:
                raise ConfigError(f"{spec.path.name}: task {task!r} keeps no item of {src}; check the manifest's "
                                  "task/src_lang/tgt_lang fields or the task level")
            write_manifest(folder / name, kept)  # atomic: concurrent workers write the same file whole
