"""Real weights (make test-real): the shipped demo checkpoints on 3 real test clips, and the cached
GGUF -> Hugging Face conversion against transformers' own GGUF loader.

Skipped, with the reason, when the weights packages cannot be fetched or the demo corpus cannot be
built (espeak-ng / asterisk sounds missing).
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from speechwire.config import load_config

pytestmark = pytest.mark.real


def _fetch_or_skip(ref: str) -> tuple[str, str | None]:
    from speechwire.weights.resolve import resolve_model

    try:
        return resolve_model(ref)
    except (RuntimeError, OSError, ImportError) as e:
        pytest.skip(f"{ref} unavailable: {str(e).splitlines()[0]}")


def _demo_sets_or_skip(task: str):
    from speechwire.data.synth import MissingSystemDepsError, demo_data_dir
    from speechwire.demo.data import ensure_demo_data

    try:
        return ensure_demo_data(demo_data_dir(), task, train=False, progress=False)
    except MissingSystemDepsError as e:
        pytest.skip(str(e))


def test_converted_gguf_matches_transformers_gguf_loader():
    """weights:smollm2-135m-instruct (cached safetensors) gives the logits of the GGUF loaded directly."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, _ = _fetch_or_skip("weights:smollm2-135m-instruct")
    raw_dir, raw_file = _fetch_or_skip_raw("weights:smollm2-135m-instruct")
    tok = AutoTokenizer.from_pretrained(folder)
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    converted = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    direct = AutoModelForCausalLM.from_pretrained(raw_dir, gguf_file=raw_file, dtype=torch.float32).eval()
    with torch.no_grad():
        a, b = converted(ids).logits, direct(ids).logits
    torch.testing.assert_close(a, b, rtol=0, atol=1e-4)
    assert tok.chat_template and "im_start" in tok.chat_template
    assert "quantization_config" not in json.loads((__import__("pathlib").Path(folder) / "config.json").read_text())


def _fetch_or_skip_raw(ref: str) -> tuple[str, str]:
    from speechwire.weights.resolve import resolve_model

    try:
        path, gguf = resolve_model(ref, convert_gguf=False)
    except (RuntimeError, OSError) as e:
        pytest.skip(f"{ref} unavailable: {str(e).splitlines()[0]}")
    assert gguf is not None
    return path, gguf


@pytest.mark.parametrize("task", ["asr", "st"])
def test_shipped_demo_on_three_clips(task, tmp_path):
    """`speechwire demo --limit 3` with the packaged checkpoint: files, table, sane scores."""
    from speechwire.demo import asset_dir, run_demo

    if not (asset_dir(task) / "config.yaml").is_file():
        pytest.skip(f"no shipped {task} checkpoint in {asset_dir(task)}")
    _demo_sets_or_skip(task)
    shipped = load_config(asset_dir(task) / "config.yaml")
    _fetch_or_skip(shipped.encoder.model)  # the checkpoint's own frozen parts
    _fetch_or_skip(shipped.llm.model)
    metrics = run_demo(task, tmp_path / "run", limit=3, progress=False)
    base = "plain whisper" if task == "asr" else "cascade"
    for name, systems in metrics["sets"].items():
        assert set(systems) == {"speechwire", base} and systems["speechwire"]["num_utterances"] == 3
        if task == "asr":
            # plain Whisper (tiny.en 5.9 %, base 3.2 % on the real prompts; ~55 % on the hard synthetic voices)
            limit = 0.3 if name == "real" else 1.5
            assert math.isfinite(systems["speechwire"]["asr"]["wer"]) and systems[base]["asr"]["wer"] < limit, \
                (name, systems)
        else:
            assert systems[base]["st"]["chrf"] > 20, systems
    rows = [json.loads(x) for x in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]
    assert rows and all(r["speechwire"].strip() for r in rows), rows
