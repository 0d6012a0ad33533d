"""The GPU check: speechwire at the paper's sizes on one GPU, with random weights (nothing to download).

    python scripts/gpu_check.py                      # one H100: <= 8 minutes; writes gpu_check.json + .md
    python scripts/gpu_check.py --cpu --tiny         # the same steps on CPU with tiny shapes (the test suite runs it)

What it runs, in order; each step's numbers (or its error) land in one JSON and one markdown table:
1. `pytest -m gpu`: the tests marked for a CUDA device (skipped with --cpu: the suite runs them there).
2. bf16 training steps of SpeechLLM with random weights at the paper's shapes: an encoder with
   Whisper large-v3's shapes (d=1280, 32 layers, 128 mels) and one with w2v-BERT 2.0's (SeamlessM4T
   v2 speech encoder: d=1024, 24 conformer layers, length adaptor), an LLM with Llama-3.1-8B's
   shapes (d=4096, 32 layers, FFN 14336, 32/8 heads, vocab 128256), each adapter (base, conv, cif,
   ctc, wlqformer; ctc's head is vocab-wide): utterances/s, target tokens/s, peak GPU memory and
   model-FLOPs utilisation (MFU; FLOPs = 2 x encoder params x frames + 4 x LLM params x positions
   (forward + the activation gradients: the LLM is frozen) + 6 x adapter params x adapter positions,
   attention's quadratic term left out, so MFU is a lower bound; peak = the card's dense bf16).
3. Batched greedy generation (the adapter untrained, so every answer runs to --gen-tokens): tokens/s.
4. Launchers: a 1-process `torchrun` and an `accelerate launch --use_fsdp` of a few training
   steps of a small SpeechLLM (this script's --child mode), each must finish and report a finite loss.

The machine needs torch, transformers, accelerate and peft (it has them). speechwire's other
dependencies (pyyaml, numpy, safetensors, tqdm come with transformers) are carried as wheels:
on a connected machine with the same Python,

    pip download -d wheels soundfile soxr jiwer sacrebleu whisper-normalizer==0.1.15 gguf sentencepiece \
        matplotlib silero-vad==6.2.3 submitit fastapi uvicorn python-multipart pytest
    # then, on the GPU machine, from the repository root:
    pip install --no-index --find-links wheels --no-deps -e . && pip install --no-index --find-links wheels \
        soundfile soxr jiwer sacrebleu whisper-normalizer gguf sentencepiece submitit pytest

Random weights are built directly on the device in bf16 (from_config under `torch.device`), never
on the CPU: an 8B model initialised on CPU would take minutes. The script replaces speechwire's
two hub loaders (model.load_llm, model.load_tokenizer) for that, and passes the encoder in; the
SpeechLLM, its adapters, its forward, loss and generate are speechwire's own.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ADAPTERS = ("base", "conv", "cif", "ctc", "wlqformer")
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "B200": 2250.0}  # dense
REPO = Path(__file__).resolve().parents[1]


# --- shapes -------------------------------------------------------------------------------------


def llm_config(tiny: bool, vocab: int):
    """Llama-3.1-8B's shapes (or a tiny Llama)."""
    from transformers import LlamaConfig

    if tiny:
        return LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                           tie_word_embeddings=False)
    return LlamaConfig(vocab_size=max(vocab, 128256), hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=131072,
                       rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=False)


def build_encoder(sfm: str, tiny: bool, device: str, dtype: torch.dtype):
    """A speechwire encoder around a randomly initialised HF module with the SFM's shapes."""
    with torch.device(device):
        if sfm == "whisper-large-v3":
            from transformers import WhisperConfig
            from transformers.models.whisper.modeling_whisper import WhisperEncoder

            from speechwire.encoders.whisper import WhisperSpeechEncoder

            d, layers, heads = (64, 2, 2) if tiny else (1280, 32, 20)
            cfg = WhisperConfig(num_mel_bins=128, d_model=d, encoder_layers=layers, encoder_attention_heads=heads,
                                encoder_ffn_dim=4 * d, decoder_layers=1, max_source_positions=1500)
            cfg._attn_implementation = "sdpa"
            module = WhisperEncoder(cfg).to(dtype)
            enc = WhisperSpeechEncoder(module, mode="trimmed", max_seconds=30.0, model_id=f"random:{sfm}")
        else:  # w2v-BERT 2.0 = SeamlessM4T v2's speech encoder
            from transformers import SeamlessM4Tv2Config
            from transformers.models.seamless_m4t_v2.modeling_seamless_m4t_v2 import SeamlessM4Tv2SpeechEncoder

            from speechwire.encoders.seamless import SeamlessSpeechEncoder

            d, layers, heads, ffn = (32, 2, 2, 64) if tiny else (1024, 24, 16, 4096)
            cfg = SeamlessM4Tv2Config(hidden_size=d, speech_encoder_layers=layers,
                                      speech_encoder_attention_heads=heads, speech_encoder_intermediate_size=ffn,
                                      feature_projection_input_dim=160, num_adapter_layers=1, adaptor_kernel_size=8,
                                      adaptor_stride=8)
            cfg._attn_implementation = "sdpa"
            module = SeamlessM4Tv2SpeechEncoder(cfg).to(dtype)
            enc = SeamlessSpeechEncoder(module, max_seconds=30.0, model_id=f"random:{sfm}")
    return enc.freeze()


