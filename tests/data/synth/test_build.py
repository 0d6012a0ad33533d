"""data/synth/build.py (`speechwire data synth`): seeded disjoint splits, a small corpus, the same bytes
for the same seed with any number of workers, resume."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import soundfile as sf

from speechwire.data.synth import build
from speechwire.data.synth.build import build_corpus, split_pairs
from speechwire.data.synth.sources import SentencePair

from helpers import needs_asterisk, needs_synth

ASR_KEYS = {"id", "audio", "duration", "transcript", "task"}
ST_KEYS = ASR_KEYS | {"translation", "src_lang", "tgt_lang"}
ESPEAK_ONLY = {"voices": (), "held_out": (), "real_copies": False}  # the other voices: test_voices.py


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


# ------------------------------------------------------------------ the builder


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _wav_hashes(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*.wav"))}  # fmt: skip


@needs_synth
@needs_asterisk
def test_build_small_corpus(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    summary = build_corpus(out, num_train=5, num_dev=2, num_test=2, seed=0, workers=2, progress=False,
                           **ESPEAK_ONLY)  # fmt: skip
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
    lm_text = {t.casefold() for t in (out / "lm_text.txt").read_text().splitlines()}
    assert len(lm_text) == saved["lm_text_sentences"] > 1000  # the n-gram LM's text: never a dev or test sentence
    assert texts["synthtrain"] <= lm_text and not lm_text & (texts["synthdev"] | texts["synthtest"])

    # Same parameters: reused, nothing rebuilt.
    stamp = (out / "synth_train.asr.jsonl").stat().st_mtime_ns
    assert build_corpus(out, 5, 2, 2, seed=0, progress=False, **ESPEAK_ONLY) == saved
    assert "reusing" in capsys.readouterr().out
    assert (out / "synth_train.asr.jsonl").stat().st_mtime_ns == stamp


@needs_synth
def test_same_seed_same_bytes_any_workers_and_resume(tmp_path: Path) -> None:
    a = build_corpus(tmp_path / "a", 4, 1, 1, seed=5, workers=1, real=False, progress=False, **ESPEAK_ONLY)
    b = build_corpus(tmp_path / "b", 4, 1, 1, seed=5, workers=2, real=False, progress=False, **ESPEAK_ONLY)
    c = build_corpus(tmp_path / "c", 4, 1, 1, seed=6, workers=2, real=False, progress=False, **ESPEAK_ONLY)
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
    build_corpus(tmp_path / "a", 4, 1, 1, seed=5, workers=2, real=False, progress=False, **ESPEAK_ONLY)
    assert _wav_hashes(tmp_path / "a") == hb

    # A different seed in the same folder wipes the stale audio instead of mixing it in.
    build_corpus(tmp_path / "a", 4, 1, 1, seed=6, workers=2, real=False, progress=False, **ESPEAK_ONLY)
    assert _wav_hashes(tmp_path / "a") == hc
    assert build.STATE_FILE in {p.name for p in (tmp_path / "a").iterdir()}
