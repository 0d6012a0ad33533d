"""Fuzzed error surface (hypothesis): random YAML, random overrides, random bytes and truncations of
real files fed to every user-facing entry. Each case must succeed or end in one line that names the
problem (the CLI's verdict, errors.explain) - never a traceback, never the 'bug' fallback, never a hang.

SPEECHWIRE_FUZZ_STATS=path appends per-test counts (cases, distinct messages) as JSON lines.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import shutil
import signal
import warnings
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from speechwire.cli import main
from speechwire.config import ExperimentConfig, load_config
from speechwire.data import load_manifest
from speechwire.features import CachedFeatureDataset, FeatureCache
from speechwire.grid import load_grid
from speechwire.model import SpeechLLM
from speechwire.resume import read_checkpoint
from speechwire.train import latest_checkpoint

from helpers import assert_clean, template, tiny_run, verdict

FUZZ = settings(derandomize=True, deadline=None, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
HANG_SECONDS = 60
MESSAGES: dict[str, Counter] = {}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A trained tiny run (2 steps, a checkpoint per step) and a built feature cache."""
    tmp = tmp_path_factory.mktemp("fuzz")
    cfg, manifest, run = tiny_run(tmp, steps=2, save_every=1,
                                  extra={"data": {"feature_cache": str(tmp / "cache"), "feature_cache_dtype": "float32"}})
    return {"tmp": tmp, "cfg": cfg, "manifest": manifest, "run": run,
            "wav": sorted((tmp / "MUSTC").rglob("*.wav"))[0]}


@pytest.fixture(scope="module", autouse=True)
def report():
    yield
    path = os.environ.get("SPEECHWIRE_FUZZ_STATS")
    if path:
        with open(path, "a") as f:
            for entry, counts in MESSAGES.items():
                f.write(json.dumps({"entry": entry, "cases": sum(counts.values()), "distinct": len(counts),
                                    "messages": sorted(counts)}) + "\n")


def judge(entry: str, fn, roots: list[str]) -> tuple[int, str]:
    """Run fn under a hang guard, check the verdict, record the message kind."""
    def hang(*_):
        raise TimeoutError(f"{entry}: no answer after {HANG_SECONDS} s")

    old = signal.signal(signal.SIGALRM, hang)
    signal.alarm(HANG_SECONDS)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            code, line = verdict(fn)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    assert "Timeout" not in line, line
    assert_clean(code, line)
    MESSAGES.setdefault(entry, Counter())[template(line, roots) if code else "<success>"] += 1
    return code, line


def cli(argv: list[str]):
    """`speechwire ARGV` in-process; a non-zero exit becomes _Exit(its one error line)."""
    def call():
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            try:
                code = main([str(a) for a in argv])
            except SystemExit as e:  # argparse: one line, status 2
                code = e.code
        text = err.getvalue()
        assert "Traceback" not in text, text
        lines = [line for line in text.splitlines() if "error:" in line]
        if code not in (0, None):
            assert len(lines) == 1 and text.rstrip().endswith(lines[0].rstrip()), text  # one line, the last
            raise _Exit(lines[0])
    return call


class _Exit(ValueError):
    """A command's non-zero exit, carrying the one line it printed."""


# --- strategies ---------------------------------------------------------------------------------

def _section_fields() -> dict[str, list[str]]:
    import typing

    hints = typing.get_type_hints(ExperimentConfig)
    return {name: [f.name for f in dataclasses.fields(tp)] for name, tp in hints.items()}


FIELDS = _section_fields()
DOTTED = [f"{s}.{k}" for s, ks in FIELDS.items() for k in ks]
scalars = (st.none() | st.booleans() | st.integers(-10**6, 10**20) | st.floats(allow_nan=True)
           | st.text(max_size=12) | st.sampled_from(["mlp", "whisper", "paper", "1e-4", "asr", "~", ".nan"]))
values = st.recursive(scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
                      max_leaves=6)
section = st.dictionaries(st.sampled_from(sum(FIELDS.values(), [])) | st.text(max_size=8), values, max_size=4)
config_dicts = st.dictionaries(st.sampled_from([*FIELDS, "preset", "nope"]) | st.text(max_size=6),
                               section | values, max_size=4)
yaml_text = (config_dicts.map(lambda d: yaml.safe_dump(d, allow_unicode=True))
             | st.text(max_size=200) | st.binary(max_size=200).map(lambda b: b.decode("latin-1")))
override = st.builds(lambda k, v: f"{k}={v}", st.sampled_from(DOTTED) | st.text(max_size=10),
                     st.text(max_size=12) | scalars.map(lambda v: yaml.safe_dump(v).strip().split("\n")[0]))


def _put(path: Path, data: str | bytes) -> Path:
    path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8", "surrogatepass"))
    return path


# --- command lines -------------------------------------------------------------------------------

COMMANDS = [["config"], ["train"], ["evaluate"], ["transcribe"], ["translate"], ["grid"], ["report"],
            ["cache", "build"], ["copytest"], ["data", "import", "mustc"], ["nope"], []]
