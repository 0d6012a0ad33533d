"""Audio augmentation as ASR recipes use it, deterministic from a passed generator.

    speed perturbation (0.9-1.1, Kaldi-style: tempo and pitch together, fused with resampling)
    -> pitch shift in cents (sox ``pitch``: pitch alone, duration kept)
    -> simulated room (exponentially decaying noise impulse response)
    -> additive white or pink noise at a drawn SNR
    -> telephone channel (300-3400 Hz band, 8 kHz, mu-law 8 bit)
    -> peak gain, 16-bit

`AugParams` holds every choice of one clip; `draw_aug` draws it from the clip's own generator
(`default_rng([seed, index, stream])`), so a clip's bytes depend only on its seed; `augment` applies it.
"""

from __future__ import annotations

import io
import subprocess
from dataclasses import asdict, dataclass

import numpy as np
import soundfile as sf
import soxr

from speechwire.audio import SAMPLE_RATE

SPEED_FACTOR = (0.9, 1.1)
PITCH_CENTS = (-300.0, 300.0)
PITCH_PROB = 0.5
REVERB_PROB = 0.3
RT60_S = (0.2, 0.8)
NOISE_PROB = 0.7
SNR_DB = (5.0, 20.0)  # noisy clips; the others get a faint floor (40 dB) like a quiet room
PINK_PROB = 0.5
TELEPHONE_PROB = 0.15
PEAK_DBFS = (-12.0, -1.0)
TELEPHONE_RATE = 8000
MU = 255


@dataclass(frozen=True)
class AugParams:
    speed_factor: float
    pitch_cents: float  # 0: unchanged
    reverb: bool
    rt60_s: float
    snr_db: float
    pink: bool
    telephone: bool
    peak_dbfs: float

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @property
    def label(self) -> str:
        """Short description for manifests and per-augmentation tables, e.g. ``speed1.07+pitch-210+noise9dB``."""
        parts = [f"speed{self.speed_factor:.2f}"]
        if self.pitch_cents:
            parts.append(f"pitch{self.pitch_cents:+.0f}")
        if self.reverb:
            parts.append(f"reverb{self.rt60_s:.2f}s")
        if self.snr_db < 40:
            parts.append(f"{'pink' if self.pink else 'white'}{self.snr_db:.0f}dB")
        if self.telephone:
            parts.append("telephone")
        return "+".join(parts)


CLEAN = AugParams(speed_factor=1.0, pitch_cents=0.0, reverb=False, rt60_s=0.0, snr_db=60.0, pink=False,
                  telephone=False, peak_dbfs=-3.0)


def draw_aug(rng: np.random.Generator) -> AugParams:
    """Draw one clip's augmentation from its generator (the SNR is drawn only for a noisy clip)."""
    speed = float(rng.uniform(*SPEED_FACTOR))
    pitch = float(rng.uniform(*PITCH_CENTS))
    use_pitch = rng.random() < PITCH_PROB
    reverb = bool(rng.random() < REVERB_PROB)
    rt60 = float(rng.uniform(*RT60_S))
    snr = float(rng.uniform(*SNR_DB)) if rng.random() < NOISE_PROB else 40.0
    pink = bool(rng.random() < PINK_PROB)
    telephone = bool(rng.random() < TELEPHONE_PROB)
    return AugParams(speed_factor=round(speed, 4), pitch_cents=round(pitch, 1) if use_pitch else 0.0,
                     reverb=reverb, rt60_s=round(rt60, 3), snr_db=round(snr, 2), pink=pink, telephone=telephone,
                     peak_dbfs=round(float(rng.uniform(*PEAK_DBFS)), 2))


def _fft_convolve(x: np.ndarray, h: np.ndarray) -> np.ndarray:
    n = len(x) + len(h) - 1
    size = 1 << (n - 1).bit_length()
    return np.fft.irfft(np.fft.rfft(x, size) * np.fft.rfft(h, size), size)[:n]


