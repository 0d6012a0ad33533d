"""ngram.py and decoding.ctc_beam_search / ctc_nbest: a token n-gram LM fused into CTC prefix beam search."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from speechwire.decoding import ctc_beam_search, ctc_nbest
from speechwire.ngram import EOS, TokenNgramLM

SENTENCES = [[1, 2, 3], [1, 2, 4], [1, 2, 3], [5, 2, 3], [3, 3]]


def test_lm_is_a_distribution_and_prefers_what_it_read():
    lm = TokenNgramLM.build(SENTENCES, order=3, vocab_size=6)
    for prefix in ([], [1], [1, 2], [5, 2], [6, 6]):
        ctx = lm.context(prefix)
        total = sum(math.exp(lm.logprob(ctx, w)) for w in [*range(1, 7), EOS])
        assert total == pytest.approx(1.0, abs=1e-9), prefix
    ctx = lm.context([1, 2])
    assert lm.logprob(ctx, 3) > lm.logprob(ctx, 4) > lm.logprob(ctx, 6)  # seen twice > once > never
    assert lm.logprob(lm.context([1, 2, 3]), EOS) > lm.logprob(lm.context([1, 2, 3]), 1)


@given(st.lists(st.lists(st.integers(1, 9), max_size=6), max_size=12), st.integers(1, 4),
       st.sampled_from([(9, torch.int8), (127, torch.int8), (128, torch.int16), (40_000, torch.int32)]))
@settings(max_examples=40, deadline=None)
def test_lm_round_trips_through_checkpoint_tensors(sentences, order, vocab):
    vocab_size, dtype = vocab  # the smallest integer type that holds every symbol (a character LM: int8)
    sentences = [[w * vocab_size // 9 for w in s] for s in sentences]  # symbols up to vocab_size
    lm = TokenNgramLM.build(sentences, order=order, vocab_size=vocab_size)
    grams, counts = lm.to_tensors()
    assert grams.dtype == dtype and counts.dtype == torch.int32 and grams.shape == (len(lm), order)
    back = TokenNgramLM.from_tensors(grams, counts, vocab_size=vocab_size)
    assert list(back.items()) == list(lm.items())
    for prefix in ([], [1], [2, 3, 4]):
        for w in (1, 5, vocab_size, EOS):
            assert back.logprob(back.context(prefix), w) == lm.logprob(lm.context(prefix), w)


def _reference_logprob(sentences, order, vocab_size, prefix, token):
    """Interpolated absolute discounting straight from tuple counts (ngram.py's docstring formula)."""
    from collections import Counter

    from speechwire.ngram import BOS, DISCOUNT, UNIGRAM_ADD

    counts = Counter()
    for ids in sentences:
        seq = [BOS] * (order - 1) + list(ids) + [EOS]
        for i in range(order - 1, len(seq)):
            for n in range(1, order + 1):
                counts[tuple(seq[i - n + 1: i + 1])] += 1
    unigrams = sum(c for g, c in counts.items() if len(g) == 1)
    p = (counts[(token,)] + UNIGRAM_ADD) / (unigrams + UNIGRAM_ADD * (vocab_size + 1))
    context = ([BOS] * (order - 1) + list(prefix))[len(prefix):]
    for n in range(2, order + 1):
        h = tuple(context[len(context) - (n - 1):])
        followers = [c for g, c in counts.items() if len(g) == n and g[:-1] == h]
        if followers:
            p = max(counts[h + (token,)] - DISCOUNT, 0.0) / sum(followers) + DISCOUNT * len(followers) / sum(followers) * p
    return math.log(p)


@given(st.lists(st.lists(st.integers(1, 7), max_size=6), min_size=1, max_size=10), st.integers(1, 5),
       st.lists(st.integers(1, 7), max_size=7), st.sampled_from([1, 4, 7, EOS]))
@settings(max_examples=60, deadline=None)
def test_packed_keys_give_the_formulas_probabilities(sentences, order, prefix, token):
    lm = TokenNgramLM.build(sentences, order=order, vocab_size=7)
    assert lm.logprob(lm.context(prefix), token) == pytest.approx(
        _reference_logprob(sentences, order, 7, prefix, token), rel=1e-12)
    assert all(lm.key(lm.gram(k)) == k for k, _ in lm.items())


@given(st.lists(st.lists(st.integers(1, 5), max_size=6), min_size=1, max_size=8), st.lists(st.integers(1, 5), max_size=5))
@settings(max_examples=25, deadline=None)
def test_keys_beyond_64_bits_give_the_same_probabilities(sentences, prefix):
    """A token head over Qwen's 151,936 tokens with a 4-gram LM: keys up to 151,940**4 do not fit
    in 64 bits and are kept as Python integers, with the same probabilities and checkpoint tensors."""
    vocab = 151_936
    sentences = [[w * 30_000 for w in s] for s in sentences]
    lm = TokenNgramLM.build(sentences, order=4, vocab_size=vocab)
    assert lm.base**4 >= 2**63
    for token in (30_000, 150_000, EOS):
        want = _reference_logprob(sentences, 4, vocab, [w * 30_000 for w in prefix], token)
        assert lm.logprob(lm.context([w * 30_000 for w in prefix]), token) == pytest.approx(want, rel=1e-12)
    back = TokenNgramLM.from_tensors(*lm.to_tensors(), vocab_size=vocab)
    assert list(back.items()) == list(lm.items())


def _frames(path: list[int], K: int, sharp: float = 4.0) -> np.ndarray:
    """(T, K + 1) log-probs whose best path is `path` (0 = blank)."""
    logits = np.zeros((len(path), K + 1))
    for t, k in enumerate(path):
        logits[t, k] = sharp
    return logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)


