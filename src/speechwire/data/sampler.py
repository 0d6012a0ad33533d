"""Duration-bucketed batch sampler with task weights, distributed sharding and exact resume.

    sampler = DurationBucketSampler(durations, tasks, max_batch_seconds=160, max_batch_size=64)
    for epoch in range(E):
        sampler.set_epoch(epoch)
        for batch in sampler: ...            # lists of dataset indices
    state = sampler.state_dict()             # {"epoch", "batches_done", ...}

One epoch's plan (identical on every rank: it depends only on seed, epoch and the data):
1. Draw the epoch's pool. A task weight w is the expected number of times each utterance of that
   task is drawn per epoch: floor(w) copies of every utterance plus a seeded random subset of
   round(frac(w) * N_task) of them. w=1 (default for tasks not listed) draws each once, w=2
   twice, w=0.5 a random half, w=0 none. Without weights every utterance appears exactly once.
2. Bucket the pool by duration: num_buckets quantile buckets computed over the whole dataset.
3. Shuffle each bucket and fill batches greedily up to max_batch_seconds total audio and
   max_batch_size items; an utterance longer than max_batch_seconds forms a batch on its own.
4. Shuffle the batch order; with num_replicas > 1 pad the list by repeating its first batches
   until it divides evenly (or drop the tail with drop_uneven=True), and give rank r the
   batches r, r + R, r + 2R, ... so every rank runs the same number of steps on different data.
With shuffle=False steps 1, 3 and 4 keep index order (evaluation).
"""

from __future__ import annotations

import math
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler


