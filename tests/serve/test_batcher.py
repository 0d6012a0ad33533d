"""serve/batcher.py alone, on a fake model: pieces gathered into one batch, a failed batch retried
piece by piece (one bad piece fails only itself), and the queue limit."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from speechwire.serve.batcher import Batcher, QueueFull

BAD = 999  # a piece of this many samples breaks the fake model


class FakeModel:
    """generate(batch) -> "n=<samples>" per item; raises for a batch holding a BAD piece. Each call's
    batch size is logged; with `hold` cleared, calls wait until it is set."""

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.hold = threading.Event()
        self.hold.set()
        self.entered = threading.Event()

    def generate(self, batch) -> list[str]:
        self.entered.set()
        assert self.hold.wait(30)
        lengths = batch.audio_lengths.tolist()
        self.calls.append(len(lengths))
        if BAD in lengths:
            raise RuntimeError("this piece breaks the model")
        return [f"n={n}" for n in lengths]


def piece(n: int) -> np.ndarray:
    return np.full(n, 0.1, np.float32)


def test_pieces_are_batched_and_a_failed_batch_is_retried_one_by_one():
    model = FakeModel()
    batcher = Batcher(model, max_batch=3, max_wait_ms=5000).start()  # waits until 3 pieces are in
    try:
        futures = [batcher.submit(piece(n)) for n in (400, BAD, 600)]
        with pytest.raises(RuntimeError, match="breaks the model"):
            futures[1].result(30)
        assert futures[0].result(30) == "n=400" and futures[2].result(30) == "n=600"  # the others still answered
        assert model.calls == [3, 1, 1, 1]  # the batch, then each piece alone
        assert batcher.batch_sizes == {3: 1, 1: 3}
        good = [batcher.submit(piece(n)) for n in (500, 700, 800)]  # the worker lives on
        assert [f.result(30) for f in good] == ["n=500", "n=700", "n=800"] and model.calls[-1] == 3
    finally:
        batcher.stop()


def test_a_full_queue_refuses_the_next_piece():
    model = FakeModel()
    model.hold.clear()
    batcher = Batcher(model, max_batch=1, max_wait_ms=0, max_queue=2).start()
    try:
        first = batcher.submit(piece(300))
        assert model.entered.wait(30)  # the worker holds the first piece
        queued = [batcher.submit(piece(n)) for n in (400, 500)]
        with pytest.raises(QueueFull, match=r"2 pieces are already waiting \(max_queue=2\)"):
            batcher.submit(piece(600))
        model.hold.set()
        assert [f.result(30) for f in (first, *queued)] == ["n=300", "n=400", "n=500"]
    finally:
        model.hold.set()
        batcher.stop()
