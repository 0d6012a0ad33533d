"""Speed side by side: speechwire against faster-whisper and plain Whisper on the same clips.

    python benchmarks/asr_speed.py                       # demo ASR run, real + synthetic + a 10-min recording
    python benchmarks/asr_speed.py --task st --limit 50  # demo ST run: int8 + prefix cache vs float32
    python benchmarks/asr_speed.py --tiny                # tiny random models, tone clips: seconds

Systems (ASR), each in its own process (so its peak resident memory is its own), one after
another, same torch/CTranslate2 threads:
- speechwire: the shipped demo run as `speechwire transcribe/evaluate/serve` load it now
  (llm.quantize=auto: int8 LLM on the CPU; prompt-prefix KV cache);
- speechwire one by one: the same, one clip per call (as faster-whisper runs and `speechwire
  transcribe` decodes a file); "no draft": also without eval.draft (the LLM's answer token by token);
- speechwire rescoring: the same with align.rescore=0.7 (the frozen LLM picks among the beam's best texts);
- speechwire float32 rows: the same with llm.output_precision=float32 (the Latin output rows as the
  layer stores them, the default before int8 rows);
- speechwire full vocab: the same with llm.output_vocab=full (every output row scored at each step,
  as before Latin-script answers were decoded over the Latin rows only);
- speechwire fp32: the same run with llm.quantize=none and no prefix cache (the path before both);
- faster-whisper int8 / float32: `faster_whisper.WhisperModel` on the CTranslate2 weights the
  run's encoder comes from (its `encoder.model: weights:NAME`; Whisper tiny.en for any other),
  greedy, English, no timestamps, one clip per call (its usual use; it pads every window to 30 s);
- plain HF Whisper: the demo's baseline (speechwire.demo.baselines.PlainWhisper), batched.
ST runs the four speechwire systems only.

Test sets: the demo's real and synthetic test sets (--limit per set) and one recording of about
--long-minutes made of real test clips with 0.5 s of silence between them; speechwire and plain
Whisper decode it as pieces cut at pauses (speechwire.longform), faster-whisper by its own 30 s
windows. Per system and set: real-time factor (model seconds / audio seconds; loading and
reading audio excluded), generated tokens/s, WER (or BLEU/chrF); per system: load seconds and
peak RSS. Writes OUT/{table.md,results.json,speed.png}; the machine's load average is recorded
before and after each system (2 shared cores are noisy: compare rows of one run only).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ASR_SYSTEMS = ("speechwire", "speechwire one by one", "speechwire one by one, no draft", "speechwire rescoring",
               "speechwire float32 rows", "speechwire full vocab", "speechwire fp32",
               "faster-whisper int8", "faster-whisper fp32", "plain HF whisper")
ST_SYSTEMS = ("speechwire", "speechwire rescoring", "speechwire float32 rows", "speechwire full vocab", "speechwire fp32")
# each speechwire system: the shipped run loaded with these overrides
SPEECHWIRE_OVERRIDES = {"speechwire": [], "speechwire one by one": ["eval.batch_size=1"],
                        "speechwire one by one, no draft": ["eval.batch_size=1", "eval.draft=false"],
                        "speechwire rescoring": ["align.rescore=0.7"],
                        "speechwire float32 rows": ["llm.output_precision=float32"],
                        "speechwire full vocab": ["llm.output_vocab=full"], "speechwire fp32": ["llm.quantize=none"]}
SILENCE_S = 0.5  # between clips of the long recording
SAMPLE_RATE = 16000


# --- test sets --------------------------------------------------------------------------------


def demo_sets(task: str, limit: int | None) -> dict[str, list[dict]]:
    """{set name: [{id, audio, reference, source, tgt_lang, duration}, ...]} from the demo corpus."""
    from speechwire.data import load_manifest, utterance_duration
    from speechwire.data.synth import demo_data_dir
    from speechwire.demo.data import ensure_demo_data

    sets = ensure_demo_data(demo_data_dir(), task, train=False, progress=False)
    names = ("real", "synthetic") if task == "asr" else ("synthetic",)
    return {name: items(load_manifest(sets.test[name])[:limit] if limit else load_manifest(sets.test[name]),
                        utterance_duration) for name in names if name in sets.test}


def items(utts, duration) -> list[dict]:
    return [{"id": u.id, "audio": str(u.audio), "reference": u.target, "source": u.transcript,
             "tgt_lang": u.tgt_lang, "duration": duration(u)} for u in utts]


def long_recording(clips: list[dict], minutes: float, out: Path) -> dict:
    """One wav of consecutive clips (cycled if needed) with silence between, about `minutes` long."""
    import soundfile as sf

    from speechwire.audio import load_audio

    gap = np.zeros(int(SILENCE_S * SAMPLE_RATE), np.float32)
    parts, refs, total, i = [], [], 0.0, 0
    while total < minutes * 60 and clips:
        c = clips[i % len(clips)]
        wav = load_audio(c["audio"])
        parts += [wav, gap]
        refs.append(c["reference"])
        total += len(wav) / SAMPLE_RATE + SILENCE_S
        i += 1
    wav = np.concatenate(parts) if parts else gap
    sf.write(out, wav, SAMPLE_RATE, subtype="PCM_16")
    return {"id": out.stem, "audio": str(out), "reference": " ".join(refs), "source": " ".join(refs),
            "tgt_lang": None, "duration": len(wav) / SAMPLE_RATE, "clips": i}


# --- systems (run inside a worker process) ------------------------------------------------------


class SpeechwireSystem:
    def __init__(self, run: str, task: str, overrides: list[str], threads: int) -> None:
        from speechwire.model import SpeechLLM

        self.model = SpeechLLM.from_pretrained(run, overrides).eval()
        if "llm.quantize=none" in overrides:
            self.model.prefix_cache = None  # the whole prompt prefilled per batch, as before issue 23
        self.task, self.bs = task, self.model.cfg.eval.batch_size

    def clips(self, waves: list[np.ndarray], langs: list) -> tuple[list[str], int]:
        out = self.model.generate_output(waves, task=self.task, tgt_lang=langs[0])
        return out.texts, out.num_tokens

    def long(self, wav: np.ndarray) -> tuple[str, int]:
        from speechwire.longform import Segment, encoder_limit_seconds, join_text, piece_audio, split_recording

        pieces = split_recording(wav, encoder_limit_seconds(self.model))
        segs, tokens = [], 0
        for i in range(0, len(pieces), self.bs):
            chunk = pieces[i:i + self.bs]
            out = self.model.generate_output([piece_audio(wav, p, 1) for p in chunk], task="asr")
            segs += [Segment(p.start_s, p.end_s, t) for p, t in zip(chunk, out.texts)]
            tokens += out.num_tokens
        return join_text(segs), tokens


class FasterWhisperSystem:
    def __init__(self, ct2_dir: str, compute_type: str, threads: int) -> None:
        from faster_whisper import WhisperModel

        self.model = WhisperModel(ct2_dir, device="cpu", compute_type=compute_type, cpu_threads=threads)
        self.bs = 1

    def _run(self, wav: np.ndarray) -> tuple[str, int]:
        segments, _ = self.model.transcribe(wav, language="en", beam_size=1, temperature=0.0,
                                            without_timestamps=True, condition_on_previous_text=False,
                                            vad_filter=False)
        segments = list(segments)  # decoding happens while iterating
        return " ".join(s.text.strip() for s in segments).strip(), sum(len(s.tokens) for s in segments)

    def clips(self, waves, langs) -> tuple[list[str], int]:
        text, n = self._run(waves[0])
        return [text], n

    def long(self, wav) -> tuple[str, int]:
        return self._run(wav)


class PlainWhisperSystem:
    def __init__(self, folder: str, tiny: bool) -> None:
        from speechwire.demo.baselines import PlainWhisper

        decode = (lambda ids: " ".join(f"<{i}>" for i in ids)) if tiny else None  # noqa: E731
        self.w = PlainWhisper(folder, max_new_tokens=8 if tiny else 128, decode=decode)
        self.special = set(getattr(self.w.model.generation_config, "suppress_tokens", None) or [])
        self.eot = int(self.w.model.generation_config.eos_token_id or 0)
        self.bs = 16

    def clips(self, waves, langs) -> tuple[list[str], int]:
        ids = self.w.generate(waves)  # the demo baseline's own call (English, transcribe)
        rows = [[int(t) for t in row if int(t) < self.eot] for row in ids]  # text tokens: below the specials
        return [self.w.decode(r) for r in rows], sum(len(r) for r in rows)

    def long(self, wav) -> tuple[str, int]:
        from speechwire.longform import piece_audio, split_recording

        pieces = split_recording(wav, 30.0)
        texts, tokens = [], 0
        for i in range(0, len(pieces), self.bs):
            t, n = self.clips([piece_audio(wav, p, 1) for p in pieces[i:i + self.bs]], [None])
            texts += t
            tokens += n
        return " ".join(x.strip() for x in texts), tokens


def build_system(name: str, plan: dict):
    threads = plan["threads"]
    if name.startswith("speechwire"):
        return SpeechwireSystem(plan["run"], plan["task"], SPEECHWIRE_OVERRIDES[name], threads=threads)
    if name.startswith("faster-whisper"):
        return FasterWhisperSystem(plan["ct2_dir"], "int8" if name.endswith("int8") else "float32", threads)
    return PlainWhisperSystem(plan["hf_whisper"], plan["tiny"])


def worker(name: str, plan: dict) -> dict:
    """Load one system, decode every set; times, tokens, texts and peak RSS."""
    import torch

    from speechwire.audio import load_audio
    from speechwire.memory import peak_memory_gib  # this worker process's peak RSS: one system's

    torch.set_num_threads(plan["threads"])
    t0 = time.perf_counter()
    system = build_system(name, plan)
    load_s = time.perf_counter() - t0
    result = {"system": name, "load_s": round(load_s, 1), "rss_after_load_gib": peak_memory_gib(), "sets": {}}
    for set_name, clips in plan["sets"].items():
        texts, tokens, seconds = {}, 0, 0.0
        if set_name == "long":
            wav = load_audio(clips[0]["audio"])
            t0 = time.perf_counter()
            text, tokens = system.long(wav)
            seconds = time.perf_counter() - t0
            texts[clips[0]["id"]] = text
        else:
            order = sorted(range(len(clips)), key=lambda i: clips[i]["duration"])  # little padding
            if clips:  # warm-up on one clip, as every server gets
                system.clips([load_audio(clips[order[0]]["audio"])], [clips[order[0]]["tgt_lang"]])
            for i in range(0, len(order), system.bs):
                idx = order[i:i + system.bs]
                waves = [load_audio(clips[k]["audio"]) for k in idx]
                t0 = time.perf_counter()
                out, n = system.clips(waves, [clips[k]["tgt_lang"] for k in idx])
                seconds += time.perf_counter() - t0
                tokens += n
                texts.update({clips[k]["id"]: t for k, t in zip(idx, out)})
        result["sets"][set_name] = {"seconds": round(seconds, 2), "tokens": tokens, "texts": texts}
    result["peak_rss_gib"] = peak_memory_gib()
    return result


# --- scoring and the table -----------------------------------------------------------------------


def score(task: str, clips: list[dict], texts: dict) -> dict:
    from speechwire.metrics import score as metric_score

    refs, hyps = [c["reference"] for c in clips], [texts.get(c["id"], "") for c in clips]
    if task == "asr":
        return {"wer": round(100 * metric_score("asr", refs, hyps)["wer"], 2)}
    m = metric_score("st", refs, hyps, srcs=[c["source"] for c in clips], tgt_lang=clips[0]["tgt_lang"])
    return {"bleu": round(m["bleu"], 2), "chrf": round(m["chrf"], 2)}


def table(results: list[dict], plan: dict) -> list[str]:
    task = plan["task"]
    metric = "WER %" if task == "asr" else "BLEU / chrF"
    lines = [f"| set | system | RTF | tokens/s | {metric} | peak RSS GiB | load s | load avg before/after |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for set_name, clips in plan["sets"].items():
        audio = sum(c["duration"] for c in clips)
        label = f"{set_name} ({len(clips) if set_name != 'long' else clips[0]['clips']} clips, {audio / 60:.1f} min)"
        for r in results:
            s = r["sets"][set_name]
            q = s["score"]
            qual = f"{q['wer']:.1f}" if task == "asr" else f"{q['bleu']:.1f} / {q['chrf']:.1f}"
            lines.append(f"| {label} | {r['system']} | {s['seconds'] / max(audio, 1e-9):.3f} | "
                         f"{s['tokens'] / max(s['seconds'], 1e-9):.1f} | {qual} | {r['peak_rss_gib']:.2f} | "
                         f"{r['load_s']:.0f} | {r['load_before']:.1f} / {r['load_after']:.1f} |")
    return lines


def plot(results: list[dict], plan: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = list(plan["sets"])
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    width = 0.8 / max(1, len(results))
    for k, r in enumerate(results):
        audio = [sum(c["duration"] for c in plan["sets"][s]) for s in sets]
        rtf = [r["sets"][s]["seconds"] / max(a, 1e-9) for s, a in zip(sets, audio)]
        axes[0].bar(np.arange(len(sets)) + k * width, rtf, width, label=r["system"])
    axes[0].set_xticks(np.arange(len(sets)) + 0.4 - width / 2, sets)
    axes[0].set_ylabel("real-time factor (lower is faster)")
    axes[0].legend(fontsize=8)
    axes[1].bar([r["system"] for r in results], [r["peak_rss_gib"] for r in results], color="gray")
    axes[1].set_ylabel("peak RSS (GiB)")
    axes[1].tick_params(axis="x", labelrotation=25, labelsize=8)
    fig.suptitle(f"{plan['task'].upper()} on CPU, {plan['threads']} threads")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- the orchestrating process -------------------------------------------------------------------


def tiny_plan(tmp: Path, task: str) -> dict:
    """Tiny random Whisper (also converted for CTranslate2) + LLM, an untrained run, tone clips."""
    from tiny import tiny_models, tiny_run

    from speechwire.data import load_manifest, utterance_duration
    from speechwire.demo.data import build_tiny_corpus

    sets = build_tiny_corpus(tmp / "data", task)
    run = tiny_run(tmp)
    enc, _ = tiny_models(tmp / "models")
    test = {n: items(load_manifest(p), utterance_duration) for n, p in sets.test.items()}
    test["long"] = [long_recording(test["synthetic"], 0.1, tmp / "long.wav")] if task == "asr" else None
    return {"run": str(run), "hf_whisper": str(enc), "sets": {k: v for k, v in test.items() if v}}


def real_plan(args, tmp: Path) -> dict:
    from speechwire.demo.main import asset_dir
    from speechwire.weights.fetch import fetch_artifact
    from speechwire.weights.resolve import resolve_model

    sets = demo_sets(args.task, args.limit or None)
    if args.task == "asr" and args.long_minutes > 0:
        out = Path(args.out) / "long_recording.wav" if args.keep_long else tmp / "long_recording.wav"
        sets["long"] = [long_recording(sets["real"], args.long_minutes, out)]
    plan = {"run": args.run or str(asset_dir(args.task)), "sets": sets}
    if args.task == "asr":
        sfm = run_sfm(Path(plan["run"]))
        plan["ct2_dir"] = str(fetch_artifact(sfm))
        plan["hf_whisper"] = resolve_model(f"weights:{sfm}")[0]
        plan["sfm"] = sfm
    return plan


def run_sfm(run: Path) -> str:
    """The pinned Whisper a run's encoder comes from (`encoder.model: weights:NAME`), which faster-whisper
    and plain Whisper then run: the same SFM on both sides. Whisper tiny.en for a run whose encoder is
    a local folder or hub id (no CTranslate2 weights of it to hand)."""
    from speechwire.config import load_config
    from speechwire.model import CONFIG_NAME
    from speechwire.weights.fetch import ARTIFACTS

    ref = load_config(run / CONFIG_NAME).encoder.model
    name = ref.removeprefix("weights:")
    return name if ref.startswith("weights:") and name in ARTIFACTS and name.startswith("whisper") else "whisper-tiny.en"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--task", choices=["asr", "st"], default="asr")
    ap.add_argument("--run", default=None, help="run folder (default: the shipped demo checkpoint)")
    ap.add_argument("--limit", type=int, default=0, help="clips per test set (0: all)")
    ap.add_argument("--long-minutes", type=float, default=10.0, help="length of the long recording (0: none)")
    ap.add_argument("--keep-long", action="store_true", help="write the long recording into --out")
    ap.add_argument("--systems", nargs="*", default=None, help="subset of the systems, by name")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "docs" / "results" / "speed"))
    ap.add_argument("--tiny", action="store_true", help="tiny random models and tone clips (a smoke run)")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--plan", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if args.worker:  # one system, in its own process
        plan = json.loads(Path(args.plan).read_text())
        print(json.dumps(worker(args.worker, plan)))
        return 0

    systems = args.systems or (ASR_SYSTEMS if args.task == "asr" else ST_SYSTEMS)
    if args.tiny:  # faster-whisper needs Whisper's real tokenizer and special tokens: no tiny random stand-in;
        # the tiny run's head decodes greedily, and rescoring needs a beam
        systems = [s for s in systems if not s.startswith("faster-whisper") and s != "speechwire rescoring"]
    unknown = [s for s in systems if s not in (ASR_SYSTEMS if args.task == "asr" else ST_SYSTEMS)]
    if unknown:
        ap.error(f"unknown system(s) {unknown} for --task {args.task}; choose from "
                 f"{list(ASR_SYSTEMS if args.task == 'asr' else ST_SYSTEMS)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/asr_speed.py " + " ".join(argv if argv is not None else sys.argv[1:])
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        plan = tiny_plan(tmp, args.task) if args.tiny else real_plan(args, tmp)
        plan.update(task=args.task, threads=args.threads, tiny=args.tiny)
        (tmp / "plan.json").write_text(json.dumps(plan))
        results = []
        for name in systems:
            before = os.getloadavg()[0]
            proc = subprocess.run([sys.executable, __file__, "--worker", name, "--plan", str(tmp / "plan.json")],
                                  capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
            if proc.returncode != 0:
                sys.exit(f"{name} failed:\n{proc.stderr[-3000:]}")
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            r.update(load_before=before, load_after=os.getloadavg()[0])
            for set_name, clips in plan["sets"].items():
                r["sets"][set_name]["score"] = score(args.task, clips, r["sets"][set_name]["texts"])
            results.append(r)
            timing = ", ".join(f"{k} {v['seconds']} s" for k, v in r["sets"].items())
            print(f"{name}: done ({timing})", file=sys.stderr, flush=True)
    head = (f"`{command.strip()}`  \n{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"{args.threads} threads per system; run {Path(plan['run']).name}"
            f"{'; faster-whisper and plain Whisper: ' + plan['sfm'] if plan.get('sfm') else ''}; "
            "RTF = model seconds / audio seconds (load and audio reading excluded); "
            "tokens/s = generated tokens / model seconds")
    lines = [head, "", *table(results, plan)]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.tiny or args.out != ap.get_default("out"):
        (out / "table.md").write_text(text)
        (out / "results.json").write_text(json.dumps({"command": command, "sfm": plan.get("sfm"), "results": results,
                                                      "sets": {k: [{**c, "audio": Path(c["audio"]).name} for c in v]
                                                               for k, v in plan["sets"].items()}},
                                                     indent=1, ensure_ascii=False) + "\n")
        plot(results, plan, out / "speed.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
