"""Files that survive faults: checked reads, atomic writes that say what a full disk cost, resume
state without pickle, claim locks, and the fault points the kill tests use.

    text = read_text(path, "config")                       # one clear line if missing, a folder, not UTF-8
    write_atomic(path, data, "predictions")                # temp file + os.replace; DiskFullError names it
    tensors, meta = read_safetensors(path, "trainable weights", fix="copy it again")
    blob = safetensors_bytes(tensors, metadata)            # with a sha256 of the tensor bytes in metadata
    files = state_files(optimizer.state_dict())            # {"json": ..., "safetensors": ...}, no pickle
    with try_lock(run_dir / ".claim") as mine: ...         # flock: released when the process dies
    fault_point("checkpoint.before-rename")                 # SPEECHWIRE_FAULTS=NAME[@n]: SIGKILL here (tests)

Every write goes through `write_atomic`: a reader sees the old file or the new one, never half of
one; a kill leaves at most a `*.tmp` that nothing reads. Writes are serialised in memory first, so
a full disk is reported with the size that was needed.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import math
import os
import signal
import uuid
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Iterator

import torch

from speechwire.errors import DamagedFileError, DiskFullError, format_size, is_disk_full

# --- reading ------------------------------------------------------------------------------------


def check_file(path: str | Path, what: str, fix: str = "") -> Path:
    """`path` as a Path if it is a readable file; else FileNotFoundError / IsADirectoryError that say so."""
    path = Path(path)
    hint = f"; {fix}" if fix else ""
    try:
        is_dir, is_file = path.is_dir(), path.is_file()
    except (OSError, ValueError) as e:  # a name too long, a NUL byte
        raise FileNotFoundError(f"{str(path)[:200]!r}: not a usable {what} path ({e}){hint}") from None
    if is_dir:
        raise IsADirectoryError(f"{path}: is a folder, not a {what} file{hint}")
    if not is_file:
        raise FileNotFoundError(f"{path}: {what} file does not exist{hint}")
    return path


def read_text(path: str | Path, what: str, fix: str = "") -> str:
    """A UTF-8 text file's contents; a missing file, a folder or binary bytes give one clear line."""
    path = check_file(path, what, fix)
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DamagedFileError(f"{path}: not a UTF-8 text {what} file (byte 0x{raw[e.start]:02x} at offset "
                               f"{e.start}){'; ' + fix if fix else ''}") from None


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over the names, dtypes, shapes and raw bytes of `tensors` (in name order)."""
    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k].detach().cpu().contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def read_safetensors(path: str | Path, what: str, fix: str = "", device: str = "cpu",
                     ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Load every tensor of a safetensors file, verifying its stored checksum when it has one.

    Raises:
        FileNotFoundError / IsADirectoryError: no file there.
        DamagedFileError: cut short, not safetensors, or the bytes differ from the stored sha256.
    """
    from safetensors import safe_open

    path = check_file(path, what, fix)
    hint = f"; {fix}" if fix else ""
    try:
        with safe_open(str(path), framework="pt", device=device) as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # SafetensorError (Rust) for every kind of damage; nothing else is raised here
        detail = " ".join(str(e).split()).removeprefix("Error while deserializing header: ")
        raise DamagedFileError(f"{path}: {what} file is damaged or cut short ({format_size(path.stat().st_size)}; "
                               f"{detail}){hint}") from None
    stored = meta.get("sha256")
    if stored and tensor_digest(tensors) != stored:
        raise DamagedFileError(f"{path}: {what} file is damaged (its tensor bytes do not match the sha256 stored "
                               f"when it was written){hint}")
    return tensors, meta


def safetensors_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """Serialise to safetensors in memory, adding `sha256` (tensor_digest) to the metadata."""
    from safetensors.torch import save

    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    return save(tensors, metadata={**(metadata or {}), "sha256": tensor_digest(tensors)})


# --- writing ------------------------------------------------------------------------------------


