"""beam_pool.py: a batch's beam searches in worker processes answer what this process answers."""

from __future__ import annotations

import logging
from concurrent.futures.process import BrokenProcessPool

import numpy as np
import pytest

from speechwire import beam_pool
from speechwire.beam_pool import BatchSearch, pool_size
from speechwire.config import load_config
from speechwire.decoding import ctc_nbest, label_nbest
from speechwire.lexicon import WordScorer
from speechwire.ngram import TokenNgramLM

CHARS = "abcdefghijklmnopqrstuvwxyz' "
TEXTS = ["ten of clubs", "the twelfth day", "ten of them", "of the day", "a day of clubs"]


def ids(text: str) -> list[int]:
    return [CHARS.index(c) + 1 for c in text]


def head_models() -> tuple[TokenNgramLM, WordScorer]:
    lm = TokenNgramLM.build([ids(t) for t in TEXTS], order=3, vocab_size=len(CHARS))
    words = WordScorer.build(CHARS, TEXTS, ["tuesday"], order=2)
    words.weight, words.oov = 0.5, -3.0
    return lm, words


def frames(seed: int, n: int) -> list[np.ndarray]:
    """Peaky random CTC outputs of different lengths (some frames blank, some a clear letter)."""
    rng = np.random.default_rng(seed)
    items = []
    for length in rng.integers(1, 40, n):
        logits = rng.normal(0, 1, (length, len(CHARS) + 1))
        logits[np.arange(length), rng.integers(0, len(CHARS) + 1, length)] += rng.uniform(0, 8, length)
        items.append(logits - np.logaddexp.reduce(logits, axis=1, keepdims=True))
    return items


@pytest.mark.parametrize("search", [ctc_nbest, label_nbest])
def test_worker_processes_answer_what_this_process_answers(search):
    lm, words = head_models()
    items = frames(0, 7)
    options = {"beam": 6, "lm_weight": 0.6, "token_bonus": 2.0}
    here = [search(x, lm=lm, words=words, **options) for x in items]
    batches = BatchSearch()
    try:
        assert batches(items, search, lm, words, 2, **options) == here
        pool = batches._pool
        assert pool is not None and pool.workers == 2
        # the lexicon's weights as the config has them now reach the workers with each batch
        words.weight, words.oov = 0.2, -6.0
        changed = [search(x, lm=lm, words=words, **options) for x in items]
        assert batches(items, search, lm, words, 2, **options) == changed != here
        assert batches._pool is pool  # the same workers
        # without a lexicon, and one item (no process needed), reuse and replacement of the pool
        assert batches(items[:3], search, lm, None, 2, **options) == [search(x, lm=lm, **options) for x in items[:3]]
        assert batches._pool is not pool
        assert batches(items[:1], search, lm, words, 3, **options) == changed[:1]
    finally:
        batches.close()
    assert batches._pool is None


def test_a_broken_pool_is_dropped_with_one_warning_and_the_batch_searched_here(monkeypatch, caplog):
    lm, words = head_models()
    items = frames(1, 4)
    options = {"beam": 4, "lm_weight": 0.5, "token_bonus": 1.0}
    here = [ctc_nbest(x, lm=lm, words=words, **options) for x in items]

    def broken(self, items, **options):
        raise BrokenProcessPool("a worker was killed")

    monkeypatch.setattr(beam_pool.BeamPool, "nbest", broken)
    batches = BatchSearch()
    with caplog.at_level(logging.WARNING, logger="speechwire.beam_pool"):
        assert batches(items, ctc_nbest, lm, words, 2, **options) == here
        assert batches(items, ctc_nbest, lm, words, 2, **options) == here  # not tried again
    warnings = [r for r in caplog.records if "beam search processes failed" in r.getMessage()]
    assert len(warnings) == 1 and "a worker was killed" in warnings[0].getMessage()
    assert batches._pool is None and batches._failed


def test_a_killed_worker_breaks_the_pool_and_the_batch_still_answers():
    import os
    import signal

    lm, words = head_models()
    items = frames(2, 3)
    options = {"beam": 4, "lm_weight": 0.5, "token_bonus": 1.0}
    batches = BatchSearch()
    try:
        batches(items, ctc_nbest, lm, words, 2, **options)
        for pid in list(batches._pool._pool._processes):
            os.kill(pid, signal.SIGKILL)
        assert batches(items, ctc_nbest, lm, words, 2, **options) == \
            [ctc_nbest(x, lm=lm, words=words, **options) for x in items]
        assert batches._failed
    finally:
        batches.close()


def test_pickled_models_leave_their_memos_behind():
    import pickle

    lm, words = head_models()
    for x in frames(3, 3):
        ctc_nbest(x, beam=4, lm=lm, lm_weight=0.5, words=words)
    assert lm._cache and len(words._inside) > 1
    lm2, words2 = pickle.loads(pickle.dumps((lm, words)))
    assert not lm2._cache and not lm2._followers_memo and words2._inside == {(): True}
    assert lm._cache  # the original keeps its own
    assert list(lm2.items()) == list(lm.items()) and words2.words == words.words
    assert lm2.logprob((1, 2), 3) == lm.logprob((1, 2), 3)


def test_the_setting_and_its_checks(monkeypatch):
    monkeypatch.setattr(beam_pool, "available_cores", lambda: 6)
    assert (pool_size(0), pool_size(1), pool_size(3)) == (6, 1, 3)
    monkeypatch.setattr(beam_pool, "available_cores", lambda: 64)
    assert (pool_size(0), pool_size(12)) == (beam_pool.MOST_AUTO_WORKERS, 12)
    assert load_config(None, ["align.beam_workers=0"]).align.beam_workers == 0
    with pytest.raises(Exception, match=r"beam_workers=-1 must be >= 0"):
        load_config(None, ["align.beam_workers=-1"])


def test_a_script_that_decodes_when_imported_still_gets_its_answers_and_is_told_why(tmp_path):
    """Worker processes re-import the script that started them: one without the main guard runs its
    work again there; the worker stops with the reason and this process searches instead."""
    import os
    import subprocess
    import sys

    script = tmp_path / "unguarded.py"
    script.write_text(
        "import numpy as np\n"
        "from speechwire.beam_pool import BatchSearch\n"
        "from speechwire.decoding import ctc_nbest\n"
        "from speechwire.ngram import TokenNgramLM\n"
        "lm = TokenNgramLM.build([[1, 2, 3], [2, 3]], 2, 3)\n"
        "rng = np.random.default_rng(0)\n"
        "items = [np.log(rng.dirichlet(np.ones(4), 10)) for _ in range(3)]\n"
        "got = BatchSearch()(items, ctc_nbest, lm, None, 2, beam=4)\n"
        "print('same:', got == [ctc_nbest(x, lm=lm, beam=4) for x in items], flush=True)\n")
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines() == ["same: True"]  # printed once: the worker stopped before printing
    assert 'under `if __name__ == "__main__":`' in done.stderr and "searching in this process" in done.stderr


def test_a_worker_imports_no_torch():
    """A worker holds the search, the LM and the lexicon, ~30 MB under `speechwire serve`: torch
    (~150 MB a process) loads only where a checkpoint is read or written."""
    import subprocess
    import sys

    code = ("import sys, pickle, speechwire.beam_pool, speechwire.decoding, speechwire.lexicon\n"
            "from speechwire.lexicon import WordScorer\n"
            "pickle.loads(pickle.dumps(WordScorer.build('ab ', ['ab ba'], order=2)))\n"
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