TOKENS = ["MISSING", "DIR", "WAV", "MANIFEST", "JUNK", "--quiet", "--json", "--dry-run", "--no-probe", "--shard",
          "1/2", "3/2", "--to", "de", "--manifest", "--out", "--root", "--limit", "-1", "--set", "adapter.name=mlpp",
          "train.lr=[", "=", "--debug-not"]


@settings(FUZZ, max_examples=80)
@given(command=st.sampled_from(COMMANDS), args=st.lists(st.sampled_from(TOKENS) | st.text(max_size=8), max_size=5))
def test_command_lines(world, tmp_path, command, args):
    (tmp_path / "DIR").mkdir(exist_ok=True)
    junk = _put(tmp_path / "junk.bin", bytes(range(256)))
    paths = {"MISSING": tmp_path / "missing.yaml", "DIR": tmp_path / "DIR", "WAV": world["wav"],
             "MANIFEST": world["manifest"], "JUNK": junk}
    argv = [*command, *[str(paths.get(a, a)) for a in args]]
    judge("cli argv", cli(argv), [str(tmp_path), str(world["tmp"])])


# --- load_config and `speechwire config` --------------------------------------------------------


@settings(FUZZ, max_examples=120)
@given(text=yaml_text, overrides=st.lists(override, max_size=3))
def test_config_files_and_overrides(world, tmp_path, text, overrides):
    cfg = _put(tmp_path / "x.yaml", text)
    judge("load_config", lambda: load_config(cfg, overrides), [str(tmp_path)])
    judge("cli config", cli(["config", cfg, *overrides]), [str(tmp_path)])


@settings(FUZZ, max_examples=80)
@given(overrides=st.lists(override, min_size=1, max_size=4))
def test_overrides_on_a_real_config(world, overrides):
    judge("overrides", lambda: load_config(world["cfg"], overrides), [str(world["tmp"])])


# --- grid spec ----------------------------------------------------------------------------------

grid_keys = st.sampled_from(["base", "overrides", "presets", "factors", "seeds", "test_sets", "test_max_items",
                             "feature_cache", "output_dir"])
factor_values = st.lists(st.sampled_from(["mlp", "conv", "cnv", "asr", "st-en-de", "st-xx", "tiny", "a b"]) | st.text(max_size=5),
                         max_size=3) | st.dictionaries(st.text(max_size=5), values, max_size=2) | values
grid_dicts = st.fixed_dictionaries(
    {"factors": st.dictionaries(st.sampled_from(["adapter", "encoder", "llm", "task", "other"]), factor_values,
                                max_size=3)},
    optional={"base": st.sampled_from(["run.yaml", "missing.yaml"]) | config_dicts, "seeds": values,
              "overrides": st.lists(override, max_size=2) | values, "presets": values,
              "test_sets": st.dictionaries(st.text(max_size=4), st.sampled_from(["train.jsonl", "none.jsonl"]) | values,
                                           max_size=2),
              "test_max_items": values, "feature_cache": values, "output_dir": values})


@settings(FUZZ, max_examples=100)
@given(spec=grid_dicts | st.dictionaries(grid_keys | st.text(max_size=5), values, max_size=4), raw=st.booleans(),
       cut=st.integers(0, 400))
def test_grid_specs(world, tmp_path, spec, raw, cut):
    shutil.copy(world["cfg"], tmp_path / "run.yaml")
    shutil.copy(world["manifest"], tmp_path / "train.jsonl")
    text = yaml.safe_dump(spec, allow_unicode=True)
    grid = _put(tmp_path / "grid.yaml", text[:cut] if raw else text)  # raw: a truncated file
    judge("grid spec", lambda: load_grid(grid), [str(tmp_path), str(world["tmp"])])
    judge("cli grid --dry-run", cli(["grid", grid, "--dry-run", "--no-probe", "--out", tmp_path / "out"]),
          [str(tmp_path), str(world["tmp"])])


# --- manifests ----------------------------------------------------------------------------------

numbers = st.floats(allow_nan=True, allow_infinity=True) | st.integers(-5, 10**9) | st.text(max_size=4) | st.none()
rows = st.fixed_dictionaries(
    {}, optional={"audio": st.sampled_from(["WAV", "DIR", "missing.wav", "", "~nobody/x.wav", "x" * 300, "a\x00b"])
                  | st.text(max_size=10) | st.integers(),
                  "transcript": st.text(max_size=10) | st.none() | st.integers(),
                  "translation": st.text(max_size=5) | st.none(), "tgt_lang": st.sampled_from(["de", "", None]),
                  "task": st.sampled_from(["asr", "st", "mt", ""]) | st.integers(), "offset": numbers,
                  "duration": numbers, "id": st.sampled_from(["a", "b"]) | st.integers()})