def test_beam_search_follows_a_clear_path_and_merges_repeats():
    assert ctc_beam_search(_frames([1, 1, 0, 2, 0, 2, 2, 0], K=3)) == [1, 2, 2]
    assert ctc_beam_search(_frames([0, 0, 0], K=3)) == []


def test_lm_fusion_fixes_an_acoustic_near_miss():
    """Frame 2 leans to token 4 ("close") over 3 ("clubs"); the LM has only seen "ten of clubs"."""
    K = 5
    logp = _frames([1, 0, 2, 0, 4, 0], K)
    row = np.full(K + 1, -8.0)
    row[4], row[3], row[0] = np.log(0.5), np.log(0.4), np.log(0.1)
    logp[4] = row - np.logaddexp.reduce(row)
    assert ctc_beam_search(logp) == [1, 2, 4]
    lm = TokenNgramLM.build([[1, 2, 3]] * 5 + [[5, 4]], order=3, vocab_size=K)
    assert ctc_beam_search(logp, lm=lm, lm_weight=0.5, token_bonus=1.0) == [1, 2, 3]


def _ctc_logprob(logp: np.ndarray, prefix: list[int]) -> float:
    """log P(prefix) summed over all its CTC alignments (the forward algorithm)."""
    T = logp.shape[0]
    ext = [0]
    for k in prefix:
        ext += [k, 0]
    alpha = np.full(len(ext), -np.inf)
    alpha[0] = logp[0, 0]
    if len(ext) > 1:
        alpha[1] = logp[0, ext[1]]
    for t in range(1, T):
        new = np.full(len(ext), -np.inf)
        for s in range(len(ext)):
            terms = [alpha[s]] + ([alpha[s - 1]] if s >= 1 else [])
            if s >= 2 and ext[s] != 0 and ext[s] != ext[s - 2]:
                terms.append(alpha[s - 2])
            new[s] = np.logaddexp.reduce(terms) + logp[t, ext[s]]
        alpha = new
    return float(np.logaddexp.reduce(alpha[-2:] if len(ext) > 1 else alpha[-1:]))


@given(st.integers(0, 10_000))
@settings(max_examples=30, deadline=None)
def test_beam_search_without_lm_scores_at_least_the_best_path(seed):
    """Unpruned, the prefix found has at least the probability of the greedy path's prefix (summed over
    its alignments). A beam of 10,000 holds every prefix of 8 frames over 3 tokens; a small beam may
    prune the best prefix's ancestors (seed 4606: beam 16 misses it, 64 finds it)."""
    rng = np.random.default_rng(seed)
    T, K = int(rng.integers(1, 9)), 3
    logits = rng.normal(size=(T, K + 1)) * 2
    logp = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)

    best = logp.argmax(1).tolist()
    greedy = [k for i, k in enumerate(best) if k != 0 and (i == 0 or best[i - 1] != k)]
    found = ctc_beam_search(logp, beam=10_000, top_k=K, blank_skip=1.0)
    assert _ctc_logprob(logp, found) >= _ctc_logprob(logp, greedy) - 1e-9


@given(st.integers(0, 10_000), st.integers(1, 6))
@settings(max_examples=30, deadline=None)
def test_nbest_is_ranked_distinct_and_scores_each_prefix_exactly(seed, beam):
    """Unpruned and without an LM, each prefix's score is its CTC probability (forward algorithm);
    a pruned beam returns at most `beam` distinct prefixes, best first, led by ctc_beam_search's."""
    rng = np.random.default_rng(seed)
    T, K = int(rng.integers(1, 7)), 3
    logits = rng.normal(size=(T, K + 1)) * 2
    logp = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
    for prefix, score in ctc_nbest(logp, beam=10_000, top_k=K, blank_skip=1.0):
        assert score == pytest.approx(_ctc_logprob(logp, prefix), abs=1e-9)
    lm = TokenNgramLM.build([[1, 2, 3], [3, 2]], order=2, vocab_size=K)
    nbest = ctc_nbest(logp, beam=beam, lm=lm, lm_weight=0.5, token_bonus=1.0)
    scores = [s for _, s in nbest]
    assert 1 <= len(nbest) <= beam and scores == sorted(scores, reverse=True)
    assert len({tuple(p) for p, _ in nbest}) == len(nbest)
    assert nbest[0][0] == ctc_beam_search(logp, beam=beam, lm=lm, lm_weight=0.5, token_bonus=1.0)


