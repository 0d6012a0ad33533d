"""Load only the speech-encoder part of a Hugging Face checkpoint.

    folder = resolve_folder("openai/whisper-large-v3")          # hub id or local folder -> folder
    encoder = load_submodule(WhisperEncoder, config, folder, anchor="conv1.weight", dtype=torch.bfloat16)

A full Whisper or SeamlessM4T v2 checkpoint also holds a text decoder (and for Seamless a speech
decoder and vocoder) that a speech LLM never runs. `load_submodule` builds the encoder module on the
meta device, reads only the tensors under the encoder's key prefix (found from an anchor key such as
`conv1.weight` -> `model.encoder.`), and assigns them: no random init, no decoder in memory.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch import nn


def resolve_folder(model: str) -> Path:
    """A local folder as is; a hub id is downloaded (configs and weights only) and its cache folder returned.

    Args:
        model: local folder or Hugging Face hub id (`openai/whisper-large-v3`).

    Returns:
        The folder holding `config.json` and the weight files.
    """
    if model.startswith("weights:"):  # pinned real weights (speechwire.weights), fetched + converted once
        from speechwire.weights.resolve import resolve_model

        return Path(resolve_model(model)[0])
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    if path.exists() or model.startswith((".", "/", "~")):
        raise FileNotFoundError(f"encoder.model={model!r} is not a folder; point it at a checkpoint folder or a hub id")
    from huggingface_hub import snapshot_download  # lazy: only hub ids need it

    try:
        folder = Path(snapshot_download(model, allow_patterns=["*.json", "*.safetensors"]))
        if not _weight_files(folder, must_exist=False):
            folder = Path(snapshot_download(model, allow_patterns=["*.json", "*.bin"]))
    except Exception as e:  # offline, gated, misspelt
        raise OSError(
            f"encoder.model={model!r}: could not download it from the Hugging Face hub ({type(e).__name__}: {e}); "
            "download it where the hub is reachable and set encoder.model to the local folder"
        ) from e
    return folder


def _weight_files(folder: Path, must_exist: bool = True) -> list[Path]:
    """The checkpoint's weight files: single or sharded safetensors, else single or sharded PyTorch .bin."""
    for single, index in (("model.safetensors", "model.safetensors.index.json"),
                          ("pytorch_model.bin", "pytorch_model.bin.index.json")):
        if (folder / single).is_file():
            return [folder / single]
        if (folder / index).is_file():
            shards = sorted(set(json.loads((folder / index).read_text())["weight_map"].values()))
            return [folder / s for s in shards]
    if must_exist:
        raise FileNotFoundError(
            f"{folder}: no model.safetensors, pytorch_model.bin or their sharded index; "
            "save the checkpoint with save_pretrained()"
        )
    return []


def _tensors(files: list[Path]) -> Iterator[tuple[str, Callable[[], torch.Tensor]]]:
    """(name, read) of every tensor in `files`: safetensors read lazily, key by key; .bin files whole.
    `read` works until the next name is drawn."""
    for f in files:
        if f.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(f), framework="pt") as st:
                yield from ((k, partial(st.get_tensor, k)) for k in st.keys())
        else:
            sd = torch.load(f, map_location="cpu", weights_only=True, mmap=True)
            yield from ((k, partial(sd.__getitem__, k)) for k in sd)


def load_submodule(cls: type, config, folder: Path, anchor: str, dtype: torch.dtype) -> nn.Module:
    """Build `cls(config)` without initialising it and fill it from the checkpoint in `folder`.

    Args:
        cls: the module class, e.g. `WhisperEncoder`, `SeamlessM4Tv2SpeechEncoder`.
        config: its config (the checkpoint's own `config.json`, loaded by the caller).
        folder: checkpoint folder (see `resolve_folder`).
        anchor: a parameter name unique to this submodule (`conv1.weight`); its prefix in the checkpoint
            (`""`, `encoder.`, `model.encoder.`, `speech_encoder.`) selects the tensors to read.
        dtype: dtype of the returned weights.

    Returns:
        The module with every parameter and buffer loaded, on CPU, in `dtype`.
    """
    files = _weight_files(folder)
    keys = {k for k, _ in _tensors(files)}
    with torch.device("meta"):
        module = cls(config)
    wanted = set(module.state_dict())
    prefixes = sorted(k[: len(k) - len(anchor)] for k in keys if k == anchor or k.endswith("." + anchor))
    prefixes = [p for p in prefixes if all(p + w in keys for w in wanted)] or prefixes
    if not prefixes:
        raise ValueError(
            f"{folder}: no tensor named '*{anchor}' - this is not a {cls.__name__} checkpoint "
            f"(config model_type={getattr(config, 'model_type', '?')!r})"
        )
    prefix = prefixes[0]
    state = {k[len(prefix):]: read() for k, read in _tensors(files) if k.startswith(prefix) and k[len(prefix):] in wanted}
    missing = sorted(wanted - set(state))
    if missing:
        raise ValueError(
            f"{folder}: {cls.__name__} weights under prefix {prefix!r} miss {len(missing)} tensor(s), "
            f"e.g. {missing[:5]}; the checkpoint does not match its config.json"
        )
    module.load_state_dict(state, strict=True, assign=True)
    on_meta = [n for n, t in list(module.named_parameters()) + list(module.named_buffers()) if t.is_meta]
    assert not on_meta, f"{cls.__name__}: tensors left uninitialised after loading: {on_meta[:5]}"
    return module.to(dtype)