@settings(FUZZ, max_examples=150)
@given(lines=st.lists(rows.map(json.dumps) | st.text(max_size=30) | st.sampled_from(["[" * 5000, "{}", "null"]),
                      max_size=5),
       junk=st.binary(max_size=64), mode=st.sampled_from(["lines", "bytes", "cut"]))
def test_manifests(world, tmp_path, lines, junk, mode):
    wav = str(world["wav"])
    (tmp_path / "DIR").mkdir(exist_ok=True)
    text = "\n".join(lines).replace('"WAV"', json.dumps(wav)).replace('"DIR"', json.dumps(str(tmp_path / "DIR")))
    real = world["manifest"].read_bytes()
    data = {"lines": text.encode("utf-8", "surrogatepass"), "bytes": junk,
            "cut": real[: len(junk) * len(real) // 64] + junk[:3]}[mode]
    m = _put(tmp_path / "m.jsonl", data)
    for skip in (False, True):
        judge("manifest", lambda: load_manifest(m, skip_invalid=skip), [str(tmp_path), str(world["tmp"])])


# --- run folders: SpeechLLM.from_pretrained and `speechwire transcribe` ------------------------


@settings(FUZZ, max_examples=60)
@given(target=st.sampled_from(["trainable.safetensors", "config.yaml"]), how=st.sampled_from(["cut", "bytes", "flip"]),
       n=st.integers(0, 10**7), junk=st.binary(max_size=300))
def test_run_folders(world, tmp_path, target, how, n, junk):
    run = tmp_path / "run"
    shutil.copytree(world["run"], run, ignore=shutil.ignore_patterns("checkpoints"), dirs_exist_ok=True)
    real = (world["run"] / target).read_bytes()
    if how == "cut":
        data = real[: n % len(real)]  # never the whole file
    elif how == "flip":
        b = bytearray(real)
        b[n % len(b)] ^= 1 << (n % 8)
        data = bytes(b)
    else:
        data = junk
    _put(run / target, data)
    roots = [str(tmp_path), str(world["tmp"])]
    judge("from_pretrained", lambda: SpeechLLM.from_pretrained(run), roots)
    judge("cli transcribe", cli(["transcribe", run, world["wav"]]), roots)


# --- checkpoints (resume files) ------------------------------------------------------------------


@settings(FUZZ, max_examples=80)
@given(target=st.sampled_from(["state.json", "optimizer.json", "optimizer.safetensors", "rng-rank0.json",
                               "rng-rank0.safetensors", "scheduler.json", "trainable.safetensors"]),
       how=st.sampled_from(["cut", "bytes", "flip", "json"]), n=st.integers(0, 10**7), junk=st.binary(max_size=200),
       doc=values)
def test_resume_files(world, tmp_path, target, how, n, junk, doc):
    ckpt = tmp_path / "step-000002"
    shutil.copytree(latest_checkpoint(world["run"]), ckpt, dirs_exist_ok=True)
    real = (ckpt / target).read_bytes()
    data = {"cut": real[: n % len(real)], "bytes": junk, "json": json.dumps(doc).encode(),
            "flip": bytes(b ^ (1 << (n % 8)) if i == n % len(real) else b for i, b in enumerate(real))}[how]
    _put(ckpt / target, data)
    judge("resume files", lambda: read_checkpoint(ckpt, 0, 1), [str(tmp_path)])


# --- feature cache -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cache(world):
    from speechwire.config import load_config

    cfg = load_config(world["cfg"])
    utts = load_manifest(world["manifest"])
    fc = FeatureCache.for_config(cfg)
    fc.ensure(utts, progress=False)
    originals = [fc.get(u)[0].clone() for u in utts]
    return fc, utts, originals


@settings(FUZZ, max_examples=40)
@given(i=st.integers(0, 3), how=st.sampled_from(["cut", "bytes", "flip"]), n=st.integers(0, 10**7),
       junk=st.binary(max_size=100))
def test_cache_entries_damaged_on_disk_are_detected_and_rebuilt(world, cache, i, how, n, junk):
    fc, utts, originals = cache
    path = fc.path(fc.key(utts[i]))
    real = path.read_bytes()
    data = {"cut": real[: n % len(real)], "bytes": junk,
            "flip": bytes(b ^ (1 << (n % 8)) if k == n % len(real) else b for k, b in enumerate(real))}[how]
    path.write_bytes(data)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        item = CachedFeatureDataset(utts, fc)[i]
    # re-encoded: the same features, read whole; or the damage hit nothing that is read (a flip in
    # the stored utterance id, say): then no warning and the features are the originals too
    assert torch.allclose(item["hidden"], originals[i], atol=1e-5)
    damaged = [str(w.message) for w in caught if "is damaged" in str(w.message)]
    assert all(m.startswith(f"feature cache: entry {path} (utterance {utts[i].id!r}) is damaged") for m in damaged)
    assert fc.get(utts[i]) is not None
    kind = template(damaged[0].split(" is damaged ", 1)[1], [str(world["tmp"])]) if damaged else "harmless: not warned"
    MESSAGES.setdefault("feature cache", Counter())[kind] += 1
