"""Shared fixtures: a tiny random LLM written to disk once per session, the toy SFM, a MuST-C corpus.

Helpers (ToyEncoder, make_batch, mustc_manifest, Forker, ...) live in tests/helpers.py.
"""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
# derived inference weights (derived.py) of the tests' throwaway models go to a throwaway folder
os.environ.setdefault("SPEECHWIRE_DERIVED", tempfile.mkdtemp(prefix="speechwire-derived-"))

import pytest
import torch

torch.set_num_threads(1)  # pytest-xdist runs one worker per core; more threads only thrash

from speechwire.testing import save_tiny_llm  # noqa: E402  (after the thread setting)

from helpers import ToyEncoder, mustc_manifest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_llm_dir(tmp_path_factory):
    return save_tiny_llm(tmp_path_factory.mktemp("tiny_llm"), seed=0)


@pytest.fixture()
def toy_encoder():
    return ToyEncoder().freeze()


@pytest.fixture(scope="module")
def mustc_corpus(tmp_path_factory):
    """(folder, manifest): a MuST-C-layout corpus (8 items, ASR + ST) imported once per test module;
    helpers.write_experiment puts the tiny models and runs beside it."""
    tmp = tmp_path_factory.mktemp("pipeline")
    return tmp, mustc_manifest(tmp, "train.jsonl")
