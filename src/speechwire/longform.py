"""Long-form audio: cut recordings longer than the encoder's limit into pieces at speech pauses.

    pieces = split_recording(wav, max_seconds=30.0)     # [Piece(start, end), ...] in samples
    segments = transcribe_long(model, wav, task="asr")  # decode the pieces in bounded batches

A recording no longer than `max_seconds` is one piece, untouched. A longer one is cut with a real
voice-activity detector (VAD): Silero VAD (the `silero-vad` package ships its model) finds the
speech regions, consecutive regions are grouped into pieces of at most `max_seconds`, and each
piece spans its speech plus a little of the pause around it; stretches without speech are not
decoded (a long recording with no speech at all gives no pieces). Without `silero-vad` (or with
`method="energy"`) the recording is cut at the quietest frame near each limit
(`audio.split_long`); the pieces then tile the whole recording.

`skip_silent=True` (what `speechwire transcribe` and `serve` do; `--decode-silence` turns it off)
applies the same rule to a short recording: one in which the VAD hears no speech gives no pieces
(empty text) instead of what the model makes of silence or noise ("T.", a babble of letters).
`has_speech` stops at the first speech it hears, so a recording that starts with speech costs a
few tens of milliseconds of VAD.

Memory: the waveform is held at 16 kHz mono (3.8 MB per minute); the model sees at most
`batch_size` pieces at once, so a 10-minute recording costs what a batch of 30 s clips costs.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from itertools import accumulate

import numpy as np

from speechwire.audio import SAMPLE_RATE, seconds_to_samples, split_long

METHODS = ("auto", "silero", "energy")
SPEECH_PAD_SECONDS = 0.2  # silence kept either side of each speech region (silero's speech_pad_ms)
MIN_SILENCE_SECONDS = 0.3  # shorter pauses do not end a speech region
# has_speech: silero's own rule for a speech region (get_speech_timestamps, as speech_regions calls
# it): a window scoring >= SPEECH_THRESHOLD starts one; it ends where windows score below
# SPEECH_THRESHOLD - 0.15 for MIN_SILENCE_SECONDS; it counts if it lasted over MIN_SPEECH_SECONDS.
# Applied to the recording padded to whole windows (the windows the VAD scores): a word cut off by
# the end of the recording counts to the end of its window (a real test prompt, "l", needs it)
VAD_WINDOW = 512  # samples at 16 kHz that silero scores at a time
SPEECH_THRESHOLD = 0.5
MIN_SPEECH_SECONDS = 0.25


@dataclass(frozen=True)
class Piece:
    """A slice `[start, end)` of a recording, in samples at 16 kHz."""

    start: int
    end: int

    @property
    def start_s(self) -> float:
        return self.start / SAMPLE_RATE

    @property
    def end_s(self) -> float:
        return self.end / SAMPLE_RATE


@dataclass(frozen=True)
class Segment:
    """Decoded text of one piece, with its time span in seconds."""

    start: float
    end: float
    text: str


def join_text(segments: list[Segment]) -> str:
    """The whole recording's text: the pieces' texts joined by single spaces (empty ones skipped)."""
    return join_texts(s.text for s in segments)


def join_texts(texts: Iterable[str]) -> str:
    """Pieces' texts, in recording order, joined as `join_text` joins its segments' texts."""
    return " ".join(t.strip() for t in texts if t.strip())


# --- Silero VAD -----------------------------------------------------------------------------------

_VAD_LOCK = threading.Lock()  # the model keeps recurrent state: one recording at a time


@lru_cache(maxsize=1)
def load_vad():
    """The Silero VAD model (TorchScript, shipped in the `silero-vad` wheel), or None if not installed.

    Importing `silero_vad` calls `torch.set_num_threads(1)`; the caller's setting is restored.
    """
    import torch

    threads = torch.get_num_threads()
    try:
        from silero_vad import load_silero_vad
    except ImportError:
        return None
    finally:
        torch.set_num_threads(threads)
    return load_silero_vad()


def speech_regions(wav: np.ndarray, max_seconds: float, sample_rate: int = SAMPLE_RATE) -> list[Piece]:
    """Speech regions found by Silero VAD, each padded by SPEECH_PAD_SECONDS and at most `max_seconds`.

    Args:
        wav: (S,) mono float32 waveform at 16 kHz.
        max_seconds: longest region; silero cuts longer speech at its longest inner pause.

    Raises:
        RuntimeError: silero-vad is not installed.
    """
    import torch
    from silero_vad import get_speech_timestamps

    model = load_vad()
    if model is None:
        raise RuntimeError("silero-vad is not installed; `pip install silero-vad` or use method='energy'")
    with _VAD_LOCK, torch.no_grad():
        stamps = get_speech_timestamps(
            torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32)), model, sampling_rate=sample_rate,
            max_speech_duration_s=max(max_seconds - 2 * SPEECH_PAD_SECONDS - 0.1, 1.0),
            min_silence_duration_ms=int(MIN_SILENCE_SECONDS * 1000), speech_pad_ms=int(SPEECH_PAD_SECONDS * 1000),
        )
    return [Piece(int(s["start"]), int(s["end"])) for s in stamps]


def has_speech(wav: np.ndarray, sample_rate: int = SAMPLE_RATE) -> bool:
    """Whether Silero VAD hears speech anywhere in `wav` (see VAD_WINDOW); it stops at the first.

    Raises:
        RuntimeError: silero-vad is not installed.
    """
    import torch

    model = load_vad()
    if model is None:
        raise RuntimeError("silero-vad is not installed; `pip install silero-vad` or use method='energy'")
    x = torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32))
    min_speech, min_silence = MIN_SPEECH_SECONDS * sample_rate, MIN_SILENCE_SECONDS * sample_rate
    start = silent_since = None  # the open region's first sample; where its current pause began
    with _VAD_LOCK, torch.no_grad():
        model.reset_states()
        for at in range(0, len(x), VAD_WINDOW):
            window = x[at: at + VAD_WINDOW]
            if len(window) < VAD_WINDOW:
                window = torch.nn.functional.pad(window, (0, VAD_WINDOW - len(window)))
            p = model(window, sample_rate).item()
            if p >= SPEECH_THRESHOLD:
                start = at if start is None else start
                silent_since = None
            elif start is not None and p < SPEECH_THRESHOLD - 0.15:
                silent_since = at if silent_since is None else silent_since
                if at - silent_since >= min_silence:  # the pause ends the region
                    if silent_since - start > min_speech:
                        return True
                    start = silent_since = None
            if start is not None and silent_since is None and at + VAD_WINDOW - start > min_speech:
                return True  # a region already long enough, still going: it ends no earlier
    return start is not None and -(-len(x) // VAD_WINDOW) * VAD_WINDOW - start > min_speech  # open: to the end


# --- cutting --------------------------------------------------------------------------------------

def _energy_pieces(wav: np.ndarray, start: int, end: int, max_seconds: float) -> list[Piece]:
    """Tile `wav[start:end]` with pieces cut at the quietest frames (audio.split_long)."""
    bounds = list(accumulate((len(part) for part in split_long(wav[start:end], max_seconds)), initial=start))
    return [Piece(a, b) for a, b in zip(bounds, bounds[1:])]


def group_regions(regions: list[Piece], limit: int) -> list[Piece]:
    """Merge consecutive speech regions into pieces spanning at most `limit` samples.

    A region that is longer than `limit` on its own is returned as is (the caller splits it).
    """
    pieces: list[Piece] = []
    for r in regions:
        if pieces and r.end - pieces[-1].start <= limit:
            pieces[-1] = Piece(pieces[-1].start, r.end)
        else:
            pieces.append(r)
    return pieces


def split_recording(wav: np.ndarray, max_seconds: float, method: str = "auto",
                    sample_rate: int = SAMPLE_RATE, skip_silent: bool = False) -> list[Piece]:
    """Cut a recording into pieces the encoder takes (each at most `max_seconds`).

    Args:
        wav: (S,) mono float32 waveform at 16 kHz.
        max_seconds: the encoder's limit (30 s for Whisper).
        method: "auto" (Silero VAD when installed, else energy), "silero" or "energy".
        skip_silent: a short recording in which the VAD hears no speech gives no pieces, as a long
            one does (never with the energy method, which has no VAD).

    Returns:
        pieces in time order, not overlapping; `[Piece(0, S)]` when the recording is short enough
        (and, with skip_silent, speech is heard in it).
    """
    if method not in METHODS:
        raise ValueError(f"vad method {method!r} is unknown; choose one of {METHODS}")
    limit = seconds_to_samples(max_seconds, sample_rate)

    def vad() -> bool:
        return method == "silero" or (method == "auto" and load_vad() is not None)

    if len(wav) <= limit:
        return [] if skip_silent and vad() and not has_speech(wav, sample_rate) else [Piece(0, len(wav))]
    if not vad():
        return _energy_pieces(wav, 0, len(wav), max_seconds)
    pieces = []
    for p in group_regions(speech_regions(wav, max_seconds, sample_rate), limit):
        # silero bounds its regions; its padding can still push one a little over the limit
        pieces += [p] if p.end - p.start <= limit else _energy_pieces(wav, p.start, p.end, max_seconds)
    return pieces


# --- decoding (the command line's path; the server batches pieces across requests) ----------------

def piece_audio(wav: np.ndarray, piece: Piece, min_samples: int) -> np.ndarray:
    """The piece's samples, zero-padded to the encoder's shortest input when shorter."""
    x = wav[piece.start: piece.end]
    if len(x) < min_samples:
        x = np.pad(x, (0, min_samples - len(x)))
    return x


def encoder_limit_seconds(model) -> float:
    """Longest input the model's encoder takes, in seconds (config limit, or the encoder's own)."""
    limit = float(model.cfg.encoder.max_seconds)
    max_samples = getattr(model.encoder, "max_samples", None)
    return min(limit, max_samples / SAMPLE_RATE) if max_samples else limit


def transcribe_long(model, wav: np.ndarray, task: str = "asr", src_lang: str = "en",
                    tgt_lang: str | None = None, batch_size: int = 8, method: str = "auto",
                    skip_silent: bool = False) -> list[Segment]:
    """Cut `wav` at pauses and decode the pieces, at most `batch_size` at a time.

    Args:
        model: a speechwire.model.SpeechLLM.
        wav: (S,) mono float32 waveform at 16 kHz, any length.
        task, src_lang, tgt_lang: as SpeechLLM.generate.
        batch_size: pieces per generate call (bounds memory for any recording length).
        method: how long recordings are cut (see split_recording).
        skip_silent: a short recording without speech gives no segment (see split_recording).

    Returns:
        one Segment per decoded piece, in time order.
    """
    pieces = split_recording(wav, encoder_limit_seconds(model), method, skip_silent=skip_silent)
    min_samples = int(getattr(model.encoder, "min_samples", 1))
    segments = []
    for i in range(0, len(pieces), max(1, batch_size)):
        chunk = pieces[i: i + batch_size]
        texts = model.generate([piece_audio(wav, p, min_samples) for p in chunk], task=task,
                               src_lang=src_lang, tgt_lang=tgt_lang)
        segments += [Segment(round(p.start_s, 3), round(p.end_s, 3), t) for p, t in zip(chunk, texts)]
    return segments
