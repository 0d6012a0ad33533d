"""Build the demo corpus: synthetic English speech with German translations + real prompts.

Layout of ``out_dir`` (default ``~/.cache/speechwire/demo_data``)::

    synth/{train,dev,test}/synth-000042.wav      16 kHz mono 16-bit, espeak-ng + augmentation
    real/{train,dev,test}/real-vm-goodbye.wav    asterisk prompts, 8 -> 16 kHz
    voices/{train,dev}/synth-000042-v1.wav       the same sentence by another engine's voice, augmented
    unseen/{dev,test}/unseen-000007-piper-en.wav held-out voices (never trained on), clean
    real_aug/train/real-vm-goodbye-a2.wav        perturbed copies of the real train prompts
    synth_{split}.asr.jsonl  synth_{split}.st.jsonl  real_{split}.asr.jsonl
    voices_{train,dev}.{asr,st}.jsonl  unseen_{dev,test}.{asr,st}.jsonl  real_train_aug.asr.jsonl
    lm_text.txt                                  dictionary sentences outside dev/test (the n-gram LM's text)
    corpus.json                                  parameters, counts, hours, voices used

Rows of the other voices' manifests also carry ``voice`` and ``augment`` (extra.py).

Synthetic splits are cut BY SENTENCE from one seeded shuffle of the deduplicated pairs: test
takes the first ``num_test``, dev the next ``num_dev``, train the next ``num_train``, so test
and dev do not change when only ``num_train`` changes. Utterance ``i`` of that shuffle draws all
its randomness from ``default_rng([seed, i])``: the bytes do not depend on ``workers``.
Real prompts are split 60/20/20 by a hash of their text, independent of the seed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import soundfile as sf
import soxr
from tqdm import tqdm

from speechwire.audio import SAMPLE_RATE
from speechwire.data.synth import engines, extra, sources
from speechwire.data.synth.extra import wav_seconds, write_wav_atomic
from speechwire.data.synth.sources import MissingSystemDepsError, Prompt, SentencePair
from speechwire.data.synth.voice import draw_params, list_variants, list_voices, render, utterance_rng

CORPUS_VERSION = 1  # bump when the audio pipeline changes: stale partial builds are wiped
DEFAULT_OUT = Path("~/.cache/speechwire/demo_data")  # the demo corpus; demo_data_dir() also honours $SPEECHWIRE_CACHE
SPLITS = ("train", "dev", "test")
REAL_SPLIT_TENTHS = {"train": 6, "dev": 2, "test": 2}  # 60/20/20 by text hash
STATE_FILE = ".build_state.json"
LM_TEXT = "lm_text.txt"  # English sentences outside dev and test, one per line (align.lm_text)
EXTRA_VERSION = 1  # bump when the other voices' or the augmentation's pipeline changes
EXTRA_STATE_FILE = ".build_state_voices.json"
HELD_OUT_VERSION = 2  # bump when the held-out voices' rendering changes (2: Piper seeded per sentence)
HELD_OUT_STATE_FILE = ".build_state_unseen.json"


@dataclass(frozen=True)
class _Job:
    index: int  # position in the seeded shuffle: the utterance's seed
    utt_id: str
    split: str
    english: str
    german: str
    wav: Path
    seed: int
    voices: tuple[str, ...]
    variants: tuple[str, ...]
    max_seconds: float


@dataclass(frozen=True)
class _Result:
    job: _Job
    duration: float | None  # None: longer than max_seconds, not kept
    voice: str


def demo_data_dir() -> Path:
    """The demo corpus folder: `$SPEECHWIRE_CACHE/demo_data` when the variable is set, else DEFAULT_OUT
    (~/.cache/speechwire/demo_data), expanded."""
    from speechwire.weights.fetch import env_cache_dir

    env = env_cache_dir()
    return env / DEFAULT_OUT.name if env else DEFAULT_OUT.expanduser()


def _synth_one(job: _Job) -> _Result:
    """Render one utterance (or reuse its wav from an interrupted run)."""
    rng = utterance_rng(job.seed, job.index)
    params = draw_params(rng, job.voices, job.variants)
    if job.wav.is_file():
        duration = wav_seconds(job.wav)
    else:
        audio = render(job.english, params, rng)
        duration = len(audio) / SAMPLE_RATE
        if duration <= job.max_seconds:
            write_wav_atomic(job.wav, audio)
    return _Result(job, duration if duration <= job.max_seconds else None, params.voice_name)


def _run_jobs(fn: Callable[[Any], Any], jobs: list, workers: int, progress: bool,
              desc: str = "synthesising") -> Iterator[Any]:
    bar = tqdm(total=len(jobs), desc=desc, unit="utt", disable=not progress)
    if workers <= 1:
        results: Iterable[Any] = map(fn, jobs)
        pool = None
    else:
        pool = ProcessPoolExecutor(max_workers=workers)
        results = pool.map(fn, jobs, chunksize=4)
    try:
        for r in results:
            bar.update()
            yield r
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(cancel_futures=True)


def split_pairs(
    pairs: Sequence[SentencePair], num_train: int, num_dev: int, num_test: int, seed: int
) -> dict[str, list[tuple[int, SentencePair]]]:
    """Seeded sentence-level split: test, then dev, then train from one shuffle.

    Returns:
        split -> [(index in the shuffle, pair)], disjoint by sentence (pairs are deduplicated).

    Raises:
        ValueError: more sentences asked for than the dictionary holds.
    """
    total = num_train + num_dev + num_test
    if min(num_train, num_dev, num_test) < 0 or total > len(pairs):
        raise ValueError(
            f"synth corpus: asked for train={num_train} dev={num_dev} test={num_test} "
            f"sentences ({total}), the dictionary has {len(pairs)}; lower the sizes"
        )
    order = np.random.default_rng(seed).permutation(len(pairs))[:total]
    bounds = {"test": (0, num_test), "dev": (num_test, num_test + num_dev),
              "train": (num_test + num_dev, total)}  # fmt: skip
    return {s: [(i, pairs[int(order[i])]) for i in range(a, b)] for s, (a, b) in bounds.items()}


def real_split_of(text: str) -> str:
    """Split of a real prompt from a hash of its case-folded text (stable across seeds)."""
    bucket = int(hashlib.sha1(text.casefold().encode()).hexdigest()[:8], 16) % 10
    return "train" if bucket < 6 else "dev" if bucket < 8 else "test"


def _dedupe_prompts(prompts: list[Prompt]) -> list[Prompt]:
    seen: set[str] = set()
    out = []
    for p in prompts:
        if p.text.casefold() not in seen:
            seen.add(p.text.casefold())
            out.append(p)
    return out


def _build_real(
    out_dir: Path, max_seconds: float, progress: bool
) -> tuple[dict[str, list[dict[str, Any]]], int]:
    prompts = _dedupe_prompts(sources.load_asterisk_prompts())
    rows: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
    dropped = 0
    for p in tqdm(prompts, desc="real prompts", unit="utt", disable=not progress):
        split = real_split_of(p.text)
        utt_id = "real-" + p.name.replace("/", "-")
        rel = Path("real") / split / f"{utt_id}.wav"
        wav = out_dir / rel
        if not wav.is_file():
            audio, sr = sf.read(str(p.wav), dtype="float64", always_2d=True)
            audio = soxr.resample(audio.mean(axis=1), sr, SAMPLE_RATE, quality="HQ")
            write_wav_atomic(wav, np.round(np.clip(audio, -1, 1) * 32767).astype(np.int16))
        duration = wav_seconds(wav)
        if duration > max_seconds:
            dropped += 1
            continue
        rows[split].append({"id": utt_id, "audio": rel.as_posix(), "duration": round(duration, 4),
                            "transcript": p.text, "task": "asr"})  # fmt: skip
    return rows, dropped


def _write_jsonl_atomic(path: Path, rows: list[dict[str, Any]]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def _manifest_names(params: dict[str, Any]) -> list[str]:
    names = [f"synth_{s}.{t}.jsonl" for s in SPLITS for t in ("asr", "st")]
    names += [f"real_{s}.asr.jsonl" for s in SPLITS] if params["real"] else []
    names += [f"voices_{s}.{t}.jsonl" for s in ("train", "dev") for t in ("asr", "st")] if params["renditions"] else []
    names += [f"unseen_{s}.{t}.jsonl" for s in ("dev", "test") for t in ("asr", "st")] if params["held_out"] else []
    return names + (["real_train_aug.asr.jsonl"] if params["real_copies"] else []) + [LM_TEXT]


def _prepare_state(out_dir: Path, audio_key: dict[str, Any], state_file: str, folders: tuple[str, ...]) -> None:
    """Keep wavs of an interrupted build with the same audio key; else wipe `folders`. The other
    voices have their own state file, so adding voices keeps the espeak-ng audio."""
    state = out_dir / state_file
    old = json.loads(state.read_text()) if state.is_file() else None
    if old != audio_key:
        for sub in folders:
            shutil.rmtree(out_dir / sub, ignore_errors=True)
    state.write_text(json.dumps(audio_key, indent=1))


def build_corpus(
    out_dir: str | Path = DEFAULT_OUT,
    num_train: int = 3000,
    num_dev: int = 200,
    num_test: int = 200,
    seed: int = 0,
    workers: int | None = None,
    real: bool = True,
    progress: bool = True,
    max_seconds: float = 12.0,
    voices: Sequence[str] | None = None,
    renditions: int = 1,
    held_out: Sequence[str] | None = None,
    num_unseen_dev: int = 20,
    num_unseen_test: int = 40,
    real_copies: bool = True,
) -> dict[str, Any]:
    """Build (or reuse) the demo corpus under ``out_dir``; deterministic given ``seed``.

    Args:
        out_dir: output folder; created if missing.
        num_train, num_dev, num_test: synthetic sentences per split (before the length cut).
        seed: drives the sentence split and every voice/augmentation choice.
        workers: processes for synthesis; None = all CPU cores. Does not change the output.
        real: also convert the asterisk prompts (real speech, ASR only).
        progress: show tqdm bars.
        max_seconds: utterances longer than this are dropped (synthetic and real).
        voices: other-engine voices (`engines.TRAIN_VOICES` style specs) that read every train and
            dev sentence `renditions` more times, augmented; None = the installed ones of
            TRAIN_VOICES; () = espeak-ng only.
        renditions: extra clips per train/dev sentence by `voices` (0: none).
        held_out: voices never used in training that read the first `num_unseen_dev` dev and
            `num_unseen_test` test sentences, clean (the "unseen voices" sets); None = the installed
            ones of HELD_OUT_VOICES; () = none.
        real_copies: also write perturbed copies of each real train prompt (`extra.REAL_COPIES`).

    Returns:
        The summary written to ``out_dir/corpus.json`` (params, counts, hours, voices).

    Raises:
        MissingSystemDepsError: espeak-ng / trans-de-en / asterisk sounds missing.
        ValueError: more sentences asked for than available.
    """
    out_dir = Path(out_dir).expanduser()
    voices = engines.available(engines.TRAIN_VOICES) if voices is None else tuple(voices)
    held_out = engines.available(engines.HELD_OUT_VOICES) if held_out is None else tuple(held_out)
    clash = set(voices) & set(held_out)
    if clash or renditions < 0 or min(num_unseen_dev, num_unseen_test) < 0:
        raise ValueError(f"synth corpus: voices {sorted(clash)} are both trained on and held out" if clash else
                         "synth corpus: renditions, num_unseen_dev and num_unseen_test must be >= 0")
    engines.require(voices + held_out)
    params = {"num_train": num_train, "num_dev": num_dev, "num_test": num_test, "seed": seed,
              "max_seconds": max_seconds, "real": real, "version": CORPUS_VERSION,
              "voices": list(voices), "renditions": renditions if voices else 0, "held_out": list(held_out),
              "num_unseen_dev": min(num_unseen_dev, num_dev), "num_unseen_test": min(num_unseen_test, num_test),
              "real_copies": real_copies and real, "held_out_version": HELD_OUT_VERSION if held_out else 0}  # fmt: skip
    summary_path = out_dir / "corpus.json"
    if summary_path.is_file():
        old = json.loads(summary_path.read_text())
        if old.get("params") == params and all(
            (out_dir / n).is_file() for n in _manifest_names(params)
        ):
            print(f"reusing {out_dir} (corpus.json matches seed={seed}, sizes, max_seconds)")
            return old
    sources.check_system_deps(real=real)
    start = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    pairs = sources.load_sentence_pairs()
    splits = split_pairs(pairs, num_train, num_dev, num_test, seed)
    espeak_voices, variants = list_voices(), list_variants()
    if not espeak_voices:
        raise MissingSystemDepsError(
            "espeak-ng lists no English voice (`espeak-ng --voices=en`); reinstall it: "
            "sudo apt-get install --reinstall -y espeak-ng espeak-ng-data"
        )
    pairs_hash = hashlib.sha1("\n".join(p.english for p in pairs).encode()).hexdigest()
    _prepare_state(out_dir, {"version": CORPUS_VERSION, "seed": seed, "num_test": num_test,
                             "num_dev": num_dev, "voices": list(espeak_voices),
                             "variants": list(variants), "pairs_sha1": pairs_hash},
                   STATE_FILE, ("synth", "real"))  # fmt: skip

    jobs = [
        _Job(index=i, utt_id=f"synth-{i:06d}", split=split, english=p.english, german=p.german,
             wav=out_dir / "synth" / split / f"synth-{i:06d}.wav", seed=seed, voices=espeak_voices,
             variants=variants, max_seconds=max_seconds)  # fmt: skip
        for split in SPLITS for i, p in splits[split]
    ]
    workers = workers or os.cpu_count() or 1
    results = sorted(_run_jobs(_synth_one, jobs, workers, progress), key=lambda r: r.job.index)
    kept = [r for r in results if r.duration is not None]
    manifests: dict[str, list[dict[str, Any]]] = {}
    for split in SPLITS:
        asr = [{"id": r.job.utt_id, "audio": r.job.wav.relative_to(out_dir).as_posix(),
                "duration": round(r.duration or 0.0, 4), "transcript": r.job.english,
                "task": "asr"} for r in kept if r.job.split == split]  # fmt: skip
        st = [{**row, "translation": r.job.german, "src_lang": "en", "tgt_lang": "de", "task": "st"}
              for row, r in zip(asr, [r for r in kept if r.job.split == split])]  # fmt: skip
        manifests[f"synth_{split}.asr.jsonl"], manifests[f"synth_{split}.st.jsonl"] = asr, st
    dropped = {"synth": len(results) - len(kept), "real": 0}
    voice_jobs = extra.rendition_jobs(out_dir, splits, seed, voices, params["renditions"], max_seconds)
    voice_jobs += extra.unseen_jobs(out_dir, splits, seed, held_out, {"dev": params["num_unseen_dev"],
                                    "test": params["num_unseen_test"]}, max_seconds)  # fmt: skip
    if voice_jobs:
        _prepare_state(out_dir, {"version": EXTRA_VERSION, "seed": seed, "voices": list(voices),
                                 "held_out": list(held_out)}, EXTRA_STATE_FILE, ("voices", "unseen", "real_aug"))
        _prepare_state(out_dir, {"version": HELD_OUT_VERSION, "seed": seed, "held_out": list(held_out)},
                       HELD_OUT_STATE_FILE, ("unseen",))  # an older build's held-out clips are rendered again
    voice_results = list(_run_jobs(extra.render_voice_job, voice_jobs, workers, progress, desc="other voices"))
    for folder, splits_of in (("voices", ("train", "dev")), ("unseen", ("dev", "test"))):
        done = [r for r in voice_results if r.job.wav.parent.parent.name == folder]
        for split in splits_of if done else ():
            manifests[f"{folder}_{split}.asr.jsonl"], manifests[f"{folder}_{split}.st.jsonl"] = \
                extra.voice_rows(done, out_dir, split)
    dropped["voices"] = sum(r.duration is None for r in voice_results)
    if real:
        real_rows, dropped["real"] = _build_real(out_dir, max_seconds, progress)
        for split in SPLITS:
            manifests[f"real_{split}.asr.jsonl"] = real_rows[split]
        if params["real_copies"]:
            gsm_dir = sources.ASTERISK_SOUNDS_DIR if any(sources.ASTERISK_SOUNDS_DIR.glob("*.gsm")) else None
            manifests["real_train_aug.asr.jsonl"] = extra.build_real_augmented(
                out_dir, real_rows["train"], gsm_dir, seed, max_seconds, progress)
    for name, rows in manifests.items():
        _write_jsonl_atomic(out_dir / name, rows)
    # text for the alignment stage's n-gram LM (align.lm_text): every dictionary sentence but dev and test's
    held = {p.english for split in ("dev", "test") for _, p in splits[split]}
    lm_sentences = [p.english for p in pairs if p.english not in held]
    tmp = out_dir / "lm_text.txt.tmp"
    tmp.write_text("".join(t + "\n" for t in lm_sentences), encoding="utf-8")
    os.replace(tmp, out_dir / LM_TEXT)

    def hours(rows: list[dict[str, Any]]) -> float:
        return round(sum(r["duration"] for r in rows) / 3600, 4)

    counted = {n.removesuffix(".jsonl"): rows for n, rows in manifests.items() if ".st." not in n}
    summary = {
        "params": params,
        "counts": {k.removesuffix(".asr"): len(v) for k, v in counted.items()},
        "hours": {k.removesuffix(".asr"): hours(v) for k, v in counted.items()},
        "total_hours": round(sum(hours(v) for v in counted.values()), 4),
        "dropped_longer_than_max_seconds": dropped,
        "sentence_pairs_available": len(pairs),
        "lm_text_sentences": len(lm_sentences),
        "voices_available": list(espeak_voices),
        "variants_available": list(variants),
        "voices_used": dict(sorted(Counter([r.voice for r in kept] + [r.voice for r in voice_results
                                                                      if r.duration is not None]).items())),
        "held_out_voices": list(held_out),
        "manifests": sorted(manifests),
        "wall_time_s": round(time.perf_counter() - start, 1),
    }
    tmp = summary_path.with_name("corpus.json.tmp")
    tmp.write_text(json.dumps(summary, indent=1, ensure_ascii=False) + "\n")
    os.replace(tmp, summary_path)
    return summary

