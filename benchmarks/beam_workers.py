"""The alignment head's beam searches of one batch: in this process against `align.beam_workers`
worker processes (beam_pool.py), side by side in one run, on the same items.

    python benchmarks/beam_workers.py                        # the demo's ASR run, its 101 real test clips
    python benchmarks/beam_workers.py --workers 1 2 3 --json docs/results/speed/beam_workers/beam_stage.json

The head's outputs are computed once (encoder, adapter, head: the part before the search); then
each setting, its workers started, searches the same items in batches of --batch, --repeats
times, with a fresh copy of the LM and lexicon (their memos empty: memos carry little from one
clip to the next, so a server's searches of new clips run about this fast). The table gives
seconds per batch, items/s, the speed-up over one process and whether every n-best list is
identical to the one-process one. What a whole request gains depends on the search's share of
it: docs/serving.md.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np


def demo_items(run: str, n: int, threads: int) -> tuple[list[np.ndarray], tuple, dict]:
    """The head's log-probabilities of the first n real test recordings, its search setup and options."""
    import torch

    from speechwire.audio import load_audio
    from speechwire.data.batch import Batch
    from speechwire.data.synth import DEFAULT_OUT
    from speechwire.model import SpeechLLM

    torch.set_num_threads(threads)
    manifest = DEFAULT_OUT.expanduser() / "real_test.asr.jsonl"
    if not manifest.is_file():
        sys.exit(f"{manifest} not found: run `speechwire demo` first")
    rows = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()][:n]
    model = SpeechLLM.from_pretrained(run, ["align.beam_workers=1"]).eval()
    if model.cfg.align.decode != "beam":
        sys.exit(f"{run}: align.decode is {model.cfg.align.decode!r}; this benchmark needs a beam-search run")
    items: list[np.ndarray] = []
    searched = model.beam_search

    def record(batch_items, *setup, **options):
        items.extend(batch_items)
        return searched(batch_items, *setup, **options)

    model.beam_search = record
    for start in range(0, len(rows), 8):
        waves = [load_audio(manifest.parent / r["audio"]) for r in rows[start: start + 8]]
        with torch.inference_mode():
            model.generate(Batch.from_waveforms(waves, ["asr"] * len(waves), ["en"] * len(waves), [None] * len(waves)))
    a = model.cfg.align
    return items, model._search_setup()[:3], {"beam": a.beam_size, "lm_weight": a.lm_weight, "token_bonus": a.lm_bonus}


def tiny_items() -> tuple[list[np.ndarray], tuple, dict]:
    """Random peaky outputs over a 28-letter alphabet and a small character LM and lexicon."""
    from speechwire.decoding import ctc_nbest
    from speechwire.lexicon import WordScorer
    from speechwire.ngram import TokenNgramLM

    chars, texts = "abcdefghijklmnopqrstuvwxyz' ", ["ten of clubs", "the twelfth day", "of the day"]
    lm = TokenNgramLM.build([[chars.index(c) + 1 for c in t] for t in texts], 3, len(chars))
    words = WordScorer.build(chars, texts, order=1)
    words.weight, words.oov = 0.5, -4.0
    rng, items = np.random.default_rng(0), []
    for length in rng.integers(10, 60, 8):
        logits = rng.normal(0, 1, (length, len(chars) + 1))
        logits[np.arange(length), rng.integers(0, len(chars) + 1, length)] += 6
        items.append(logits - np.logaddexp.reduce(logits, axis=1, keepdims=True))
    return items, (ctc_nbest, lm, words), {"beam": 4, "lm_weight": 0.6, "token_bonus": 2.0}


def time_setting(items, setup, options, workers: int, batch: int, repeats: int) -> tuple[list[float], list]:
    """Seconds per batch (every batch of every repeat) and the n-best lists, with `workers` processes."""
    from speechwire.beam_pool import BatchSearch

    search = BatchSearch()
    setup = pickle.loads(pickle.dumps(setup))  # every setting starts with empty LM and lexicon memos
    try:
        search.start(*setup, workers)
        search([items[0][:1]] * workers, *setup, workers, **options)  # the workers are up
        times, results = [], []
        for _ in range(repeats):
            for i in range(0, len(items), batch):
                t0 = time.perf_counter()
                results += search(items[i: i + batch], *setup, workers, **options)
                times.append(time.perf_counter() - t0)
        return times, results[: len(items)]
    finally:
        search.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", default="src/speechwire/assets/demo_asr", help="a run folder with align.decode: beam")
    p.add_argument("--clips", type=int, default=101, help="real test recordings (the demo has 101)")
    p.add_argument("--batch", type=int, default=16, help="items per batch (a server's --max-batch)")
    p.add_argument("--workers", type=int, nargs="+", default=None, help="settings (default: 1, 2 and one per core)")
    p.add_argument("--repeats", type=int, default=1, help="passes over the items (later ones meet warm memos)")
    p.add_argument("--threads", type=int, default=2, help="torch threads for computing the head's outputs")
    p.add_argument("--json", default=None, help="write the numbers here")
    p.add_argument("--tiny", action="store_true", help="random outputs and a toy LM: a smoke run (tests)")
    args = p.parse_args(argv)

    from speechwire.beam_pool import available_cores

    if args.tiny:
        items, setup, options = tiny_items()
        args.batch, args.repeats, args.workers = 4, 1, [1, 2]
    else:
        items, setup, options = demo_items(args.run, args.clips, args.threads)
    settings = args.workers or sorted({1, 2, available_cores()})
    frames = sum(len(x) for x in items)
    print(f"{len(items)} items ({frames} head outputs) in batches of {args.batch}, {args.repeats} repeats, "
          f"{available_cores()} cores")
    rows, reference = [], None
    for workers in settings:
        times, results = time_setting(items, setup, options, workers, args.batch, args.repeats)
        reference = results if reference is None else reference
        rows.append({"workers": workers, "s_per_batch": statistics.median(times),
                     "items_per_s": args.repeats * len(items) / sum(times) if times else 0.0,
                     "identical": results == reference})
    base = rows[0]["s_per_batch"]
    print("\n| beam_workers | s per batch (median) | items/s | speed-up | n-best identical to 1 |")
    print("|---:|---:|---:|---:|---|")
    for r in rows:
        r["speedup"] = base / r["s_per_batch"] if r["s_per_batch"] else 0.0
        print(f"| {r['workers']} | {r['s_per_batch']:.3f} | {r['items_per_s']:.1f} | {r['speedup']:.2f}x | "
              f"{'yes' if r['identical'] else 'NO'} |")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
            "cpu": platform.processor() or platform.machine(), "cores": available_cores(),
            "load_average": os.getloadavg(), "items": len(items), "head_outputs": frames, "batch": args.batch,
            "repeats": args.repeats, "rows": rows}, indent=2) + "\n")
    return 0 if all(r["identical"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