class DurationBucketSampler(Sampler[list[int]]):
    """Yield batches (lists of indices) of similar-length utterances under a total-seconds budget.

    Args:
        durations: seconds of audio per dataset index.
        tasks: task per index ("asr"/"st"); needed only for task_weights.
        max_batch_seconds: budget of total audio seconds per batch.
        max_batch_size: most items per batch.
        num_buckets: duration buckets (quantiles of `durations`).
        shuffle: shuffle within buckets and across batches (seeded per epoch).
        seed: base seed; epoch e uses torch.Generator seeded with seed + e.
        task_weights: expected draws per utterance per epoch, per task (see module docstring).
        num_replicas: distributed world size.
        rank: this process's rank in [0, num_replicas).
        drop_uneven: drop the last batches instead of repeating batches to balance ranks.
    """

    def __init__(
        self,
        durations: Sequence[float],
        tasks: Sequence[str] | None = None,
        max_batch_seconds: float = 160.0,
        max_batch_size: int = 64,
        num_buckets: int = 10,
        shuffle: bool = True,
        seed: int = 0,
        task_weights: dict[str, float] | None = None,
        num_replicas: int = 1,
        rank: int = 0,
        drop_uneven: bool = False,
    ) -> None:
        if max_batch_seconds <= 0 or max_batch_size < 1 or num_buckets < 1:
            raise ValueError("max_batch_seconds, max_batch_size and num_buckets must be positive")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank={rank} must be in [0, num_replicas={num_replicas})")
        self.durations = np.asarray(durations, dtype=np.float64)
        if self.durations.ndim != 1 or (self.durations < 0).any() or not np.isfinite(self.durations).all():
            raise ValueError("durations must be a 1-D sequence of finite seconds >= 0")
        self.tasks = list(tasks) if tasks is not None else None
        self.task_weights = dict(task_weights or {})
        if self.task_weights:
            if self.tasks is None or len(self.tasks) != len(self.durations):
                raise ValueError("task_weights need `tasks`, one per duration")
            bad = {t: w for t, w in self.task_weights.items() if not (w >= 0 and math.isfinite(w))}
            if bad:
                raise ValueError(f"task weights must be finite and >= 0, got {bad}")
        self.max_batch_seconds, self.max_batch_size = float(max_batch_seconds), int(max_batch_size)
        self.num_buckets, self.shuffle, self.seed = int(num_buckets), bool(shuffle), int(seed)
        self.num_replicas, self.rank, self.drop_uneven = int(num_replicas), int(rank), bool(drop_uneven)
        qs = np.linspace(0, 1, self.num_buckets + 1)[1:-1]
        self.bounds = np.quantile(self.durations, qs) if len(self.durations) else np.zeros(0)
        self.epoch = 0
        self._skip = 0  # batches of the current epoch to skip on the next __iter__ (resume)
        self._done = 0  # batches of the current epoch handed out so far (incl. skipped)
        self._plan: tuple[int, list[list[int]]] | None = None  # (epoch, this rank's batches)

    # --- planning ------------------------------------------------------------------------------

    def _pool(self, g: torch.Generator) -> np.ndarray:
        n = len(self.durations)
        if not self.task_weights:
            return np.arange(n)
        assert self.tasks is not None
        tasks = np.asarray(self.tasks)
        parts = []
        for task in sorted(set(self.tasks)):
            idx = np.flatnonzero(tasks == task)
            w = self.task_weights.get(task, 1.0)
            parts += [idx] * int(w)  # w >= 0: int is floor
            k = int(round((w - int(w)) * len(idx)))
            if k:
                pick = torch.randperm(len(idx), generator=g)[:k].numpy() if self.shuffle else np.arange(k)
                parts.append(idx[np.sort(pick)])
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def global_batches(self, epoch: int) -> list[list[int]]:
        """All ranks' batches of `epoch`, in order, before sharding (pure function of seed, epoch)."""
        g = torch.Generator().manual_seed(self.seed + epoch)
        pool = self._pool(g)
        bucket_of = np.searchsorted(self.bounds, self.durations[pool], side="right")
        batches: list[list[int]] = []
        for b in range(self.num_buckets):
            members = pool[bucket_of == b]
            if self.shuffle and len(members):
                members = members[torch.randperm(len(members), generator=g).numpy()]
            batches += fill_batches(members.tolist(), self.durations, self.max_batch_seconds, self.max_batch_size)
        if self.shuffle and batches:
            batches = [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]
        return batches

    def _rank_batches(self) -> list[list[int]]:
        if self._plan is None or self._plan[0] != self.epoch:
            batches = self.global_batches(self.epoch)
            R, n = self.num_replicas, len(batches)
            if R > 1 and n % R:
                if self.drop_uneven:
                    batches = batches[: n - n % R]
                else:
                    batches = batches + [batches[i % n] for i in range(R - n % R)]
            self._plan = (self.epoch, batches[self.rank :: R])
        return self._plan[1]

    # --- Sampler API ---------------------------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch to plan; a resume offset survives only if `epoch` is the resumed one."""
        if epoch != self.epoch:
            self._skip = self._done = 0
        self.epoch = int(epoch)

    def __len__(self) -> int:
        """Batches this rank gets in the current epoch (the whole epoch, including resumed ones)."""
        return len(self._rank_batches())

    def __iter__(self) -> Iterator[list[int]]:
        start, self._skip = self._skip, 0
        self._done = start
        for batch in self._rank_batches()[start:]:
            self._done += 1
            yield list(batch)

    def state_dict(self, batches_done: int | None = None) -> dict[str, Any]:
        """Where this rank is: epoch and batches already consumed in it.

        Args:
            batches_done: batches the training loop consumed this epoch; defaults to the batches
                this sampler handed out, which runs ahead of the loop when a DataLoader prefetches
                with workers (SpeechDataLoader.state_dict passes the consumed count).

        Returns:
            a small dict of ints, safe to store in a checkpoint.
        """
        return {
            "epoch": self.epoch, "batches_done": self._done if batches_done is None else int(batches_done),
            "seed": self.seed, "num_items": len(self.durations), "num_replicas": self.num_replicas,
            "rank": self.rank,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume: the next iteration yields exactly the rest of the interrupted epoch.

        Raises:
            ValueError: the state was saved with a different seed, dataset size or world size.
        """
        for key, mine in (("seed", self.seed), ("num_items", len(self.durations)), ("num_replicas", self.num_replicas)):
            if state.get(key, mine) != mine:
                raise ValueError(f"sampler state has {key}={state[key]} but this sampler has {mine}; "
                                 f"resume with the same data, seed and number of processes")
        self.epoch = int(state["epoch"])
        self._skip = self._done = int(state["batches_done"])


def fill_batches(order: Sequence[int], durations: Sequence[float], max_seconds: float = math.inf,
                 max_items: int | None = None) -> list[list[int]]:
    """Indices in `order`, cut greedily into batches of at most `max_seconds` total audio and
    `max_items` items (an item longer than max_seconds is a batch of its own): the one duration
    batching of training (DurationBucketSampler), evaluation (eval_loader) and the feature cache.
    Pass `order` sorted by duration for batches with little padding."""
    batches: list[list[int]] = []
    cur: list[int] = []
    secs = 0.0
    limit = max_items if max_items is not None else len(order) or 1
    for i in order:
        d = float(durations[i])
        if cur and (secs + d > max_seconds or len(cur) >= limit):
            batches.append(cur)
            cur, secs = [], 0.0
        cur.append(i)
        secs += d
    if cur:
        batches.append(cur)
    return batches


def by_duration(durations: Sequence[float]) -> list[int]:
    """Indices sorted by duration, shortest first (ties keep their order)."""
    return sorted(range(len(durations)), key=lambda i: durations[i])
