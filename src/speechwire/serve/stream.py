"""Streaming answers: the text a piece has settled on so far, and OpenAI's server-sent events.

    settled = SettledText(model)            # per server: the model's decoding rules
    settled(ids)                            # -> "the cat sat"   (never text a later step can take back)
    sse({"type": "transcript.text.delta", "delta": " on"})   # -> b'data: {...}\\n\\n'

While a piece decodes, its answer so far (`model.answer_text(ids)`) is not yet a prefix of its
final answer: the last word may still grow, a greedy loop's extra copy is cut when it completes
(decoding.loop_cut), a chat preamble ("Sure, here it is:") is removed once its colon arrives, and
a closing quote marker is dropped at the very end (decoding.clean_answer). `SettledText` holds all
of those back, so the deltas a client receives concatenate to exactly the final text.

Event shapes are OpenAI's (the `openai` client's `TranscriptionTextDeltaEvent` and
`TranscriptionTextDoneEvent`): `{"type": "transcript.text.delta", "delta": ...}` per settled
piece of text, then `{"type": "transcript.text.done", "text": ..., "usage": ...}`; a failure after
the stream started is `{"type": "error", "error": {"message", "type", "param", "code"}}`, which the
`openai` client raises as an APIError.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator
from contextlib import suppress
from functools import partial

from speechwire.decoding import MAX_LOOP_PERIOD
from speechwire.longform import join_texts

log = logging.getLogger(__name__)

# Words a chat preamble may start with (decoding._PREAMBLE): text starting so is held back until its
# first colon or PREAMBLE_REACH characters, past which the preamble pattern can no longer match.
_MAY_BE_PREAMBLE = re.compile(r"\s*(?:sure|certainly|of|okay|ok|alright|yes|here|the)\b", re.IGNORECASE)
PREAMBLE_REACH = 120  # characters: longer than the longest preamble decoding._PREAMBLE matches (~90)


def loop_safe_length(tokens: list[int], max_repeats: int, max_period: int = MAX_LOOP_PERIOD) -> int:
    """How many leading `tokens` no later `decoding.loop_cut` can remove.

    loop_cut removes the copy of a unit that completes a run of `max_repeats + 1` copies. A token at
    position c or later is at risk when `tokens[:c]` ends in `max_repeats` copies of a unit of p
    tokens and `tokens[c:]` is the start of one more copy (not yet complete, else it was cut).

    Args:
        tokens: an answer so far, as the decoding loop left it after its last step.
        max_repeats: copies allowed (``eval.max_repeats``; 0: no cut, everything is safe).

    Returns:
        A length n' <= len(tokens): `tokens[:n']` is a prefix of the final answer as far as loop
        cuts go.
    """
    n = len(tokens)
    if max_repeats <= 0:
        return n
    safe = n
    for p in range(1, max_period + 1):
        if max_repeats * p > n:
            break
        for c in range(max(n - p + 1, max_repeats * p), min(n, safe)):
            unit = tokens[c - p: c]
            if tokens[c:n] != unit[: n - c]:
                continue
            if all(tokens[c - k * p - p: c - k * p] == unit for k in range(1, max_repeats)):
                safe = c
                break
    return safe


class SettledText:
    """`model.answer_text` of an answer so far, cut to what no later decoding step can change.

    Args:
        model: a SpeechLLM (its `answer_text`, `prompter.decode`, `cfg.eval.max_repeats`). Calls
            run on the batcher's thread, the only one that touches the model.
    """

    def __init__(self, model) -> None:
        self.model = model
        self.max_repeats = int(model.cfg.eval.max_repeats)

    def __call__(self, ids: list[int]) -> str:
        ids = ids[: loop_safe_length(ids, self.max_repeats)]
        raw = self.model.prompter.decode(ids)
        if _MAY_BE_PREAMBLE.match(raw) and ":" not in raw and len(raw) < PREAMBLE_REACH:
            return ""
        text = self.model.answer_text(ids)
        # the last word may still grow (a character whose bytes have not all arrived is part of it)
        last_space = next((i for i in range(len(text) - 1, -1, -1) if text[i].isspace()), -1)
        return text[:last_space].rstrip() if last_space > 0 else ""


def sse(event: dict) -> bytes:
    """One server-sent event: a `data:` line holding the JSON, then a blank line."""
    return b"data: " + json.dumps(event, ensure_ascii=False).encode() + b"\n\n"


def delta_event(text: str) -> bytes:
    return sse({"type": "transcript.text.delta", "delta": text})


def done_event(text: str, seconds: int) -> bytes:
    """The closing event; usage is the audio's length (OpenAI's "duration" usage, as the json format has)."""
    return sse({"type": "transcript.text.done", "text": text, "usage": {"type": "duration", "seconds": seconds}})


def error_event(message: str, type: str = "server_error", param: str | None = None, code: str | None = None) -> bytes:
    return sse({"type": "error", "error": {"message": message, "type": type, "param": param, "code": code}})


# --- one streamed request ----------------------------------------------------------------------------

class StreamedRequest:
    """The pieces of one recording queued on the batcher, and the events their decoding yields.

        request = StreamedRequest(batcher, settled, pieces, "asr", "en", None, seconds=4, open_streams=set())
        return StreamingResponse(request.events(), media_type="text/event-stream")  # QueueFull before

    Pieces decode in any order and batch; their settled text streams in recording order (a later
    piece's text is held until the earlier ones are done). When the client goes away the response
    stops iterating `events()`: its queued pieces are cancelled and its pieces in a running batch
    stop decoding at the next step (their `on_tokens` answers False).
    """

    def __init__(self, batcher, settled: SettledText, pieces: list, task: str, src_lang: str,
                 tgt_lang: str | None, seconds: int, open_streams: set) -> None:
        self.loop = asyncio.get_running_loop()
        self.updates: asyncio.Queue[tuple[int, str, object]] = asyncio.Queue()
        self.settled, self.seconds, self.gone = settled, seconds, False
        self.futures = []
        self.open_streams = open_streams  # the server's streams in flight (GET /health counts them)
        open_streams.add(self)
        try:
            for i, audio in enumerate(pieces):
                future = batcher.submit(audio, task, src_lang, tgt_lang, on_tokens=partial(self._on_tokens, i))
                future.add_done_callback(partial(self._post, i, "done"))
                self.futures.append(future)
        except BaseException:
            self.close()
            raise

    def _post(self, i: int, kind: str, value) -> None:
        """From any thread: hand an update to the request's event loop."""
        with suppress(RuntimeError):  # the loop is closed: the server is shutting down, nobody listens
            self.loop.call_soon_threadsafe(self.updates.put_nowait, (i, kind, value))

    def _on_tokens(self, i: int, ids: list[int]) -> bool:
        """On the batcher's thread, after each decoding step: post piece i's settled text; False stops it."""
        if self.gone:
            return False
        self._post(i, "text", self.settled(ids))
        return True

    def close(self) -> None:
        self.gone = True
        self.open_streams.discard(self)
        for f in self.futures:
            f.cancel()  # no-op for finished or running pieces; drops queued ones

    async def events(self) -> AsyncIterator[bytes]:
        """Delta events as the pieces' text settles, then the done event (or one error event)."""
        finals: dict[int, str] = {}
        partials: dict[int, str] = {}
        sent = ""
        try:
            while len(finals) < len(self.futures):
                i, kind, value = await self.updates.get()
                if kind == "text":
                    partials[i] = value
                else:
                    failure = _failure(value)
                    if failure is not None:
                        yield failure
                        return
                    finals[i] = value.result().strip()
                shown = self._shown(finals, partials)
                if len(shown) > len(sent) and shown.startswith(sent):
                    yield delta_event(shown[len(sent):])
                    sent = shown
            text = join_texts(finals[i] for i in range(len(self.futures)))  # as the JSON answer joins its segments
            if text.startswith(sent):
                if len(text) > len(sent):
                    yield delta_event(text[len(sent):])
            else:  # SettledText let through text the end took back: a bug, but the done text is right
                log.warning("streamed text %r is not a prefix of the final text %r", sent[:80], text[:80])
            yield done_event(text, self.seconds)
        finally:
            self.close()

    def _shown(self, finals: dict[int, str], partials: dict[int, str]) -> str:
        """The text settled so far, in recording order: finished pieces, then the first unfinished one's."""
        parts = []
        for i in range(len(self.futures)):
            part = finals.get(i, partials.get(i, ""))
            if part:
                parts.append(part)
            if i not in finals:
                break
        return " ".join(parts)


def _failure(future) -> bytes | None:
    """The error event for a piece that failed (or was cancelled), None for a piece with its text."""
    if future.cancelled():
        return error_event("the request was cancelled", code="cancelled")
    exc = future.exception()
    if exc is None:
        return None
    if isinstance(exc, ValueError):  # the model refused the audio (as the JSON path's 400 invalid_audio)
        return error_event(str(exc).splitlines()[0], "invalid_request_error", "file", "invalid_audio")
    return error_event(f"internal error ({type(exc).__name__}); the server log has the details",
                       "server_error", None, "internal_error")
