"""Peak memory of this process, the one measure for train summaries and grid results.

    reset_peak_memory()       # before a run
    ...
    peak_memory_gib()         # -> 3.096 (GiB), the peak since the reset (or since the process started)

GPU (CUDA available): bytes allocated by PyTorch on the current device (`torch.cuda.max_memory_allocated`).
CPU on Linux: the peak resident set size, `VmHWM` of /proc/self/status; a reset writes "5" to
/proc/self/clear_refs, which sets VmHWM back to the current resident size. (`getrusage`'s
ru_maxrss reads the same peak but cannot be reset, so a second run in one process would report the
first one's peak.) Elsewhere: ru_maxrss (no reset), or None where even that is missing.

    release_file_pages(tensor)  # a weights file's pages under `tensor` stop counting as resident
"""

from __future__ import annotations

import ctypes
import mmap
import sys
from contextlib import suppress
from pathlib import Path

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")
_MAPS = Path("/proc/self/maps")
_MADV_DONTNEED = 4
GIB = 2**30


def _cuda():
    """`torch.cuda` when a CUDA device is available, else None."""
    import torch

    return torch.cuda if torch.cuda.is_available() else None


def reset_peak_memory() -> None:
    """Start a new peak: the CUDA allocator's peak statistics, or the process's VmHWM (Linux)."""
    if (cuda := _cuda()) is not None:
        cuda.reset_peak_memory_stats()
        return
    with suppress(OSError):  # not Linux, or /proc read-only: the peak then counts from the process's start
        _CLEAR_REFS.write_text("5")


def peak_memory_gib() -> float | None:
    """Peak memory in GiB (3 decimals) since the last `reset_peak_memory()` (or the process's start).

    Returns:
        CUDA: peak bytes allocated by PyTorch; CPU: peak resident set size; None when unknown.
    """
    if (cuda := _cuda()) is not None:
        return round(cuda.max_memory_allocated() / GIB, 3)
    with suppress(OSError, ValueError, IndexError):
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) * 1024 / GIB, 3)  # "VmHWM:  123456 kB"
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return round(peak * (1 if sys.platform == "darwin" else 1024) / GIB, 3)


def release_file_pages(tensor) -> bool:
    """Drop this process's resident pages under a contiguous CPU `tensor` that maps a file.

    safetensors loads weights as a map of the file, and every page a read touches counts as this
    process's memory until it ends (the demo LLM's 0.54 GB output layer, read once to copy its
    Latin rows, then never again). `madvise(MADV_DONTNEED)` drops them; a later read maps them
    again from the file, the same bytes. Only whole pages of a file mapping are dropped: a tensor
    in anonymous memory would lose its contents, so it is left alone. The tensor must still hold
    the file's bytes (a weight changed in place after loading would read as the file again).

    Returns:
        True when pages were dropped; False for anonymous memory, a non-contiguous or empty tensor,
        or a system without /proc/self/maps and madvise (then nothing happens).
    """
    if tensor.device.type != "cpu" or not tensor.is_contiguous() or tensor.numel() == 0:
        return False
    start = tensor.data_ptr()
    end = start + tensor.numel() * tensor.element_size()
    try:
        maps = _MAPS.read_text().splitlines()
        madvise = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):  # not Linux
        return False
    for line in maps:  # "7f42c8800000-7f435ebee000 rw-p 00000000 fe:00 16056559   /path/to/model.safetensors"
        fields = line.split(maxsplit=5)
        low, high = (int(x, 16) for x in fields[0].split("-"))
        if low <= start and end <= high:
            if len(fields) < 6 or fields[4] == "0" or not fields[5].startswith("/"):
                return False  # anonymous, heap or stack
            break
    else:
        return False
    first, last = -(-start // mmap.PAGESIZE) * mmap.PAGESIZE, end // mmap.PAGESIZE * mmap.PAGESIZE
    if last <= first:
        return False
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return madvise(first, last - first, _MADV_DONTNEED) == 0


def trim_heap() -> bool:
    """Hand the C heap's free pages back to the system (glibc's `malloc_trim`).

    glibc serves blocks of up to 32 MB from its heap once a freed block of that size raised its
    mmap threshold, and keeps the heap's freed pages resident: copying a weight matrix in 29 MB
    chunks left ~0.18 GiB of freed chunks counted in the resident set until trimmed.

    Returns:
        True when memory was returned; False when there was none or the C library is not glibc.
    """
    try:
        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):  # not glibc
        return False
