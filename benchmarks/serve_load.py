"""Load test of `speechwire serve`: requests/s and latency with dynamic batching on and off.

    python benchmarks/serve_load.py --run runs/demo-asr                 # after `speechwire demo`
    python benchmarks/serve_load.py --run runs/demo-asr --concurrency 1 4 16 --files 16 --threads 2

The run's model is loaded once and served in-process on a random loopback port, first with
batching off (--max-batch 1: one-by-one decoding), then on (--max-batch N). At each concurrency
level C, C client threads send transcription requests back to back (closed loop) through the
official OpenAI client until `requests` have been answered. The same files are also decoded the
way `speechwire transcribe` decodes them (one file after another, model already loaded), for
audio-seconds per second. Prints a markdown table (and --json writes the numbers).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch


def demo_files(n: int) -> list[Path]:
    """The first n recordings of the demo's real-speech test set (~/.cache/speechwire/demo_data)."""
    from speechwire.data.synth import DEFAULT_OUT

    manifest = DEFAULT_OUT.expanduser() / "real_test.asr.jsonl"
    if not manifest.is_file():
        sys.exit(f"{manifest} not found: run `speechwire demo` first, or pass --audio FILES")
    rows = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
    return [manifest.parent / r["audio"] for r in rows[:n]]


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, int(round(q / 100 * len(xs) + 0.5)) - 1))]


def load_level(client, files: list[Path], durations: dict, concurrency: int, requests: int) -> dict:
    """`requests` transcriptions from `concurrency` threads in a closed loop; throughput and latency."""
    jobs = [files[i % len(files)] for i in range(requests)]
    texts: dict[int, str] = {}

    def ask(i: int) -> float:
        t0 = time.perf_counter()
        with open(jobs[i], "rb") as fh:
            texts[i] = client.audio.transcriptions.create(file=fh, model="run").text
        return time.perf_counter() - t0

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        latencies = list(pool.map(ask, range(requests)))
    wall = time.perf_counter() - t0
    return {"concurrency": concurrency, "requests": requests, "wall_s": round(wall, 2),
            "requests_per_s": round(requests / wall, 3),
            "p50_s": round(statistics.median(latencies), 2), "p95_s": round(percentile(latencies, 95), 2),
            "audio_s_per_s": round(sum(durations[f] for f in jobs) / wall, 2),
            "texts": {str(jobs[i]): texts[i] for i in range(requests)}}


