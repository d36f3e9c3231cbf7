"""Capture one layer's inputs (and float outputs) on calibration data, within a memory cap.

Layer-wise calibration needs, for one layer at a time, its input in the float model,
its input in the (partially) quantized model, and the float layer's output. The model
is run only up to that layer: a pre-hook records the input and stops the forward pass
by raising, so early layers cost a fraction of a full pass.

Memory is bounded per layer: a seeded subset of samples (convolutions) or of rows
(Linear layers; tokens of a sequence count as rows) is kept, sized so that the cached
inputs plus targets fit ``cache_bytes`` whatever the size of the calibration set. The
models run on a few samples at a time (:func:`samples_per_pass`), a convolution's
passes only on the samples it keeps, and the kept samples go into one preallocated
buffer (:mod:`quantune.calibration.row_store`): the passes' transient memory does not
depend on the batch size, and collecting costs the kept fraction of the passes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import nn

from quantune.batches import largest_group, run_model
from quantune.calibration.data import take_rows
from quantune.calibration.fisher import fisher_weights, output_gradients
from quantune.calibration.replay import batch_sizes
from quantune.calibration.row_store import RowStore
from quantune.memory import watched_batches
from quantune.token_mask import real_token_samples, real_tokens


class StopForward(Exception):
    """Raised by the capture hook once the layer's input is recorded."""


@dataclass
class LayerSamples:
    """Cached inputs ``x`` and float targets ``y`` of one layer (rows of equal index match).

    ``sample_ids``: the calibration sample each row comes from (a sentence's tokens share
    one), so that rows can be held out by sample; None: every row is its own sample.
    ``weight``: per-element weights of the output error, shaped like ``y``
    (:mod:`quantune.calibration.fisher`); None: plain mean squared error.
    """

    x: torch.Tensor
    y: torch.Tensor
    sample_ids: torch.Tensor | None = None
    weight: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def ids(self) -> torch.Tensor:
        """The sample id of every row."""
        return self.sample_ids if self.sample_ids is not None else torch.arange(len(self))


class CapturedInput(NamedTuple):
    """One batch's input of a layer.

    ``x``: the input; for a Linear layer of a padded text batch only the real tokens'
    rows ``[rows, in]`` (:mod:`quantune.token_mask`). ``row_samples``: then, each row's
    sample index within the batch (None when nothing was dropped).
    """

    index: int
    x: torch.Tensor
    row_samples: torch.Tensor | None


def capture_inputs(model: nn.Module, layer_name: str, batches: Iterable[Any], kind: str
                   ) -> Iterable[CapturedInput]:
    """Yield the input of ``layer_name``'s (a ``kind`` layer) first call on each batch.

    Batches on which the layer does not run are skipped (their index is missing).
    """
    module = model.get_submodule(layer_name)
    box: list[tuple[torch.Tensor, torch.Tensor | None]] = []

    def hook(mod: nn.Module, inputs: tuple[Any, ...]) -> None:
        x = inputs[0].detach()
        box.append((real_tokens(x, kind), real_token_samples(x, kind)))
        raise StopForward

    handle = module.register_forward_pre_hook(hook)
    try:
        with torch.no_grad():
            for i, batch in enumerate(watched_batches(batches)):
                box.clear()
                try:
                    run_model(model, batch)
                except StopForward:
                    pass
                if box:
                    yield CapturedInput(i, *box[0])
    finally:
        handle.remove()


def as_rows(x: torch.Tensor, kind: str) -> torch.Tensor:
    """Linear inputs ``[..., in]`` as rows ``[M, in]``; conv inputs stay per sample."""
    return x.reshape(-1, x.shape[-1]) if kind == "linear" else x


def samples_in(x: torch.Tensor) -> int:
    """Calibration samples in a layer input: its batch dimension (a 1-D input is one)."""
    return int(x.shape[0]) if x.dim() > 1 else 1


