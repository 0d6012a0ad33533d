"""The corpus's other voices: more renditions of the train sentences, held-out voice test sets,
and augmented copies of the real prompts.

    voices/{train,dev}/synth-000042-v1.wav   a train/dev sentence once more, by a TRAIN_VOICES voice, augmented
    unseen/{dev,test}/unseen-000007-piper.wav  dev/test sentences by each HELD_OUT_VOICES voice, clean
    real_aug/train/real-vm-goodbye-a2.wav    a real train prompt, perturbed (speed, pitch, room, noise, GSM)

Every random choice comes from ``default_rng([seed, index, stream])`` (`stream` names the
rendition or the voice), so the bytes do not depend on worker count or order. A held-out voice
is never used in training and its sentences are dev/test sentences: the "unseen" sets measure
speakers and sentences the model never heard.
"""

from __future__ import annotations

import io
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from speechwire.audio import SAMPLE_RATE
from speechwire.data.synth import engines
from speechwire.data.synth.augment import CLEAN, AugParams, augment, draw_aug, to_int16

RENDITION_STREAM, UNSEEN_STREAM, REAL_STREAM = 1000, 2000, 3000
# Perturbations of each real train prompt, one copy each (ASR recipes' speed 0.9/1.1, pitch -/+300
# cents, and the prompt's own GSM telephone encoding from asterisk-core-sounds-en-gsm).
REAL_COPIES = ("speed0.9", "speed1.1", "pitch-300", "pitch+300", "gsm")


@dataclass(frozen=True)
class VoiceJob:
    utt_id: str
    index: int  # the sentence's position in the seeded shuffle
    stream: int
    split: str
    english: str
    german: str
    wav: Path
    seed: int
    voices: tuple[str, ...]  # candidates: one is drawn
    clean: bool  # held-out sets: no augmentation
    max_seconds: float


@dataclass(frozen=True)
class VoiceResult:
    job: VoiceJob
    duration: float | None  # None: longer than max_seconds, not kept
    voice: str
    augment: str


def write_wav_atomic(path: Path, audio: np.ndarray) -> None:
    """16 kHz 16-bit mono wav, written to a temporary name and renamed: a kill never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    sf.write(tmp, audio, SAMPLE_RATE, subtype="PCM_16", format="WAV")
    tmp.replace(path)


def wav_seconds(path: Path) -> float:
    info = sf.info(str(path))
    return info.frames / info.samplerate


def render_voice_job(job: VoiceJob) -> VoiceResult:
    """Render one clip (or reuse its wav from an interrupted build)."""
    rng = np.random.default_rng([job.seed, job.index, job.stream])
    voice = job.voices[int(rng.integers(len(job.voices)))]
    params = CLEAN if job.clean else draw_aug(rng)
    if job.wav.is_file():
        duration = wav_seconds(job.wav)
    else:
        audio, sr = engines.speak(job.english, voice)
        pcm = augment(audio, sr, params, rng)
        duration = len(pcm) / SAMPLE_RATE
        if duration <= job.max_seconds:
            write_wav_atomic(job.wav, pcm)
    keep = duration <= job.max_seconds
    return VoiceResult(job, duration if keep else None, voice, "clean" if job.clean else params.label)


def rendition_jobs(out_dir: Path, splits: dict[str, list], seed: int, voices: tuple[str, ...], renditions: int,
                   max_seconds: float) -> list[VoiceJob]:
    """`renditions` more clips of every train and dev sentence, each by a voice drawn from `voices`."""
    return [VoiceJob(utt_id=f"synth-{i:06d}-v{k + 1}", index=i, stream=RENDITION_STREAM + k, split=split,
                     english=p.english, german=p.german, wav=out_dir / "voices" / split / f"synth-{i:06d}-v{k + 1}.wav",
                     seed=seed, voices=voices, clean=False, max_seconds=max_seconds)
            for split in ("train", "dev") for i, p in splits[split] for k in range(renditions)]


def unseen_jobs(out_dir: Path, splits: dict[str, list], seed: int, held_out: tuple[str, ...],
                sizes: dict[str, int], max_seconds: float) -> list[VoiceJob]:
    """The first ``sizes[split]`` dev and test sentences, by every held-out voice (clean)."""
    jobs = []
    for v, voice in enumerate(held_out):
        short = engines.Voice.parse(voice).name.split("_")[0].split("-")[0]
        for split, n in sizes.items():
            for i, p in splits[split][:n]:
                uid = f"unseen-{i:06d}-{engines.Voice.parse(voice).engine}-{short}"
                jobs.append(VoiceJob(utt_id=uid, index=i, stream=UNSEEN_STREAM + v, split=split, english=p.english,
                                     german=p.german, wav=out_dir / "unseen" / split / f"{uid}.wav", seed=seed,
                                     voices=(voice,), clean=True, max_seconds=max_seconds))
    return jobs


def voice_rows(results: list[VoiceResult], out_dir: Path, split: str) -> tuple[list[dict], list[dict]]:
    """(ASR rows, ST rows) of one split's kept clips, in job order."""
    asr, st = [], []
    for r in results:
        if r.job.split != split or r.duration is None:
            continue
        row = {"id": r.job.utt_id, "audio": r.job.wav.relative_to(out_dir).as_posix(),
               "duration": round(r.duration, 4), "transcript": r.job.english, "task": "asr",
               "voice": r.voice, "augment": r.augment}
        asr.append(row)
        st.append({**row, "translation": r.job.german, "src_lang": "en", "tgt_lang": "de", "task": "st"})
    return asr, st


