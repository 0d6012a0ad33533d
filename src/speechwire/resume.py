"""Checkpoint folders: written whole or not at all, read back without running anything.

    files = {**model.checkpoint_files(), **resume_files(opt.state_dict(), "optimizer"), ...}
    write_checkpoint(files, final=run/"checkpoints/step-000500", state={...})   # tmp folder -> rename
    load_resume(ckpt, "optimizer")                                              # -> the state dict

Every piece of resume state is data: `NAME.json` (structure, numbers) + `NAME.safetensors`
(tensors, with a sha256); the RNG states are lists of integers. Nothing in a checkpoint folder is
unpickled, so a folder someone hands you cannot run code when you resume it. Checkpoints written
before this format (`optimizer.pt`, `scheduler.pt`, `rng-rank0.pt`) are still read, with
`torch.load(weights_only=True)` (numpy arrays allowed, nothing else); a file that needs more is refused.

A checkpoint is written to `step-N.tmp/` (every file through files.write_atomic, fsynced),
`state.json` last, then renamed to `step-N/`: a kill at any moment leaves the previous checkpoint
as it was, and a full disk is reported with the checkpoint's total size before anything is written.
"""

from __future__ import annotations

import io
import json
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from speechwire.errors import DamagedFileError, DiskFullError, free_bytes
from speechwire.files import fault_point, load_state_files, read_text, state_files, write_atomic

STATE_NAME = "state.json"  # written last: a step-* folder with it is complete
DAMAGED_FIX = "; resuming skips to the checkpoint before it (delete this one), or start over with --no-resume"


def rng_state() -> dict:
    """Every global RNG the training loop draws from, as plain data (lists of ints, byte tensors)."""
    version, mt, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": [version, list(mt), gauss],
             "numpy": [str(name), [int(k) for k in keys], int(pos), int(has_gauss), float(cached)],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what `rng_state` (or a checkpoint of the old pickle format) captured."""
    py, npy, cpu = _rng_parts(state)
    random.setstate(py)
    np.random.set_state(npy)
    torch.set_rng_state(cpu)
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def resume_files(state: Any, name: str) -> dict[str, bytes]:
    """`state` as NAME.json + NAME.safetensors; a state holding other objects (a DeepSpeed engine's)
    falls back to torch's format, NAME.pt, read back with weights_only=True."""
    try:
        return state_files(state, name)
    except TypeError:
        buf = io.BytesIO()
        torch.save(state, buf)
        return {f"{name}.pt": buf.getvalue()}


def write_checkpoint(files: dict[str, bytes], final: Path, what: str) -> None:
    """Write `files` into `final`.tmp/ and rename it to `final` (STATE_NAME must be among them; it
    is written last). On any error the temp folder is removed and `final`'s siblings are untouched.

    Raises:
        DiskFullError: the disk lacks the checkpoint's total size (checked first) or fills up.
    """
    assert STATE_NAME in files, "a checkpoint without state.json would never be resumed"
    tmp = final.with_name(final.name + ".tmp")
    needed = sum(len(b) for b in files.values())
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        free = free_bytes(tmp)
        if free is not None and free < needed:
            raise DiskFullError(what, final, needed)
        for name in sorted(files, key=lambda n: n == STATE_NAME):
            write_atomic(tmp / name, files[name], what, fsync=True, needed=needed)
        fault_point("checkpoint.before-rename")
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)  # atomic: a step-* folder (no .tmp) is always complete
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _legacy_load(path: Path, what: str) -> Any:
    """A torch.save file of older checkpoints, read with weights_only=True (plus numpy arrays)."""
    import pickle

    allowed = [np.ndarray, np.dtype, np.dtypes.UInt32DType]
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
    allowed.append(_reconstruct)
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        culprit = re.search(r"GLOBAL (\S+)", str(e))
        raise DamagedFileError(f"{path}: refused to load this {what}: it is not plain data (it asks for "
                               f"{culprit[1] if culprit else 'code'}), and a pickle from elsewhere can run code; "
                               "resume from another checkpoint (delete this folder) or start over with --no-resume"
                               ) from None
    except Exception as e:  # cut short, not a torch file
        raise DamagedFileError(f"{path}: {what} is damaged ({type(e).__name__}: {' '.join(str(e).split())[:160]}); "
                               "delete this checkpoint folder to resume from the one before") from None


def read_checkpoint(ckpt: Path, rank: int, processes: int) -> dict[str, Any]:
    """Parse and check the resume files of `ckpt` for process `rank` (nothing is applied yet).

    Returns:
        {"state": state.json, "rng": ..., "optimizer": ..., "scheduler": ...}.
    Raises:
        DamagedFileError / FileNotFoundError: a file is missing, damaged or refused (names it).
        ValueError: written by another number of processes.
    """
    path = ckpt / STATE_NAME
    try:
        state = json.loads(read_text(path, "checkpoint state"))
    except ValueError as e:
        raise DamagedFileError(f"{path}: damaged ({' '.join(str(e).split())[:200]}){DAMAGED_FIX}") from None
    if not (isinstance(state, dict) and isinstance(state.get("step"), int) and isinstance(state.get("data"), dict)
            and isinstance(state.get("processes"), int)):
        raise DamagedFileError(f"{path}: damaged (not the checkpoint state speechwire writes){DAMAGED_FIX}")
    if state["processes"] != processes:
        raise ValueError(f"{ckpt} was written by {state['processes']} processes; resume with the same "
                         f"number (now {processes}) or pass --no-resume")
    try:
        parts = {"state": state,
                 "rng": load_resume(ckpt, f"rng-rank{rank}", "random number state"),
                 "optimizer": load_resume(ckpt, "optimizer", "optimizer state"),
                 "scheduler": load_resume(ckpt, "scheduler", "learning-rate schedule state")}
    except DamagedFileError as e:
        raise DamagedFileError(f"{e}{'' if 'resum' in str(e) else DAMAGED_FIX}") from None
    try:
        _rng_parts(parts["rng"])
        assert isinstance(parts["optimizer"], dict) and {"state", "param_groups"} <= set(parts["optimizer"])
        assert isinstance(parts["scheduler"], dict)
    except (AssertionError, KeyError, TypeError, ValueError, IndexError) as e:
        raise DamagedFileError(f"{ckpt}: damaged resume state ({type(e).__name__} {e}){DAMAGED_FIX}") from None
    return parts


def _rng_parts(state: dict) -> tuple:
    """The (python, numpy, torch) RNG states of `rng_state`'s dict, type-checked."""
    version, mt, gauss = state["python"]
    name, keys, pos, has_gauss, cached = state["numpy"]
    py = (int(version), tuple(int(x) for x in mt), None if gauss is None else float(gauss))
    npy = (str(name), np.asarray(keys, dtype=np.uint32), int(pos), int(has_gauss), float(cached))
    if len(py[1]) != 625 or npy[1].shape != (624,) or not isinstance(state["torch"], torch.Tensor) \
            or state["torch"].dtype != torch.uint8:
        raise ValueError("RNG state of the wrong size or type")
    return py, npy, state["torch"]


def load_resume(ckpt: Path, name: str, what: str) -> Any:
    """The state saved as `name` in checkpoint folder `ckpt` (new format, else the old NAME.pt)."""
    if (ckpt / f"{name}.json").is_file():
        return load_state_files(ckpt, name, what)
    if (ckpt / f"{name}.pt").is_file():
        return _legacy_load(ckpt / f"{name}.pt", what)
    raise FileNotFoundError(f"{ckpt}: checkpoint has no {name}.json ({what}); delete this folder to resume from "
                            "the checkpoint before it, or start over with --no-resume")
