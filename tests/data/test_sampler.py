"""DurationBucketSampler invariants (hypothesis): limits, coverage, weights, resume, sharding."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from speechwire.data import DurationBucketSampler

durations_st = st.lists(st.floats(0.05, 40.0, allow_nan=False), min_size=0, max_size=120)
limits_st = st.fixed_dictionaries({
    "max_batch_seconds": st.floats(1.0, 120.0), "max_batch_size": st.integers(1, 16),
    "num_buckets": st.integers(1, 8), "seed": st.integers(0, 2**31 - 1),
})
FAST = settings(max_examples=60, deadline=None)


@FAST
@given(durations_st, limits_st, st.integers(0, 3), st.booleans())
def test_limits_and_each_utterance_once(durations, limits, epoch, shuffle):
    s = DurationBucketSampler(durations, shuffle=shuffle, **limits)
    s.set_epoch(epoch)
    batches = list(s)
    assert len(batches) == len(s)
    for b in batches:
        assert 1 <= len(b) <= limits["max_batch_size"]
        total = sum(durations[i] for i in b)
        assert total <= limits["max_batch_seconds"] + 1e-9 or len(b) == 1  # lone long item
    assert sorted(i for b in batches for i in b) == list(range(len(durations)))


@FAST
@given(durations_st, limits_st, st.data())
def test_resume_mid_epoch_equals_uninterrupted(durations, limits, data):
    s = DurationBucketSampler(durations, **limits)
    s.set_epoch(1)
    full = list(s)
    k = data.draw(st.integers(0, len(full)))
    s2 = DurationBucketSampler(durations, **limits)
    s2.set_epoch(1)
    it = iter(s2)
    head = [next(it) for _ in range(k)]
    state = s2.state_dict()
    s3 = DurationBucketSampler(durations, **limits)
    s3.load_state_dict(state)
    s3.set_epoch(1)  # the training loop calls set_epoch again after resuming: keeps the offset
    assert head + list(s3) == full
    assert list(s3) == full  # the offset applies to one iteration only


@FAST
@given(durations_st, limits_st, st.integers(2, 5), st.booleans())
def test_ranks_equal_length_and_disjoint(durations, limits, replicas, drop):
    ref = DurationBucketSampler(durations, **limits)
    n = len(ref.global_batches(0))
    per_rank = [list(DurationBucketSampler(durations, num_replicas=replicas, rank=r, drop_uneven=drop, **limits))
                for r in range(replicas)]
    assert len({len(b) for b in per_rank}) == 1
    seen = Counter(i for b in per_rank for batch in b for i in batch)
    if drop:
        assert all(c == 1 for c in seen.values())  # fully disjoint
        assert len(per_rank[0]) == n // replicas
    else:
        assert set(seen) == set(range(len(durations)))  # nothing lost
        # only the repeated (padding) batches may overlap between ranks
        real = [batch for r, b in enumerate(per_rank) for j, batch in enumerate(b) if j * replicas + r < n]
        assert sorted(i for batch in real for i in batch) == list(range(len(durations)))


def test_epochs_shuffle_differently_and_deterministically():
    d = [float(i % 7 + 1) for i in range(200)]
    a, b = DurationBucketSampler(d, max_batch_seconds=20, seed=3), DurationBucketSampler(d, max_batch_seconds=20, seed=3)
    e0 = list(a)
    a.set_epoch(1)
    assert list(a) != e0 and list(b) == e0


def test_buckets_group_similar_lengths():
    d = [1.0] * 50 + [10.0] * 50
    s = DurationBucketSampler(d, max_batch_seconds=40, num_buckets=2, seed=0)
    for batch in s:
        assert len({d[i] for i in batch}) == 1


def test_task_weights_semantics():
    tasks = ["asr"] * 40 + ["st"] * 60
    d = [1.0] * 100
    s = DurationBucketSampler(d, tasks, max_batch_seconds=8, task_weights={"asr": 0.5, "st": 2.0}, seed=1)
    counts = Counter(i for b in s for i in b)
    asr = [counts[i] for i in range(40)]
    assert sum(asr) == 20 and set(asr) <= {0, 1}  # a random half of ASR
    assert all(counts[i] == 2 for i in range(40, 100))  # every ST utterance twice
    s.set_epoch(1)
    counts1 = Counter(i for b in s for i in b)
    assert {i for i in range(40) if counts1[i]} != {i for i in range(40) if counts[i]}
    only_st = DurationBucketSampler(d, tasks, task_weights={"asr": 0.0}, seed=1)
    assert {i for b in only_st for i in b} == set(range(40, 100))


def test_bad_arguments_and_state_mismatch():
    with pytest.raises(ValueError, match="rank=2 must be in"):
        DurationBucketSampler([1.0], num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="task_weights need `tasks`"):
        DurationBucketSampler([1.0], task_weights={"st": 2})
    state = DurationBucketSampler([1.0, 2.0], seed=1).state_dict()
    with pytest.raises(ValueError, match="num_items=2 but this sampler has 3"):
        DurationBucketSampler([1.0, 2.0, 3.0], seed=1).load_state_dict(state)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0.1, 40.0), min_size=1, max_size=60), st.floats(1.0, 60.0), st.integers(1, 10))
def test_fill_batches_keeps_every_index_once_in_order_within_the_limits(durations, max_seconds, max_items):
    from speechwire.data.sampler import by_duration, fill_batches

    order = by_duration(durations)
    assert [durations[i] for i in order] == sorted(durations)
    batches = fill_batches(order, durations, max_seconds, max_items)
    assert [i for b in batches for i in b] == order  # each index once, order kept
    for b in batches:
        assert 1 <= len(b) <= max_items
        assert len(b) == 1 or sum(durations[i] for i in b) <= max_seconds + 1e-9  # a long item stands alone
    # greedy: no batch could have taken the next batch's first item
    for b, nxt in zip(batches, batches[1:]):
        assert len(b) == max_items or sum(durations[i] for i in b) + durations[nxt[0]] > max_seconds


def test_fill_batches_without_limits_is_one_batch():
    from speechwire.data.sampler import fill_batches

    assert fill_batches([2, 0, 1], [1.0, 2.0, 3.0]) == [[2, 0, 1]]
    assert fill_batches([], []) == []
    assert fill_batches([0, 1, 2], [1.0, 1.0, 1.0], max_items=2) == [[0, 1], [2]]
