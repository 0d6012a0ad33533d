"""Speak one sentence with espeak-ng and augment it, deterministically from (seed, index).

Every random choice of an utterance comes from ``numpy.random.default_rng([seed, index])``,
drawn in a fixed order, so the audio of utterance ``index`` does not depend on which worker
renders it or in which order. Pipeline:

    espeak-ng (voice + variant, words/min, pitch) at 22.05 kHz
    -> speed perturbation 0.9-1.1 fused with resampling to 16 kHz (soxr)
    -> synthetic reverb (exponentially decaying noise impulse response), with probability 0.2
    -> additive white noise at 20-35 dB SNR
    -> peak gain -1..-6 dBFS, 16-bit
"""

from __future__ import annotations

import functools
import io
import subprocess
from dataclasses import asdict, dataclass

import numpy as np
import soundfile as sf
import soxr

from speechwire.audio import SAMPLE_RATE
from speechwire.data.synth.augment import add_noise, add_reverb, to_int16

SPEED_WPM = (130, 190)  # espeak-ng -s, words per minute
PITCH = (30, 70)  # espeak-ng -p, 0-99
SPEED_FACTOR = (0.9, 1.1)  # tempo+pitch perturbation as in Kaldi's speed perturbation
REVERB_PROB = 0.2
RT60_S = (0.15, 0.5)  # reverb time of the synthetic room
SNR_DB = (20.0, 35.0)
PEAK_DBFS = (-6.0, -1.0)
NO_VARIANT_PROB = 0.25  # share of utterances in the plain (unmodified) voice
# Human-sounding espeak-ng variants; robots, whispers and effects are left out.
VARIANT_ALLOWLIST = (
    "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "f1", "f2", "f3", "f4", "f5",
    "adam", "Alex", "Andy", "Annie", "aunty", "belinda", "benjamin", "caleb", "david", "ed",
    "edward", "Gene", "grandma", "grandpa", "john", "Lee", "linda", "max", "Michael", "Mike",
    "norbert", "paul", "quincy", "rob", "robert", "shelby", "steph", "travis", "victor", "zac",
)  # fmt: skip


@dataclass(frozen=True)
class UttParams:
    """Every random choice of one synthetic utterance."""

    voice: str  # espeak-ng language voice, e.g. "en-gb-scotland"
    variant: str  # "" for the plain voice, else e.g. "f2" (espeak-ng -v voice+f2)
    wpm: int
    pitch: int
    speed_factor: float
    reverb: bool
    rt60_s: float
    snr_db: float
    peak_dbfs: float

    @property
    def voice_name(self) -> str:
        return f"{self.voice}+{self.variant}" if self.variant else self.voice

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _espeak_listing(arg: str) -> list[list[str]]:
    out = subprocess.run(
        ["espeak-ng", arg], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    return [line.split() for line in out[1:] if line.strip()]


@functools.lru_cache(maxsize=1)
def list_voices() -> tuple[str, ...]:
    """English espeak-ng voices installed here (``espeak-ng --voices=en``), sorted.

    MBROLA voices (``mb/...``) are skipped: they need extra packages and often are missing.
    """
    voices = {
        cols[1] for cols in _espeak_listing("--voices=en")
        if len(cols) >= 5 and cols[1].startswith("en") and cols[4].startswith("gmw/")
    }  # fmt: skip
    return tuple(sorted(voices))


@functools.lru_cache(maxsize=1)
def list_variants() -> tuple[str, ...]:
    """Installed espeak-ng variants (``--voices=variant``) that are in `VARIANT_ALLOWLIST`."""
    installed = {
        cols[4].removeprefix("!v/") for cols in _espeak_listing("--voices=variant") if len(cols) >= 5
    }
    return tuple(v for v in VARIANT_ALLOWLIST if v in installed)


def utterance_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of utterance ``index``: independent of worker count and order."""
    return np.random.default_rng([seed, index])


def draw_params(
    rng: np.random.Generator, voices: tuple[str, ...], variants: tuple[str, ...]
) -> UttParams:
    """Draw the voice and augmentation of one utterance (always the same number of draws).

    Args:
        rng: the utterance's generator (`utterance_rng`); advanced by this call.
        voices: candidate espeak-ng voices (`list_voices()`).
        variants: candidate variants (`list_variants()`); may be empty.

    Returns:
        The parameters; `render` draws the noise samples from the same generator next.
    """
    voice = voices[int(rng.integers(len(voices)))]
    k = int(rng.integers(len(variants))) if variants else 0
    plain = rng.random() < NO_VARIANT_PROB or not variants
    return UttParams(
        voice=voice,
        variant="" if plain else variants[k],
        wpm=int(rng.integers(SPEED_WPM[0], SPEED_WPM[1] + 1)),
        pitch=int(rng.integers(PITCH[0], PITCH[1] + 1)),
        speed_factor=round(float(rng.uniform(*SPEED_FACTOR)), 4),
        reverb=bool(rng.random() < REVERB_PROB),
        rt60_s=round(float(rng.uniform(*RT60_S)), 3),
        snr_db=round(float(rng.uniform(*SNR_DB)), 2),
        peak_dbfs=round(float(rng.uniform(*PEAK_DBFS)), 2),
    )


def espeak(text: str, params: UttParams) -> tuple[np.ndarray, int]:
    """Synthesise ``text`` with espeak-ng (text on stdin, wav on stdout).

    Returns:
        (samples, sample_rate): float64 mono, shape (N,); espeak-ng's rate is 22050 Hz.

    Raises:
        RuntimeError: espeak-ng failed or produced no audio; names the voice and the text.
    """
    cmd = ["espeak-ng", "-v", params.voice_name, "-s", str(params.wpm), "-p", str(params.pitch)]
    proc = subprocess.run(cmd + ["--stdout"], input=text.encode("utf-8"), capture_output=True)
    if proc.returncode != 0 or len(proc.stdout) <= 44:
        raise RuntimeError(
            f"`{' '.join(cmd)}` failed (exit {proc.returncode}) on {text!r}: "
            f"{proc.stderr.decode(errors='replace').strip()}; check `espeak-ng --voices=en`"
        )
    audio, sr = sf.read(io.BytesIO(proc.stdout), dtype="float64")
    return audio, int(sr)


def render(text: str, params: UttParams, rng: np.random.Generator) -> np.ndarray:
    """Speak and augment one sentence.

    Args:
        text: the English sentence.
        params: from `draw_params(rng, ...)`.
        rng: the same generator, right after `draw_params`; supplies reverb and noise samples.

    Returns:
        (N,) int16 samples at 16 kHz.
    """
    audio, sr = espeak(text, params)
    # Reading the samples as if recorded at sr * f and resampling to 16 kHz speeds up by f.
    audio = soxr.resample(audio, sr * params.speed_factor, SAMPLE_RATE, quality="HQ")
    if params.reverb:
        audio = add_reverb(audio, params.rt60_s, rng)
    audio = add_noise(audio, params.snr_db, rng)
    return to_int16(audio, params.peak_dbfs)
