"""Fuzzed error surface (hypothesis): random YAML, random overrides, random bytes and truncations of
real files fed to every user-facing entry, and valid command lines and grid files changed one thing
at a time. Each case must succeed or end in one line that names the problem (the CLI's verdict,
errors.explain) - never a traceback, never the 'bug' fallback, never a hang.

A case that runs past HANG_SECONDS fails its test as a hang (pytest.fail), whatever the code under
test does with the alarm's exception (`speechwire`'s main turns any exception into one line).

Each test, once all its cases passed, writes its entries' counts (cases, successes, distinct
messages once particulars are blanked: helpers.template) into docs/results/fuzz/stats.json, the
file docs/faults.md quotes (test_docs_quote_the_fuzz_stats checks the quote).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import io
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import speechwire.cli
from speechwire.cli import main
from speechwire.config import ExperimentConfig, load_config
from speechwire.data import CachedFeatureDataset, load_manifest
from speechwire.features import FeatureCache
from speechwire.grid import load_grid
from speechwire.grid.run import run_grid
from speechwire.model import SpeechLLM
from speechwire.resume import read_checkpoint
from speechwire.train import complete_checkpoints, train

from helpers import Hang, assert_clean, mustc_manifest, template, verdict, write_experiment

FUZZ = settings(derandomize=True, deadline=None, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow])
HANG_SECONDS = 60
MESSAGES: dict[str, Counter] = {}
STATS = Path(__file__).parents[1] / "docs" / "results" / "fuzz" / "stats.json"
STATS_AT_START = json.loads(STATS.read_text()) if STATS.is_file() else None  # read while collecting, before any
# test of the session rewrites it: the docs check below sees the same file whatever order the tests run in
ARGPARSE = "(see speechwire"  # the tail of argparse's one-line errors


@pytest.fixture(scope="module", autouse=True)
def no_local_constants():
    """Hypothesis also draws literals it finds in the project's imported modules (its "local
    constants"), so the cases would depend on which modules the tests before these imported, and
    the counts would change from run to run. Without them the same cases come in any suite."""
    from hypothesis.internal.conjecture import providers

    patch = pytest.MonkeyPatch()
    if hasattr(providers, "_get_local_constants") and hasattr(providers, "CONSTANTS_CACHE"):
        empty = providers.Constants()
        patch.setattr(providers, "_get_local_constants", lambda: empty)
        providers.CONSTANTS_CACHE.cache.clear()  # pools cached with the constants of earlier tests
    yield
    patch.undo()
    if hasattr(providers, "CONSTANTS_CACHE"):
        providers.CONSTANTS_CACHE.cache.clear()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A trained tiny run (2 steps, a checkpoint per step), a built feature cache and a finished
    grid of two 1-step runs (for `speechwire report`). Every path in them is relative to the world's
    folder, the cases run there (or in a folder linking its models), and damage is done to canonical
    bytes (`canonical`): the same cases meet the same files in any folder, so the counts repeat."""
    tmp = tmp_path_factory.mktemp("fuzz")
    with contextlib.chdir(tmp):
        manifest = mustc_manifest(tmp, "train.jsonl", tasks=("asr",), n=4)
        cfg = write_experiment(tmp, manifest, tmp / "run", {
            "train": {"max_steps": 2, "save_every": 1, "keep_last": 2, "log_every": 1},
            "data": {"feature_cache": "cache", "feature_cache_dtype": "float32"}})
        cfg.write_text(cfg.read_text().replace(f"{tmp}/", ""))
        train(load_config(cfg), progress=False)
        (tmp / "grid.yaml").write_text(yaml.safe_dump(grid_dict("run.yaml", "train.jsonl")))
        run_grid(load_grid(tmp / "grid.yaml"), tmp / "grid-done", progress=False)
    return {"tmp": tmp, "cfg": cfg, "manifest": manifest, "run": tmp / "run", "grid-done": tmp / "grid-done",
            "wav": sorted((tmp / "MUSTC").rglob("*.wav"))[0], "mustc": tmp / "MUSTC"}


