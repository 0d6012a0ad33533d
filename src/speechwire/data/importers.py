"""Importers: MuST-C, CoVoST 2 and Hugging Face `datasets` audio datasets -> JSONL manifests.

    speechwire data import mustc   --root MUSTC --tgt-lang de --split train --out train.jsonl --tasks asr st
    speechwire data import covost2 --tsv-dir TSV --clips CV/en/clips --src-lang en --tgt-lang de --split dev --out dev.jsonl
    speechwire data import hf      --dataset NAME_OR_DIR --split test --audio-column audio --text-column text --out-dir hf_test

The commands call `import_mustc`, `import_covost2` and `import_hf` (their parsers are in speechwire.cli).
"""

from __future__ import annotations

import csv
import io
import re
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import soundfile as sf
import soxr
import yaml

from speechwire.audio import SAMPLE_RATE, AudioError
from speechwire.data.manifest import ManifestError, Utterance, cached_audio_info, write_manifest


def _pairs(base_id: str, audio: Path, transcript: str, translation: str | None, tasks: Sequence[str],
           src: str, tgt: str | None, offset: float = 0.0, duration: float | None = None) -> list[Utterance]:
    """One Utterance per requested task; ids get a task suffix when both tasks are emitted."""
    out = []
    for task in tasks:
        if task == "st" and translation is None:
            continue
        uid = f"{base_id}_{task}" if len(tasks) > 1 else base_id
        out.append(Utterance(audio=str(audio), transcript=transcript, offset=offset, duration=duration,
                             translation=translation if task == "st" else None, src_lang=src,
                             tgt_lang=tgt if task == "st" else None, task=task, id=uid))
    return out


def _check_tasks(tasks: Sequence[str]) -> list[str]:
    tasks = list(dict.fromkeys(tasks))
    if not tasks or any(t not in ("asr", "st") for t in tasks):
        raise ValueError(f"tasks={tasks} must be a non-empty subset of ['asr', 'st']")
    return tasks


# --- MuST-C -------------------------------------------------------------------------------------


def import_mustc(root: str | Path, tgt_lang: str, split: str, out: str | Path,
                 tasks: Sequence[str] = ("st",), src_lang: str = "en") -> list[Utterance]:
    """MuST-C (`<root>/en-<tgt>/data/<split>/{wav/*.wav, txt/<split>.yaml, .en, .<tgt>}`) -> manifest.

    Args:
        root: the folder holding `en-<tgt>/` (or the `en-<tgt>` folder itself).
        tgt_lang: target language code (de, es, fr, it, ...).
        split: train, dev, tst-COMMON, tst-HE, ...
        out: the manifest to write.
        tasks: "asr" and/or "st"; with both, every segment gives two lines (ids `_asr`, `_st`).
        src_lang: source language of the talks.

    Returns:
        the utterances written (segments with offset/duration into the talk's wav).

    Raises:
        ManifestError: missing files, or yaml/text files whose line counts disagree.
    """
    tasks = _check_tasks(tasks)
    root = Path(root)
    pair = f"{src_lang}-{tgt_lang}"
    data = (root if root.name == pair else root / pair) / "data" / split
    txt = data / "txt"
    files = {"yaml": txt / f"{split}.yaml", src_lang: txt / f"{split}.{src_lang}", tgt_lang: txt / f"{split}.{tgt_lang}"}
    for f in files.values():
        if not f.is_file():
            raise ManifestError(f"MuST-C: {f} not found; --root must hold {pair}/data/{split}/txt")
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    segments = yaml.load(files["yaml"].read_text(encoding="utf-8"), Loader=loader) or []
    src_lines, tgt_lines = (files[lang].read_text(encoding="utf-8").splitlines() for lang in (src_lang, tgt_lang))
    if not len(segments) == len(src_lines) == len(tgt_lines):
        raise ManifestError(f"MuST-C {data}: {len(segments)} segments in {files['yaml'].name} but "
                            f"{len(src_lines)} / {len(tgt_lines)} lines in the .{src_lang} / .{tgt_lang} "
                            f"files; re-extract the corpus")
    utts: list[Utterance] = []
    seg_index: dict[str, int] = {}
    for n, (seg, src, tgt) in enumerate(zip(segments, src_lines, tgt_lines), 1):
        try:
            wav, offset, duration = seg["wav"], float(seg["offset"]), float(seg["duration"])
        except (KeyError, TypeError, ValueError):
            raise ManifestError(f"{files['yaml']} segment {n}: needs wav, offset and duration; got {seg!r}") from None
        audio = data / "wav" / wav
        if not audio.is_file():
            raise ManifestError(f"{files['yaml']} segment {n}: {audio} not found")
        stem = Path(wav).stem
        k = seg_index[stem] = seg_index.get(stem, -1) + 1
        utts += _pairs(f"{stem}_{k}", audio, src.strip(), tgt.strip(), tasks, src_lang, tgt_lang, offset, duration)
    write_manifest(out, utts)
    return utts


