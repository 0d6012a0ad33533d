"""Plain Whisper's WER per voice on the demo corpus's dev clips: which synthetic voices the frozen SFM hears.

    python scripts/whisper_by_voice.py [--data DIR] [--per-voice 40] [--out docs/results/voices]

Reads ``synth_dev`` (espeak-ng), ``voices_dev`` (the other train voices, augmented) and
``unseen_dev`` (the held-out voices, clean) of a corpus built by `speechwire data synth`, runs
plain Whisper tiny.en (its own decoder, as the demo's baseline) on up to ``--per-voice`` clips per
voice, and writes ``whisper_by_voice.{md,json}``. Dev clips only: the test sets stay unread.
A voice whose WER is far above the others' is speech the SFM does not hear: leave it out of training.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

from speechwire.data import load_manifest
from speechwire.data.synth import demo_data_dir
from speechwire.demo.baselines import PlainWhisper
from speechwire.metrics import score
from speechwire.weights.resolve import resolve_model


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=demo_data_dir())
    ap.add_argument("--per-voice", type=int, default=40)
    ap.add_argument("--out", type=Path, default=Path("docs/results/voices"))
    args = ap.parse_args(argv)
    groups: dict[tuple[str, str], list] = defaultdict(list)
    for name, family in (("synth_dev", "train"), ("voices_dev", "train"), ("unseen_dev", "held out")):
        path = args.data / f"{name}.asr.jsonl"
        if not path.is_file():
            print(f"skipping {path}: not built (speechwire data synth)", file=sys.stderr)
            continue
        for u in load_manifest(path):
            voice = u.meta.get("voice", "espeak-ng (all voices)")
            if len(groups[(family, voice)]) < args.per_voice:
                groups[(family, voice)].append(u)
    whisper = PlainWhisper(resolve_model("weights:whisper-tiny.en")[0])
    rows = []
    for (family, voice), utts in sorted(groups.items()):
        hyps, _ = whisper.run(utts, batch_size=8, progress=True, desc=voice)
        wer = score("asr", [u.transcript for u in utts], hyps)["wer"]
        rows.append({"voice": voice, "group": family, "clips": len(utts), "whisper_wer": round(100 * wer, 1)})
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "whisper_by_voice.json").write_text(json.dumps(rows, indent=1) + "\n")
    table = ["| voice | group | dev clips | plain Whisper tiny.en WER % |", "|---|---|---:|---:|"]
    table += [f"| {r['voice']} | {r['group']} | {r['clips']} | {r['whisper_wer']} |" for r in rows]
    text = f"`python scripts/whisper_by_voice.py --per-voice {args.per_voice}`\n\n" + "\n".join(table) + "\n"
    (args.out / "whisper_by_voice.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
