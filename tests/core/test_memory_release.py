"""release_free_memory: freed heap pages go back to the OS (glibc), a no-op elsewhere."""

from __future__ import annotations

import sys

import pytest
import torch

from quantune.memory import _malloc_trim, release_free_memory


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


@pytest.mark.skipif(not sys.platform.startswith("linux") or _malloc_trim() is None, reason="needs glibc")
def test_freed_heap_pages_are_returned() -> None:
    # 4000 tensors of 64 KiB sit below glibc's mmap threshold, so they come from the heap;
    # the last one stays alive, so freeing the others cannot shrink the heap from the top
    # and their ~250 MB stay resident until they are trimmed.
    blocks = [torch.ones(16384) for _ in range(4000)]
    fence = blocks.pop()
    del blocks
    held = _rss_mb()
    assert release_free_memory() is True
    assert _rss_mb() < held - 100, (held, _rss_mb())
    assert fence.sum().item() == 16384  # the live tensor is untouched


def test_without_malloc_trim_nothing_happens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("quantune.memory._malloc_trim", lambda: None)
    assert release_free_memory() is False