@contextlib.contextmanager
def random_llm(tiny: bool, device: str, dtype: torch.dtype):
    """speechwire.model's LLM loader builds a random Llama on `device` instead of loading weights."""
    import speechwire.model as model_module
    from speechwire.testing import tiny_tokenizer

    real = model_module.load_llm

    def load_llm(cfg, inference_device=None):  # the real one's device: not used here
        from transformers import AutoModelForCausalLM

        vocab = len(model_module.load_tokenizer(cfg))
        with torch.device(device):
            llm = AutoModelForCausalLM.from_config(llm_config(tiny, vocab), dtype=dtype)
        llm.eval().requires_grad_(False)
        return llm

    with tempfile.TemporaryDirectory() as folder:
        tiny_tokenizer().save_pretrained(folder)  # a small vocabulary; the embedding table keeps Llama's size
        model_module.load_llm = load_llm
        try:
            yield folder
        finally:
            model_module.load_llm = real


def build_model(sfm: str, adapter: str, tiny: bool, device: str, dtype: torch.dtype):
    from speechwire.config import ExperimentConfig, from_dict
    from speechwire.model import SpeechLLM

    encoder = build_encoder(sfm, tiny, device, dtype)
    with random_llm(tiny, device, dtype) as tok_dir:
        small = {"hidden_size": 32, "num_layers": 1, "num_heads": 4, "ffn_size": 64, "qformer_layers": 1} if tiny else {}
        from speechwire.adapters import config_fields

        cfg = from_dict(ExperimentConfig, {
            "encoder": {"name": "whisper" if sfm.startswith("whisper") else "seamless", "model": f"random:{sfm}"},
            "adapter": {"name": adapter, **{k: v for k, v in small.items() if k in config_fields(adapter)}},
            "llm": {"model": tok_dir, "dtype": "bfloat16" if dtype == torch.bfloat16 else "float32"},
            "train": {"device": device},
        })
        model = SpeechLLM(cfg, encoder=encoder)
    return model.to(device)


# --- measurements -------------------------------------------------------------------------------


SENTENCE = ("so the question we asked was which part of a speech model matters most when you connect it to a "
            "large language model and the answer surprised us")


def make_batch(n: int, seconds: float, words: int, seed: int):
    """n utterances of random audio (`seconds` each) with `words`-word transcripts."""
    from speechwire.data.batch import Batch

    g = torch.Generator().manual_seed(seed)
    samples = int(seconds * 16000)
    text = " ".join((SENTENCE.split() * 4)[:words])
    return Batch(audio=torch.randn(n, samples, generator=g) * 0.1, audio_lengths=torch.full((n,), samples),
                 targets=[text] * n, transcripts=[text] * n, tasks=["asr"] * n, src_langs=["en"] * n,
                 tgt_langs=[None] * n, ids=[str(i) for i in range(n)])


