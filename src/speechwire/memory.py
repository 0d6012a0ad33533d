"""Peak memory of this process, the one measure for train summaries and grid results.

    reset_peak_memory()       # before a run
    ...
    peak_memory_gib()         # -> 3.096 (GiB), the peak since the reset (or since the process started)

GPU (CUDA available): bytes allocated by PyTorch on the current device (`torch.cuda.max_memory_allocated`).
CPU on Linux: the peak resident set size, `VmHWM` of /proc/self/status; a reset writes "5" to
/proc/self/clear_refs, which sets VmHWM back to the current resident size. (`getrusage`'s
ru_maxrss reads the same peak but cannot be reset, so a second run in one process would report the
first one's peak.) Elsewhere: ru_maxrss (no reset), or None where even that is missing.
"""

from __future__ import annotations

import sys
from contextlib import suppress
from pathlib import Path

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")
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
