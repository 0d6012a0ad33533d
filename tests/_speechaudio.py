"""Test audio for long-form cutting and serving: espeak-ng speech separated by known pauses."""

from __future__ import annotations

import shutil
import subprocess
from functools import lru_cache

import numpy as np
import pytest
import soundfile as sf
import soxr

SR = 16000
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Please call me back when you get this message.",
    "It is going to rain again tomorrow afternoon.",
    "We need three more chairs for the meeting room.",
]


@lru_cache(maxsize=None)
def espeak(text: str) -> np.ndarray:
    """`text` spoken by espeak-ng at 16 kHz (deterministic); skips the test when it is missing."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        pytest.skip("espeak-ng is not installed (scripts/install_system_deps.sh installs it)")
    out = subprocess.run([exe, "--stdout", "-v", "en-us", "-s", "160", text], check=True, capture_output=True).stdout
    import io

    wav, sr = sf.read(io.BytesIO(out), dtype="float32")
    wav = soxr.resample(wav, sr, SR).astype(np.float32)
    loud = np.flatnonzero(np.abs(wav) > 0.01)
    return wav[loud[0]: loud[-1] + 1]  # trimmed: spans below are the speech itself


def speech_with_pauses(pauses: list[float], lead: float = 0.5) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Sentences separated by `pauses` seconds of near-silence (faint noise).

    Returns:
        the waveform (S,) at 16 kHz and each sentence's (start, end) in seconds.
    """
    rng = np.random.default_rng(0)
    parts, spans, t = [np.zeros(int(lead * SR), np.float32)], [], lead
    for i, pause in enumerate([*pauses, lead]):
        x = espeak(SENTENCES[i % len(SENTENCES)])
        spans.append((t, t + len(x) / SR))
        parts += [x, np.zeros(int(pause * SR), np.float32)]
        t += len(x) / SR + pause
    wav = np.concatenate(parts)
    return (wav + 1e-4 * rng.standard_normal(len(wav))).astype(np.float32), spans
