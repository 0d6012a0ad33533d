"""data/synth/sources.py: the Ding sentence filter, asterisk transcripts, a missing espeak-ng named with its fix."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from speechwire.cli import main
from speechwire.data.synth import sources
from speechwire.data.synth.build import build_corpus, real_split_of
from speechwire.data.synth.sources import (
    MissingSystemDepsError,
    SentencePair,
    clean_prompt_text,
    load_asterisk_prompts,
    load_sentence_pairs,
    pairs_from_line,
)

# ------------------------------------------------------------------ Ding sentence filter

DING = """\
# Version :: devel 2023-01-30
Aal {m} | Aale {pl} :: eel | eels
Das ist ein guter Tag. | Es regnet heute sehr stark. :: This is a good day. | It is raining very hard today.
Er kam. :: He came.
Komm sofort nach Hause!; Geh jetzt sofort heim! :: Come home right now!; Go home right away now!
Sie ist sehr nett.; Sie ist wirklich nett. :: She is very nice indeed.
Wo ist der Bahnhof bitte? :: Where is the train station?
Das ist es {n} wert. :: It is worth it really.
Ich habe (leider) keine Zeit. :: I have no time, unfortunately.
Er sagte es [ugs.] sehr laut. :: He said it very loudly.
Kauf Äpfel/Birnen im Laden. :: Buy apples or pears there.
Das ~ geht so nicht weiter. :: This cannot go on like this.
Es ist gut so | Alles klar hier. :: It is fine like that | All is well here.
Eins zwei drei vier. | Fünf :: One two three four.
Guten Tag, wie geht es? :: Hello, how are you doing?
Hallo, wie geht es dir? :: Hello, how are you doing?
"""


def _ding_pairs(text: str) -> list[SentencePair]:
    return [p for line in text.splitlines() for p in pairs_from_line(line)]


def test_pairs_from_line_alternatives_synonyms_markers() -> None:
    got = {(p.german, p.english) for p in _ding_pairs(DING)}
    assert ("Das ist ein guter Tag.", "This is a good day.") in got  # aligned alternatives
    assert ("Es regnet heute sehr stark.", "It is raining very hard today.") in got
    assert ("Geh jetzt sofort heim!", "Go home right away now!") in got  # synonyms zipped
    assert ("Sie ist sehr nett.", "She is very nice indeed.") in got  # 2 vs 1: first only
    assert not any("wirklich" in de for de, _ in got)
    assert ("Wo ist der Bahnhof bitte?", "Where is the train station?") in got
    joined = " ".join(de + en for de, en in got)
    for marker in ("{", "(", "[", "/", "~"):
        assert marker not in joined
    assert not any(en == "He came." for _, en in got)  # < 4 words
    assert not any("fine like that" in en for _, en in got)  # no final punctuation
    assert not any(en.startswith("One two") for _, en in got)  # 2 German vs 1 English alternative
    assert pairs_from_line("Eins | Zwei | Drei :: One | Two") == []  # misaligned alternatives


def test_load_sentence_pairs_dedupes_case_insensitively(tmp_path: Path) -> None:
    path = tmp_path / "de-en"
    path.write_text(DING + "DAS IST EIN GUTER TAG. :: THIS IS A GOOD DAY.\n", encoding="utf-8")
    pairs = load_sentence_pairs(path)
    english = [p.english.casefold() for p in pairs]
    assert len(english) == len(set(english))
    assert english.count("hello, how are you doing?") == 1
    assert "this is a good day." in english and "THIS IS A GOOD DAY." not in english


# ------------------------------------------------------------------ asterisk transcripts


def test_asterisk_transcripts_parse_and_clean(tmp_path: Path) -> None:
    listing = tmp_path / "core-sounds-en.txt.gz"
    with gzip.open(listing, "wt", encoding="utf-8") as f:
        f.write("; Core Asterisk Sounds in English\n\n"
                "vm-goodbye: Goodbye.\n"
                "beep: [this is a simple beep tone]\n"
                "confbridge-has-joined: ...has joined the conference.\n"
                "digits/7: seven\n"
                "dictate/both_help: press * to toggle pause, press # for a new name\n"
                "letters/at: at [@]\n"
                "silence/1: (1 second of silence)\n"
                "no-wav-file: This one has no recording.\n")  # fmt: skip
    sounds = tmp_path / "en"
    (sounds / "digits").mkdir(parents=True)
    (sounds / "letters").mkdir()
    for name in ("vm-goodbye", "beep", "confbridge-has-joined", "digits/7", "letters/at"):
        sf.write(sounds / f"{name}.wav", np.zeros(800, np.int16), 8000, subtype="PCM_16")
    raw = sources.parse_asterisk_transcripts(listing)
    assert raw["digits/7"] == "seven" and len(raw) == 8
    prompts = {p.name: p.text for p in load_asterisk_prompts(sounds, listing)}
    assert prompts == {"confbridge-has-joined": "has joined the conference.",
                       "digits/7": "seven", "letters/at": "at", "vm-goodbye": "Goodbye."}  # fmt: skip
    assert clean_prompt_text("<beep ascending>") is None
    assert clean_prompt_text('Dial 4 for a polite "don\'t call" menu.') == (
        "Dial 4 for a polite don't call menu."
    )
    assert real_split_of("Goodbye.") == real_split_of("GOODBYE.")


# ------------------------------------------------------------------ missing packages


def test_missing_espeak_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sources.shutil, "which", lambda name: None)
    with pytest.raises(MissingSystemDepsError, match="sudo apt-get install -y espeak-ng"):
        build_corpus(tmp_path / "out", 1, 1, 1, real=False, progress=False)
    assert main(["data", "synth", "--out", str(tmp_path / "out"), "--no-real", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "espeak-ng" in err and "install_system_deps.sh" in err and err.count("\n") == 1