def params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def peak_tflops(device: str) -> float | None:
    if device != "cuda":
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def train_steps(model, batch, steps: int, warmup: int, device: str) -> dict[str, Any]:
    """Timed AdamW steps (after `warmup` untimed ones) under bf16 autocast."""
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-4)
    counts = {"frames": 0, "adapter_out": 0, "tokens": 0}
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    loss = float("nan")
    for i in range(warmup + steps):
        if i == warmup:
            sync(device)
            t0 = time.perf_counter()
            counts = dict.fromkeys(counts, 0)
        with torch.autocast(device_type=device, dtype=torch.bfloat16):
            out = model(batch)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss = float(out.loss.detach())
        counts["frames"] += out.encoder_frames  # encoder frames in, adapter vectors out: the FLOPs need both
        counts["adapter_out"] += out.adapter_frames
        counts["tokens"] += out.num_target_tokens
    sync(device)
    seconds = time.perf_counter() - t0
    tokens = counts["tokens"]
    n = batch.audio.shape[0] * steps
    llm_positions = counts["adapter_out"] + tokens + n * 40  # speech vectors + targets + ~40 prompt tokens each
    flops = (2 * params(model.encoder) * counts["frames"] + 4 * params(model.llm) * llm_positions
             + 6 * params(model.adapter) * counts["adapter_out"])
    peak = peak_tflops(device)
    return {"steps": steps, "seconds": round(seconds, 3), "utt_per_s": round(n / seconds, 2),
            "tokens_per_s": round(tokens / seconds, 1), "loss": round(loss, 4),
            "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device == "cuda" else None,
            "tflops": round(flops / seconds / 1e12, 2),
            "mfu": round(flops / seconds / 1e12 / peak, 4) if peak else None}


def generation(model, batch, max_new: int, device: str) -> dict[str, Any]:
    """Batched greedy decoding of every item of `batch` (the LLM's KV cache, speechwire's generate)."""
    model.eval()
    sync(device)
    t0 = time.perf_counter()
    with torch.autocast(device_type=device, dtype=torch.bfloat16):
        out = model.generate_output(batch, max_new_tokens=max_new)
    sync(device)
    seconds = time.perf_counter() - t0
    generated = out.num_tokens
    return {"batch": len(batch.ids), "max_new_tokens": max_new, "seconds": round(seconds, 3),
            "tokens_per_s": round(generated / seconds, 1), "utt_per_s": round(len(batch.ids) / seconds, 2)}


# --- launchers ----------------------------------------------------------------------------------


def child(args: argparse.Namespace) -> None:
    """--child: a few steps of a small SpeechLLM under accelerate (DDP with torchrun, FSDP with
    `accelerate launch --use_fsdp`); the main process prints one JSON line."""
    from accelerate import Accelerator

    acc = Accelerator(mixed_precision="bf16" if not args.cpu else "no", cpu=args.cpu)
    device = "cpu" if args.cpu else "cuda"
    model = build_model("whisper-large-v3", "conv", True, device, torch.float32)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model, opt = acc.prepare(model, opt)
    batch = make_batch(2, 2.0, 8, seed=acc.process_index)
    losses = []
    for _ in range(3):
        out = model(batch)
        acc.backward(out.loss)
        opt.step()
        opt.zero_grad()
        losses.append(float(out.loss.detach()))
    if acc.is_main_process:
        print(json.dumps({"child": args.child, "processes": acc.num_processes, "losses": losses,
                          "distributed": str(acc.distributed_type)}), flush=True)


def launch(kind: str, cpu: bool, timeout: int = 240) -> dict[str, Any]:
    """Run this script's --child under torchrun or accelerate launch (FSDP); its JSON line, or why not."""
    script = [str(Path(__file__).resolve()), "--child", kind] + (["--cpu"] if cpu else [])
    if kind == "torchrun":
        argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1", *script]
    else:
        if cpu:
            return {"skipped": "FSDP needs CUDA"}
        argv = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--use_fsdp",
                "--fsdp_sharding_strategy", "FULL_SHARD", "--mixed_precision", "bf16", *script]
    t0 = time.perf_counter()
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"timed out after {timeout} s"}
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if done.returncode or not lines:
        tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        return {"ok": False, "error": f"exit {done.returncode}: {tail}"}
    result = json.loads(lines[-1])
    ok = all(math.isfinite(x) for x in result["losses"])
    return {"ok": ok, "seconds": round(time.perf_counter() - t0, 1), **result}


# --- the check ----------------------------------------------------------------------------------


def gpu_tests(timeout: int) -> dict[str, Any]:
    argv = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "tests"]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=REPO,
                              env={**os.environ, "HF_HUB_OFFLINE": "1"})
    except subprocess.TimeoutExpired:
        return {"ok": False, "summary": f"timed out after {timeout} s"}
    summary = (done.stdout.strip().splitlines() or ["(no output)"])[-1]
    return {"ok": done.returncode == 0, "summary": summary}


