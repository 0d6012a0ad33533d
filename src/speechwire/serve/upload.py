"""An uploaded file -> a validated 16 kHz mono waveform and the pieces it is decoded in.

    wav, pieces = decode_upload(data, "talk.mp3", limit_seconds=30.0, vad="auto")

Decoding is `audio.load_audio` (any libsndfile or FFmpeg format and rate, NaN/inf and empty files refused)
on a temporary copy of the upload; its error messages name the client's file name, never the
temporary path. A WAV file whose data chunk is shorter than its header declares is refused as
truncated (libsndfile would silently decode the part that arrived); formats that carry no
reliable length (MP3) decode what arrived, and a FLAC/OGG stream cut short fails in its decoder.
"""

from __future__ import annotations

import struct
import tempfile
from pathlib import Path

import numpy as np

from speechwire.audio import SAMPLE_RATE, AudioError, load_audio
from speechwire.longform import Piece, split_recording
from speechwire.serve.errors import APIError, clip

STREAMING_SIZES = (0, 0xFFFFFFFF)  # data-chunk sizes written by streaming encoders: length unknown


def wav_truncation(data: bytes) -> str | None:
    """Why a RIFF/WAVE file is truncated (its data chunk is shorter than declared), or None."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None
    at = 12
    while at + 8 <= len(data):
        chunk, size = data[at: at + 4], struct.unpack("<I", data[at + 4: at + 8])[0]
        if chunk == b"data":
            arrived = len(data) - (at + 8)
            if size not in STREAMING_SIZES and arrived < size:
                return f"its header declares {size} bytes of samples but only {arrived} arrived"
            return None
        at += 8 + size + (size & 1)  # chunks are padded to an even size
    return None  # no data chunk: libsndfile reports it


def decode_upload(data: bytes, filename: str, limit_seconds: float, vad: str,
                  skip_silent: bool = False) -> tuple[np.ndarray, list[Piece]]:
    """Decode an upload and cut it into pieces of at most `limit_seconds` (longform.split_recording;
    with `skip_silent`, none for a recording without speech).

    Raises:
        APIError: 400 with a message naming `filename` (its first ECHO_CHARS characters) for anything that
            is not valid audio.
    """
    shown_name = clip(filename)
    if why := wav_truncation(data):
        raise APIError(400, f"{shown_name}: the file is truncated ({why}); upload the whole file",
                       "file", "truncated_audio")
    suffix = "".join(c for c in Path(filename).suffix if c.isalnum() or c == ".")[:12]
    with tempfile.NamedTemporaryFile(suffix=suffix) as tmp:
        tmp.write(data)
        tmp.flush()
        try:
            wav = load_audio(tmp.name, sample_rate=SAMPLE_RATE)
        except AudioError as e:
            # the temporary file's path and stem (in the re-encoding hint) become the client's file name
            message = str(e).replace(tmp.name, shown_name).replace(Path(tmp.name).stem, Path(shown_name).stem)
            raise APIError(400, message.splitlines()[0], "file", "invalid_audio") from None
    return wav, split_recording(wav, limit_seconds, vad, skip_silent=skip_silent)
