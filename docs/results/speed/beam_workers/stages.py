"""Where a request's time goes: the shipped ASR run on the first 16 real test recordings, twice,
one by one and in batches of 16, 2 torch threads; seconds per stage summed over the 32 requests.

    HF_HUB_OFFLINE=1 python docs/results/speed/beam_workers/stages.py
"""

import collections
import json
import time

import torch

import speechwire.model as model_module
from speechwire.audio import load_audio
from speechwire.data.batch import Batch
from speechwire.data.synth import DEFAULT_OUT
from speechwire.model import SpeechLLM

SECONDS: dict[str, float] = collections.defaultdict(float)


def timed(owner, name: str, stage: str) -> None:
    original = getattr(owner, name)

    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            SECONDS[stage] += time.perf_counter() - t0

    setattr(owner, name, wrapper)


def main() -> None:
    torch.set_num_threads(2)
    manifest = DEFAULT_OUT.expanduser() / "real_test.asr.jsonl"
    rows = [json.loads(line) for line in manifest.read_text().splitlines()][:16]
    waves = [load_audio(manifest.parent / r["audio"]) for r in rows]
    model = SpeechLLM.from_pretrained("src/speechwire/assets/demo_asr").eval()
    timed(SpeechLLM, "encode_audio", "encoder")
    timed(model_module, "ctc_nbest", "beam search")
    timed(model_module, "choose", "LLM rescoring")
    timed(SpeechLLM, "_decode", "LLM answer (prompt pass, draft, steps)")

    def run(group):
        batch = Batch.from_waveforms(group, ["asr"] * len(group), ["en"] * len(group), [None] * len(group))
        with torch.inference_mode():
            return model.generate(batch)

    run(waves[:2])  # warm-up
    print("| requests as | wall s | s per request | " + " | ".join(["encoder", "beam search", "LLM rescoring",
                                                                   "LLM answer (prompt pass, draft, steps)"]) + " |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, size in (("one by one", 1), ("batches of 16", 16)):
        SECONDS.clear()
        t0 = time.perf_counter()
        for _ in range(2):
            for i in range(0, len(waves), size):
                run(waves[i: i + size])
        wall = time.perf_counter() - t0
        stages = [SECONDS[k] for k in ("encoder", "beam search", "LLM rescoring", "LLM answer (prompt pass, draft, steps)")]
        print(f"| {label} | {wall:.2f} | {wall / 32:.3f} | " + " | ".join(f"{s:.2f}" for s in stages) + " |")


if __name__ == "__main__":
    main()