def canonical(name: str, data: bytes) -> bytes:
    """The bytes of a file as every process writes them: safetensors headers with sorted keys (the
    library writes its metadata in hash order), a checkpoint's state.json without its wall time."""
    if name.endswith(".safetensors") and len(data) >= 8:
        n = int.from_bytes(data[:8], "little")
        header = json.dumps(json.loads(data[8:8 + n]), sort_keys=True, separators=(",", ":")).encode()
        assert len(header) <= n
        return data[:8] + header.ljust(n) + data[8 + n:]
    if name == "state.json":
        return json.dumps({**json.loads(data), "elapsed_s": 0.0}, indent=2).encode()
    return data


def grid_dict(base: str | Path, manifest: str | Path) -> dict:
    """A valid grid over `base`: two adapters, one seed, 1-step runs scored on `manifest`."""
    return {"base": str(base), "factors": {"adapter": ["mlp", "conv"]}, "seeds": [0],
            "overrides": ["train.max_steps=1", "train.save_every=0", "adapter.num_heads=4", "adapter.num_layers=1",
                          "adapter.ffn_size=64"],
            "test_sets": {"a": str(manifest)}, "test_max_items": 2}


# --- the harness: one verdict per case, hangs fail as hangs, counts into the stats file ---------


def judge(entry: str, fn, roots: list[str]) -> tuple[int, str]:
    """Run fn under a hang guard, check the verdict, record the message kind."""
    hung: list[str] = []

    def alarm(_signum, frame):
        hung.append("".join(traceback.format_stack(frame)[-4:]))
        raise Hang(f"{entry}: no answer after {HANG_SECONDS} s")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, HANG_SECONDS, 1.0)  # again every second until the case lets go
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            code, line = verdict(fn)
    except Hang:
        code, line = None, ""
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    if hung:  # even when the code under test caught the alarm's exception and answered
        pytest.fail(f"HANG: {entry} gave no answer within {HANG_SECONDS} s; it was at\n{hung[0]}", pytrace=False)
    assert_clean(code, line)
    MESSAGES.setdefault(entry, Counter())[template(line, roots) if code else "<success>"] += 1
    return code, line


def cli(argv: list[str]):
    """`speechwire ARGV` in-process; a non-zero exit becomes _Exit(its one error line)."""
    def call():
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            try:
                code = main([str(a) for a in argv])
            except SystemExit as e:  # argparse: one line, status 2
                code = e.code
        text = err.getvalue()
        assert "Traceback" not in text, text
        lines = [line for line in text.splitlines() if "error:" in line]
        if code not in (0, None) and not lines and "--json" in argv:  # transcribe --json: {"file", "error"} lines
            lines = [f"error: {json.loads(x)['error']}" for x in out.getvalue().splitlines() if '"error": ' in x]
            assert len(lines) == 1, out.getvalue()
            raise _Exit(lines[0])
        if code not in (0, None):
            assert len(lines) == 1 and text.rstrip().endswith(lines[0].rstrip()), text  # one line, the last
            raise _Exit(lines[0])
    return call


class _Exit(ValueError):
    """A command's non-zero exit, carrying the one line it printed."""