# ---------------------------------------------------------------- real prompts, perturbed


def _real_copy(name: str, wav16k: np.ndarray, gsm_file: Path | None, rng: np.random.Generator) -> np.ndarray:
    """One perturbed copy of a real prompt (16 kHz float in, int16 out)."""
    if name == "gsm":
        if gsm_file is not None and gsm_file.is_file():
            proc = subprocess.run(["sox", str(gsm_file), "-t", "wav", "-e", "float", "-b", "32", "-r",
                                   str(SAMPLE_RATE), "-"], capture_output=True, timeout=60)
            if proc.returncode == 0:
                y, _ = sf.read(io.BytesIO(proc.stdout), dtype="float64", always_2d=True)
                return to_int16(y.mean(axis=1), -3.0)
        params = AugParams(1.0, 0.0, False, 0.0, 40.0, False, True, -3.0)  # no .gsm file: simulated telephone
    elif name.startswith("speed"):
        params = AugParams(float(name[5:]), 0.0, False, 0.0, 40.0, False, False, -3.0)
    else:  # pitch-300 with a room, pitch+300 with noise
        cents = float(name[5:])
        params = AugParams(1.0, cents, cents < 0, 0.4, 40.0 if cents < 0 else float(rng.uniform(10, 20)),
                           True, False, -3.0)
    return augment(wav16k, SAMPLE_RATE, params, rng)


def build_real_augmented(out_dir: Path, train_rows: list[dict[str, Any]], gsm_dir: Path | None, seed: int,
                         max_seconds: float, progress: bool) -> list[dict[str, Any]]:
    """`REAL_COPIES` perturbed copies of every real train prompt, as manifest rows (ids ``...-aN``)."""
    from tqdm import tqdm

    rows = []
    for row in tqdm(train_rows, desc="real prompts, perturbed", unit="utt", disable=not progress):
        source = out_dir / row["audio"]
        wav, _ = sf.read(str(source), dtype="float64")
        prompt_name = row["id"].removeprefix("real-")
        for k, copy in enumerate(REAL_COPIES):
            rel = Path("real_aug") / "train" / f"{row['id']}-a{k}.wav"
            path = out_dir / rel
            if not path.is_file():
                rng = np.random.default_rng([seed, REAL_STREAM + k, int.from_bytes(row["id"].encode()[-6:], "big")])
                gsm = _find_gsm(gsm_dir, prompt_name)
                write_wav_atomic(path, _real_copy(copy, wav, gsm, rng))
            duration = wav_seconds(path)
            if duration <= max_seconds:
                rows.append({**row, "id": f"{row['id']}-a{k}", "audio": rel.as_posix(),
                             "duration": round(duration, 4), "voice": "asterisk", "augment": copy})
    return rows


def _find_gsm(gsm_dir: Path | None, prompt_name: str) -> Path | None:
    """The prompt's GSM file: ids flatten ``digits/7`` to ``digits-7``, so try both spellings."""
    if gsm_dir is None:
        return None
    for candidate in (prompt_name, prompt_name.replace("-", "/", 1)):
        path = gsm_dir / f"{candidate}.gsm"
        if path.is_file():
            return path
    return None
