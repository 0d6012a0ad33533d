"""Read, validate and resample audio: wav, flac, ogg, mp3 and what else FFmpeg reads (m4a, aac,
webm, opus, mp4, wma, ...) -> 16 kHz mono.

    wav = load_audio("talk.wav", offset=12.3, duration=4.5)   # (S,) float32 at 16 kHz
    sr, frames, channels, seconds = audio_info("talk.wav")    # header only, no decode

libsndfile reads the formats it knows, and only the requested segment is read from disk (seek +
read). A file it cannot read is handed to FFmpeg's decoders (PyAV), as a phone's voice memo
(m4a/AAC) or a browser's recording (webm/Opus), OpenAI's audio formats, are: decoded whole, then
cut. Channels are averaged to mono and other rates are resampled with soxr (band-limited, 'HQ').
Every failure raises `AudioError`, whose message names the file, what is wrong and how to fix it.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import soundfile as sf
import soxr

SAMPLE_RATE = 16000  # what every supported encoder expects
END_TOLERANCE = 0.1  # seconds a segment may run past the end of its file (codec padding, rounding)
REENCODE_HINT = "re-encode it, e.g. `ffmpeg -i {p} -ac 1 -ar 16000 {stem}.wav`"


class AudioError(ValueError):
    """An audio file is missing, unreadable or invalid; the message names the file and the fix."""


class AudioInfo(NamedTuple):
    sample_rate: int
    frames: int  # samples per channel
    channels: int
    duration: float  # seconds


def seconds_to_samples(seconds: float, sample_rate: int) -> int:
    """Number of samples in `seconds` at `sample_rate`, rounded to the nearest sample."""
    return int(round(seconds * sample_rate))


def _hint(path: Path) -> str:
    return REENCODE_HINT.format(p=path, stem=path.stem)


class DecodedAudio:
    """A whole file decoded by FFmpeg, read as a `soundfile.SoundFile` is read (the part of its
    interface `_open`'s callers use)."""

    def __init__(self, samples: np.ndarray, samplerate: int) -> None:
        self.samples, self.samplerate = samples, samplerate  # (frames, channels) float32
        self.frames, self.channels = samples.shape
        self._at = 0

    def seek(self, frame: int) -> None:
        self._at = frame

    def read(self, frames: int, dtype: str = "float32", always_2d: bool = True) -> np.ndarray:
        out = self.samples[self._at: self._at + frames]
        self._at += len(out)
        return out

    def __enter__(self) -> "DecodedAudio":
        return self

    def __exit__(self, *exc) -> None:
        pass


def _ffmpeg_decode(p: Path) -> DecodedAudio | None:
    """The first audio stream of `p` through FFmpeg's decoders, or None: FFmpeg does not know the
    file either (or PyAV is not installed).

    Raises:
        AudioError: FFmpeg knows the container but it holds no audio, or its audio is damaged.
    """
    try:
        import av
    except ImportError:
        return None
    try:
        container = av.open(str(p))
    except (av.FFmpegError, UnicodeDecodeError, ValueError):
        return None
    with container:
        if not container.streams.audio:
            kinds = ", ".join(sorted({s.type for s in container.streams})) or "nothing"
            raise AudioError(f"{p}: the file holds no audio stream (only {kinds}); pass a recording with sound")
        stream = container.streams.audio[0]
        to_float = av.AudioResampler(format="fltp")  # planar float32, the stream's own rate and channels
        chunks = []
        try:
            for frame in container.decode(stream):
                chunks += [f.to_ndarray() for f in to_float.resample(frame)]
            chunks += [f.to_ndarray() for f in to_float.resample(None)]
        except av.FFmpegError as e:
            raise AudioError(f"{p}: decoding failed ({e}); the file is damaged; {_hint(p)}") from None
        rate = int(stream.codec_context.sample_rate or stream.rate or 0)
    if not chunks or not rate:
        raise AudioError(f"{p}: the file holds no audio samples (empty); remove it from the manifest")
    return DecodedAudio(np.concatenate(chunks, axis=1).T.astype(np.float32, copy=False), rate)


def _open(path: str | Path) -> sf.SoundFile | DecodedAudio:
    """Open `path` with libsndfile, or else decode it with FFmpeg; every failure is an AudioError."""
    p = Path(path)
    try:
        is_dir, is_file = p.is_dir(), p.is_file()
    except OSError as e:  # a name too long for the file system
        raise AudioError(f"{str(p)[:200]!r}: not a usable audio path ({e.strerror})") from None
    if is_dir:
        raise AudioError(f"{p}: is a folder, not an audio file; pass the audio files themselves "
                         f"(e.g. {p}/*.wav)")
    if not is_file:
        raise AudioError(
            f"{p}: audio file not found; check the path (manifest paths are resolved against "
            f"the manifest's folder)"
        )
    if p.stat().st_size == 0:
        raise AudioError(f"{p}: the file is empty (0 bytes); remove it from the manifest or re-create it")
    try:
        return sf.SoundFile(str(p))
    except (sf.SoundFileError, RuntimeError, TypeError) as e:
        error = e
    decoded = _ffmpeg_decode(p)
    if decoded is None:
        raise AudioError(
            f"{p}: cannot decode audio ({error}); the file is corrupt or not an audio format libsndfile "
            f"or FFmpeg reads (wav, flac, ogg, mp3, m4a, aac, webm, opus, ...); {_hint(p)}"
        )
    return decoded


def audio_info(path: str | Path) -> AudioInfo:
    """Read the header of an audio file (no decoding; a file only FFmpeg reads is decoded).

    Args:
        path: an audio file (see load_audio).

    Returns:
        AudioInfo(sample_rate, frames, channels, duration in seconds).

    Raises:
        AudioError: missing or undecodable file.
    """
    with _open(path) as f:
        sr, frames, channels = int(f.samplerate), int(f.frames), int(f.channels)
    return AudioInfo(sr, frames, channels, frames / sr if sr else 0.0)


def load_audio(
    path: str | Path,
    offset: float = 0.0,
    duration: float | None = None,
    sample_rate: int = SAMPLE_RATE,
    min_seconds: float | None = None,
    max_seconds: float | None = None,
) -> np.ndarray:
    """Load `[offset, offset + duration)` seconds of an audio file as mono float32 at `sample_rate`.

    Args:
        path: an audio file: what libsndfile reads (wav, flac, ogg, mp3, ...) or FFmpeg (m4a, aac,
            webm, opus, mp4, wma, ...).
        offset: start of the segment in seconds.
        duration: length of the segment in seconds; None reads to the end of the file.
        sample_rate: output rate; other rates are resampled with soxr 'HQ'.
        min_seconds: if set, a shorter segment is an error.
        max_seconds: if set, a longer segment is an error.

    Returns:
        waveform, shape (S,), float32, S = samples at `sample_rate`.

    Raises:
        AudioError: missing/corrupt/empty file, NaN or inf samples, a segment outside the file,
            or a length outside [min_seconds, max_seconds].
    """
    p = Path(path)
    if offset < 0 or (duration is not None and duration <= 0):
        raise AudioError(f"{p}: offset={offset} must be >= 0 and duration={duration} > 0")
    with _open(p) as f:
        sr, total = int(f.samplerate), int(f.frames)
        if total <= 0:
            raise AudioError(f"{p}: the file holds no audio samples (empty); remove it from the manifest")
        file_seconds = total / sr
        start = seconds_to_samples(offset, sr)
        if start >= total:
            raise AudioError(
                f"{p}: offset {offset:.3f} s is beyond the end of the file ({file_seconds:.3f} s); "
                f"fix the segment's offset in the manifest"
            )
        if duration is None:
            n = total - start
        else:
            n = seconds_to_samples(duration, sr)
            if start + n > total + seconds_to_samples(END_TOLERANCE, sr):
                raise AudioError(
                    f"{p}: segment [{offset:.3f}, {offset + duration:.3f}] s runs past the end of "
                    f"the file ({file_seconds:.3f} s); fix its offset/duration in the manifest"
                )
            n = min(n, total - start)
        try:
            f.seek(start)
            x = f.read(frames=n, dtype="float32", always_2d=True)  # (n, channels)
        except (sf.SoundFileError, RuntimeError) as e:
            raise AudioError(f"{p}: decoding failed at {offset:.3f} s ({e}); {_hint(p)}") from None
    if x.shape[0] == 0:
        raise AudioError(f"{p}: read 0 samples at offset {offset:.3f} s; the file is truncated; {_hint(p)}")
    finite = np.isfinite(x)
    if not finite.all():
        bad = int(x.size - finite.sum())
        what = "only NaN/inf" if bad == x.size else f"{bad} NaN/inf of {x.size}"
        raise AudioError(f"{p}: the audio contains {what} samples; regenerate or remove the file")
    wav = x.mean(axis=1, dtype=np.float32) if x.shape[1] > 1 else x[:, 0]
    if sr != sample_rate:
        wav = soxr.resample(wav, sr, sample_rate, quality="HQ").astype(np.float32, copy=False)
    seconds = wav.shape[0] / sample_rate
    if min_seconds is not None and seconds < min_seconds:
        raise AudioError(
            f"{p}: segment at {offset:.3f} s is {seconds:.3f} s long, shorter than min_seconds="
            f"{min_seconds}; drop it from the manifest or lower data.min_seconds"
        )
    if max_seconds is not None and seconds > max_seconds:
        raise AudioError(
            f"{p}: segment at {offset:.3f} s is {seconds:.3f} s long, longer than max_seconds="
            f"{max_seconds}; split it or raise data.max_seconds"
        )
    return np.ascontiguousarray(wav, dtype=np.float32)


def split_long(wav: np.ndarray, max_seconds: float, sample_rate: int = SAMPLE_RATE,
               search_seconds: float = 5.0, frame_seconds: float = 0.05) -> list[np.ndarray]:
    """Cut a long recording into pieces of at most `max_seconds`, each cut at the quietest
    `frame_seconds` frame of the last `search_seconds` of its window (a pause, usually).

    Args:
        wav: (S,) mono waveform.
        max_seconds: longest piece (the encoder's limit, 30 s for Whisper).

    Returns:
        consecutive pieces whose concatenation is `wav`; `[wav]` when it is short enough.
    """
    limit = seconds_to_samples(max_seconds, sample_rate)
    if len(wav) <= limit:
        return [wav]
    frame = max(1, seconds_to_samples(frame_seconds, sample_rate))
    search = min(seconds_to_samples(search_seconds, sample_rate), limit // 2)
    pieces, start = [], 0
    while len(wav) - start > limit:
        lo, hi = start + limit - search, start + limit  # cut somewhere in [lo, hi]
        n = (hi - lo) // frame
        energy = (wav[lo: lo + n * frame].reshape(n, frame) ** 2).mean(axis=1)  # (n,)
        best = int(np.argmin(energy))
        quiet = energy <= energy[best] * 1.5 + 1e-10  # the pause around the quietest frame ...
        a, b = best, best
        while a > 0 and quiet[a - 1]:
            a -= 1
        while b < n - 1 and quiet[b + 1]:
            b += 1
        cut = lo + (a + b + 1) * frame // 2  # ... cut in its middle
        pieces.append(wav[start:cut])
        start = cut
    pieces.append(wav[start:])
    return pieces
