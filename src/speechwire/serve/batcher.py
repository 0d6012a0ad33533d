"""Dynamic batching: one worker thread owns the model; requests queue pieces, it decodes them in batches.

    batcher = Batcher(model, max_batch=16, max_wait_ms=10).start()
    text = batcher.submit(wav, task="asr").result()     # from any thread; a concurrent.futures.Future
    batcher.stop()

The worker takes the first waiting piece, then gathers more until `max_batch` pieces or until
`max_wait_ms` has passed since it took the first, and decodes them with one batched
`SpeechLLM.generate` call (left-padded greedy decoding: each item's text equals its one-by-one
text). Items of one batch may differ in task and languages. While a batch decodes, new pieces
queue up and form the next batch, so under load batches fill without waiting. `max_batch=1` is
one-by-one decoding. Only this thread runs the model; request handlers never touch it.

A piece submitted with `on_tokens` (a streaming request) is told its ids after every decoding
step of its batch (`SpeechLLM.generate(on_step=...)`), on this thread; when it answers False its
client has gone and the piece stops decoding, freeing its place in the batch.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from speechwire.data.batch import Batch

log = logging.getLogger(__name__)


class QueueFull(RuntimeError):
    """More pieces are waiting than the batcher accepts; the client should retry later."""


@dataclass
class Job:
    audio: np.ndarray  # (S,) float32 at 16 kHz, at least the encoder's minimum length
    task: str  # "asr" | "st"
    src_lang: str
    tgt_lang: str | None
    on_tokens: Callable[[list[int]], bool] | None = None  # streaming: ids so far -> keep decoding?
    future: Future = field(default_factory=Future)


class Batcher:
    """Gathers queued pieces into batched `generate` calls on one worker thread.

    Args:
        model: a speechwire.model.SpeechLLM (eval mode, on its device).
        max_batch: most pieces per generate call (1: no batching).
        max_wait_ms: longest a piece waits for others to join its batch.
        max_queue: most pieces waiting; `submit` raises QueueFull beyond it.
    """

    def __init__(self, model, max_batch: int = 16, max_wait_ms: float = 10.0, max_queue: int = 1024) -> None:
        if max_batch < 1 or max_wait_ms < 0 or max_queue < 1:
            raise ValueError(f"max_batch={max_batch} must be >= 1, max_wait_ms={max_wait_ms} >= 0, "
                             f"max_queue={max_queue} >= 1")
        self.model = model
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self.batch_sizes: Counter[int] = Counter()  # batch size -> number of generate calls

    # --- public ------------------------------------------------------------------------------

    def start(self) -> "Batcher":
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="speechwire-batcher", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the queued pieces, then end the worker thread."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout)
            self._thread = None

    def submit(self, audio: np.ndarray, task: str = "asr", src_lang: str = "en", tgt_lang: str | None = None,
               on_tokens: Callable[[list[int]], bool] | None = None) -> Future:
        """Queue one piece; the returned future resolves to its text (or the decoding error).

        `on_tokens(ids)`, if given, is called on the worker thread after each decoding step with the
        piece's ids so far (a copy); returning False stops decoding it (its client went away).
        """
        if self._thread is None:
            raise RuntimeError("the batcher is not running; call start() first")
        if self._queue.qsize() >= self.max_queue:
            raise QueueFull(f"{self._queue.qsize()} pieces are already waiting (max_queue={self.max_queue})")
        job = Job(audio, task, src_lang, tgt_lang, on_tokens)
        self._queue.put(job)
        return job.future

    @property
    def waiting(self) -> int:
        return self._queue.qsize()

    # --- worker ------------------------------------------------------------------------------

    def _gather(self, first: Job) -> tuple[list[Job], bool]:
        """`first` plus whatever arrives within max_wait (up to max_batch); True when told to stop."""
        jobs, deadline = [first], time.monotonic() + self.max_wait
        while len(jobs) < self.max_batch:
            timeout = deadline - time.monotonic()
            try:
                job = self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                return jobs, True
            jobs.append(job)
        return jobs, False

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                break
            jobs, stopping = self._gather(first)
            jobs = [j for j in jobs if j.future.set_running_or_notify_cancel()]  # drop cancelled ones
            if jobs:
                self._decode(jobs)

    def _generate(self, jobs: list[Job]) -> list[str]:
        batch = Batch.from_waveforms([j.audio for j in jobs], [j.task for j in jobs], [j.src_lang for j in jobs],
                                     [j.tgt_lang for j in jobs])
        self.batch_sizes[len(jobs)] += 1
        if any(j.on_tokens is not None for j in jobs):
            return self.model.generate(batch, on_step=_step_hook(jobs))
        return self.model.generate(batch)

    def _decode(self, jobs: list[Job]) -> None:
        try:
            texts = self._generate(jobs)
        except Exception as e:  # noqa: BLE001 - one bad item must not fail the others: retry alone
            if len(jobs) == 1:
                log.exception("decoding failed")
                jobs[0].future.set_exception(e)
                return
            for j in jobs:
                self._decode([j])
            return
        for j, t in zip(jobs, texts):
            j.future.set_result(t)


def _step_hook(jobs: list[Job]) -> Callable[[list[list[int]]], list[int]]:
    """generate's on_step for a batch of `jobs`: tell each streaming job its new ids; stop those it says to."""
    seen = [0] * len(jobs)

    def on_step(answers: list[list[int]]) -> list[int]:
        stop = []
        for b, job in enumerate(jobs):
            if job.on_tokens is None or len(answers[b]) == seen[b]:
                continue
            seen[b] = len(answers[b])
            try:
                if job.on_tokens(list(answers[b])) is False:
                    stop.append(b)
            except Exception:  # noqa: BLE001 - a listener's bug must not fail the batch
                log.exception("a streaming listener failed; its piece decodes on without it")
                job.on_tokens = None
        return stop

    return on_step
