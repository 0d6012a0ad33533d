"""Text the demo corpus never had, read by flite voices: a trained run against plain Whisper.

    python benchmarks/other_voices.py RUN_DIR [--per-voice 15] [--out runs/other_voices]

The demo corpus is espeak-ng voices on dictionary sentences plus one real speaker (asterisk
prompts). This builds a held-out set from another synthesiser (Debian's `flite`: voices kal16,
awb, rms, slt) speaking lines of another text source (Debian's `fortunes-min`), then scores the
run (speechwire) and plain Whisper (the run's own Whisper checkpoint, its decoder) on the same
clips, and prints a markdown table per voice. Needs `apt-get install flite fortunes-min`.

Since `data synth` trains on flite awb, kal16 and rms too, only slt is a voice the current demo
model never heard; the corpus's own held-out set (`unseen_test.asr.jsonl`: Piper joe, festival HTS
slt, flite slt) is the demo's "unseen voices" row. docs/results/other_voices holds the numbers of
the previous (espeak-ng only) checkpoint, for which all four voices were new.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VOICES = ("kal16", "awb", "rms", "slt")
FORTUNES = Path("/usr/share/games/fortunes/fortunes")


TINY_LINES = ["The cat sat on the mat.", "It is a fine day.", "We like green tea.", "Dogs bark at night."]


def sentences(limit: int, tiny: bool = False) -> list[str]:
    """Plain one-line sentences of 4-16 words from the fortunes file, in file order (--tiny: fixed lines)."""
    if tiny:
        return TINY_LINES[:limit]
    if not FORTUNES.is_file():
        sys.exit(f"{FORTUNES} not found: apt-get install fortunes-min")
    out = []
    for block in FORTUNES.read_text(errors="ignore").split("\n%\n"):
        text = " ".join(block.split())
        if not re.fullmatch(r"[A-Z][A-Za-z ,'.?!-]+[.?!]", text) or not 4 <= len(text.split()) <= 16:
            continue
        out.append(text)
        if len(out) == limit:
            break
    return out


def build(out_dir: Path, per_voice: int, tiny: bool = False) -> Path:
    """flite wavs + manifest: sentence i goes to voice i % 4 (each clip a different line)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, text in enumerate(sentences(per_voice * len(VOICES), tiny)):
        voice = VOICES[i % len(VOICES)]
        wav = out_dir / f"flite-{i:03d}-{voice}.wav"
        if not wav.is_file():
            subprocess.run(["flite", "-voice", voice, "-t", text, "-o", str(wav)], check=True, capture_output=True)
        rows.append({"id": wav.stem, "audio": wav.name, "transcript": text, "task": "asr", "voice": voice})
    manifest = out_dir / "other_voices.asr.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run_dir", nargs="?", default=None)
    ap.add_argument("--per-voice", type=int, default=15)
    ap.add_argument("--out", default=None, help="folder for the clips and results (default: a temp folder)")
    ap.add_argument("--tiny", action="store_true", help="an untrained tiny run, 1 clip per voice: a smoke run (tests)")
    args = ap.parse_args()
    if args.tiny:
        from tiny import tiny_run

        args.per_voice, args.run_dir = 1, str(tiny_run(Path(tempfile.mkdtemp(prefix="other-voices-tiny-"))))
    elif args.run_dir is None:
        ap.error("give RUN_DIR (a trained run folder), or --tiny")
    import torch

    from speechwire.audio import load_audio
    from speechwire.data import load_manifest
    from speechwire.demo.baselines import PlainWhisper
    from speechwire.evaluate import generate_predictions
    from speechwire.metrics import wer
    from speechwire.model import SpeechLLM
    from speechwire.weights.resolve import resolve_model

    out = Path(args.out or tempfile.mkdtemp(prefix="other_voices-"))
    manifest = build(out, args.per_voice, args.tiny)
    utts = load_manifest(manifest)
    voice = {json.loads(line)["id"]: json.loads(line)["voice"] for line in manifest.read_text().splitlines()}
    model = SpeechLLM.from_pretrained(args.run_dir).eval()
    t0 = time.perf_counter()
    records, _ = generate_predictions(model, utts, model.cfg, progress=False)
    sw_s = time.perf_counter() - t0
    tiny_decode = (lambda ids: " ".join(f"<{i}>" for i in ids)) if args.tiny else None  # noqa: E731 (no tokenizer)
    whisper = PlainWhisper(resolve_model(model.cfg.encoder.model)[0], max_new_tokens=8 if args.tiny else 128,
                           decode=tiny_decode)
    t0 = time.perf_counter()
    plain = whisper.transcribe([load_audio(u.audio) for u in utts])
    wh_s = time.perf_counter() - t0
    rows = []
    for r, p in zip(records, plain):
        rows.append({**r, "whisper": p, "voice": voice[r["id"]]})
    (out / "predictions.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    print(f"`python benchmarks/other_voices.py {args.run_dir} --per-voice {args.per_voice}`; "
          f"{len(rows)} clips, torch threads {torch.get_num_threads()}; speechwire {sw_s:.0f} s, Whisper {wh_s:.0f} s\n")
    print("| voice | clips | speechwire WER % | plain Whisper WER % |\n|---|---:|---:|---:|")
    table = {}
    for v in (*VOICES, "all"):
        sel = [r for r in rows if v in ("all", r["voice"])]
        a = wer([r["reference"] for r in sel], [r["hypothesis"] for r in sel])["wer"] * 100
        b = wer([r["reference"] for r in sel], [r["whisper"] for r in sel])["wer"] * 100
        table[v] = {"clips": len(sel), "speechwire_wer": round(a, 1), "whisper_wer": round(b, 1)}
        print(f"| {v} | {len(sel)} | {a:.1f} | {b:.1f} |")
    (out / "metrics.json").write_text(json.dumps(table, indent=2))
    print(f"\nfiles: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
