"""data/synth/voice.py: espeak-ng voice lists and per-utterance voice parameters are deterministic."""

from __future__ import annotations

from speechwire.data.synth import voice

from helpers import needs_synth


@needs_synth
def test_voice_lists_and_params_are_deterministic() -> None:
    voices, variants = voice.list_voices(), voice.list_variants()
    assert "en-us" in voices and "en-gb" in voices and "f2" in variants
    p1 = voice.draw_params(voice.utterance_rng(3, 7), voices, variants)
    assert p1 == voice.draw_params(voice.utterance_rng(3, 7), voices, variants)
    assert voice.SPEED_WPM[0] <= p1.wpm <= voice.SPEED_WPM[1]
    assert voice.SPEED_FACTOR[0] <= p1.speed_factor <= voice.SPEED_FACTOR[1]
