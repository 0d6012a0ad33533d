"""Response bodies in OpenAI's audio formats: json | text | verbose_json | srt | vtt.

    body, media_type = render("srt", result)

`verbose_json` carries one segment per decoded piece (a short recording is one segment spanning
it; a long one has a segment per piece it was cut into) with OpenAI's segment fields. Fields the
greedy decoder does not compute (`avg_logprob`, `compression_ratio`, `no_speech_prob`) are 0.0
and `tokens` is empty; `temperature` is always 0.0 (decoding is greedy).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from speechwire.longform import Segment, join_text

FORMATS = ("json", "text", "verbose_json", "srt", "vtt")


@dataclass
class Result:
    """Everything a response needs about one decoded recording."""

    task: str  # "transcribe" | "translate" (OpenAI's names)
    language: str  # lower-case English name of the output language, e.g. "english", "german"
    duration: float  # seconds of audio received
    segments: list[Segment]

    @property
    def text(self) -> str:
        return join_text(self.segments)


def timestamp(seconds: float, decimal: str) -> str:
    """Seconds -> `HH:MM:SS,mmm` (srt, decimal=",") or `HH:MM:SS.mmm` (vtt, decimal=".")."""
    ms = int(round(max(seconds, 0.0) * 1000))
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{decimal}{ms:03d}"


def _cues(segments: list[Segment], decimal: str, numbered: bool) -> str:
    blocks = []
    for i, seg in enumerate(s for s in segments if s.text.strip()):
        head = f"{i + 1}\n" if numbered else ""
        blocks.append(f"{head}{timestamp(seg.start, decimal)} --> {timestamp(seg.end, decimal)}\n{seg.text.strip()}\n")
    return "\n".join(blocks)


def to_srt(segments: list[Segment]) -> str:
    """SubRip: numbered cues `1\\n00:00:00,000 --> 00:00:04,200\\ntext\\n`, separated by blank lines."""
    return _cues(segments, ",", numbered=True)


def to_vtt(segments: list[Segment]) -> str:
    """WebVTT: the `WEBVTT` header, then cues `00:00:00.000 --> 00:00:04.200\\ntext\\n`."""
    return "WEBVTT\n\n" + _cues(segments, ".", numbered=False)


def verbose(result: Result) -> dict:
    """OpenAI's verbose_json body."""
    segments = [
        {"id": i, "seek": int(round(s.start * 100)), "start": s.start, "end": s.end, "text": s.text.strip(),
         "tokens": [], "temperature": 0.0, "avg_logprob": 0.0, "compression_ratio": 0.0, "no_speech_prob": 0.0}
        for i, s in enumerate(result.segments)
    ]
    return {"task": result.task, "language": result.language, "duration": round(result.duration, 3),
            "text": result.text, "segments": segments, "usage": usage(result)}


def usage(result: Result) -> dict:
    return {"type": "duration", "seconds": int(math.ceil(result.duration))}


def render(response_format: str, result: Result) -> tuple[str, str]:
    """The response body and its media type for `response_format` (one of FORMATS)."""
    if response_format == "json":
        return json.dumps({"text": result.text, "usage": usage(result)}, ensure_ascii=False), "application/json"
    if response_format == "verbose_json":
        return json.dumps(verbose(result), ensure_ascii=False), "application/json"
    if response_format == "text":
        return result.text + "\n", "text/plain; charset=utf-8"
    if response_format == "srt":
        return to_srt(result.segments), "text/plain; charset=utf-8"
    if response_format == "vtt":
        return to_vtt(result.segments), "text/vtt; charset=utf-8"
    raise ValueError(f"response_format={response_format!r}; expected one of {FORMATS}")