def save_stats(*entries: str) -> None:
    """Merge these entries' counts into STATS (under a lock: xdist workers share it) and recount the totals."""
    lock = Path(tempfile.gettempdir()) / "speechwire-fuzz-stats.lock"
    with open(lock, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        data = json.loads(STATS.read_text()) if STATS.is_file() else {}
        table = data.get("entries", {})
        for entry in entries:
            counts = MESSAGES[entry]
            table[entry] = {"cases": sum(counts.values()), "succeeded": counts["<success>"],
                            "argparse_errors": sum(n for m, n in counts.items() if ARGPARSE in m),
                            "distinct_messages": len(set(counts) - {"<success>"}),
                            "messages": dict(sorted(counts.items()))}
        table = dict(sorted(table.items()))
        every = {m for t in table.values() for m in t["messages"]} - {"<success>"}
        out = {"written_by": "tests/test_fuzz_errors.py (make test); docs/faults.md quotes the totals",
               "totals": {"entries": len(table), "cases": sum(t["cases"] for t in table.values()),
                          "succeeded": sum(t["succeeded"] for t in table.values()),
                          "distinct_messages": len(every),
                          "distinct_messages_summed_per_entry": sum(t["distinct_messages"] for t in table.values())},
               "entries": table}
        text = json.dumps(out, indent=1, ensure_ascii=False) + "\n"
        if not STATS.is_file() or STATS.read_text() != text:
            STATS.parent.mkdir(parents=True, exist_ok=True)
            tmp = STATS.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(text)
            os.replace(tmp, STATS)


def test_a_hang_fails_the_test_as_a_hang(monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "HANG_SECONDS", 1)
    t0 = time.monotonic()
    with pytest.raises(pytest.fail.Exception, match="HANG: probe gave no answer within 1 s"):
        judge("probe", lambda: time.sleep(5), [])
    # `speechwire`'s main turns every exception into one line and returns 1: still a hang, not a message
    monkeypatch.setattr(speechwire.cli, "cmd_config", lambda args: time.sleep(5))
    with pytest.raises(pytest.fail.Exception, match="HANG: probe cli gave no answer"):
        judge("probe cli", cli(["config", "x.yaml"]), [])

    def stubborn():  # swallows the alarm's exception and sleeps on: interrupted again
        for _ in range(3):
            try:
                time.sleep(5)
            except BaseException:  # noqa: BLE001
                pass

    with pytest.raises(pytest.fail.Exception, match="HANG: stubborn"):
        judge("stubborn", stubborn, [])
    assert time.monotonic() - t0 < 10  # the alarms fired; nothing slept its 5 s out


def test_docs_quote_the_fuzz_stats():
    assert STATS_AT_START is not None, f"{STATS} is missing: run tests/test_fuzz_errors.py, which writes it"
    stats = STATS_AT_START
    totals, argv, grid = stats["totals"], stats["entries"]["cli argv"], stats["entries"]["grid file"]
    doc = " ".join((Path(__file__).parents[1] / "docs" / "faults.md").read_text().split())
    quotes = [f"{totals['cases']:,} cases across {totals['entries']} entries ({totals['succeeded']:,} succeeded), "
              f"which hit {totals['distinct_messages']} distinct messages",
              f"({totals['distinct_messages_summed_per_entry']} when counted per entry and summed)",
              f"Of the {argv['cases']} command lines, {argv['succeeded']} succeeded, {argv['argparse_errors']} ended in "
              f"an argparse error and {argv['cases'] - argv['succeeded'] - argv['argparse_errors']} in an error",
              f"of the {grid['cases']} changed grid files, {grid['succeeded']} loaded"]
    for quote in quotes:
        assert quote in doc, (f"docs/faults.md should say {quote!r}, as docs/results/fuzz/stats.json has it (the fuzz "
                              "tests rewrite it: a change to the code or to the config's fields changes the cases; "
                              "quote the new figures)")


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


# --- command lines: valid ones, changed one thing at a time ---------------------------------------

# Each base succeeds as it is (test_every_base_command_line_succeeds). Capitalised tokens are files
# of the case's own folder (the case runs there: outputs and relative paths stay in it).
BASES = {
    "config": ["config", "CFG"],
    "train": ["train", "CFG", "train.max_steps=1", "train.save_every=0", "--no-resume", "--quiet"],
    "evaluate": ["evaluate", "RUN", "--manifest", "MANIFEST", "--out", "OUT", "--quiet"],
    "transcribe": ["transcribe", "RUN", "WAV", "--json"],
    "translate": ["translate", "RUN", "WAV", "--to", "de"],
    "cache build": ["cache", "build", "CFG", "--quiet"],
    "copytest": ["copytest", "CFG", "--manifest", "MANIFEST", "--limit", "2", "--out", "OUT", "--quiet"],
    "grid --dry-run": ["grid", "GRID", "--dry-run", "--no-probe", "--out", "OUT"],
    "report": ["report", "GRIDDONE", "--no-plots", "--out", "OUT"],
    "data import": ["data", "import", "mustc", "--root", "MUSTC", "--tgt-lang", "de", "--split", "train",
                    "--out", "OUT.jsonl", "--tasks", "asr", "st"],
}
OVERRIDES_AT = {"config": 2, "train": 2, "evaluate": 2, "cache build": 3, "copytest": 2}  # else: --set, if taken
FILES = ["CFG", "RUN", "WAV", "MANIFEST", "GRID", "GRIDDONE", "MUSTC", "OUT", "MISSING", "DIR", "JUNK", "EMPTY"]
FLAGS = ["--quiet", "--json", "--dry-run", "--no-probe", "--no-resume", "--no-plots", "--shard", "1/2", "3/2", "--to",
         "de", "xx", "--manifest", "--out", "--root", "--limit", "-1", "0", "--set", "--where", "adapter=mlp",
         "adapter=nope", "--tasks", "asr", "st", "--vad", "energy", "--src-lang", "=", "--debug-not"]
# keys whose values size or lengthen the work, and keys holding paths: small values, files of the case
SIZES = {"adapter.hidden_size", "adapter.num_layers", "adapter.num_heads", "adapter.ffn_size", "adapter.stack",
         "adapter.conv_layers", "adapter.conv_kernel", "adapter.conv_stride", "adapter.queries_per_window",
         "adapter.qformer_layers", "llm.lora_rank", "data.max_batch_size", "data.num_buckets", "data.num_workers",
         "train.epochs", "train.max_steps", "train.grad_accum", "align.steps", "align.negatives", "eval.max_new_tokens",
         "eval.batch_size", "train.log_every", "train.save_every", "train.eval_every", "train.keep_last",
         "align.beam_size", "align.lm_order"}
PATHS = {"train.output_dir", "train.init_from", "data.feature_cache", "data.train_manifest", "data.dev_manifest",
         "data.test_manifest", "encoder.model", "llm.model", "llm.gguf_file", "eval.comet_model", "align.lm_text"}
small = st.sampled_from(["-1", "0", "1", "2", "3", "1.5", "x", "", "null", "[]", "{}", ".nan"])
cli_override = st.sampled_from(DOTTED).flatmap(
    lambda k: st.builds(lambda v: f"{k}={v}", small if k in SIZES else st.sampled_from(FILES + ["x", "", "~"])
                        if k in PATHS else st.text(max_size=12) | small
                        | scalars.map(lambda v: yaml.safe_dump(v).strip().split("\n")[0])))
tokens = st.sampled_from(FILES) | cli_override | st.sampled_from(FLAGS) | st.text(max_size=8)
SETS = [*OVERRIDES_AT, "transcribe", "translate"]  # the bases that take overrides
changes = st.one_of(  # (base, how, where, token); the command word itself stays (its change: one argparse error)
    st.tuples(st.sampled_from(SETS), st.just("override"), st.just(0), cli_override),
    st.tuples(st.sampled_from(list(BASES)), st.just("replace"), st.integers(0, 20), tokens),
    st.tuples(st.sampled_from(SETS), st.just("override"), st.just(0), cli_override),
    st.tuples(st.sampled_from(list(BASES)), st.just("drop"), st.integers(0, 20), st.just("")),
    st.tuples(st.sampled_from(list(BASES)), st.just("insert"), st.integers(0, 20), tokens),
)


def case_folder(world, root: Path) -> dict[str, Path]:
    """A fresh folder holding the case's own copies of the world's files (nothing the case writes
    reaches another case; the models are linked): the capitalised tokens of BASES, by name. Its
    config's paths are relative: the case runs in the folder."""
    d = Path(tempfile.mkdtemp(dir=root))
    (d / "models").symlink_to(world["tmp"] / "models")
    for name in ("run.yaml", "train.jsonl", "grid.yaml"):
        shutil.copy(world["tmp"] / name, d / name)
    shutil.copytree(world["mustc"], d / "MUSTC")  # the manifest's audio, relative to it
    shutil.copytree(world["run"], d / "run", ignore=shutil.ignore_patterns("checkpoints"))
    (d / "DIR").mkdir()
    files = {"CFG": d / "run.yaml", "RUN": d / "run", "WAV": shutil.copy(world["wav"], d / "a.wav"),
             "MANIFEST": d / "train.jsonl", "GRID": d / "grid.yaml", "GRIDDONE": d / "grid-done",
             "MUSTC": d / "MUSTC", "OUT": d / "out", "OUT.jsonl": d / "out.jsonl", "MISSING": d / "missing.yaml",
             "DIR": d / "DIR", "JUNK": _put(d / "junk.bin", bytes(range(256))), "EMPTY": _put(d / "empty.txt", b"")}
    return {k: Path(v) for k, v in files.items()}


def resolve(argv: list[str], files: dict[str, Path], world) -> list[str]:
    """Tokens -> the case's files; the finished grid is copied only when a case names it."""
    if any("GRIDDONE" in a for a in argv):
        shutil.copytree(world["grid-done"], files["GRIDDONE"])
    pattern = re.compile("|".join(sorted(map(re.escape, files), key=len, reverse=True)))
    return [pattern.sub(lambda m: str(files[m[0]]), a) for a in argv]


def mutate(base: str, how: str, i: int, token: str) -> list[str]:
    argv = list(BASES[base])
    if how == "drop":
        del argv[1 + i % (len(argv) - 1)]
    elif how == "replace":
        argv[1 + i % (len(argv) - 1)] = token
    elif how == "insert":
        argv.insert(1 + i % len(argv), token)
    elif base in OVERRIDES_AT:
        argv.insert(OVERRIDES_AT[base], token)
    else:
        argv += ["--set", token]
    return argv


def test_every_base_command_line_succeeds(world, tmp_path):
    for base, argv in BASES.items():
        files = case_folder(world, tmp_path)
        with contextlib.chdir(files["DIR"].parent):
            assert verdict(cli(resolve(argv, files, world))) == (0, ""), base


def test_command_lines(world, tmp_path):
    @settings(FUZZ, max_examples=100)
    @given(change=changes)
    def case(change):
        files = case_folder(world, tmp_path)
        argv = resolve(mutate(*change), files, world)
        try:
            with contextlib.chdir(files["DIR"].parent):
                judge("cli argv", cli(argv), [str(files["DIR"].parent), str(world["tmp"])])
        finally:
            shutil.rmtree(files["DIR"].parent, ignore_errors=True)

    case()
    counts = MESSAGES["cli argv"]
    argparse = sum(n for m, n in counts.items() if ARGPARSE in m)
    assert counts["<success>"] >= 5 and argparse <= 50, counts  # most cases get past argparse, some all the way
    save_stats("cli argv")


# --- load_config and `speechwire config` --------------------------------------------------------


def test_config_files_and_overrides(world, tmp_path):
    @settings(FUZZ, max_examples=120)
    @given(text=yaml_text, overrides=st.lists(override, max_size=3))
    def case(text, overrides):
        cfg = _put(tmp_path / "x.yaml", text)
        judge("load_config", lambda: load_config(cfg, overrides), [str(tmp_path)])
        with contextlib.chdir(tmp_path):
            judge("cli config", cli(["config", cfg, *overrides]), [str(tmp_path)])

    case()
    save_stats("load_config", "cli config")


def test_overrides_on_a_real_config(world):
    @settings(FUZZ, max_examples=80)
    @given(overrides=st.lists(override, min_size=1, max_size=4))
    def case(overrides):
        with contextlib.chdir(world["tmp"]):
            judge("overrides", lambda: load_config(world["cfg"], overrides), [str(world["tmp"])])

    case()
    save_stats("overrides")


# --- grid files: a valid one, changed one thing at a time -----------------------------------------

GRID_KEYS = ["base", "overrides", "presets", "factors", "factors.adapter", "factors.encoder", "factors.llm",
             "factors.task", "factors.other", "seeds", "extra_seeds", "exclude", "test_sets", "test_max_items",
             "feature_cache", "output_dir", "nope"]
factor_values = st.lists(st.sampled_from(["mlp", "conv", "cnv", "ctc", "asr", "st-en-de", "st-xx", "tiny", "a b"])
                         | st.text(max_size=5), max_size=3) | st.dictionaries(st.text(max_size=5), values, max_size=2)
grid_values = (values | factor_values | st.lists(override, max_size=2) | config_dicts
               | st.sampled_from(["run.yaml", "missing.yaml", "train.jsonl", "grid.yaml", [0, 1], {"adapter": ["mlp"]},
                                  [{"adapter": ["conv"]}], {"seeds": [1], "where": {"adapter": ["mlp"]}}]))
grid_changes = st.one_of(st.tuples(st.just("set"), st.sampled_from(GRID_KEYS), grid_values),
                         st.tuples(st.just("drop"), st.sampled_from(GRID_KEYS), st.none()),
                         st.tuples(st.just("cut"), st.integers(0, 400), st.none()))


def changed_grid(how: str, key, value) -> str:
    grid = grid_dict("run.yaml", "train.jsonl")
    section, _, sub = str(key).partition(".")
    target = grid["factors"] if sub else grid
    name = sub or section
    if how == "set":
        target[name] = value
    elif how == "drop":
        target.pop(name, None)
    text = yaml.safe_dump(grid, allow_unicode=True)
    return text[:key] if how == "cut" else text  # cut: a truncated file


def test_grid_files(world, tmp_path):
    files = case_folder(world, tmp_path)
    folder = files["DIR"].parent
    roots = [str(folder), str(world["tmp"])]
    assert verdict(lambda: load_grid(files["GRID"])) == (0, "")  # the unchanged grid is valid

    @settings(FUZZ, max_examples=100)
    @given(change=grid_changes)
    def case(change):
        grid = _put(files["GRID"], changed_grid(*change))
        with contextlib.chdir(folder):
            judge("grid file", lambda: load_grid(grid), roots)
            judge("cli grid --dry-run", cli(["grid", grid, "--dry-run", "--no-probe", "--out", folder / "out"]), roots)

    case()
    assert MESSAGES["grid file"]["<success>"] >= 20, MESSAGES["grid file"]  # many changes leave a valid grid
    save_stats("grid file", "cli grid --dry-run")


# --- manifests ----------------------------------------------------------------------------------

numbers = st.floats(allow_nan=True, allow_infinity=True) | st.integers(-5, 10**9) | st.text(max_size=4) | st.none()
rows = st.fixed_dictionaries(
    {}, optional={"audio": st.sampled_from(["WAV", "DIR", "missing.wav", "", "~nobody/x.wav", "x" * 300, "a\x00b"])
                  | st.text(max_size=10) | st.integers(),
                  "transcript": st.text(max_size=10) | st.none() | st.integers(),
                  "translation": st.text(max_size=5) | st.none(), "tgt_lang": st.sampled_from(["de", "", None]),
                  "task": st.sampled_from(["asr", "st", "mt", ""]) | st.integers(), "offset": numbers,
                  "duration": numbers, "id": st.sampled_from(["a", "b"]) | st.integers()})


def test_manifests(world, tmp_path):
    @settings(FUZZ, max_examples=150)
    @given(lines=st.lists(rows.map(json.dumps) | st.text(max_size=30) | st.sampled_from(["[" * 5000, "{}", "null"]),
                          max_size=5),
           junk=st.binary(max_size=64), mode=st.sampled_from(["lines", "bytes", "cut"]))
    def case(lines, junk, mode):
        wav = str(world["wav"])
        (tmp_path / "DIR").mkdir(exist_ok=True)
        text = "\n".join(lines).replace('"WAV"', json.dumps(wav)).replace('"DIR"', json.dumps(str(tmp_path / "DIR")))
        real = world["manifest"].read_bytes()
        data = {"lines": text.encode("utf-8", "surrogatepass"), "bytes": junk,
                "cut": real[: len(junk) * len(real) // 64] + junk[:3]}[mode]
        m = _put(tmp_path / "m.jsonl", data)
        for skip in (False, True):
            judge("manifest", lambda: load_manifest(m, skip_invalid=skip), [str(tmp_path), str(world["tmp"])])

    case()
    save_stats("manifest")


# --- run folders: SpeechLLM.from_pretrained and `speechwire transcribe` ------------------------


def test_run_folders(world, tmp_path):
    (tmp_path / "models").symlink_to(world["tmp"] / "models")  # the run's config names them relative to the cwd

    @settings(FUZZ, max_examples=60)
    @given(target=st.sampled_from(["trainable.safetensors", "config.yaml"]),
           how=st.sampled_from(["cut", "bytes", "flip"]), n=st.integers(0, 10**7), junk=st.binary(max_size=300))
    def case(target, how, n, junk):
        run = tmp_path / "run"
        shutil.copytree(world["run"], run, ignore=shutil.ignore_patterns("checkpoints"), dirs_exist_ok=True)
        real = canonical(target, (world["run"] / target).read_bytes())
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
        with contextlib.chdir(tmp_path):
            judge("from_pretrained", lambda: SpeechLLM.from_pretrained(run), roots)
            judge("cli transcribe", cli(["transcribe", run, world["wav"]]), roots)

    case()
    save_stats("from_pretrained", "cli transcribe")


# --- checkpoints (resume files) ------------------------------------------------------------------


def test_resume_files(world, tmp_path):
    @settings(FUZZ, max_examples=80)
    @given(target=st.sampled_from(["state.json", "optimizer.json", "optimizer.safetensors", "rng-rank0.json",
                                   "rng-rank0.safetensors", "scheduler.json", "trainable.safetensors"]),
           how=st.sampled_from(["cut", "bytes", "flip", "json"]), n=st.integers(0, 10**7), junk=st.binary(max_size=200),
           doc=values)
    def case(target, how, n, junk, doc):
        ckpt = tmp_path / "step-000002"
        shutil.copytree(complete_checkpoints(world["run"])[-1], ckpt, dirs_exist_ok=True)
        real = canonical(target, (ckpt / target).read_bytes())
        data = {"cut": real[: n % len(real)], "bytes": junk, "json": json.dumps(doc).encode(),
                "flip": bytes(b ^ (1 << (n % 8)) if i == n % len(real) else b for i, b in enumerate(real))}[how]
        _put(ckpt / target, data)
        judge("resume files", lambda: read_checkpoint(ckpt, 0, 1), [str(tmp_path)])

    case()
    save_stats("resume files")


# --- feature cache -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cache(world):
    cfg = load_config(world["cfg"], [f"data.feature_cache={world['tmp'] / 'cache'}",
                                     f"encoder.model={world['tmp'] / 'models' / 'whisper'}"])
    utts = load_manifest(world["manifest"])
    fc = FeatureCache.for_config(cfg)
    fc.ensure(utts, progress=False)
    originals = [fc.get(u)[0].clone() for u in utts]
    return fc, utts, originals


def test_cache_entries_damaged_on_disk_are_detected_and_rebuilt(world, cache):
    fc, utts, originals = cache

    @settings(FUZZ, max_examples=40)
    @given(i=st.integers(0, 3), how=st.sampled_from(["cut", "bytes", "flip"]), n=st.integers(0, 10**7),
           junk=st.binary(max_size=100))
    def case(i, how, n, junk):
        path = fc.path(fc.key(utts[i]))
        real = canonical(path.name, path.read_bytes())
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
        kind = template(damaged[0].split(" is damaged ", 1)[1], [str(world["tmp"])]) if damaged else "<success>"
        MESSAGES.setdefault("feature cache", Counter())[kind] += 1

    case()
    save_stats("feature cache")
