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
loader of evaluate, transcribe, serve and the demo, asks `llm.load_llm` for it, which builds the
LLM empty and quantises each Linear as its weights arrive (`load_int8`; docs/results/speed, "Peak
memory"), or quantises a plain load (`quantize_for_inference`) where that cannot be done.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from speechwire.derived import DerivedReader, derived_key, save_derived
from speechwire.memory import trim_heap
from speechwire.schema import LLMConfig, torch_dtype

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
    big = llm_params >= AUTO_MIN_PARAMS
    return "int8" if on_cpu and big and not cfg.lora and cfg.dtype == "float32" else "none"


def _int8_names(llm: nn.Module) -> list[str]:
    return [name for name, m in llm.named_modules() if type(m) is nn.Linear and name not in KEEP_FLOAT]


@contextmanager
def quantized_api() -> Iterator[None]:
    """torch's quantized tensor API without its warnings: torch marks it deprecated, and its
    kernels are what the int8 path runs."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


def int8_parts(unpack: Callable[[str], tuple[torch.Tensor, torch.Tensor | None]]) -> Callable[[str], torch.Tensor]:
    """derived.save_derived's `produce` for int8 weights stored as NAME.int8, NAME.scales,
    NAME.zero_points and NAME.bias: `unpack(NAME)` gives the quantised weight (one scale per row)
    and bias; one NAME is unpacked at a time (the tensors come in NAME order)."""
    last: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}

    def produce(tensor_name: str) -> torch.Tensor:
        name, _, part = tensor_name.rpartition(".")
        if name not in last:
            last.clear()
            last[name] = unpack(name)
        weight, bias = last[name]
        return {"int8": weight.int_repr, "scales": weight.q_per_channel_scales,
                "zero_points": weight.q_per_channel_zero_points, "bias": lambda: bias}[part]()
    return produce


def quantize_linear_int8(llm: nn.Module, names: list[str] | None = None) -> int:
    """Replace the `nn.Linear` layers `names` of `llm` (default: all but KEEP_FLOAT), in place, with
    torch's dynamic int8 Linear (what quantize_dynamic swaps in). Returns how many were replaced."""
    from torch.ao.nn.quantized.dynamic import Linear
    from torch.ao.quantization import per_channel_dynamic_qconfig

    if torch.backends.quantized.engine == "none":
        raise RuntimeError("llm.quantize=int8: this torch build has no quantized CPU engine "
                           f"(supported: {torch.backends.quantized.supported_engines}); set llm.quantize=none")
    names = _int8_names(llm) if names is None else names
    with quantized_api():
        for name in names:
            linear = llm.get_submodule(name)
            # one scale per output row: a per-tensor scale lets the largest row set every row's step
            # (on the demo's real test set that cost 8 WER points; per row: see docs/results/speed)
            linear.qconfig = per_channel_dynamic_qconfig
            llm.set_submodule(name, Linear.from_float(linear))
    return len(names)


def load_int8(folder: str | Path, cfg: LLMConfig, device: torch.device) -> nn.Module | None:
    """The LLM of a Hugging Face folder with llm.quantize=int8 applied as it loads: built empty, then
    filled one tensor at a time from its model.safetensors, each Linear quantised as soon as its
    weights are in, so the float32 model never exists at once (a plain load then quantize_linear_int8
    peaks at the float32 model plus its int8 copy). The same int8 weights as that.

    Returns:
        The LLM; None when llm.quantize resolves to "none" here, or the folder holds no single
        model.safetensors with exactly the model's tensor names (load it the plain way then).
    """
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.initialization import no_init_weights

    file = Path(folder) / "model.safetensors"
    if not file.is_file():
        return None
    with no_init_weights():  # parameters allocated, never written: no memory is touched until filled
        llm = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder), dtype=torch_dtype(cfg.dtype))
    if resolve_quantize(cfg, device, sum(p.numel() for p in llm.parameters())) != "int8":
        return None
    with safe_open(str(file), framework="pt") as f:
        names = list(f.keys())
    tied = getattr(llm, "all_tied_weights_keys", None) or {}  # {lm_head.weight: embed_tokens.weight} when tied
    if set(names) != set(llm.state_dict()) - set(tied):
        return None
    int8 = set(_int8_names(llm))
    derived_name = derived_key("int8-llm", [file], dtype=cfg.dtype, layers=sorted(int8))
    derived = DerivedReader(derived_name)
    modules: dict[str, list[str]] = {}
    for name in names:
        modules.setdefault(name.rpartition(".")[0], []).append(name)
    complete = True
    for module, keys in modules.items():
        if module in int8:
            linear = _derived_int8_linear(derived, module)
            if linear is not None:  # quantised by an earlier start: its float weights are not read
                llm.set_submodule(module, linear)
                continue
            complete = False
        owner = llm.get_submodule(module)
        for key in keys:  # the file opened per tensor: its mapping's pages leave this process as it closes
            with safe_open(str(file), framework="pt") as f:
                value = f.get_tensor(key).to(torch_dtype(cfg.dtype))
            leaf = key.rpartition(".")[2]
            if value.shape != getattr(owner, leaf).shape:
                raise ValueError(f"{file}: {key} has shape {tuple(value.shape)}, the model expects "
                                 f"{tuple(getattr(owner, leaf).shape)}")
            if leaf in owner._parameters:
                owner._parameters[leaf] = nn.Parameter(value, requires_grad=False)
            else:
                owner._buffers[leaf] = value
        if module in int8:
            quantize_linear_int8(llm, [module])
    llm.tie_weights()
    trim_heap()  # glibc keeps the freed float32 layers' heap pages resident until asked (~0.14 GiB on the demo)
    if not complete:
        _save_int8_layers(llm, derived_name, sorted(int8))
    return llm