def run_check(args: argparse.Namespace) -> dict[str, Any]:
    device = "cpu" if args.cpu else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device visible; use --cpu --tiny for the CPU path")
    dtype = torch.bfloat16
    report: dict[str, Any] = {"device": torch.cuda.get_device_name() if device == "cuda" else platform.processor()
                              or "cpu", "torch": torch.__version__, "tiny": args.tiny, "command": " ".join(sys.argv),
                              "batch": args.batch, "seconds_per_utt": args.seconds, "train": [], "generate": [],
                              "launch": {}}
    if not args.cpu:
        report["gpu_tests"] = gpu_tests(timeout=150)
    sfms = ("whisper-large-v3", "w2v-bert-2.0")
    for sfm in sfms:
        for i, adapter in enumerate(args.adapters):
            row: dict[str, Any] = {"sfm": sfm, "adapter": adapter}
            try:
                model = build_model(sfm, adapter, args.tiny, device, dtype)
                row["params_m"] = {k: round(params(getattr(model, k)) / 1e6, 1) for k in ("encoder", "adapter", "llm")}
                batch = make_batch(args.batch, args.seconds, args.words, seed=0)
                row.update(train_steps(model, batch, args.steps, args.warmup, device))
                if i == 0:  # generation does not depend much on the adapter: once per SFM
                    report["generate"].append({"sfm": sfm, "adapter": adapter,
                                               **generation(model, batch, args.gen_tokens, device)})
            except Exception as e:  # noqa: BLE001 - one failing combination must not hide the others
                row["error"] = f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
            report["train"].append(row)
            print(json.dumps(row), flush=True)
            model = batch = None
            if device == "cuda":
                torch.cuda.empty_cache()
    for kind in ("torchrun", "fsdp"):
        report["launch"][kind] = launch(kind, args.cpu)
    return report


def markdown(report: dict[str, Any]) -> str:
    from speechwire.tables import markdown_table

    lines = [f"# GPU check: {report['device']}", "", f"`{report['command']}` (torch {report['torch']}; "
             f"batch {report['batch']} x {report['seconds_per_utt']} s random audio; bf16 autocast; random weights)", ""]
    if "gpu_tests" in report:
        lines += [f"gpu-marked tests: {'ok' if report['gpu_tests']['ok'] else 'FAILED'} ({report['gpu_tests']['summary']})",
                  ""]
    cols = ["sfm", "adapter", "utt_per_s", "tokens_per_s", "peak_gib", "tflops", "mfu", "loss", "error"]
    lines += markdown_table([{c: r.get(c, "") for c in cols} for r in report["train"]], cols) + [""]
    gcols = ["sfm", "batch", "max_new_tokens", "tokens_per_s", "utt_per_s", "seconds"]
    lines += ["Batched greedy generation:", ""] + markdown_table(report["generate"], gcols) + [""]
    for kind, r in report["launch"].items():
        state = "skipped: " + r["skipped"] if "skipped" in r else ("ok" if r.get("ok") else f"FAILED: {r.get('error')}")
        lines.append(f"- {kind} launch: {state}" + (f" ({r['distributed']}, losses {r['losses']})" if r.get("ok") else ""))
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cpu", action="store_true", help="run on CPU (with --tiny: the test suite's path)")
    p.add_argument("--tiny", action="store_true", help="tiny shapes instead of the paper's")
    p.add_argument("--adapters", nargs="+", default=list(ADAPTERS), choices=ADAPTERS)
    p.add_argument("--batch", type=int, default=8, help="utterances per step")
    p.add_argument("--seconds", type=float, default=8.0, help="audio per utterance (MuST-C's mean is ~6 s)")
    p.add_argument("--words", type=int, default=20, help="words per transcript")
    p.add_argument("--steps", type=int, default=5, help="timed training steps per combination")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--gen-tokens", type=int, default=64)
    p.add_argument("--out", type=Path, default=Path("gpu_check"), help="writes OUT.json and OUT.md")
    p.add_argument("--child", choices=["torchrun", "fsdp"], default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.cpu and not args.tiny and not args.child:
        p.error("--cpu runs the tiny shapes only (an 8B LLM does not train on a CPU in minutes); add --tiny")
    return args


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    sys.path.insert(0, str(REPO / "src"))  # runs from a checkout without an install too
    args = parse_args(argv)
    if args.child:
        child(args)
        return 0
    report = run_check(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2))
    table = markdown(report)
    args.out.with_suffix(".md").write_text(table)
    print(table)
    failed = [r for r in report["train"] if "error" in r] + [r for r in report["launch"].values()
                                                             if not r.get("ok") and "skipped" not in r]
    return 1 if failed or not report.get("gpu_tests", {"ok": True})["ok"] else 0


if __name__ == "__main__":
    sys.exit(main())
