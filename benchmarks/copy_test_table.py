"""The copy test's table in docs/demo.md: which frozen LLM, prompt and audio markers repeat a
transcript handed to them as token embeddings where the speech goes (real weights, CPU).

    python benchmarks/copy_test_table.py [--manifest ~/.cache/speechwire/demo_data/real_dev.asr.jsonl]
                                         [--out docs/results/copytest] [--threads 1]

Each row is `speechwire.copytest.copy_test` on configs/demo_asr.yaml with the row's llm.* overrides,
on the first N transcripts of the manifest (the demo's real dev prompts, `speechwire demo` builds
them); it writes OUT/<row>/predictions.jsonl + metrics.json and prints a markdown table and its
command line. Needs `speechwire weights fetch qwen2.5-coder-0.5b-instruct smollm2-135m-instruct`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from speechwire.config import load_config
from speechwire.copytest import copy_test
from speechwire.tables import markdown_table

ROOT = Path(__file__).resolve().parents[1]
MEAN, QUOTE = "mean embedding", "quote token"
ROWS = [  # (LLM, prompt, audio markers, clips)
    ("smollm2-135m-instruct", "Can you transcribe this audio?", MEAN, 40),
    ("qwen2.5-coder-0.5b-instruct", "Can you transcribe this audio?", MEAN, 40),
    ("smollm2-135m-instruct", "Repeat the text above exactly. Write nothing else.", MEAN, 40),
    ("smollm2-135m-instruct", "Write down exactly what was said above, nothing else.", MEAN, 40),
    ("smollm2-135m-instruct", "Repeat the text above exactly. Write nothing else.", QUOTE, 24),
    ("smollm2-135m-instruct", "Repeat the quoted text exactly.", QUOTE, 24),
    ("qwen2.5-coder-0.5b-instruct", "Repeat the text above exactly. Write nothing else.", QUOTE, 24),
]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--manifest", default=str(Path.home() / ".cache/speechwire/demo_data/real_dev.asr.jsonl"))
    p.add_argument("--config", default=str(ROOT / "configs" / "demo_asr.yaml"))
    p.add_argument("--out", default=str(ROOT / "docs" / "results" / "copytest"))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--tiny", action="store_true", help="one row on a tiny random LLM and tone transcripts (tests)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows_spec = ROWS
    tiny_overrides: list[str] = []
    if args.tiny:
        import tempfile

        from tiny import tiny_models, tone_manifest

        tmp = Path(tempfile.mkdtemp(prefix="copytest-tiny-"))
        llm_dir = tiny_models(tmp / "models")[1]
        args.manifest, args.out = str(tone_manifest(tmp / "data", 2)), str(tmp / "out")
        rows_spec = [(str(llm_dir), ROWS[-1][1], QUOTE, 2)]
        tiny_overrides = ["eval.max_new_tokens=4", "align.lm_text=[]", f"data.train_manifest={args.manifest}"]
    rows = []
    for k, (llm, prompt, markers, clips) in enumerate(rows_spec):
        model = llm if args.tiny else f"weights:{llm}"
        overrides = [f"llm.model={model}", f"llm.asr_prompt={prompt}", *tiny_overrides,
                     "llm.marker_init=" + ("'\"'" if markers == QUOTE else "null"), "train.device=cpu"]
        out = Path(args.out) / f"{k + 1}-{Path(llm).name}-{'quote' if markers == QUOTE else 'mean'}"
        t0 = time.perf_counter()
        metrics = copy_test(load_config(args.config, overrides), args.manifest, limit=clips, out_dir=out, progress=False)
        (out / "overrides.json").write_text(json.dumps(overrides, indent=1, ensure_ascii=False) + "\n")
        rows.append({"llm": llm, "prompt": prompt, "markers": markers, "clips": metrics["num_utterances"],
                     "wer": f"{metrics['asr']['wer_percent']:.1f}", "s": f"{time.perf_counter() - t0:.0f}"})
        print(f"{out.name}: WER {metrics['asr']['wer_percent']:.1f} %", file=sys.stderr, flush=True)
    table = "\n".join(markdown_table(rows, ["llm", "prompt", "markers", "clips", "wer", "s"],
                                     ["LLM", "prompt", "audio markers", "clips", "copy-test WER %", "seconds"],
                                     ["l", "l", "l", "r", "r", "r"]))
    command = "python benchmarks/copy_test_table.py " + " ".join(sys.argv[1:])
    text = f"`{command.strip()}` (config {Path(args.config).name}, manifest {Path(args.manifest).name}, CPU, " \
           f"{args.threads} thread(s))\n\n{table}\n"
    (Path(args.out) / "table.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