# --- CoVoST 2 -----------------------------------------------------------------------------------


def read_covost_tsv(path: Path) -> list[dict[str, str]]:
    """Rows of a CoVoST 2 split TSV (tab-separated, header, no quoting, backslash escapes)."""
    with path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE, escapechar="\\"))
    need = {"path", "sentence", "translation"}
    if rows and not need <= set(rows[0]):
        raise ManifestError(f"{path}: columns {sorted(rows[0])} lack {sorted(need - set(rows[0]))}; "
                            f"expected the output of CoVoST's get_covost_splits.py")
    return rows


def import_covost2(tsv_dir: str | Path, clips: str | Path, src_lang: str, tgt_lang: str, split: str,
                   out: str | Path, tasks: Sequence[str] = ("st",), skip_invalid: bool = False) -> list[Utterance]:
    """CoVoST 2 (`covost_v2.<src>_<tgt>.<split>.tsv` + Common Voice mp3 clips) -> manifest.

    Args:
        tsv_dir: folder with the split TSVs (columns path, sentence, translation, client_id).
        clips: Common Voice `<src>/clips` folder with the mp3 files named in `path`.
        src_lang: source language code (Common Voice code, e.g. en, fr, zh-CN).
        tgt_lang: target language code.
        split: train, dev or test.
        out: the manifest to write.
        tasks: "asr" and/or "st".
        skip_invalid: skip missing/undecodable clips with a warning instead of raising.

    Returns:
        the utterances written (durations read from the mp3 headers).
    """
    tasks = _check_tasks(tasks)
    tsv = Path(tsv_dir) / f"covost_v2.{src_lang}_{tgt_lang}.{split}.tsv"
    if not tsv.is_file():
        raise ManifestError(f"CoVoST 2: {tsv} not found; create it with CoVoST's get_covost_splits.py")
    utts: list[Utterance] = []
    bad: list[str] = []
    for n, row in enumerate(read_covost_tsv(tsv), 2):
        audio = Path(clips) / row["path"]
        try:
            duration = cached_audio_info(str(audio)).duration
        except AudioError as e:
            if not skip_invalid:
                raise ManifestError(f"{tsv.name} line {n}: {e}") from None
            bad.append(str(e))
            continue
        utts += _pairs(Path(row["path"]).stem, audio, row["sentence"], row["translation"], tasks,
                       src_lang, tgt_lang, duration=duration)
    if bad:
        warnings.warn(f"CoVoST 2 {tsv.name}: skipped {len(bad)} clip(s); first: {bad[0]}", stacklevel=2)
    write_manifest(out, utts)
    return utts


# --- Hugging Face datasets ----------------------------------------------------------------------


def _decode_hf_audio(value: Any, where: str) -> tuple[np.ndarray, int]:
    """(samples (S,) or (S, C), rate) from an undecoded {"bytes", "path"} or decoded {"array"} cell."""
    if isinstance(value, dict) and value.get("array") is not None:
        return np.asarray(value["array"], dtype=np.float32), int(value["sampling_rate"])
    if isinstance(value, dict) and (value.get("bytes") or value.get("path")):
        src = io.BytesIO(value["bytes"]) if value.get("bytes") else value["path"]
        try:
            x, sr = sf.read(src, dtype="float32")
        except (sf.SoundFileError, RuntimeError) as e:
            raise AudioError(f"{where}: cannot decode audio ({e})") from None
        return x, int(sr)
    raise AudioError(f"{where}: unsupported audio value {type(value).__name__}; expected an Audio column")


