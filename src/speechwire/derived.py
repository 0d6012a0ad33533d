"""Inference weights derived from a model's files, kept on disk so the next start reads them.

Every `speechwire transcribe` used to quantise the LLM's Linear layers to int8 (~1.5-2 s for
Qwen2.5-0.5B) and pick and quantise the output rows a Latin-script answer can use (~1.5-2 s)
before its first word. Both are pure functions of the model's files and a few settings, so they
are written once to ``<cache>/derived/<key>.safetensors`` and read afterwards:

- the folder is ``$SPEECHWIRE_DERIVED``, else ``$SPEECHWIRE_CACHE/derived``, else
  ``~/.cache/speechwire/derived``; ``SPEECHWIRE_DERIVED=off`` turns the files off;
- the key is a SHA-256 over what the tensors come from: each source file's resolved path, size and
  modification time, torch's version and quantised engine, and the settings that shape them, so a
  changed model, torch or setting never reads a stale file;
- a damaged or unreadable file is ignored (and rewritten); a folder that cannot be written only
  costs the time saved (one warning).

The files are safetensors (data, never pickle), ~0.4 GB for the demo's LLM.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import struct
from collections.abc import Callable
from pathlib import Path

import torch

from speechwire.files import temp_path

log = logging.getLogger(__name__)

DIR_ENV = "SPEECHWIRE_DERIVED"
FORMAT = 1  # bump when what a file holds changes


def derived_dir() -> Path | None:
    """Where derived files live; None when $SPEECHWIRE_DERIVED is "off"."""
    from speechwire.weights.fetch import env_cache_dir

    env = os.environ.get(DIR_ENV, "")
    if env.strip().lower() == "off":
        return None
    if env:
        return Path(env).expanduser()
    root = env_cache_dir()
    return (root if root is not None else Path.home() / ".cache" / "speechwire") / "derived"


def derived_key(kind: str, sources: list[Path], **settings) -> str:
    """A name for the tensors of `kind` derived from the files `sources` under `settings`."""
    files = []
    for path in sources:
        stat = Path(path).stat()
        files.append([str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns])
    doc = {"kind": kind, "format": FORMAT, "files": files, "torch": torch.__version__,
           "engine": torch.backends.quantized.engine, "settings": settings}
    digest = hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()
    return f"{kind}-{digest[:24]}"


def derived_file(key: str) -> Path | None:
    """The file saved under `key`, or None (none saved, or derived files off)."""
    folder = derived_dir()
    path = folder / f"{key}.safetensors" if folder is not None else None
    return path if path is not None and path.is_file() else None


class DerivedReader:
    """Tensors of a derived file, read one at a time (a whole-file load would hold every layer at
    once beside the model being built). Missing names and a damaged file read as None."""

    def __init__(self, key: str) -> None:
        self.path = derived_file(key)
        self.names: set[str] = set()
        if self.path is not None:
            try:
                from safetensors import safe_open

                with safe_open(str(self.path), framework="pt") as f:
                    self.names = set(f.keys())
            except Exception as e:  # a damaged file costs only the time it was meant to save
                log.warning("derived weights %s unreadable (%s): computing them again", self.path, e)
                self.path = None

    def __contains__(self, name: str) -> bool:
        return name in self.names

    def get(self, name: str, rows: slice | None = None) -> torch.Tensor | None:
        """Tensor `name` (only its `rows` when given), or None."""
        if self.path is None or name not in self.names:
            return None
        from safetensors import safe_open

        try:
            with safe_open(str(self.path), framework="pt") as f:  # one tensor per opening: its pages go with it
                return f.get_tensor(name) if rows is None else f.get_slice(name)[rows]
        except Exception as e:
            log.warning("derived weights %s: %s unreadable (%s)", self.path, name, e)
            return None


_DTYPES = {torch.int8: "I8", torch.uint8: "U8", torch.int32: "I32", torch.int64: "I64", torch.float16: "F16",
           torch.bfloat16: "BF16", torch.float32: "F32", torch.float64: "F64"}


def save_derived(key: str, specs: list[tuple[str, torch.dtype, tuple[int, ...]]],
                 produce: Callable[[str], torch.Tensor]) -> Path | None:
    """Write a safetensors file under `key`, one tensor at a time: `specs` names each tensor's dtype
    and shape, `produce(name)` makes it when its turn comes (so the file never exists in memory at
    once). Atomic (a temp file renamed); None when derived files are off or cannot be written."""
    folder = derived_dir()
    if folder is None:
        return None
    header, offset = {}, 0
    for name, dtype, shape in specs:
        size = torch.empty(0, dtype=dtype).element_size() * math.prod(shape)
        header[name] = {"dtype": _DTYPES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned
    path = folder / f"{key}.safetensors"
    tmp = temp_path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as out:
            out.write(struct.pack("<Q", len(text)) + text)
            for name, dtype, shape in specs:
                tensor = produce(name).detach().cpu().contiguous()
                if tensor.dtype != dtype or tuple(tensor.shape) != tuple(shape):
                    raise ValueError(f"derived tensor {name}: {tensor.dtype} {tuple(tensor.shape)}, "
                                     f"announced {dtype} {tuple(shape)}")
                if tensor.numel():
                    out.write(memoryview(tensor.reshape(-1).view(torch.uint8).numpy()))  # no bytes copy
                del tensor
        os.replace(tmp, path)
        log.info("kept %.2f GB of derived inference weights in %s (later starts read them; safe to delete)",
                 path.stat().st_size / 1e9, path)
        return path
    except OSError as e:
        log.warning("could not keep derived weights in %s (%s): the next start computes them again "
                    "(set %s to a writable folder, or to off)", folder, e, DIR_ENV)
        return None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)  # only left when the rename did not happen