def row_sample_ids(x: torch.Tensor, kind: str, first_id: int) -> torch.Tensor:
    """The sample id of each of ``as_rows(x, kind)``'s rows, samples numbered from ``first_id``.

    A Linear input ``[batch, tokens..., in]`` has ``prod(tokens)`` rows per sample; a 2-D
    Linear input and a convolution's input have one.
    """
    n = samples_in(x)
    rows = as_rows(x, kind).shape[0]
    return torch.arange(first_id, first_id + n).repeat_interleave(rows // n)


class RowSelector:
    """Seeded choice of which rows (or samples) of each batch to cache for one layer.

    Each batch keeps ``floor(fraction * rows + u)`` of its rows, ``u`` uniform in [0, 1),
    where ``fraction`` makes the total fit the byte budget: the expected count is exactly
    ``fraction * rows`` (rounding up per batch overshot the cap by one row per batch: up to
    +45 % of a 64 MB cap on 8 batches of 8 images), and the first batch keeps at least one
    row. The choice depends only on (seed, layer index, batch index), so the float and the
    quantized pass pick the same rows.
    """

    def __init__(self, fraction: float, seed: int, layer_index: int) -> None:
        self.fraction = min(1.0, max(fraction, 0.0))
        self.seed = seed
        self.layer_index = layer_index

    @classmethod
    def for_budget(
        cls, bytes_per_row: int, total_rows: int, cache_bytes: int, seed: int, layer_index: int
    ) -> RowSelector:
        max_rows = max(1, cache_bytes // max(bytes_per_row, 1))
        return cls(max_rows / max(total_rows, 1), seed, layer_index)

    def indices(self, n: int, batch_index: int) -> torch.Tensor | None:
        """The sorted indices of the rows kept among ``n`` rows of batch ``batch_index``
        (None: all of them)."""
        if self.fraction >= 1.0:
            return None
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.layer_index * 10_007 + batch_index)
        k = min(n, math.floor(self.fraction * n + float(torch.rand((), generator=gen))))
        if batch_index == 0:
            k = max(k, min(n, 1))
        return torch.randperm(n, generator=gen)[:k].sort().values

    def pick(self, rows: torch.Tensor, batch_index: int) -> torch.Tensor:
        idx = self.indices(rows.shape[0], batch_index)
        return rows if idx is None else rows[idx.to(rows.device)]


#: Bytes of the largest activation of one forward pass while a layer's samples are
#: collected. The passes' transient memory (and the heap it fragments) scales with the
#: samples per pass; a large model's speed hardly does, so the samples per pass are cut
#: to this budget (EfficientNet-Lite0 at 224x224: 3; a small model keeps whole batches).
PASS_ACTIVATION_BYTES = 16 * 2**20


def samples_per_pass(layers: Iterable[Any], budget_bytes: int = PASS_ACTIVATION_BYTES) -> int:
    """Samples per collecting pass such that the largest float32 input or output of any of
    ``layers`` (:class:`quantune.capture.LayerInfo`, shapes per sample) fits ``budget_bytes``."""
    largest = max((4 * math.prod(shape) for li in layers for shape in (li.input_shape, li.output_shape) if shape),
                  default=0)
    return max(1, budget_bytes // max(largest, 1))

#: ``(batch index, the batch's samples to run)``; None: the whole batch.
Part = tuple[int, torch.Tensor | None]


class _NotPerSample(Exception):
    """A convolution's input batch is not the model's batch (the model reshapes its samples)."""


def _parts(sizes: list[int], per_pass: int | None, selector: RowSelector | None = None) -> list[Part]:
    """Each batch (of ``sizes`` samples) in parts of at most ``per_pass`` samples (None:
    no limit): the samples ``selector`` keeps (a batch that keeps none gives no part), or
    without a selector all of them, in order."""
    parts: list[Part] = []
    for i, n in enumerate(sizes):
        idx = None if selector is None else selector.indices(n, i)
        if idx is None and (per_pass is None or n <= per_pass):
            parts.append((i, None))
        else:
            kept = torch.arange(n) if idx is None else idx
            parts.extend((i, part) for part in (kept.split(per_pass) if per_pass else (kept,)))
    return parts


def collect_layer_samples(
    float_model: nn.Module,
    input_model: nn.Module,
    layer_name: str,
    kind: str,
    batches: Sequence[Any],
    selector: RowSelector,
    float_target: bool = True,
    fisher: bool = False,
    per_pass: int | None = None,
) -> LayerSamples | None:
    """Cache the layer's inputs from ``input_model`` and float targets.

    ``input_model`` is the partially quantized model (sequential mode) or the float model
    itself. Targets are the float layer applied to the float model's input
    (``float_target``: the quantized layer then also absorbs the error of the layers before
    it) or to the cached input itself (it only has to reproduce the float layer on what it
    is fed). ``fisher``: also cache each target element's weight, the squared gradient
    of the float model's top-1 cross-entropy at the layer's output
    (:mod:`quantune.calibration.fisher`). Returns None when the layer never runs on the data.

    The models run on at most ``per_pass`` samples at a time (None: whole batches; see
    :func:`samples_per_pass`), so the passes' activations stay small whatever the batch
    size. A convolution caches whole samples, so they run only on the samples the
    selector keeps (a batch that keeps none is not run at all): when the cache binds,
    collecting costs that fraction of the passes.
    Linear layers keep rows (tokens), selected after each pass. With ``fisher`` the
    passes run whole batches, as the weights' gradients do.
    """
    sizes = batch_sizes(batches)
    collection = _LayerCollection(float_model, input_model, layer_name, kind, batches, sizes, selector,
                                  float_target, fisher)
    if fisher:
        return collection.run(_parts(sizes, None), select_before=False)
    if kind != "linear":
        try:
            return collection.run(_parts(sizes, per_pass, selector), select_before=True)
        except _NotPerSample:
            pass  # the layer's batch dimension is not the samples': select rows after the pass
    return collection.run(_parts(sizes, per_pass), select_before=False)


@dataclass
class _LayerCollection:
    """What :func:`collect_layer_samples` collects from; :meth:`run` does it over given parts."""

    float_model: nn.Module
    input_model: nn.Module
    layer_name: str
    kind: str
    batches: Sequence[Any]
    sizes: list[int]
    selector: RowSelector
    float_target: bool
    fisher: bool

    def run(self, parts: list[Part], *, select_before: bool) -> LayerSamples | None:
        """:func:`collect_layer_samples` over ``parts``: samples the selector already chose
        (``select_before``), or runs of samples of which it picks rows after the pass (it
        is then seeded per part, so both passes pick the same rows)."""
        float_model, input_model, layer_name, kind = self.float_model, self.input_model, self.layer_name, self.kind
        batches, selector, float_target, fisher = self.batches, self.selector, self.float_target, self.fisher
        float_layer = float_model.get_submodule(layer_name)
        sizes = self.sizes
        offsets = [0]
        for n in sizes:
            offsets.append(offsets[-1] + n)

        def part_inputs() -> Iterator[Any]:
            """Each part's samples, cut on the fly (only the one being run is ever
            copied) in one sequential read of the batches."""
            remaining = iter(parts)
            part = next(remaining, None)
            for i, batch in enumerate(batches):
                while part is not None and part[0] == i:
                    yield batch if part[1] is None else take_rows(batch, part[1])
                    part = next(remaining, None)
                if part is None:
                    return

        def captured(model: nn.Module) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
            """``(part index, input rows to keep, each row's sample id)``."""
            for j, x, row_samples in capture_inputs(model, layer_name, part_inputs(), kind):
                i, idx = parts[j]
                n = sizes[i] if idx is None else len(idx)
                sample_ids = offsets[i] + (torch.arange(n) if idx is None else idx)
                if select_before:
                    if samples_in(x) != n:
                        raise _NotPerSample
                    yield j, x, sample_ids
                    continue
                # Each row's sample within the part; a layer whose batch is not the samples
                # (a reshaping model) numbers its own rows from the part's first sample.
                local = row_sample_ids(x, kind, 0) if row_samples is None else row_samples
                in_part = len(local) == 0 or int(local.max()) < n
                ids = sample_ids[local] if in_part else local + int(sample_ids[0])
                yield j, selector.pick(x, j), selector.pick(ids, j)

        # Kept samples are known before the passes when selected before them: one buffer
        # each for inputs and targets (calibration.row_store); rows picked after a pass
        # (tokens) are kept part by part.
        capacity = sum(sizes[i] if idx is None else len(idx) for i, idx in parts) if select_before else 0
        ys, xs = RowStore(capacity), RowStore(capacity)
        ids: dict[int, torch.Tensor] = {}
        with torch.no_grad():
            if float_target:
                for j, x, row_ids in captured(float_model):
                    # forward() skips module hooks (the capture hook is still registered here).
                    ys.put(j, as_rows(float_layer.forward(x), kind))
                    ids[j] = row_ids
                if not ids:
                    return None
            for j, x, row_ids in captured(input_model):
                if not float_target:
                    ys.put(j, as_rows(float_layer.forward(x), kind))
                    ids[j] = row_ids
                if j in ys:
                    xs.put(j, as_rows(x, kind))
        keys = _largest_same_shape_group([j for j in ys.keys() if j in xs], xs, ys)
        if not keys:
            return None
        weight = None
        if fisher:  # whole batches: part j is batch j
            grads = {i: selector.pick(g, i).clone() for i, g in output_gradients(float_model, layer_name, kind, batches)
                     if i in xs}
            weight = fisher_weights(torch.cat([grads[i] if i in grads else torch.zeros_like(ys.get(i)) for i in keys]))
        return LayerSamples(xs.gather(keys), ys.gather(keys), torch.cat([ids[j] for j in keys]), weight)


def _largest_same_shape_group(keys: list[int], xs: RowStore, ys: RowStore) -> list[int]:
    """The batches whose samples can be stacked with the most others.

    Feature maps of images of different sizes cannot be stacked into one tensor; the
    layer-wise steps then learn from the size that holds the most samples, and the
    other sizes still count in every statistic and in the evaluation.
    """
    return largest_group(keys, lambda i: (tuple(xs.get(i).shape[1:]), tuple(ys.get(i).shape[1:])),
                         lambda i: int(xs.get(i).shape[0]))


def bytes_per_row(in_shape: tuple[int, ...], out_shape: tuple[int, ...], kind: str, targets: int = 1) -> int:
    """float32 bytes of one cached row: a Linear row, or one conv sample (input + target;
    ``targets=2`` when an error weight of the target's shape is cached too)."""
    if kind == "linear":
        return 4 * (in_shape[-1] + targets * out_shape[-1])
    return 4 * (math.prod(in_shape) + targets * math.prod(out_shape))


def rows_per_sample(in_shape: tuple[int, ...], kind: str) -> int:
    """Linear rows per sample (tokens of a sequence); one for convolutions."""
    return math.prod(in_shape[:-1]) if kind == "linear" and len(in_shape) > 1 else 1
