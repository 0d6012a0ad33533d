"""The LLM in int8 for CPU inference (`llm.quantize`).

Generating one token reads every LLM weight once: the demo's Qwen2.5-0.5B is 2.5 GB in float32,
so decoding on a CPU is bound by memory bandwidth. torch's dynamic quantisation stores each
`nn.Linear` weight as int8 (one scale per output row) and quantises activations on the fly,
running fbgemm int8 kernels: a quarter of the bytes per token. Of the candidates in
docs/results/speed/README.md (llama.cpp on the GGUF, ONNX Runtime) it is the one that needs
nothing beyond torch; on the demo it halves the real-time factor at the same WER.

What stays in float: the output projection `lm_head` (151,936 rows for Qwen: int8 there moved
answers, see KEEP_FLOAT), the token-embedding table (a lookup; the alignment head reads it too),
norms, rotary tables. Training never quantises: only `SpeechLLM.from_pretrained`, the
loader of evaluate, transcribe, serve and the demo, calls `quantize_for_inference`.
"""

from __future__ import annotations

import logging
import warnings

import torch
from torch import nn

from speechwire.schema import LLMConfig

log = logging.getLogger(__name__)

# auto leaves smaller LLMs in float: their weights fit in the CPU's caches, so int8 saves no memory
# traffic, and float keeps a batch's answers bit-equal to one-by-one answers (int8 picks each
# activation's scale from the whole batch, so a batch can move a near-tie; see docs/results/speed)
AUTO_MIN_PARAMS = 50_000_000


# module names left in float. lm_head in int8 cost 0.9 WER points on the demo's real test set
# per-row int8 elsewhere; float lm_head: no change. Its cost: 544 MB read per decoding step
KEEP_FLOAT = {"lm_head": None}


def resolve_quantize(cfg: LLMConfig, device: torch.device, llm_params: int) -> str:
    """What `llm.quantize` means on `device` for an LLM of `llm_params` parameters: "int8" or "none".

    auto: int8 on the CPU for a float32 LLM of at least AUTO_MIN_PARAMS parameters without LoRA
    (its adapters would be quantised too); none on a GPU, which keeps the configured dtype
    (bfloat16 there is the fast path).

    Raises:
        ValueError: int8 asked for on a GPU (torch's dynamic int8 kernels are CPU-only).
    """
    if cfg.quantize == "none":
        return "none"
    on_cpu = torch.device(device).type == "cpu"
    if cfg.quantize == "int8":
        if not on_cpu:
            raise ValueError(f"llm.quantize=int8 runs on the CPU only, but the model is on {device}; "
                             "set llm.quantize=auto (none on a GPU) or train.device=cpu")
        return "int8"
    if cfg.quantize != "auto":
        raise ValueError(f"llm.quantize={cfg.quantize!r} must be auto, none or int8")
    big = llm_params >= AUTO_MIN_PARAMS
    return "int8" if on_cpu and big and not cfg.lora and cfg.dtype == "float32" else "none"


def quantize_linear_int8(llm: nn.Module) -> int:
    """Replace every `nn.Linear` of `llm` but those in KEEP_FLOAT (in place) with a dynamically
    quantised int8 Linear.

    Returns:
        How many layers were replaced.
    """
    if torch.backends.quantized.engine == "none":
        raise RuntimeError("llm.quantize=int8: this torch build has no quantized CPU engine "
                           f"(supported: {torch.backends.quantized.supported_engines}); set llm.quantize=none")
    n = sum(1 for name, m in llm.named_modules() if type(m) is nn.Linear and name not in KEEP_FLOAT)
    with warnings.catch_warnings():  # torch marks its quantized tensor API deprecated; the kernels are what we use
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        # one scale per output row: a per-tensor scale lets the largest row set every row's step
        # (on the demo's real test set that cost 8 WER points; per row: see docs/results/speed)
        quantize_dynamic(llm, {nn.Linear: per_channel_dynamic_qconfig, **KEEP_FLOAT}, inplace=True)
    return n


def quantize_for_inference(model, device: torch.device) -> str:
    """Apply `model.cfg.llm.quantize` to a loaded SpeechLLM's LLM for inference on `device`.

    Returns:
        "int8" or "none" (what was applied).
    """
    mode = resolve_quantize(model.cfg.llm, device, sum(p.numel() for p in model.llm.parameters()))
    if mode == "int8":
        n = quantize_linear_int8(model.llm)
        log.info("llm: %d Linear layers quantised to int8 (llm.quantize=%s)", n, model.cfg.llm.quantize)
        if model.prefix_cache is not None:
            model.prefix_cache.clear()  # keys and values of the float weights
    model.llm_quantized = mode
    return mode
