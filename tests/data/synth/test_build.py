"""Tests of `speechwire data synth` (src/speechwire/data/synth/): sources, splits, determinism."""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from speechwire.data.synth import build, sources, voice
from speechwire.cli import main
from speechwire.data.synth.build import build_corpus, real_split_of, split_pairs
from speechwire.data.synth.sources import (
    MissingSystemDepsError,
    SentencePair,
    clean_prompt_text,
    load_asterisk_prompts,
    load_sentence_pairs,
    pairs_from_line,
)

HAVE_ESPEAK = shutil.which("espeak-ng") is not None
HAVE_DING = sources.DING_PATH.is_file()
HAVE_ASTERISK = sources.ASTERISK_SOUNDS_DIR.is_dir() and sources.ASTERISK_TRANSCRIPTS.is_file()
needs_synth = pytest.mark.skipif(
    not (HAVE_ESPEAK and HAVE_DING),
    reason="espeak-ng or trans-de-en missing: run scripts/install_system_deps.sh as root",
)
needs_real = pytest.mark.skipif(
    not HAVE_ASTERISK, reason="asterisk-core-sounds-en(-wav) missing: run install_system_deps.sh"
)

ASR_KEYS = {"id", "audio", "duration", "transcript", "task"}
ST_KEYS = ASR_KEYS | {"translation", "src_lang", "tgt_lang"}

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


def test_split_pairs_disjoint_seeded_and_checked() -> None:
    pairs = [SentencePair(f"Sentence number {i} is here.", f"Satz Nummer {i} ist hier.")
             for i in range(50)]  # fmt: skip
    a = split_pairs(pairs, 20, 5, 5, seed=1)
    texts = {s: {p.english for _, p in rows} for s, rows in a.items()}
    assert [len(texts[s]) for s in ("train", "dev", "test")] == [20, 5, 5]
    assert not (texts["train"] & texts["dev"] or texts["train"] & texts["test"]
                or texts["dev"] & texts["test"])  # fmt: skip
    assert split_pairs(pairs, 20, 5, 5, seed=1) == a
    assert split_pairs(pairs, 30, 5, 5, seed=1)["test"] == a["test"]  # test set stable
    assert split_pairs(pairs, 20, 5, 5, seed=2) != a
    with pytest.raises(ValueError, match="the dictionary has 50"):
        split_pairs(pairs, 100, 5, 5, seed=1)


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


# ------------------------------------------------------------------ the builder


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _wav_hashes(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*.wav"))}  # fmt: skip


@needs_synth
def test_voice_lists_and_params_are_deterministic() -> None:
    voices, variants = voice.list_voices(), voice.list_variants()
    assert "en-us" in voices and "en-gb" in voices and "f2" in variants
    p1 = voice.draw_params(voice.utterance_rng(3, 7), voices, variants)
    assert p1 == voice.draw_params(voice.utterance_rng(3, 7), voices, variants)
    assert voice.SPEED_WPM[0] <= p1.wpm <= voice.SPEED_WPM[1]
    assert voice.SPEED_FACTOR[0] <= p1.speed_factor <= voice.SPEED_FACTOR[1]


@needs_synth
@needs_real
def test_build_small_corpus(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    summary = build_corpus(out, num_train=5, num_dev=2, num_test=2, seed=0, workers=2,
                           progress=False)  # fmt: skip
    assert summary["counts"]["synth_train"] == 5 and summary["counts"]["real_test"] > 50
    texts: dict[str, set[str]] = {}
    for name in summary["manifests"]:
        rows = _read_jsonl(out / name)
        assert rows, name
        for row in rows:
            assert set(row) == (ST_KEYS if ".st." in name else ASR_KEYS), name
            assert row["task"] == ("st" if ".st." in name else "asr")
            info = sf.info(str(out / row["audio"]))
            assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
            assert row["duration"] == pytest.approx(info.frames / 16000, abs=1e-3)
            assert 0.2 <= row["duration"] <= 12.0
            if name.startswith("synth"):
                assert 0.5 <= row["duration"]
            if ".st." in name:
                assert row["translation"] and (row["src_lang"], row["tgt_lang"]) == ("en", "de")
        split = name.split("_")[1].split(".")[0]
        texts.setdefault(name.split("_")[0] + split, set()).update(
            r["transcript"].casefold() for r in rows
        )
    for kind in ("synth", "real"):
        tr, dv, te = (texts[kind + s] for s in ("train", "dev", "test"))
        assert not (tr & dv or tr & te or dv & te), kind
    saved = json.loads((out / "corpus.json").read_text())
    assert saved["params"]["seed"] == 0 and saved["voices_used"]

    # Same parameters: reused, nothing rebuilt.
    stamp = (out / "synth_train.asr.jsonl").stat().st_mtime_ns
    assert build_corpus(out, 5, 2, 2, seed=0, progress=False) == saved
    assert "reusing" in capsys.readouterr().out
    assert (out / "synth_train.asr.jsonl").stat().st_mtime_ns == stamp


@needs_synth
def test_same_seed_same_bytes_any_workers_and_resume(tmp_path: Path) -> None:
    a = build_corpus(tmp_path / "a", 4, 1, 1, seed=5, workers=1, real=False, progress=False)
    b = build_corpus(tmp_path / "b", 4, 1, 1, seed=5, workers=2, real=False, progress=False)
    c = build_corpus(tmp_path / "c", 4, 1, 1, seed=6, workers=2, real=False, progress=False)
    ha, hb, hc = (_wav_hashes(tmp_path / n) for n in "abc")
    assert len(ha) == 6 and ha == hb
    assert a["counts"] == b["counts"] and a["voices_used"] == b["voices_used"]
    assert set(ha.values()).isdisjoint(hc.values()) and c["params"]["seed"] == 6
    for name in a["manifests"]:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()

    # An interrupted run (one wav and the summary gone) resumes to the same bytes.
    victim = sorted((tmp_path / "a" / "synth" / "train").glob("*.wav"))[0]
    victim.unlink()
    (tmp_path / "a" / "corpus.json").unlink()
    build_corpus(tmp_path / "a", 4, 1, 1, seed=5, workers=2, real=False, progress=False)
    assert _wav_hashes(tmp_path / "a") == hb

    # A different seed in the same folder wipes the stale audio instead of mixing it in.
    build_corpus(tmp_path / "a", 4, 1, 1, seed=6, workers=2, real=False, progress=False)
    assert _wav_hashes(tmp_path / "a") == hc
    assert build.STATE_FILE in {p.name for p in (tmp_path / "a").iterdir()}
