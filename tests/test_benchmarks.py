"""Every script in benchmarks/ runs end to end with --tiny (tiny random models, seconds each), so
none of them can break unnoticed (`make bench` once stopped on a changed CTC head signature).
No timing is asserted: the numbers of a --tiny run mean nothing."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
HELPERS = {"tiny.py"}  # imported by the scripts, not a benchmark
SCRIPTS = sorted(p.name for p in BENCHMARKS.glob("*.py") if p.name not in HELPERS)
NEEDS = {"other_voices.py": "flite"}  # a system tool the script drives


def test_every_script_is_listed():
    assert "asr_speed.py" in SCRIPTS and "adapters.py" in SCRIPTS


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_runs_tiny(script, tmp_path):
    tool = NEEDS.get(script)
    if tool and shutil.which(tool) is None:
        pytest.skip(f"{script} needs {tool} (scripts/install_system_deps.sh installs it)")
    extra = ["--out", str(tmp_path / "out")] if script == "asr_speed.py" else []
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TRANSFORMERS_VERBOSITY": "error",
           "SPEECHWIRE_CACHE": os.environ.get("SPEECHWIRE_CACHE", str(tmp_path / "cache"))}
    proc = subprocess.run([sys.executable, str(BENCHMARKS / script), "--tiny", *extra], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{script} --tiny failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    assert "|---" in proc.stdout, f"{script} --tiny printed no markdown table:\n{proc.stdout[-2000:]}"
    if script == "asr_speed.py":
        assert {"table.md", "results.json", "speed.png"} <= {p.name for p in (tmp_path / "out").iterdir()}


@pytest.mark.parametrize("encoder, sfm", [("weights:whisper-base", "whisper-base"),
                                          ("weights:whisper-tiny.en", "whisper-tiny.en"),
                                          ("/models/my-whisper", "whisper-tiny.en"),
                                          ("weights:qwen2.5-coder-0.5b-instruct", "whisper-tiny.en")])
def test_asr_speed_compares_against_the_runs_own_whisper(encoder, sfm, tmp_path):
    # faster-whisper and plain Whisper run the SFM the run hears through (the demo moved to Whisper
    # base); a run whose encoder has no pinned CTranslate2 weights falls back to tiny.en
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import asr_speed
    finally:
        sys.path.remove(str(BENCHMARKS))
    from speechwire.config import load_config, save_config

    save_config(load_config(None, [f"encoder.model={encoder}"]), tmp_path / "config.yaml")
    assert asr_speed.run_sfm(tmp_path) == sfm