def test_the_logprob_memo_stays_bounded_and_never_changes_a_value(monkeypatch):
    """A long-running server asks for ever new (context, token) pairs: the memo starts afresh at its
    cap instead of growing, and a value computed again is the same."""
    import speechwire.ngram as ngram

    monkeypatch.setattr(ngram, "CACHE_ENTRIES", 5)
    monkeypatch.setattr(ngram, "FOLLOWER_ENTRIES", 3)
    lm = TokenNgramLM.build([[1, 2, 3, 4], [2, 3, 1], [4, 4, 2]], order=3, vocab_size=4)
    pairs = [(lm.context(prefix), token) for prefix in ([], [1], [2, 3], [4, 4], [3]) for token in (1, 2, 3, 4, EOS)]
    first = [lm.logprob(c, t) for c, t in pairs]
    assert len(lm._cache) <= 5 and len(lm._followers_memo) <= 3
    assert [lm.logprob(c, t) for c, t in pairs] == first
    fresh = TokenNgramLM.build([[1, 2, 3, 4], [2, 3, 1], [4, 4, 2]], order=3, vocab_size=4)
    assert [fresh.logprob(c, t) for c, t in reversed(pairs)][::-1] == first


def _exhaustive_label_best(log_probs: np.ndarray, lm, lm_weight: float, bonus: float) -> tuple[list[int], float]:
    """Every token sequence of one token per output, scored as label_nbest scores it (brute force)."""
    import itertools

    from speechwire.ngram import EOS

    tokens = log_probs[:, 1:] - np.logaddexp.reduce(log_probs[:, 1:], axis=1, keepdims=True)
    best = ([], -np.inf)
    for seq in itertools.product(range(1, log_probs.shape[1]), repeat=log_probs.shape[0]):
        score = sum(float(tokens[t, k - 1]) + bonus + lm_weight * lm.logprob(lm.context(seq[:t]), k) for t, k in enumerate(seq))
        score += lm_weight * lm.logprob(lm.context(seq), EOS)
        if score > best[1]:
            best = (list(seq), score)
    return best


@settings(max_examples=60, deadline=None)
@given(T=st.integers(1, 4), seed=st.integers(0, 10_000), weight=st.sampled_from([0.0, 0.5, 2.0]))
def test_label_nbest_with_a_wide_beam_is_the_exhaustive_best(T, seed, weight):
    """label_nbest (CIF outputs, one token each): nothing merged, the blank column never read, and
    with every token kept it finds the best fused score of all K^T sequences."""
    from speechwire.decoding import label_nbest

    rng = np.random.default_rng(seed)
    K = 3
    lp = rng.standard_normal((T, K + 1))
    lp[:, 0] = 50.0  # a huge blank changes nothing: it is not read
    lp = lp - np.logaddexp.reduce(lp, axis=1, keepdims=True)
    lm = TokenNgramLM.build([[1, 1, 2], [3, 2], [1, 1]], 2, K)
    nbest = label_nbest(lp, beam=K ** T, lm=lm, lm_weight=weight, token_bonus=0.3, top_k=K)
    assert all(len(p) == T for p, _ in nbest) and len({tuple(p) for p, _ in nbest}) == len(nbest) == K ** T
    assert [s for _, s in nbest] == sorted((s for _, s in nbest), reverse=True)
    want, score = _exhaustive_label_best(lp, lm, weight, 0.3)
    assert nbest[0][0] == want and abs(nbest[0][1] - score) < 1e-6


def test_label_nbest_keeps_repeats_and_greedy_decode_too():
    """'ll' is two outputs of the same letter: kept by the CIF decoders, merged by CTC's."""
    import torch

    from speechwire.align import greedy_decode
    from speechwire.decoding import ctc_beam_search, label_nbest

    lp = np.log(np.array([[0.01, 0.97, 0.01, 0.01], [0.01, 0.97, 0.01, 0.01], [0.01, 0.01, 0.97, 0.01]]))
    assert label_nbest(lp, beam=4)[0][0] == [1, 1, 2]
    assert ctc_beam_search(lp, beam=4) == [1, 2]

    class Head:
        def token_ids(self, idx):
            return (torch.as_tensor(idx) + 100).tolist()

    logits = torch.tensor(lp, dtype=torch.float32)[None]
    assert greedy_decode(Head(), logits, torch.tensor([3]), one_per_token=True) == [[101, 101, 102]]
    assert greedy_decode(Head(), logits, torch.tensor([2]), one_per_token=True) == [[101, 101]]