def import_hf(dataset: Any, out_dir: str | Path, audio_column: str = "audio", text_column: str = "text",
              translation_column: str | None = None, split: str | None = "train", config: str | None = None,
              src_lang: str = "en", tgt_lang: str | None = None, tasks: Sequence[str] | None = None,
              id_column: str | None = None, skip_invalid: bool = False) -> list[Utterance]:
    """A Hugging Face `datasets` audio dataset -> 16 kHz mono wav files + `<out_dir>/manifest.jsonl`.

    Args:
        dataset: a `datasets.Dataset`, a folder written by `save_to_disk`, or a hub name/path for
            `load_dataset(dataset, config, split=split)`.
        out_dir: output folder (wav files go to `<out_dir>/wav/`).
        audio_column: the Audio column (read undecoded and decoded with soundfile).
        text_column: the source-language transcript column.
        translation_column: the translation column (ST), if any.
        split, config: passed to load_dataset when `dataset` is a name.
        src_lang, tgt_lang: language codes; tgt_lang is needed for ST.
        tasks: default ["asr"], plus "st" when translation_column is given.
        id_column: column with utterance ids; default `<split>_<row index>`.
        skip_invalid: skip rows with undecodable/empty audio (warning) instead of raising.

    Returns:
        the utterances written.
    """
    try:
        import datasets
    except ImportError:
        raise ImportError("importing a Hugging Face dataset needs the `datasets` package: "
                          "pip install datasets") from None
    tasks = _check_tasks(tasks or (["asr", "st"] if translation_column else ["asr"]))
    if "st" in tasks and (translation_column is None or not tgt_lang):
        raise ValueError("task 'st' needs translation_column and tgt_lang")
    ds = dataset
    if isinstance(ds, (str, Path)):
        ds = datasets.load_from_disk(str(ds)) if (Path(ds) / "dataset_info.json").is_file() or \
            (Path(ds) / "dataset_dict.json").is_file() else datasets.load_dataset(str(ds), config, split=split)
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise ValueError(f"split {split!r} not in the dataset; available: {list(ds)}")
        ds = ds[split]
    missing = [c for c in (audio_column, text_column, translation_column, id_column) if c and c not in ds.column_names]
    if missing:
        raise ValueError(f"column(s) {missing} not in the dataset; columns are {ds.column_names}")
    if isinstance(ds.features.get(audio_column), datasets.Audio):
        ds = ds.cast_column(audio_column, datasets.Audio(decode=False))
    out_dir = Path(out_dir)
    (out_dir / "wav").mkdir(parents=True, exist_ok=True)
    utts: list[Utterance] = []
    bad: list[str] = []
    for i, row in enumerate(ds):
        uid = re.sub(r"[^\w.-]", "_", str(row[id_column]) if id_column else f"{split or 'data'}_{i:07d}")
        try:
            x, sr = _decode_hf_audio(row[audio_column], f"row {i} ({uid})")
            x = x.mean(axis=1) if x.ndim == 2 else x
            if x.size == 0 or not np.isfinite(x).all():
                raise AudioError(f"row {i} ({uid}): audio is empty or holds NaN/inf samples")
            if sr != SAMPLE_RATE:
                x = soxr.resample(x, sr, SAMPLE_RATE, quality="HQ")
        except AudioError as e:
            if not skip_invalid:
                raise AudioError(f"{e}; pass skip_invalid to skip such rows") from None
            bad.append(str(e))
            continue
        wav = out_dir / "wav" / f"{uid}.wav"
        sf.write(wav, np.clip(x, -1, 1), SAMPLE_RATE, subtype="PCM_16")
        utts += _pairs(uid, wav, row[text_column], row[translation_column] if translation_column else None, tasks,
                       src_lang, tgt_lang, duration=len(x) / SAMPLE_RATE)
    if bad:
        warnings.warn(f"skipped {len(bad)} row(s); first: {bad[0]}", stacklevel=2)
    write_manifest(out_dir / "manifest.jsonl", utts)
    return utts

