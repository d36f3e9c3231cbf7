"""The measurements behind each proxy: swap-one-layer loss, and layer output error.

``measure_loss``: for each cell and layer, the float model with that one layer swapped
for its quantized version runs over the data; the value is the mean loss increase over
the float model (the loss proxy, the most faithful and the most expensive: one forward
pass per layer, cell and batch).

``measure_output_error``: one forward pass of the float model per batch; a forward hook
on every layer feeds the layer's float input to each quantized version and accumulates
the squared error against the float output. This is cheap (one model pass plus one
extra layer evaluation per cell) and gives the relative output error power
(``output_mse``) and the raw per-sample squared error the Hessian proxy weights.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from quantune.batches import batch_size, run_model
from quantune.bn_folding import set_submodule
from quantune.modules import QuantizedLayer
from quantune.search.sensitivity_losses import LossFn, output_tensor
from quantune.token_mask import real_tokens

Cell = tuple[int, int]
#: Builds ``{layer: QuantizedLayer}`` for a cell.
LayerFactory = Callable[[Cell], Mapping[str, QuantizedLayer]]


@dataclass
class FloatReference:
    """The float model's outputs and loss on every batch (computed once)."""

    outputs: list[torch.Tensor]
    losses: list[float]
    sizes: list[int]


@torch.no_grad()
def float_reference(model: nn.Module, batches: Sequence[Any], loss: LossFn) -> FloatReference:
    outputs, losses, sizes = [], [], []
    for batch in batches:
        out = output_tensor(run_model(model, batch)).detach()
        outputs.append(out)
        losses.append(float(loss(out, out, batch)))
        sizes.append(batch_size(batch))
    return FloatReference(outputs, losses, sizes)


@torch.no_grad()
def mean_loss_increase(model: nn.Module, batches: Sequence[Any], ref: FloatReference, loss: LossFn) -> float:
    """Sample-weighted mean of ``loss(model) - loss(float)`` over the batches."""
    total = 0.0
    for batch, out_ref, loss_ref, n in zip(batches, ref.outputs, ref.losses, ref.sizes, strict=True):
        out = output_tensor(run_model(model, batch))
        total += n * (float(loss(out, out_ref, batch)) - loss_ref)
    return total / max(sum(ref.sizes), 1)


def measure_loss(
    float_model: nn.Module,
    names: Sequence[str],
    cells: Sequence[Cell],
    batches: Sequence[Any],
    loss: LossFn,
    layers_for: LayerFactory,
    tick: Callable[[], None],
    context: Mapping[str, QuantizedLayer] | None = None,
    context_cells: Mapping[str, Cell] | None = None,
) -> dict[str, dict[Cell, float]]:
    """Loss increase with one layer quantized at a time (``tick`` after each (layer, cell)).

    With ``context`` (``{layer: QuantizedLayer}``), every other layer runs in its context
    version instead of float, and the value is the loss increase over the all-context
    model: the sensitivity linearized around that model rather than around float.
    ``context_cells`` names the cell each context layer is at: probing a layer at its
    own cell changes nothing, so it is 0 without a pass.
    """
    work = copy.deepcopy(float_model).eval()
    ref = float_reference(work, batches, loss)
    context = dict(context or {})
    for name, layer in context.items():
        set_submodule(work, name, layer)
    # The loss of the model every probe starts from (0 without a context).
    start = mean_loss_increase(work, batches, ref, loss) if context else 0.0
    resting = {n: work.get_submodule(n) for n in names}
    values: dict[str, dict[Cell, float]] = {n: {} for n in names}
    for cell in cells:
        qlayers = layers_for(cell)
        for name in names:
            q = qlayers.get(name)
            if q is None or (context_cells or {}).get(name) == cell:
                # A layer the config keeps float costs nothing; nor does a layer probed at
                # the cell it already runs at.
                values[name][cell] = 0.0
                tick()
                continue
            set_submodule(work, name, q)
            try:
                values[name][cell] = mean_loss_increase(work, batches, ref, loss) - start
            finally:
                set_submodule(work, name, resting[name])
            tick()
    return values


@dataclass
class OutputError:
    """Per layer and cell, the squared output error summed over all samples.

    Attributes:
        sse: ``{layer: {cell: sum over samples of ||y_q - y||^2}}``.
        signal: ``{layer: sum over samples of ||y||^2}``.
        n_samples: Samples seen.
    """

    sse: dict[str, dict[Cell, float]]
    signal: dict[str, float]
    n_samples: int

    def relative(self) -> dict[str, dict[Cell, float]]:
        """Error power over signal power (1 / SQNR) per layer and cell."""
        return {n: {c: e / max(self.signal[n], 1e-30) for c, e in cells.items()}
                for n, cells in self.sse.items()}

    def per_sample(self) -> dict[str, dict[Cell, float]]:
        """Mean squared error norm per sample."""
        return {n: {c: e / max(self.n_samples, 1) for c, e in cells.items()}
                for n, cells in self.sse.items()}


@torch.no_grad()
def measure_output_error(
    float_model: nn.Module,
    names: Sequence[str],
    cells: Sequence[Cell],
    batches: Sequence[Any],
    layers_for: LayerFactory,
    tick: Callable[[], None],
) -> OutputError:
    """Output error of every layer at every cell, in one float pass per batch."""
    qlayers = {cell: layers_for(cell) for cell in cells}
    sse = {n: dict.fromkeys(cells, 0.0) for n in names}
    signal = dict.fromkeys(names, 0.0)
    modules = dict(float_model.named_modules())

    def hook(name: str) -> Callable[..., None]:
        def fn(mod: nn.Module, inputs: tuple[Any, ...], out: Any) -> None:
            if not torch.is_tensor(out):
                return
            # Padded text positions are no output's concern (quantune.token_mask).
            kind = "linear" if isinstance(mod, nn.Linear) else "other"
            x, y = real_tokens(inputs[0], kind), real_tokens(out.detach().float(), kind)
            signal[name] += float(y.pow(2).sum())
            for cell in cells:
                q = qlayers[cell].get(name)
                if q is not None:
                    sse[name][cell] += float((q(x).float() - y).pow(2).sum())
        return fn

    handles = [modules[n].register_forward_hook(hook(n)) for n in names]
    n_samples = 0
    try:
        for batch in batches:
            run_model(float_model, batch)
            n_samples += batch_size(batch)
            tick()
    finally:
        for h in handles:
            h.remove()
    return OutputError(sse, signal, n_samples)
