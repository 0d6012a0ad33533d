"""serve/run.py: describe_run finds the tasks and target languages a run was trained for."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi")

from speechwire.config import load_config  # noqa: E402
from speechwire.serve.run import describe_run  # noqa: E402


def test_describe_run_finds_the_trained_tasks(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"audio": "a.wav", "transcript": "x"}\n{"audio": "a.wav", "transcript": "x", '
                        '"translation": "y", "tgt_lang": "de"}\n{"audio": "b.wav", "transcript": "x", '
                        '"translation": "z", "tgt_lang": "fr"}\n')
    info = describe_run(run, load_config(None, [f"data.train_manifest={manifest}"]))
    assert info.tasks == ("asr", "st") and info.tgt_langs == ("de", "fr") and info.id == "run"
    weighted = load_config(None, [f"data.train_manifest={manifest}", "data.task_weights={st: 0.0, asr: 1.0}"])
    assert describe_run(run, weighted).tasks == ("asr",)
    missing = load_config(None, ["data.train_manifest=/nowhere/train.jsonl"])
    assert describe_run(run, missing).tasks == ("asr", "st")  # nothing says: both, with a warning
    (run / "metrics.json").write_text('{"task": "asr", "sets": {}}')  # what `speechwire demo` writes
    assert describe_run(run, missing).tasks == ("asr",)
    (run / "metrics.json").unlink()
    (run / "train_summary.json").write_text('{"final_dev": {"st-de": {"bleu": 1.0}}, "best_dev": null}')
    assert describe_run(run, missing).tasks == ("st",)
    assert describe_run(run, missing, ["asr"]).tasks == ("asr",)
    with pytest.raises(ValueError, match="unknown"):
        describe_run(run, missing, ["asr", "tts"])