def transcribe_baseline(model, files: list[Path], durations: dict) -> dict:
    """What `speechwire transcribe RUN files...` does once the model is loaded: one file after another."""
    from speechwire.audio import load_audio
    from speechwire.longform import join_text, transcribe_long

    transcribe_long(model, load_audio(files[0]))  # warm-up, as the servers get
    t0 = time.perf_counter()
    texts = {str(f): join_text(transcribe_long(model, load_audio(f), batch_size=model.cfg.eval.batch_size))
             for f in files}
    wall = time.perf_counter() - t0
    return {"wall_s": round(wall, 2), "files": len(files), "audio_s_per_s": round(sum(durations.values()) / wall, 2),
            "texts": texts}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", default="runs/demo-asr", help="run folder (`speechwire demo` writes runs/demo-asr)")
    p.add_argument("--audio", nargs="*", default=None, help="audio files (default: the demo's real test set)")
    p.add_argument("--files", type=int, default=16, help="how many demo files")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--requests", type=int, default=0, help="requests per level (default max(8, 2 C))")
    p.add_argument("--max-batch", type=int, default=16)
    p.add_argument("--max-wait-ms", type=float, default=10.0)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (1 is faster on a busy machine)")
    p.add_argument("--beam-workers", type=int, default=1, help="as `speechwire serve --beam-workers` (0: one per core)")
    p.add_argument("--decode-silence", action="store_true", help="as `speechwire serve --decode-silence` (no VAD check)")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="config override")
    p.add_argument("--skip-baseline", action="store_true", help="do not time the transcribe path")
    p.add_argument("--json", default=None, help="write the numbers here")
    p.add_argument("--tiny", action="store_true", help="an untrained tiny run, tone clips, C = 1, 2: a smoke run (tests)")
    args = p.parse_args(argv)
    if args.tiny:
        import tempfile

        from tiny import tiny_run, tone_manifest

        tmp = Path(tempfile.mkdtemp(prefix="serve-load-tiny-"))
        args.run = str(tiny_run(tmp))
        manifest = tone_manifest(tmp / "data", 2)
        args.audio = [str(manifest.parent / json.loads(line)["audio"]) for line in manifest.read_text().splitlines()]
        args.concurrency, args.requests, args.max_batch = [1, 2], 2, 2

    import openai

    from speechwire.audio import audio_info
    from speechwire.model import SpeechLLM
    from speechwire.serve.app import create_app
    from speechwire.serve.run import describe_run
    from speechwire.serve.server import BackgroundServer

    torch.set_num_threads(args.threads)
    files = [Path(f) for f in args.audio] if args.audio else demo_files(args.files)
    durations = {f: audio_info(f).duration for f in files}
    model = SpeechLLM.from_pretrained(args.run, [f"align.beam_workers={args.beam_workers}", *args.overrides]).eval()
    run = describe_run(args.run, model.cfg)
    results: dict = {"command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
                     "cpu": platform.processor() or platform.machine(), "threads": args.threads,
                     "load_average": os.getloadavg(), "llm_dtype": model.cfg.llm.dtype,
                     "llm_quantized": getattr(model, "llm_quantized", "none"), "prefix_cache": model.prefix_cache is not None,
                     "beam_workers": model.cfg.align.beam_workers, "skip_silent": not args.decode_silence,
                     "files": len(files), "audio_seconds": round(sum(durations.values()), 1), "levels": []}
    if not args.skip_baseline:
        results["transcribe"] = transcribe_baseline(model, files, durations)
    for batching, max_batch in (("off", 1), ("on", args.max_batch)):
        app = create_app(model, run, max_batch=max_batch, max_wait_ms=args.max_wait_ms, skip_silent=not args.decode_silence)
        with BackgroundServer(app) as server:
            client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=3600)
            with open(files[0], "rb") as fh:  # warm-up
                client.audio.transcriptions.create(file=fh, model="run")
            for c in args.concurrency:
                app.state.batcher.batch_sizes.clear()
                level = load_level(client, files, durations, c, args.requests or max(8, 2 * c))
                sizes = app.state.batcher.batch_sizes
                mean_batch = sum(k * v for k, v in sizes.items()) / max(1, sum(sizes.values()))
                level.update(batching=batching, mean_batch=round(mean_batch, 2))
                results["levels"].append(level)
                print(f"batching {batching} C={c}: {level['requests_per_s']} req/s, p50 {level['p50_s']} s, "
                      f"p95 {level['p95_s']} s, mean batch {level['mean_batch']}", flush=True)
    results["load_average_after"] = os.getloadavg()
    print_table(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, ensure_ascii=False))
    return 0


def print_table(r: dict) -> None:
    print(f"\n`{r['command']}`  \n{r['files']} files, {r['audio_seconds']} s of audio; torch threads {r['threads']}; "
          f"LLM {r['llm_dtype']}, quantised: {r.get('llm_quantized', 'none')}, prefix cache: {r.get('prefix_cache', False)}; "
          f"load average before/after {r['load_average'][0]:.1f}/{r['load_average_after'][0]:.1f}\n")
    print("| concurrency | batching | requests | req/s | p50 latency s | p95 latency s | audio s/s | mean batch |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for lv in r["levels"]:
        print(f"| {lv['concurrency']} | {lv['batching']} | {lv['requests']} | {lv['requests_per_s']} | {lv['p50_s']} | "
              f"{lv['p95_s']} | {lv['audio_s_per_s']} | {lv['mean_batch']} |")
    off = {lv["concurrency"]: lv for lv in r["levels"] if lv["batching"] == "off"}
    on = {lv["concurrency"]: lv for lv in r["levels"] if lv["batching"] == "on"}
    print("\n| concurrency | req/s on / off | identical texts on vs off |")
    print("|---:|---:|---:|")
    for c in sorted(set(off) & set(on)):
        same = [on[c]["texts"][f] == off[c]["texts"].get(f) for f in on[c]["texts"] if f in off[c]["texts"]]
        print(f"| {c} | {on[c]['requests_per_s'] / off[c]['requests_per_s']:.2f}x | {sum(same)}/{len(same)} |")
    if "transcribe" in r:
        t = r["transcribe"]
        print(f"\n`speechwire transcribe` path (model loaded, files one after another): {t['files']} files in "
              f"{t['wall_s']} s = {t['audio_s_per_s']} audio s/s")


if __name__ == "__main__":
    sys.exit(main())
