"""scripts/gpu_check.py's CPU path (--cpu --tiny), so the GPU check cannot rot before a GPU runs it:
SpeechLLM training steps and generation with random weights built by the script, and the 1-process
torchrun launch of its child; one JSON and one markdown table."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.py"


@pytest.mark.slow
def test_gpu_check_cpu_tiny_path_trains_generates_and_launches(tmp_path):
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    out = tmp_path / "check"
    code = gpu_check.main(["--cpu", "--tiny", "--adapters", "conv", "--steps", "1", "--warmup", "0", "--batch", "2",
                           "--seconds", "1", "--words", "4", "--gen-tokens", "2", "--out", str(out)])
    report = json.loads(out.with_suffix(".json").read_text())
    assert code == 0, report
    assert [(r["sfm"], r["adapter"]) for r in report["train"]] == [("whisper-large-v3", "conv"), ("w2v-bert-2.0", "conv")]
    for row in report["train"]:
        assert "error" not in row and row["utt_per_s"] > 0 and row["tokens_per_s"] > 0 and math.isfinite(row["loss"])
    assert [g["tokens_per_s"] > 0 for g in report["generate"]] == [True, True]
    assert report["launch"]["torchrun"]["ok"] and report["launch"]["torchrun"]["processes"] == 1
    assert report["launch"]["fsdp"] == {"skipped": "FSDP needs CUDA"}
    table = out.with_suffix(".md").read_text()
    assert "| whisper-large-v3 | conv |" in table and "- torchrun launch: ok" in table


def test_gpu_check_refuses_the_full_shapes_on_cpu(capsys):
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--cpu"])
    assert "add --tiny" in capsys.readouterr().err