def add_reverb(x: np.ndarray, rt60_s: float, rng: np.random.Generator) -> np.ndarray:
    """Convolve with a synthetic room: direct path + exponentially decaying noise tail.

    Args:
        x: (N,) signal at `SAMPLE_RATE`.
        rt60_s: time for the tail to decay by 60 dB.

    Returns:
        (N,) reverberant signal, the tail cut at the input length.
    """
    n = int(rt60_s * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    ir = rng.standard_normal(n) * np.exp(-6.9078 * t / rt60_s)  # ln(1000) = 60 dB of amplitude
    ir[0] = 1.0  # direct path
    ir[1 : int(0.005 * SAMPLE_RATE)] = 0.0  # 5 ms before the first reflection
    ir /= np.sqrt(np.sum(ir**2))
    return _fft_convolve(x, ir)[: len(x)]


def pink_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """(n,) unit-power noise with a 1/f power spectrum (more like a room or a crowd than white)."""
    if n == 0:
        return np.zeros(0)
    spectrum = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(len(spectrum), dtype=np.float64)
    f[0] = 1.0
    noise = np.fft.irfft(spectrum / np.sqrt(f), n)
    return noise / (np.sqrt(np.mean(noise**2)) or 1.0)


def add_noise(x: np.ndarray, snr_db: float, rng: np.random.Generator, pink: bool = False) -> np.ndarray:
    """Add white (or pink) noise at ``snr_db`` relative to the signal's mean power (silences included)."""
    power = float(np.mean(x**2)) if len(x) else 0.0
    noise = pink_noise(len(x), rng) if pink else rng.standard_normal(len(x))
    return x + noise * np.sqrt(power / 10 ** (snr_db / 10))


def telephone(x: np.ndarray) -> np.ndarray:
    """A narrow-band telephone channel: 300-3400 Hz at 8 kHz, 8-bit mu-law, back to 16 kHz. (N,) -> (N,)."""
    if len(x) == 0:
        return x
    narrow = soxr.resample(x, SAMPLE_RATE, TELEPHONE_RATE, quality="HQ")
    spectrum = np.fft.rfft(narrow)
    freqs = np.fft.rfftfreq(len(narrow), 1 / TELEPHONE_RATE)
    spectrum[(freqs < 300) | (freqs > 3400)] = 0
    narrow = np.fft.irfft(spectrum, len(narrow))
    peak = float(np.max(np.abs(narrow))) or 1.0
    y = np.sign(narrow / peak) * np.log1p(MU * np.abs(narrow / peak)) / np.log1p(MU)
    y = np.round(y * 127) / 127  # 8-bit codes
    narrow = np.sign(y) * np.expm1(np.abs(y) * np.log1p(MU)) / MU * peak
    return soxr.resample(narrow, TELEPHONE_RATE, SAMPLE_RATE, quality="HQ")[: len(x)]


def pitch_shift(x: np.ndarray, cents: float) -> np.ndarray:
    """Shift the pitch by ``cents`` keeping the duration (sox ``pitch``). (N,) at 16 kHz -> (N',)."""
    if not cents or len(x) == 0:
        return x
    buf = io.BytesIO()
    sf.write(buf, np.clip(x, -1, 1).astype(np.float32), SAMPLE_RATE, format="WAV", subtype="FLOAT")
    proc = subprocess.run(["sox", "-t", "wav", "-", "-t", "wav", "-e", "float", "-b", "32", "-", "pitch", f"{cents:.1f}"],
                          input=buf.getvalue(), capture_output=True, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"sox pitch {cents:.1f} failed (exit {proc.returncode}): "
                           f"{proc.stderr.decode(errors='replace').strip()}; is sox installed?")
    y, _ = sf.read(io.BytesIO(proc.stdout), dtype="float64")
    return y


def augment(audio: np.ndarray, sample_rate: int, params: AugParams, rng: np.random.Generator) -> np.ndarray:
    """Resample to 16 kHz with speed perturbation, then the rest of `params`.

    Args:
        audio: (N,) float samples at `sample_rate`.
        rng: supplies reverb and noise samples (after `draw_aug` drew `params` from it).

    Returns:
        (M,) int16 samples at 16 kHz.
    """
    # Reading the samples as if recorded at sr * f and resampling to 16 kHz speeds up by f.
    x = soxr.resample(audio, sample_rate * params.speed_factor, SAMPLE_RATE, quality="HQ")
    x = pitch_shift(x, params.pitch_cents)
    if params.reverb:
        x = add_reverb(x, params.rt60_s, rng)
    x = add_noise(x, params.snr_db, rng, pink=params.pink)
    if params.telephone:
        x = telephone(x)
    return to_int16(x, params.peak_dbfs)


def to_int16(x: np.ndarray, peak_dbfs: float) -> np.ndarray:
    """Scale to a peak of ``peak_dbfs`` and quantise: (N,) float -> (N,) int16."""
    peak = float(np.max(np.abs(x))) if len(x) else 0.0
    if peak > 0:
        x = x * (10 ** (peak_dbfs / 20) / peak)
    return np.round(np.clip(x, -1.0, 1.0) * 32767).astype(np.int16)
