"""longform: long recordings cut at speech pauses (Silero VAD), energy fallback, bounded decoding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from speechwire import longform
from speechwire.config import load_config
from speechwire.longform import Piece, group_regions, join_text, split_recording, transcribe_long
from speechwire.model import SpeechLLM

from helpers import SR, TINY_ADAPTER, ToyEncoder, speech_with_pauses


def test_short_recording_is_one_untouched_piece(monkeypatch):
    monkeypatch.setattr(longform, "speech_regions", lambda *a, **k: pytest.fail("no VAD for short audio"))
    wav = np.zeros(20 * SR, np.float32)
    assert split_recording(wav, 30.0) == [Piece(0, len(wav))]


def test_group_regions_merges_up_to_the_limit():
    regions = [Piece(0, 5), Piece(6, 9), Piece(12, 20), Piece(21, 40), Piece(41, 44)]
    assert group_regions(regions, 10) == [Piece(0, 9), Piece(12, 20), Piece(21, 40), Piece(41, 44)]
    assert group_regions([], 10) == []


def test_silero_cuts_in_pauses_and_skips_long_silence():
    pytest.importorskip("silero_vad")
    # 8 sentences (~2.5 s each) with pauses of 0.6-2 s, and 25 s of silence in the middle
    wav, spans = speech_with_pauses([0.8, 1.5, 0.6, 25.0, 2.0, 0.7, 1.2])
    pieces = split_recording(wav, 10.0, method="silero")
    assert len(pieces) >= 3
    assert all(p.end - p.start <= 10 * SR for p in pieces)
    assert all(a.end <= b.start for a, b in zip(pieces, pieces[1:]))  # in order, no overlap
    for start, end in spans:  # every sentence lies whole inside exactly one piece
        inside = [p for p in pieces if p.start_s <= start + 0.05 and end - 0.05 <= p.end_s]
        assert len(inside) == 1, (start, end, pieces)
    gap_start, gap_end = spans[3][1], spans[4][0]  # the 25 s pause is not decoded
    covered = sum(max(0, min(p.end_s, gap_end) - max(p.start_s, gap_start)) for p in pieces)
    assert covered < 2.0


def test_long_silence_has_no_pieces():
    pytest.importorskip("silero_vad")
    wav = (1e-4 * np.random.default_rng(0).standard_normal(40 * SR)).astype(np.float32)
    assert split_recording(wav, 30.0, method="silero") == []


def test_a_short_recording_without_speech_has_no_pieces_when_asked():
    """skip_silent (transcribe and serve): silence or noise answers empty text instead of what the
    model makes of it; speech, however short, is one untouched piece; has_speech is silero's own
    rule (speech_regions) stopping at the first region."""
    pytest.importorskip("silero_vad")
    rng = np.random.default_rng(0)
    speech, _ = speech_with_pauses([])  # two sentences
    t = np.arange(3 * SR) / SR
    quiet = {"silence": np.zeros(3 * SR, np.float32), "hiss": 1e-4 * rng.standard_normal(5 * SR),
             "noise": 0.1 * rng.standard_normal(5 * SR), "hum": 0.3 * np.sin(2 * np.pi * 120 * t),
             "a click": np.pad(np.ones(80), (SR, SR)), "too short": 0.1 * rng.standard_normal(400)}
    word = speech[SR // 2: SR]  # half a second of the first sentence (it starts after 0.5 s of lead)
    voiced = {"speech": speech, "a word in silence": np.concatenate([np.zeros(2 * SR), word, np.zeros(2 * SR)]),
              "speech in noise": speech + 0.01 * rng.standard_normal(len(speech))}
    for name, wav in {**quiet, **voiced}.items():
        wav = wav.astype(np.float32)
        heard = longform.has_speech(wav)
        assert heard == bool(longform.speech_regions(wav, 30.0)) == (name in voiced), name
        assert split_recording(wav, 30.0, skip_silent=True) == ([Piece(0, len(wav))] if heard else []), name
        assert split_recording(wav, 30.0) == [Piece(0, len(wav))]  # the library decodes what it is given
        assert split_recording(wav, 30.0, method="energy", skip_silent=True) == [Piece(0, len(wav))]  # no VAD
    # speech cut off mid-word or in a short pause: a region still open at the end runs to the end, as in silero


class ScriptedVAD:
    """A stand-in for the Silero model that scores each 512-sample window from a script."""

    def __init__(self, probs: list[float]) -> None:
        self.probs, self.at = probs, 0

    def reset_states(self) -> None:
        self.at = 0

    def __call__(self, window, sample_rate):
        self.at += 1
        return torch.tensor(self.probs[self.at - 1])


def test_has_speech_is_silero_s_own_region_rule(monkeypatch):
    """has_speech stops early but decides as silero's get_speech_timestamps (speech_regions) does on
    the recording padded to whole windows, down to pauses at a region's end and regions still open
    when the recording ends (they count to the end of their last window)."""
    pytest.importorskip("silero_vad")
    rng = np.random.default_rng(0)
    for case in range(400):
        probs = []
        while len(probs) < rng.integers(1, 60):  # runs of speech, doubt and silence, 1-20 windows each
            probs += [float(rng.choice([0.9, 0.6, 0.45, 0.3, 0.05]))] * int(rng.integers(1, 20))
        vad = ScriptedVAD(probs)
        monkeypatch.setattr(longform, "load_vad", lambda: vad)
        whole = np.zeros(len(probs) * longform.VAD_WINDOW, np.float32)
        wav = whole[: len(whole) - int(rng.integers(0, longform.VAD_WINDOW))]  # the last window cut short
        assert longform.has_speech(wav) == bool(longform.speech_regions(whole, 30.0)), (case, probs)


def test_energy_fallback_tiles_the_recording(monkeypatch):
    monkeypatch.setattr(longform, "load_vad", lambda: None)  # silero-vad not installed
    rng = np.random.default_rng(1)
    wav = (0.1 * rng.standard_normal(75 * SR)).astype(np.float32)
    wav[28 * SR: 29 * SR] *= 0.01  # a pause near the first limit
    pieces = split_recording(wav, 30.0)  # auto -> energy
    assert pieces[0].start == 0 and pieces[-1].end == len(wav)
    assert all(a.end == b.start for a, b in zip(pieces, pieces[1:]))
    assert all(p.end - p.start <= 30 * SR for p in pieces)
    assert 28 * SR <= pieces[0].end <= 29 * SR
    with pytest.raises(RuntimeError, match="silero-vad is not installed"):
        split_recording(wav, 30.0, method="silero")
    with pytest.raises(ValueError, match="unknown"):
        split_recording(wav, 30.0, method="webrtc")


def test_ten_minute_recording_decodes_in_bounded_batches(tiny_llm_dir):
    torch.manual_seed(0)
    cfg = load_config(None, [f"llm.model={tiny_llm_dir}", *TINY_ADAPTER, "eval.max_new_tokens=3"])
    model = SpeechLLM(cfg, encoder=ToyEncoder().freeze()).eval()
    sizes = []
    generate = model.generate
    model.generate = lambda waves, **kw: sizes.append(len(waves)) or generate(waves, **kw)
    rng = np.random.default_rng(0)
    wav = (0.1 * rng.standard_normal(600 * SR)).astype(np.float32)  # 10 minutes
    segments = transcribe_long(model, wav, batch_size=4, method="energy")
    assert len(segments) >= 20 and max(sizes) <= 4 and sum(sizes) == len(segments)
    assert segments[0].start == 0.0 and segments[-1].end == 600.0
    assert all(s.end - s.start <= 30.0 for s in segments)
    assert join_text(segments) == " ".join(s.text.strip() for s in segments if s.text.strip())


def test_short_piece_is_padded_to_the_encoder_minimum(tiny_llm_dir):
    torch.manual_seed(0)
    cfg = load_config(None, [f"llm.model={tiny_llm_dir}", *TINY_ADAPTER, "eval.max_new_tokens=2"])
    model = SpeechLLM(cfg, encoder=ToyEncoder().freeze()).eval()
    segments = transcribe_long(model, np.ones(10, np.float32) * 0.1)  # 10 samples < 320
    assert len(segments) == 1 and segments[0].end == round(10 / SR, 3)
