import os
import sys
from pathlib import Path

import pytest
import torch

from speechwire import memory
from speechwire.memory import peak_memory_gib, release_file_pages, reset_peak_memory

LINUX_PROC = sys.platform.startswith("linux") and os.access("/proc/self/clear_refs", os.W_OK)
cpu_only = pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the peak is CUDA's allocator")


@cpu_only
@pytest.mark.skipif(not LINUX_PROC, reason="needs a writable /proc/self/clear_refs (Linux)")
def test_peak_counts_resident_memory():
    reset_peak_memory()
    before = peak_memory_gib()  # torch and the test process: ~0.3 GiB already
    block = b"\x01" * (256 * 2**20)  # written, so resident
    del block  # freed again: only a peak still counts it
    assert peak_memory_gib() >= before + 0.24


@cpu_only
@pytest.mark.skipif(not LINUX_PROC, reason="needs a writable /proc/self/clear_refs (Linux)")
def test_reset_forgets_an_earlier_peak():
    block = b"\x01" * (256 * 2**20)
    high = peak_memory_gib()
    del block
    reset_peak_memory()
    assert peak_memory_gib() <= high - 0.2  # the 256 MiB freed before the reset no longer counts


@cpu_only
def test_without_proc_falls_back_to_getrusage(monkeypatch, tmp_path):
    monkeypatch.setattr(memory, "_STATUS", tmp_path / "missing")
    monkeypatch.setattr(memory, "_CLEAR_REFS", tmp_path / "no" / "clear_refs")
    reset_peak_memory()  # nothing to reset: no error
    assert peak_memory_gib() > 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_peak_is_allocator_peak_and_resets():
    reset_peak_memory()
    x = torch.empty(256 * 2**20, dtype=torch.uint8, device="cuda")
    assert peak_memory_gib() >= 0.25
    del x
    torch.cuda.empty_cache()
    reset_peak_memory()
    assert peak_memory_gib() < 0.25


def _rss_kib() -> int:
    return next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
                if line.startswith("VmRSS:"))


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="Linux /proc")
def test_release_file_pages_drops_a_weights_files_pages_and_keeps_its_values(tmp_path):
    """A safetensors tensor maps its file: reading it makes its pages resident; releasing them keeps
    the values (read again from the file), an anonymous tensor is never touched."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    values = torch.arange(16 * 2**20, dtype=torch.float32).reshape(4096, 4096)  # 64 MiB
    save_file({"w": values}, str(tmp_path / "w.safetensors"))
    with safe_open(str(tmp_path / "w.safetensors"), framework="pt") as f:
        mapped = f.get_tensor("w")
    assert float(mapped.sum()) == float(values.sum())  # every page read: resident
    before = _rss_kib()
    assert release_file_pages(mapped) and release_file_pages(mapped[100:3000])
    assert before - _rss_kib() > 48 * 1024  # most of the 64 MiB left the resident set
    assert torch.equal(mapped, values)  # read again from the file
    anonymous = values.clone()
    assert not release_file_pages(anonymous) and torch.equal(anonymous, values)
    assert not release_file_pages(mapped[:, :5])  # not contiguous
    assert not release_file_pages(torch.empty(0))


def test_trim_heap_hands_back_freed_heap_pages_or_says_it_cannot(monkeypatch):
    assert isinstance(memory.trim_heap(), bool)  # glibc: True when pages went back, False when none were free

    def no_glibc(name, *args, **kwargs):
        raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr(memory.ctypes, "CDLL", no_glibc)
    assert memory.trim_heap() is False  # musl, macOS: nothing to do, no error
