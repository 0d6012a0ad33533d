"""Decoding policy: when a greedy answer stops, and what of it the user sees.

The model computes next-token scores; what to do with them lives here (as in whisper's
``decoding.py``):

- `loop_cut`: a greedy loop, one token ("t t t t") or a phrase (a clause six times over),
  ends the answer after `max_repeats` copies;
- `clean_answer`: the text without what the prompt made the LLM add: the quote marks the
  speech sits between (``llm.marker_init: '"'``) and a chat preamble ("Sure, here it is:").
"""

from __future__ import annotations

import re

MAX_LOOP_PERIOD = 24  # longest repeated phrase looked for, in tokens (a clause)

_PREAMBLE = re.compile(
    r"""^\s*(?:(?:sure|certainly|of\s+course|okay|ok|alright|yes)\b[\s,!.]*)?
        (?:here\b[^:\n"]{0,40}:|the\s+(?:text|transcript(?:ion)?|translation)\s+(?:is|reads)\s*:)\s*""",
    re.IGNORECASE | re.VERBOSE,
)
_QUOTES = {'"': '"', "'": "'", "“": "”", "«": "»", "„": "“"}


def loop_cut(tokens: list[int], max_repeats: int, max_period: int = MAX_LOOP_PERIOD) -> int | None:
    """Where to cut a greedy loop at the end of `tokens`, or None when there is none.

    A loop is a unit of p tokens (1 <= p <= max_period) repeated more than `max_repeats` times in a
    row at the end; the answer keeps `max_repeats` copies. Checked after every step, so the first
    extra copy is caught as it completes.

    Args:
        tokens: the answer so far.
        max_repeats: copies allowed (0: never cut).

    Returns:
        The length to cut `tokens` to, or None.
    """
    if max_repeats <= 0:
        return None
    n = len(tokens)
    for p in range(1, max_period + 1):
        span = (max_repeats + 1) * p
        if span > n:
            break
        unit = tokens[n - p:]
        if all(tokens[n - k * p - p: n - k * p] == unit for k in range(1, max_repeats + 1)):
            return n - p
    return None


def clean_answer(text: str, marker: str | None = None) -> str:
    """The answer as a user should see it.

    Args:
        text: the decoded answer.
        marker: the character the speech was quoted with (``llm.marker_init``), if any: a pair of
            them around the whole answer, or one left at either end, is removed.

    Examples:
        ``'"power of close."'`` -> ``'power of close.'``; ``'Sure, here it is: "Hello."'`` -> ``'Hello.'``;
        ``'Sure, here it is:'`` -> ``''``; ``'Okay.'`` stays (it may be what was said).
    """
    text = _PREAMBLE.sub("", text.strip(), count=1)  # a preamble alone ("Sure, here it is:") leaves ""
    close = _QUOTES.get(marker or "")
    if close is not None:
        opened = text.startswith(marker)
        text = text[len(marker):] if opened else text
        for tail in (close, close + ".", close + "!", close + "?"):
            # an end quote goes with the opening one, or is the odd one out: 'He said "hi"' keeps its pair
            if text.endswith(tail) and (opened or text.count(close) % 2 == 1):
                text = text[: -len(tail)] + tail[len(close):]
                break
    return text.strip()
