"""The error surface: every user mistake becomes one line that names the file, line, key or item,
says what is wrong and the fix; the command line prints it and exits non-zero (`--debug` for the
traceback).

    raise DamagedFileError("runs/x/trainable.safetensors: ...; copy it again")   # a user-side problem
    did_you_mean("mlpp", ["base", "mlp", "conv"])     # " did you mean 'mlp'?"
    code, line = explain(exc)                          # what `speechwire` prints for an exception

User mistakes are `ValueError`s (ConfigError, ManifestError, AudioError, DamagedFileError, ...) and
`OSError`s (a missing file, a folder where a file belongs, a full disk, an unreachable hub); any other
exception is a bug in speechwire and says so.
"""

from __future__ import annotations

import difflib
import errno
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

USER_ERROR = 2  # exit status for a user mistake (bad input, missing file, full disk)
INTERNAL_ERROR = 1  # exit status for a bug
BUG_HINT = "this is a bug in speechwire: rerun with --debug for the traceback and report it"


class DamagedFileError(ValueError):
    """A file exists but cannot be read as what it should be (cut short, bit-flipped, foreign)."""


class DiskFullError(OSError):
    """No space (or quota) left while writing; the message says what was written and its size."""

    def __init__(self, what: str, path: str | Path, needed: int) -> None:
        free = free_bytes(Path(path))
        super().__init__(f"disk full while writing {what} ({path}): it needs {format_size(needed)}, "
                         f"{format_size(free) if free is not None else 'an unknown amount'} is free there; "
                         "free some space (or move the folder to a bigger disk) and rerun - finished work is kept")
        self.errno = errno.ENOSPC


def format_size(n: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def free_bytes(path: Path) -> int | None:
    """Free space on the disk holding `path` (its first existing ancestor)."""
    for p in (path, *path.parents):
        try:
            return shutil.disk_usage(p).free
        except OSError:
            continue
    return None


def is_disk_full(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)


def did_you_mean(name: object, known: Iterable[str]) -> str:
    """' did you mean 'mlp'?' when `name` is close to a known name, else ''."""
    close = difflib.get_close_matches(str(name), list(known), n=1, cutoff=0.6)
    return f" did you mean {close[0]!r}?" if close else ""


def unknown_name(kind: str, name: object, known: Iterable[str], where: str = "") -> str:
    """"adapter.name: unknown adapter 'mlpp'; did you mean 'mlp'? available: base, cif, ...". """
    known = sorted(known)
    return f"{where + ': ' if where else ''}unknown {kind} {name!r};{did_you_mean(name, known)} available: {', '.join(known)}"


class LoadError(OSError):
    """A frozen part (SFM, LLM, tokenizer) cannot be loaded from its hub id or folder."""


OFFLINE_SIGNS = ("outgoing traffic has been disabled", "couldn't connect", "connecterror", "connection error",
                 "name or service not known", "temporary failure in name resolution", "network is unreachable",
                 "max retries exceeded", "offlinemodeisenabled", "localentrynotfounderror")


@contextmanager
def loading(field: str, model: str) -> Iterator[None]:
    """Turn a failure to load a frozen part into one LoadError line naming the config key and the fix.

    With no network (HF_HUB_OFFLINE set or not) a hub id that is not in the local cache always gets
    the same message: download it where the hub is reachable and point the key at the folder.
    """
    try:
        yield
    except Exception as e:
        if isinstance(e, LoadError) or not (isinstance(e, (OSError, ValueError, ImportError))
                                            or type(e).__name__ in ("SafetensorError", "HfHubHTTPError")):
            raise
        text = one_line(f"{type(e).__name__}: {e}")
        if any(sign in text.lower() for sign in OFFLINE_SIGNS):
            raise LoadError(f"{field}={model!r} is not in the local Hugging Face cache and the hub cannot be "
                            f"reached (offline); download it where the hub is reachable (`hf download {model}`) "
                            f"and set {field} to that folder") from e
        if text.split(": ", 1)[-1].startswith((f"{field}=", str(model))):
            raise  # our own loaders' messages already name the key (or folder) and the fix
        raise LoadError(f"{field}={model!r}: cannot load it ({text[:400]}); check the hub id or folder "
                        "(a folder needs config.json and the weight files)") from e


def one_line(text: str) -> str:
    """Collapse a message onto one line (library messages often span several)."""
    return " ".join(str(text).split())


OS_HINTS = {errno.ENOENT: "; check the path (a folder in it may be missing)",
            errno.EACCES: "; check the permissions (or use a folder you own)",
            errno.EPERM: "; check the permissions (or use a folder you own)",
            errno.EROFS: "; that file system is read-only: write somewhere else",
            errno.ENOSPC: "; the disk is full: free some space and rerun (finished work is kept)",
            errno.EDQUOT: "; the disk quota is full: free some space and rerun (finished work is kept)"}


def explain(e: BaseException) -> tuple[int, str]:
    """The exit status and the one line `speechwire` prints for an exception that reached it."""
    if isinstance(e, (ValueError, OSError)) and not isinstance(e, UnicodeError):
        msg = one_line(str(e)) or type(e).__name__
        if isinstance(e, OSError) and e.strerror:  # the OS's own error: say which file and what to do
            msg = f"{e.filename}: {e.strerror}" if e.filename else e.strerror
            msg += (f" (and {e.filename2})" if e.filename2 else "") + OS_HINTS.get(e.errno, "")
        return USER_ERROR, msg
    if isinstance(e, ImportError):
        return USER_ERROR, f"{one_line(str(e))}; install the missing package (see README, Install)"
    if isinstance(e, MemoryError):
        return USER_ERROR, "out of memory; lower data.max_batch_seconds / eval.batch_size or use a bigger machine"
    return INTERNAL_ERROR, f"unexpected {type(e).__name__}: {one_line(str(e))[:300]} ({BUG_HINT})"
