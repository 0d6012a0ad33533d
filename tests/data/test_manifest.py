"""Manifest parsing, validation messages, round trip and language names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from speechwire.data import ManifestError, Utterance, language_name, load_manifest, write_manifest

from helpers import write_tone


def write_lines(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_load_resolves_paths_defaults_and_durations(tmp_path):
    write_tone(tmp_path / "wav" / "a.wav", 1.5)
    write_tone(tmp_path / "wav" / "b.wav", 2.0, sr=8000)
    m = write_lines(tmp_path / "train.jsonl", [
        {"audio": "wav/a.wav", "transcript": "hello"},
        "",
        {"audio": "wav/b.wav", "transcript": "hi", "translation": "hallo", "tgt_lang": "de", "offset": 0.5},
        {"audio": "wav/b.wav", "transcript": "hi", "offset": 0.25, "duration": 1.0, "speaker": "s1"},
    ])
    a, b, c = load_manifest(m)
    assert Path(a.audio) == tmp_path / "wav" / "a.wav" and Path(a.audio).is_absolute()
    assert (a.task, a.id, a.duration, a.target, a.src_lang, a.tgt_lang) == ("asr", "a", 1.5, "hello", "en", None)
    assert (b.task, b.id, b.duration, b.target) == ("st", "b_500_de", 1.5, "hallo")
    assert (c.id, c.duration, c.meta) == ("b_250", 1.0, {"speaker": "s1"})
    out = write_manifest(tmp_path / "copy.jsonl", [a, b, c])
    assert json.loads(out.read_text().splitlines()[0])["audio"] == "wav/a.wav"
    assert load_manifest(out) == [a, b, c]


@pytest.mark.parametrize("row, message", [
    ("{not json", "invalid JSON"),
    ("[1, 2]", "expected a JSON object"),
    ({"transcript": "x"}, "'audio' is required"),
    ({"audio": "a.wav"}, "'transcript' is required"),
    ({"audio": "a.wav", "transcript": "x", "task": "st", "tgt_lang": "de"}, "'translation' is required for task 'st'"),
    ({"audio": "a.wav", "transcript": "x", "translation": "y"}, "'tgt_lang' is required for task 'st'"),
    ({"audio": "a.wav", "transcript": 3}, "'transcript' must be a string, got int"),
    ({"audio": "a.wav", "transcript": "x", "offset": "1"}, "'offset' must be a finite number"),
    ({"audio": "a.wav", "transcript": "x", "offset": -1}, "'offset' must be >= 0"),
    ({"audio": "a.wav", "transcript": "x", "duration": 0}, "'duration' must be > 0"),
    ({"audio": "a.wav", "transcript": "x", "task": "mt"}, "'task' must be one of"),
    ({"audio": "a.wav", "transcript": " "}, "'transcript' is empty"),
    ({"audio": "missing.wav", "transcript": "x"}, "audio file .*missing.wav does not exist"),
    ({"audio": "a.wav", "transcript": "x", "offset": 5}, "'offset' 5.0 is beyond the end"),
    ({"audio": "a.wav", "transcript": "x"}, "id 'a' is already used on line 1"),
])
def test_errors_name_file_line_and_problem(tmp_path, row, message):
    write_tone(tmp_path / "a.wav", 1.0)
    m = write_lines(tmp_path / "train.jsonl", [{"audio": "a.wav", "transcript": "ok"}, row])
    with pytest.raises(ManifestError, match=f"train.jsonl line 2: {message}"):
        load_manifest(m)


def test_skip_invalid_counts_and_warns(tmp_path):
    write_tone(tmp_path / "a.wav", 1.0)
    (tmp_path / "bad.wav").write_bytes(b"RIFF garbage")
    m = write_lines(tmp_path / "dev.jsonl", [
        {"audio": "a.wav", "transcript": "ok"}, "{oops", {"audio": "bad.wav", "transcript": "x"},
        {"audio": "a.wav", "transcript": "fine", "id": "two"},
    ])
    with pytest.warns(UserWarning, match=r"skipped 2 invalid line\(s\), kept 2; first: dev.jsonl line 2"):
        utts = load_manifest(m, skip_invalid=True)
    assert [u.id for u in utts] == ["a", "two"]
    with pytest.raises(ManifestError, match=r"dev.jsonl line 2: invalid JSON.*data.skip_invalid=true"):
        load_manifest(m)
    write_lines(m, ["{oops"])
    with pytest.warns(UserWarning), pytest.raises(ManifestError, match=r"no valid utterances \(1 invalid\)"):
        load_manifest(m, skip_invalid=True)
    with pytest.raises(ManifestError, match="does not exist"):
        load_manifest(tmp_path / "none.jsonl")


def test_utterance_defaults():
    u = Utterance(audio="/x/talk.wav", transcript="a", translation="b", tgt_lang="fr", offset=1.25, duration=2.0)
    assert (u.task, u.id, u.target) == ("st", "talk_1250_fr", "b")
    assert Utterance(audio="t.wav", transcript="a").target == "a"


def test_language_name():
    assert [language_name(c) for c in ("de", "en", "zh-CN", "pt", "ja", "xx")] == [
        "German", "English", "Chinese", "Portuguese", "Japanese", "xx"]
