"""The copy test: can this frozen LLM read text handed to it where the speech goes?

    speechwire copytest configs/demo_asr.yaml --manifest dev.jsonl --limit 100

A perfectly aligned adapter would hand the LLM the token embeddings of the words spoken. The copy
test does exactly that: each utterance's transcript, embedded with the LLM's own table, goes
between <audio_start> and <audio_end> of the run's ASR prompt, and the LLM's answer is scored by
WER against the transcript. It bounds what any adapter can reach with this LLM and prompt (before
LoRA or longer training teach the LLM to read), so it is the first check when picking an LLM:
measured in docs/demo.md.
"""

from __future__ import annotations

import time
from pathlib import Path

from tqdm.auto import tqdm

from speechwire.data import load_manifest
from speechwire.evaluate import write_results
from speechwire.features import CachedEncoder
from speechwire.metrics import score
from speechwire.model import SpeechLLM
from speechwire.schema import ExperimentConfig, resolve_device


def copy_test(cfg: ExperimentConfig, manifest: str | Path, limit: int | None = None,
              out_dir: str | Path | None = None, progress: bool = True) -> dict:
    """Score the LLM of `cfg` on copying the transcripts of `manifest` (first `limit` lines).

    Returns:
        {"asr": WER metrics (speechwire.metrics), "llm": model, "prompt": the ASR instruction,
        "seconds": wall time}; with out_dir also predictions.jsonl + metrics.json there.
    """
    utts = [u for u in load_manifest(manifest) if u.transcript][: limit or None]
    if not utts:
        raise ValueError(f"{manifest}: no utterance with a transcript to copy")
    # the SFM is never used: a weightless stand-in keeps a big encoder from loading
    model = SpeechLLM(cfg, encoder=CachedEncoder(16, 50.0, "none", "copy test: no speech encoder"))
    model.to(resolve_device(cfg.train.device))
    texts = [u.transcript for u in utts]
    start = time.perf_counter()
    hyps: list[str] = []
    size = cfg.eval.batch_size
    for i in tqdm(range(0, len(texts), size), desc="copy test", disable=not progress, dynamic_ncols=True):
        hyps += model.generate_from_text(texts[i:i + size])
    metrics = {"asr": score("asr", texts, hyps), "llm": cfg.llm.model, "prompt": cfg.llm.asr_prompt,
               "seconds": round(time.perf_counter() - start, 2), "num_utterances": len(texts)}
    if out_dir is not None:
        write_results(out_dir, [{"id": u.id, "reference": u.transcript, "hypothesis": h} for u, h in zip(utts, hyps)],
                      metrics)
    return metrics
