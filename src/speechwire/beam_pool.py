"""The alignment head's beam searches of a batch, in parallel processes (``align.beam_workers``).

`decoding.ctc_nbest` is Python: one item after another on one core, whatever the batch, while
the encoder and the LLM use every core (and on a GPU take a fraction of it). The items' searches
are independent, so a pool of worker processes, each holding its own copy of the head's n-gram LM
and lexicon, runs them side by side and answers exactly what the calling process would (the same
Python arithmetic). On 2 CPU cores the searches of a batch of 16 run 1.7x faster and
`speechwire evaluate` 9 % (docs/serving.md); on a GPU server they are a larger share of a batch.

Workers are started by the ``forkserver`` method (``spawn`` where there is none): forking a
process whose torch threads are running is not safe. Like every such pool this re-imports the
script that started it in each worker, so a script must keep its work under
``if __name__ == "__main__":`` (console commands such as ``speechwire serve`` do).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import numpy as np

log = logging.getLogger(__name__)

NBest = list[tuple[list[int], float]]

UNGUARDED = ("align.beam_workers > 1 starts worker processes, which re-import the script that started them: "
             "a script that decodes when imported must keep that under `if __name__ == \"__main__\":` "
             "(or set align.beam_workers=1)")

# align.beam_workers=0 stops here: a worker's memos grow to ~0.1 GB, and a batch has at most 16 items
MOST_AUTO_WORKERS = 8

# one worker process's search and its copy of the head's LM and lexicon (set by _start)
_worker: dict = {}


def available_cores() -> int:
    """CPU cores this process may run on (its affinity, e.g. a cluster job's share), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def pool_size(setting: int) -> int:
    """Worker processes under ``align.beam_workers`` = `setting` (0: one per core, at most
    `MOST_AUTO_WORKERS`; 1: none, the calling process searches)."""
    return min(available_cores(), MOST_AUTO_WORKERS) if setting == 0 else setting


def _start(search: Callable, lm, words) -> None:
    _worker.update(search=search, lm=lm, words=words)


def _ready() -> None:
    pass


def _run(log_probs: np.ndarray, options: dict, word_weight: float, word_oov: float) -> NBest:
    words = _worker["words"]
    if words is not None:
        words.weight, words.oov = word_weight, word_oov
    return _worker["search"](log_probs, lm=_worker["lm"], words=words, **options)


def _context() -> multiprocessing.context.BaseContext:
    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    context = multiprocessing.get_context(method)
    if method == "forkserver":
        context.set_forkserver_preload([__name__])  # the workers fork from a server that imported us once
    return context


class BeamPool:
    """Worker processes that run `search` (`decoding.ctc_nbest` or `label_nbest`) with the head's
    `lm` and `words` (a `lexicon.WordScorer` or None), which each worker receives once. The calling
    process only hands out the items and waits: searching there too starved the threads that feed
    the workers (one GIL), and two workers on two cores were slower than one process.

    Args:
        search, lm, words: what every item's search is called with.
        workers: worker processes (started when first needed, kept until `close`).
    """

    def __init__(self, search: Callable, lm, words, workers: int) -> None:
        self.search, self.lm, self.words, self.workers = search, lm, words, workers
        self._pool = ProcessPoolExecutor(workers, mp_context=_context(), initializer=_start,
                                         initargs=(search, lm, words))

    def serves(self, search: Callable, lm, words, workers: int) -> bool:
        """Whether this pool's workers hold these objects (a model whose head changed needs a new pool)."""
        return (search, lm, words, workers) == (self.search, self.lm, self.words, self.workers)

    def nbest(self, items: Sequence[np.ndarray], **options) -> list[NBest]:
        """`search(item, lm=..., words=..., **options)` of every item, in order, in the workers.

        Raises:
            BrokenProcessPool: a worker died (killed for memory, say); the pool cannot be reused.
        """
        weight, oov = (self.words.weight, self.words.oov) if self.words is not None else (0.0, 0.0)
        # the longest first, so that no process starts a long search when the others are done
        order = sorted(range(len(items)), key=lambda i: -len(items[i]))
        futures = {i: self._pool.submit(_run, items[i], options, weight, oov) for i in order}
        return [futures[i].result() for i in range(len(items))]

    def start(self) -> None:
        """Start every worker now, in the background (they take seconds to load the LM and lexicon)."""
        for _ in range(self.workers):
            self._pool.submit(_ready)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _not_bootstrapping(setting: int) -> None:
    """Stop a worker that, re-importing the script that started its pool, is asked to decode: the
    script decodes when imported. Its pool then breaks and the script's own process searches."""
    if pool_size(setting) > 1 and getattr(multiprocessing.current_process(), "_inheriting", False):
        raise RuntimeError(UNGUARDED)


class BatchSearch:
    """A model's beam searches of its batches: in a `BeamPool` when ``align.beam_workers`` allows
    more than one process and a batch has more than one item, else in this process.

    The pool is made when first needed and reused while the search, LM, lexicon and setting stay
    the same. A pool that cannot start or loses a worker is dropped with one warning and the
    searches run here from then on: a batch is never lost to the pool."""

    def __init__(self) -> None:
        self._pool: BeamPool | None = None
        self._failed = False

    def __call__(self, items: Sequence[np.ndarray], search: Callable, lm, words, setting: int,
                 **options) -> list[NBest]:
        """`search(item, lm=lm, words=words, **options)` of every item, in order."""
        _not_bootstrapping(setting)
        if len(items) > 1:
            try:
                pool = self._ready_pool(search, lm, words, setting)
                if pool is not None:
                    return pool.nbest(items, **options)
            except (BrokenProcessPool, OSError, RuntimeError) as e:
                self._give_up(e)
        return [search(item, lm=lm, words=words, **options) for item in items]

    def start(self, search: Callable, lm, words, setting: int) -> None:
        """Start the workers now, in the background, so that the first batch does not wait for them
        (a server: at load)."""
        _not_bootstrapping(setting)
        try:
            pool = self._ready_pool(search, lm, words, setting)
            if pool is not None:
                pool.start()
        except (OSError, RuntimeError) as e:
            self._give_up(e)

    def _ready_pool(self, search: Callable, lm, words, setting: int) -> BeamPool | None:
        """The pool for these objects and this setting (made if need be), or None: no pool wanted."""
        workers = pool_size(setting)
        if self._pool is not None and not self._pool.serves(search, lm, words, workers):
            self.close()
        if workers < 2 or self._failed:
            return None
        if self._pool is None:
            self._pool = BeamPool(search, lm, words, workers)
        return self._pool

    def _give_up(self, error: Exception) -> None:
        log.warning("beam search processes failed (%s: %s); searching in this process from now on. %s",
                    type(error).__name__, error, UNGUARDED)
        self.close()
        self._failed = True

    def close(self) -> None:
        """Stop the workers (a later batch starts new ones)."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None