def temp_path(path: Path) -> Path:
    """A unique sibling `<name>.<pid>.<random>.tmp` (readers never open `*.tmp`)."""
    return path.with_name(f"{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def _write_file(path: str | Path, flags: int, data: bytes, fsync: bool = False) -> None:
    """os.open(path, flags), write all of `data` (os.write may write less than asked), close."""
    fd = os.open(path, flags, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str | Path, data: bytes | str, what: str, fsync: bool = False,
                 needed: int | None = None) -> Path:
    """Write `data` to `path` through a temp file and `os.replace`.

    Args:
        what: what is written, for the error message ("checkpoint step-000500 optimizer state").
        fsync: flush to the device before the rename (checkpoints; survives power loss too).
        needed: bytes to report on a full disk (default len(data); a checkpoint reports its total).
    Raises:
        DiskFullError: no space or quota left (the temp file is removed, `path` is untouched).
    """
    path = Path(path)
    data = data.encode("utf-8") if isinstance(data, str) else data
    tmp = temp_path(path)
    try:
        _write_file(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, data, fsync)
        fault_point("write.before-replace")
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if is_disk_full(e):
            raise DiskFullError(what, path, needed if needed is not None else len(data)) from None
        raise
    return path


def append_line(path: str | Path, line: str, what: str) -> None:
    """Append one line with a single O_APPEND write (whole lines, even with concurrent writers)."""
    data = (line.rstrip("\n") + "\n").encode("utf-8")
    try:
        _write_file(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, data)
    except OSError as e:
        if is_disk_full(e):
            raise DiskFullError(what, path, len(data)) from None
        raise


def read_jsonl(path: str | Path) -> list[dict]:
    """The whole records of a JSONL log written by `append_line` (a line torn by a kill or a full
    disk, or foreign text, is skipped); [] when there is no such file."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            records.append(rec)
    return records


# --- resume state without pickle -----------------------------------------------------------------


def _encode(obj: Any, tensors: dict[str, torch.Tensor], where: str) -> Any:
    if isinstance(obj, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = obj.detach().cpu().contiguous().clone()
        return {"__tensor__": key}
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else {"__float__": repr(obj)}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, tensors, f"{where}[{i}]") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, tensors, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, bytes):
        return {"__bytes__": base64.b64encode(obj).decode()}
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _encode(v, tensors, f"{where}.{k}") for k, v in obj.items()}
        return {"__items__": [[_encode(k, tensors, where), _encode(v, tensors, f"{where}[{k!r}]")]
                              for k, v in obj.items()]}
    raise TypeError(f"{where}: a {type(obj).__name__} cannot be stored in a resume file")


def _decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if "__float__" in obj:
        return float(obj["__float__"])
    if "__tuple__" in obj:
        return tuple(_decode(v, tensors) for v in obj["__tuple__"])
    if "__bytes__" in obj:
        return base64.b64decode(obj["__bytes__"])
    if "__items__" in obj:
        return {_decode(k, tensors): _decode(v, tensors) for k, v in obj["__items__"]}
    return {k: _decode(v, tensors) for k, v in obj.items()}


def state_files(state: Any, name: str = "state") -> dict[str, bytes]:
    """A nested state (dicts, lists, tuples, numbers, strings, tensors) as `{name}.json` (structure)
    plus `{name}.safetensors` (the tensors): data only, nothing a loader could execute.

    Raises:
        TypeError: the state holds another kind of object.
    """
    tensors: dict[str, torch.Tensor] = {}
    out = {f"{name}.json": json.dumps({"format": 1, "state": _encode(state, tensors, name)}).encode()}
    if tensors:
        out[f"{name}.safetensors"] = safetensors_bytes(tensors)
    return out


def load_state_files(folder: Path, name: str, what: str) -> Any:
    """Read what `state_files` wrote into `folder` (checksums verified). DamagedFileError if damaged."""
    path = folder / f"{name}.json"
    text = read_text(path, what)
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise DamagedFileError(f"{path}: {what} is damaged ({e})") from None
    if not isinstance(doc, dict) or "state" not in doc:
        raise DamagedFileError(f"{path}: {what} is damaged (not a speechwire state file)")
    tensor_file = folder / f"{name}.safetensors"
    tensors = read_safetensors(tensor_file, what)[0] if tensor_file.exists() else {}
    try:
        return _decode(doc["state"], tensors)
    except (KeyError, TypeError, ValueError) as e:
        raise DamagedFileError(f"{path}: {what} is damaged ({type(e).__name__}: {e})") from None


# --- claims -------------------------------------------------------------------------------------


@contextmanager
def try_lock(path: str | Path, block: bool = False) -> Iterator[bool]:
    """Hold an exclusive flock on `path` (created if needed) for the `with` block.

    Yields True when this process holds the lock, False when another one does (block=False). The
    kernel releases the lock when the holder exits or is killed, so a crash never leaves a stale claim.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if block else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        with suppress(OSError):
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())  # who holds it, for people looking
        yield True
    finally:
        os.close(fd)  # releases the lock


# --- fault points (tests) -----------------------------------------------------------------------

_FAULT_HITS: dict[str, int] = {}


def fault_point(name: str) -> None:
    """With SPEECHWIRE_FAULTS="NAME[@n],...", SIGKILL this process the n-th time (default first) it
    reaches `name`. For kill tests only; unset, it costs one environment lookup."""
    # kept as an environment variable: a test-only hook that must reach the forked process deep inside a run
    spec = os.environ.get("SPEECHWIRE_FAULTS")
    if not spec:
        return
    _FAULT_HITS[name] = _FAULT_HITS.get(name, 0) + 1
    for item in spec.split(","):
        point, _, nth = item.strip().partition("@")
        if point == name and _FAULT_HITS[name] == int(nth or 1):
            os.kill(os.getpid(), signal.SIGKILL)
