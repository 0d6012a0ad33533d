"""Demo data: the synthetic + real speech corpus (built or reused), and a 5-tone corpus for --tiny.

    data_dir = demo_data_dir()                       # speechwire.data.synth: ~/.cache/speechwire/demo_data
    sets = ensure_demo_data(data_dir, "asr", train=False)
    sets.test   # {"synthetic": path, "real": path}  (ST: {"synthetic": path})
    sets.train, sets.dev                             # combined manifests, only when train=True
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from speechwire.audio import SAMPLE_RATE

NUM_TRAIN = 3000  # synthetic train sentences for --train, each read by espeak-ng and once more by another voice
DEV_SYNTH, DEV_REAL, DEV_UNSEEN = 60, 40, 60  # dev items scored during training (cheap on CPU)
REAL_REPEAT = 4  # without the perturbed copies (an old corpus): the 305 real train prompts are seen 4x per epoch


@dataclass
class DemoSets:
    """Manifest paths of one demo run."""

    test: dict[str, Path]  # test-set name ("synthetic", "real") -> manifest
    train: Path | None = None
    dev: Path | None = None
    info: dict = field(default_factory=dict)


def _test_names(task: str) -> dict[str, str]:
    if task == "asr":
        return {"synthetic": "synth_test.asr.jsonl", "real": "real_test.asr.jsonl",
                "unseen voices": "unseen_test.asr.jsonl"}
    return {"synthetic": "synth_test.st.jsonl", "unseen voices": "unseen_test.st.jsonl"}


def _existing(data_dir: Path, parts: list[tuple]) -> list[tuple]:
    """The parts whose manifest exists (a corpus built with --voices none has no voices_* files)."""
    return [p for p in parts if (data_dir / p[0]).is_file()]


def _concat(out: Path, parts: list[tuple[Path, int | None] | tuple[Path, int | None, str]]) -> Path:
    """Write the first `n` lines (all when None) of each manifest into `out` (same folder: the
    relative audio paths stay valid), appending the part's id suffix, if any, to its ids (the ASR
    and ST manifests share ids; a manifest repeated needs new ids). Written atomically."""
    lines: list[str] = []
    for path, n, *rest in parts:
        rows = [ln for ln in path.read_text().splitlines() if ln.strip()]
        rows = rows if n is None else rows[:n]
        suffix = rest[0] if rest else ""
        if suffix:
            rows = [json.dumps({**(r := json.loads(ln)), "id": r["id"] + suffix}, ensure_ascii=False) for ln in rows]
        lines += rows
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, out)
    return out


def ensure_demo_data(data_dir: Path, task: str, train: bool, progress: bool = True) -> DemoSets:
    """Build (or reuse) what the demo needs in `data_dir`.

    Without training only the test manifests are needed: an existing corpus is reused whatever
    its train size, a missing one is built with no train sentences (~2.5 min with every voice). With training the
    full corpus (3000 synthetic train sentences + real speech) is built, and the combined
    manifests `demo_{train,dev}.{task}.jsonl` are written (ASR: synthetic + real).

    Args:
        data_dir: corpus folder.
        task: "asr" or "st".
        train: also provide train and dev manifests.
        progress: show the builder's progress bars.

    Returns:
        DemoSets with absolute manifest paths.

    Raises:
        speechwire.data.synth.MissingSystemDepsError: espeak-ng, trans-de-en or the asterisk sounds
            are not installed (the message names the apt-get command).
    """
    from speechwire.data.synth import build_corpus

    data_dir = Path(data_dir).expanduser()
    tests = {k: data_dir / v for k, v in _test_names(task).items()}
    corpus = data_dir / "corpus.json"
    built = json.loads(corpus.read_text()).get("params", {}) if corpus.is_file() else {}
    if built.get("held_out") == []:  # built without held-out voices (--held-out none): no unseen-voices set to score
        tests.pop("unseen voices")
    needed = list(tests.values())
    if train:
        needed += [data_dir / f"synth_{s}.{task}.jsonl" for s in ("train", "dev")]
        needed += [data_dir / f"real_{s}.asr.jsonl" for s in ("train", "dev")] if task == "asr" else \
            [data_dir / "synth_train.asr.jsonl"]
    have_train = built.get("num_train", 0) > 0
    info: dict = {}
    if not all(p.is_file() for p in needed) or (train and not have_train):
        info = build_corpus(data_dir, num_train=NUM_TRAIN if train else 0, progress=progress)
    sets = DemoSets(test=tests, info=info)
    if train:
        sets.train, sets.dev = _train_dev(data_dir, task)
    return sets


def _train_dev(data_dir: Path, task: str) -> tuple[Path, Path]:
    """Write the combined train and dev manifests of `task`.

    ASR train: espeak-ng sentences, the same sentences by other voices (augmented), the real
    prompts and their perturbed copies. ST train: the synthetic clips with their translations and
    with their transcripts (the transcript teaches the adapter faster than translations alone).
    Dev: synthetic, real and unseen-voice clips, never trained on.
    """
    d = data_dir
    unseen_dev = [(f"unseen_dev.{task}.jsonl", DEV_UNSEEN)]
    if task == "asr":
        real = [("real_train.asr.jsonl", None), ("real_train_aug.asr.jsonl", None)]
        if not (d / "real_train_aug.asr.jsonl").is_file():
            real = [("real_train.asr.jsonl", None, f"-x{k}" if k else "") for k in range(REAL_REPEAT)]
        train = _existing(d, [("synth_train.asr.jsonl", None), ("voices_train.asr.jsonl", None)] + real)
        dev = _existing(d, [("synth_dev.asr.jsonl", DEV_SYNTH), ("real_dev.asr.jsonl", DEV_REAL)] + unseen_dev)
    else:
        train = _existing(d, [("synth_train.st.jsonl", None), ("synth_train.asr.jsonl", None, "-asr"),
                              ("voices_train.st.jsonl", None), ("voices_train.asr.jsonl", None, "-asr")])
        dev = _existing(d, [("synth_dev.st.jsonl", DEV_SYNTH + DEV_REAL)] + unseen_dev)
    as_paths = [(d / name, *rest) for name, *rest in train]
    return (_concat(d / f"demo_train.{task}.jsonl", as_paths),
            _concat(d / f"demo_dev.{task}.jsonl", [(d / name, *rest) for name, *rest in dev]))


# --- tiny corpus (--tiny: offline smoke run) ------------------------------------------------

TINY_TEXTS = [  # (English, German)
    ("one tone", "ein Ton"), ("two tones", "zwei Töne"), ("a high tone", "ein hoher Ton"),
    ("a low tone", "ein tiefer Ton"), ("three short tones", "drei kurze Töne"),
]


def build_tiny_corpus(data_dir: Path, task: str, seed: int = 0) -> DemoSets:
    """Five pure-tone clips (0.6-1.4 s) with short texts; train on all five, test on 3 + 2.

    Args:
        data_dir: folder to write `tiny/*.wav` and the manifests into.
        task: "asr" or "st" (ST lines carry the German text as `translation`).
        seed: noise seed.

    Returns:
        DemoSets: test {"synthetic": 3 clips, "real": 2 clips} for ASR ({"synthetic": 5} for ST),
        train = dev = all five.
    """
    import soundfile as sf

    data_dir = Path(data_dir)
    (data_dir / "tiny").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i, (en, de) in enumerate(TINY_TEXTS):
        seconds = 0.6 + 0.2 * i
        t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
        wave = 0.3 * np.sin(2 * np.pi * (220.0 * (i + 1)) * t) + 0.01 * rng.standard_normal(t.shape)
        rel = f"tiny/tone-{i}.wav"
        sf.write(data_dir / rel, wave.astype(np.float32), SAMPLE_RATE, subtype="PCM_16")
        row = {"id": f"tone-{i}", "audio": rel, "duration": round(len(t) / SAMPLE_RATE, 4), "transcript": en, "task": task}
        if task == "st":
            row.update(translation=de, src_lang="en", tgt_lang="de")
        rows.append(row)

    def write(name: str, items: list[dict]) -> Path:
        path = data_dir / name
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in items))
        return path

    train = write(f"tiny_train.{task}.jsonl", rows)
    if task == "asr":
        tests = {"synthetic": write("tiny_test_synth.asr.jsonl", rows[:3]),
                 "real": write("tiny_test_real.asr.jsonl", rows[3:])}
    else:
        tests = {"synthetic": write("tiny_test_synth.st.jsonl", rows)}
    return DemoSets(test=tests, train=train, dev=train)