_INT8_PARTS = ("int8", "scales", "zero_points", "bias")


def _derived_int8_linear(derived: DerivedReader, module: str) -> nn.Module | None:
    """Layer `module` of an earlier start's int8 LLM (derived.py), or None when the file lacks it."""
    from torch.ao.nn.quantized.dynamic import Linear

    values, scales, zeros = (derived.get(f"{module}.{part}") for part in _INT8_PARTS[:3])
    if values is None or scales is None or zeros is None:
        return None
    bias = derived.get(f"{module}.bias")
    with quantized_api():
        weight = torch._make_per_channel_quantized_tensor(values, scales, zeros, 0)
        # built 1 x 1, then sized: the constructor packs a zero weight of the full size first, which
        # doubled the packing, ~1 s of every start of the demo model
        linear = Linear(1, 1, bias_=bias is not None, dtype=torch.qint8)
        linear.in_features, linear.out_features = values.shape[1], values.shape[0]
        linear.set_weight_bias(weight, bias)
    return linear


def _save_int8_layers(llm: nn.Module, key: str, layers: list[str]) -> None:
    """Keep the int8 layers for the next start (derived.py): values, per-row scales and zero points, bias."""
    specs = []
    for name in layers:
        linear = llm.get_submodule(name)
        rows, cols = linear.out_features, linear.in_features
        specs += [(f"{name}.int8", torch.int8, (rows, cols)), (f"{name}.scales", torch.float64, (rows,)),
                  (f"{name}.zero_points", torch.int64, (rows,))]
        if linear.bias() is not None:
            specs.append((f"{name}.bias", torch.float32, (rows,)))
    save_derived(key, specs, int8_parts(lambda name: llm.get_submodule(name)._weight_bias()))


def quantize_for_inference(llm: nn.Module, cfg: LLMConfig, device: torch.device) -> str:
    """Apply `cfg.quantize` to a loaded LLM (in place) for inference on `device`.

    Returns:
        "int8" or "none" (what was applied).
    """
    mode = resolve_quantize(cfg, device, sum(p.numel() for p in llm.parameters()))
    if mode == "int8":
        n = quantize_linear_int8(llm)
        log.info("llm: %d Linear layers quantised to int8 (llm.quantize=%s)", n, cfg.quantize)
    return mode
