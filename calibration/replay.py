"""Calibration batches for the many-pass steps, held in memory only when they fit a budget.

GPTQ, AdaRound, AdaQuant and the corrections run the calibration data once or twice per
layer. Holding it in memory is fastest, but makes memory grow with the calibration
set (1,024 images at 224x224 are 616 MB). :func:`batches_within` keeps the batches of a
re-iterable source (a ``DataLoader``, a dataset that reads files) only while they fit
the budget; a larger source is replayed from the source at every pass instead
(:class:`ReplayedBatches`), so memory stays flat and each pass pays the source's
loading time.

A replayed source must give the same batches in the same order at every pass, since
a layer's inputs and targets are matched across passes: every replay checks each
batch against a fingerprint of the first pass and stops with a clear error otherwise
(a shuffling loader, random augmentation).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, overload

from quantune.batches import batch_size, batch_tensors, iter_batches
from quantune.errors import UserInputError

#: Samples of a tensor summed into its fingerprint (a strided subset: cheap on any size).
_FINGERPRINT_SAMPLES = 4096


def fingerprint(batch: Any) -> tuple[Any, ...]:
    """Shapes, dtypes and a strided checksum of every tensor in ``batch``: equal for the
    same batch read twice, different for another batch or order (with near certainty)."""
    parts: list[Any] = []
    for t in batch_tensors(batch):
        flat = t.detach().reshape(-1)
        step = max(1, flat.numel() // _FINGERPRINT_SAMPLES)
        parts.append((tuple(t.shape), str(t.dtype), float(flat[::step].double().sum()) if flat.numel() else 0.0))
    return tuple(parts)


def batch_bytes(batch: Any) -> int:
    return sum(t.numel() * t.element_size() for t in batch_tensors(batch))


class _ReadInOrder(Sequence[Any]):
    """A batch sequence read front to back: indexing reads up to the index, and ``+``
    chains another sequence after it without reading either."""

    @overload
    def __getitem__(self, index: int) -> Any: ...

    @overload
    def __getitem__(self, index: slice) -> list[Any]: ...

    def __getitem__(self, index: int | slice) -> Any:
        return _by_iteration(self, index)

    def __add__(self, other: Sequence[Any]) -> ChainedBatches:
        return ChainedBatches([self, other])


class ReplayedBatches(_ReadInOrder):
    """A re-iterable batch source replayed at every pass, checked against its first pass.

    ``sizes`` holds each batch's sample count, so callers need no pass to learn them.
    Indexing replays the source up to the index: meant for the first few batches.
    """

    def __init__(self, source: Iterable[Any], fingerprints: list[tuple[Any, ...]], sizes: list[int]) -> None:
        self.source = source
        self.fingerprints = fingerprints
        self.sizes = sizes

    def __len__(self) -> int:
        return len(self.sizes)

    def __iter__(self) -> Iterator[Any]:
        count = 0
        # The first read validated every batch (quantune.batches.iter_batches); a replay
        # only has to be that same read again.
        for i, batch in enumerate(self.source):
            if i >= len(self.fingerprints) or fingerprint(batch) != self.fingerprints[i]:
                raise UserInputError(
                    f"The calibration data changed between passes (batch {i} differs from the first "
                    "pass): the layer-wise steps read data that does not fit the in-memory budget "
                    "again at every pass and need the same batches in the same order. Use a "
                    "deterministic loader (shuffle=False, no random augmentation), or pass the "
                    "batches as a list, or raise the budget (data_cache_mb) to keep them in memory."
                )
            count += 1
            yield batch
        if count != len(self.fingerprints):
            raise UserInputError(
                f"The calibration data gave {count} batches in this pass and {len(self.fingerprints)} "
                "in the first; a replayed source must give the same batches at every pass "
                "(shuffle=False, no random augmentation), or pass the batches as a list."
            )


class ChainedBatches(_ReadInOrder):
    """Batch sequences one after the other (real data replayed, then synthetic ones)."""

    def __init__(self, parts: list[Sequence[Any]]) -> None:
        self.parts = parts
        self.sizes = [n for p in parts for n in batch_sizes(p)]

    def __len__(self) -> int:
        return sum(len(p) for p in self.parts)

    def __iter__(self) -> Iterator[Any]:
        for part in self.parts:
            yield from part

    def __add__(self, other: Sequence[Any]) -> ChainedBatches:
        return ChainedBatches([*self.parts, other])


def _by_iteration(batches: Sequence[Any], index: int | slice) -> Any:
    """``batches[index]`` read in order, up to the last batch wanted (never all of a
    replayed source for its first few batches)."""
    wanted = range(len(batches))[index] if isinstance(index, slice) else None
    if wanted is None:
        assert isinstance(index, int)
        if not -len(batches) <= index < len(batches):
            raise IndexError(index)
        wanted = range(index % len(batches), index % len(batches) + 1)
    picked: dict[int, Any] = {}
    if wanted:
        for i, batch in enumerate(batches):
            if i in wanted:
                picked[i] = batch
            if i >= max(wanted):
                break
    items = [picked[i] for i in wanted]
    return items if isinstance(index, slice) else items[0]


def batch_sizes(batches: Sequence[Any]) -> list[int]:
    """Each batch's sample count (without a replay where the sequence records them)."""
    sizes = getattr(batches, "sizes", None)
    return list(sizes) if sizes is not None else [batch_size(b) for b in batches]


def batches_within(data: Iterable[Any], budget_bytes: int) -> Sequence[Any]:
    """``data`` as a sequence of batches: a list or tuple as it is; any other source read
    once and kept as a list when its tensors fit ``budget_bytes``, else replayed
    (:class:`ReplayedBatches`) with the fingerprints and sizes of that first read."""
    if isinstance(data, list | tuple):
        return data
    kept: list[Any] | None = []
    held = 0
    fingerprints: list[tuple[Any, ...]] = []
    sizes: list[int] = []
    for batch in iter_batches(data):
        sizes.append(batch_size(batch))
        if kept is not None:
            held += batch_bytes(batch)
            if held <= budget_bytes:
                kept.append(batch)
                continue
            # Over the budget: replay from the source from now on. Only a replayed
            # source needs fingerprints (the kept batches' are taken as they go).
            fingerprints = [fingerprint(b) for b in kept]
            kept = None
        fingerprints.append(fingerprint(batch))
    return kept if kept is not None else ReplayedBatches(data, fingerprints, sizes)
