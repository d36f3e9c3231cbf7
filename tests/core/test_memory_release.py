"""release_free_memory: freed heap pages go back to the OS (glibc), a no-op elsewhere;
HeapWatch trims inside a loop only when the resident size ratchets up."""

from __future__ import annotations

import sys

import pytest
import torch

from quantune.memory import (
    HeapWatch,
    _malloc_trim,
    release_free_memory,
    resident_mb,
    watched_batches,
)


@pytest.mark.skipif(not sys.platform.startswith("linux") or _malloc_trim() is None, reason="needs glibc")
def test_freed_heap_pages_are_returned() -> None:
    # 4000 tensors of 64 KiB sit below glibc's mmap threshold, so they come from the heap;
    # the last one stays alive, so freeing the others cannot shrink the heap from the top
    # and their ~250 MB stay resident until they are trimmed.
    blocks = [torch.ones(16384) for _ in range(4000)]
    fence = blocks.pop()
    del blocks
    held = resident_mb()
    assert release_free_memory() is True
    assert resident_mb() < held - 100, (held, resident_mb())
    assert fence.sum().item() == 16384  # the live tensor is untouched


def test_without_malloc_trim_nothing_happens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("quantune.memory._malloc_trim", lambda: None)
    assert release_free_memory() is False


def test_heap_watch_trims_only_when_the_resident_size_ratchets_up(monkeypatch: pytest.MonkeyPatch) -> None:
    resident = iter([500.0, 510.0, 505.0, 530.0, 515.0, 518.0, 540.0, 520.0])
    trims: list[float] = []
    monkeypatch.setattr("quantune.memory.resident_mb", lambda: next(resident))
    monkeypatch.setattr("quantune.memory.release_free_memory", lambda: trims.append(1) or True)
    watch = HeapWatch(slack_mb=16)
    watch.step()  # 500: the steady level after the first batch
    watch.step()  # 510: within the slack
    watch.step()  # 505
    watch.step()  # 530 > 516: trim, then 515 (what stays is live data): level 515
    assert len(trims) == 1 and watch.level == 515
    watch.step()  # 518: within the slack of the new level
    watch.step()  # 540 > 531: trim, then 520: level 520
    assert watch.trims == len(trims) == 2 and watch.level == 520


def test_heap_watch_without_proc_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("quantune.memory.resident_mb", lambda: None)
    monkeypatch.setattr("quantune.memory.release_free_memory", lambda: pytest.fail("trimmed"))
    watch = HeapWatch()
    for _ in range(3):
        watch.step()
    assert watch.trims == 0 and watch.level is None


@pytest.mark.skipif(not sys.platform.startswith("linux") or _malloc_trim() is None, reason="needs glibc")
def test_heap_watch_returns_a_fragmented_heap_to_the_os() -> None:
    watch = HeapWatch(slack_mb=64)
    watch.step()
    blocks = [torch.ones(16384) for _ in range(4000)]  # ~250 MB of heap blocks (see above)
    fence = blocks.pop()
    del blocks
    held = resident_mb()
    watch.step()
    assert watch.trims == 1 and resident_mb() < held - 100
    assert fence.sum().item() == 16384


def test_watched_batches_steps_after_each_batch_is_processed(monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[str] = []
    resident = iter([500.0, 600.0, 510.0])
    monkeypatch.setattr("quantune.memory.resident_mb", lambda: next(resident))
    monkeypatch.setattr("quantune.memory.release_free_memory", lambda: events.append("trim") or True)
    for batch in watched_batches(["a", "b"]):
        events.append(batch)
    # 500 after "a" sets the level; 600 after "b" is over it by > 16 MB: one trim (-> 510).
    assert events == ["a", "b", "trim"]
