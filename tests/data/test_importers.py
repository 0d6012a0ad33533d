"""Importers on small fixtures written in the corpora's real on-disk layouts."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from speechwire.audio import load_audio
from speechwire.cli import main
from speechwire.data import ManifestError, import_covost2, import_hf, import_mustc, load_manifest

from helpers import tone, write_tone


def make_mustc(root, tgt="de", split="dev"):
    data = root / f"en-{tgt}" / "data" / split
    sr = 16000
    talk = np.concatenate([tone(1.0, sr, 300), tone(1.0, sr, 1200), tone(1.0, sr, 2400)])
    (data / "wav").mkdir(parents=True)
    sf.write(data / "wav" / "ted_11.wav", talk, sr)
    write_tone(data / "wav" / "ted_12.wav", 2.0)
    (data / "txt").mkdir()
    (data / "txt" / f"{split}.yaml").write_text(
        "- {duration: 1.0, offset: 1.0, rx: 1, speaker_id: spk.11, wav: ted_11.wav}\n"
        "- {duration: 0.9, offset: 2.05, rx: 1, speaker_id: spk.11, wav: ted_11.wav}\n"
        "- {duration: 1.5, offset: 0.0, rx: 1, speaker_id: spk.12, wav: ted_12.wav}\n")
    (data / "txt" / f"{split}.en").write_text("Middle tone.\nHigh tone.\nSecond talk.\n")
    (data / "txt" / f"{split}.{tgt}").write_text("Mittlerer Ton.\nHoher Ton.\nZweiter Vortrag.\n")
    return data


def test_mustc_both_tasks_with_segments(tmp_path):
    data = make_mustc(tmp_path / "MUSTC")
    out = tmp_path / "m" / "dev.jsonl"
    assert main(["data", "import", "mustc", "--root", str(tmp_path / "MUSTC"), "--tgt-lang", "de", "--split", "dev",
                 "--out", str(out), "--tasks", "asr", "st"]) == 0
    utts = load_manifest(out)
    assert [u.id for u in utts] == ["ted_11_0_asr", "ted_11_0_st", "ted_11_1_asr", "ted_11_1_st",
                                    "ted_12_0_asr", "ted_12_0_st"]
    asr, st = utts[0], utts[1]
    assert (asr.task, asr.target, asr.tgt_lang, asr.offset, asr.duration) == ("asr", "Middle tone.", None, 1.0, 1.0)
    assert (st.task, st.target, st.transcript, st.tgt_lang) == ("st", "Mittlerer Ton.", "Middle tone.", "de")
    assert utts[2].audio == str(data / "wav" / "ted_11.wav")
    seg = load_audio(utts[2].audio, utts[2].offset, utts[2].duration)
    peak = np.argmax(np.abs(np.fft.rfft(seg))) * 16000 / len(seg)
    assert abs(peak - 2400) < 5  # the segment's own audio, not the talk's start
    st_only = import_mustc(tmp_path / "MUSTC" / "en-de", "de", "dev", tmp_path / "st.jsonl")
    assert [u.id for u in st_only] == ["ted_11_0", "ted_11_1", "ted_12_0"]


def test_mustc_errors(tmp_path):
    with pytest.raises(ManifestError, match="dev.yaml not found; --root must hold en-de/data/dev/txt"):
        import_mustc(tmp_path, "de", "dev", tmp_path / "x.jsonl")
    data = make_mustc(tmp_path)
    (data / "txt" / "dev.de").write_text("Nur eine Zeile.\n")
    with pytest.raises(ManifestError, match="3 segments in dev.yaml but 3 / 1 lines"):
        import_mustc(tmp_path, "de", "dev", tmp_path / "x.jsonl")


def make_covost(tmp_path, fmt="MP3"):
    clips = tmp_path / "cv" / "en" / "clips"
    ext = fmt.lower()
    for i, sr in enumerate([48000, 32000]):
        write_tone(clips / f"common_voice_en_{i}.{ext}", 1.0 + i * 0.5, sr=sr, format=fmt)
    tsv = tmp_path / "tsv" / "covost_v2.en_de.dev.tsv"
    tsv.parent.mkdir()
    tsv.write_text("path\tsentence\ttranslation\tclient_id\n"
                   f"common_voice_en_0.{ext}\tHe said \"yes\".\tEr sagte \"ja\".\tabc\n"
                   f"common_voice_en_1.{ext}\tA back\\\\slash.\tEin Back\\\\slash.\tdef\n", encoding="utf-8")
    return tsv.parent, clips


def test_covost2_mp3(tmp_path):
    fmt = "MP3" if "MP3" in sf.available_formats() else "OGG"
    tsv_dir, clips = make_covost(tmp_path, fmt)
    out = tmp_path / "dev.jsonl"
    utts = import_covost2(tsv_dir, clips, "en", "de", "dev", out, tasks=["asr", "st"])
    assert [u.id for u in utts] == ["common_voice_en_0_asr", "common_voice_en_0_st",
                                    "common_voice_en_1_asr", "common_voice_en_1_st"]
    assert utts[1].transcript == 'He said "yes".' and utts[1].target == 'Er sagte "ja".'
    assert utts[3].transcript == "A back\\slash."
    assert utts[2].duration == pytest.approx(1.5, abs=0.06)
    loaded = load_manifest(out)
    assert len(loaded) == 4 and len(load_audio(loaded[0].audio)) == pytest.approx(16000, abs=1200)


def test_covost2_missing_clip(tmp_path):
    tsv_dir, clips = make_covost(tmp_path, "OGG")
    (clips / "common_voice_en_1.ogg").unlink()
    with pytest.raises(ManifestError, match=r"covost_v2.en_de.dev.tsv line 3: .*common_voice_en_1.ogg: audio file not found"):
        import_covost2(tsv_dir, clips, "en", "de", "dev", tmp_path / "o.jsonl")
    with pytest.warns(UserWarning, match="skipped 1 clip"):
        utts = import_covost2(tsv_dir, clips, "en", "de", "dev", tmp_path / "o.jsonl", skip_invalid=True)
    assert [u.id for u in utts] == ["common_voice_en_0"]
    with pytest.raises(ManifestError, match="covost_v2.en_fr.dev.tsv not found"):
        import_covost2(tsv_dir, clips, "en", "fr", "dev", tmp_path / "o.jsonl")


def test_hf_dataset(tmp_path):
    datasets = pytest.importorskip("datasets")
    src = [write_tone(tmp_path / "src" / f"{i}.wav", 0.5 + 0.25 * i, sr=sr) for i, sr in enumerate([8000, 44100])]
    ds = datasets.Dataset.from_dict({"audio": [str(p) for p in src], "sentence": ["one", "two"],
                                     "de": ["eins", "zwei"], "key": ["a/1", "b 2"]})
    ds = ds.cast_column("audio", datasets.Audio())
    utts = import_hf(ds, tmp_path / "out", text_column="sentence", translation_column="de", tgt_lang="de",
                     id_column="key")
    assert [u.id for u in utts] == ["a_1_asr", "a_1_st", "b_2_asr", "b_2_st"]
    info = sf.info(utts[2].audio)
    assert info.samplerate == 16000 and info.frames == 12000  # 0.75 s at 44.1 kHz -> 16 kHz
    loaded = load_manifest(tmp_path / "out" / "manifest.jsonl")
    assert [u.target for u in loaded] == ["one", "eins", "two", "zwei"]
    assert json.loads((tmp_path / "out" / "manifest.jsonl").read_text().splitlines()[0])["audio"] == "wav/a_1.wav"
    with pytest.raises(ValueError, match=r"column\(s\) \['text'\] not in the dataset"):
        import_hf(ds, tmp_path / "o2")
    ds.save_to_disk(str(tmp_path / "saved"))
    assert main(["data", "import", "hf", "--dataset", str(tmp_path / "saved"), "--out-dir", str(tmp_path / "o3"),
                 "--text-column", "sentence", "--split", "test"]) == 0
    assert [u.id for u in load_manifest(tmp_path / "o3" / "manifest.jsonl")] == ["test_0000000", "test_0000001"]
