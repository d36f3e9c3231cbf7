"""Per-layer sensitivity: how much the loss grows when one layer is quantized.

>>> import quantune
>>> from quantune.search.sensitivity import measure_sensitivity
>>> prepared = quantune.prepare_model(model, calib_batches)          # doctest: +SKIP
>>> table = measure_sensitivity(prepared, proxy="loss")      # doctest: +SKIP
>>> print(table.to_table())                                  # doctest: +SKIP

Proxies (the table records which one was used):

- ``loss``: the loss increase itself, one layer quantized at a time (task loss with
  labels, fidelity loss to the float model without; see
  :mod:`quantune.search.sensitivity_losses`). One forward pass per layer, cell and batch.
- ``output_mse``: the layer's relative output error power (1/SQNR). One float forward
  pass per batch for the whole table; ranks layers but ignores how much the rest of the
  network amplifies their error.
- ``hessian``: output error weighted by a Hutchinson estimate of the loss Hessian trace
  at the layer output, a second-order prediction of the loss increase (HAWQ-v2 style).
  Costs the ``output_mse`` pass plus a few double-backward passes.

Results are cached per cell (memory, and a JSON file and/or an Optuna storage when
given), keyed by the model, data, base configuration, proxy and loss: measuring again,
for another budget or with more candidates, only measures what is missing.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from quantune.config import QuantConfig
from quantune.errors import UserInputError
from quantune.prepare import PreparedModel
from quantune.progress import progress_bar
from quantune.search import sensitivity_probes as probes
from quantune.search.sensitivity_cache import (
    cache_key,
    data_fingerprint,
    model_fingerprint,
    open_store,
)
from quantune.search.sensitivity_hessian import output_hessian_traces
from quantune.search.sensitivity_layers import base_signature, layers_at, quantized_layers
from quantune.search.sensitivity_losses import loss_function, output_tensor, resolve_loss
from quantune.search.sensitivity_table import (
    PROXIES,
    Candidates,
    Cell,
    SensitivityTable,
    cell_key,
    derive_cells,
    finite_or_zero,
    parse_cell_key,
)

#: Calibration samples used by default: enough to rank layers, small enough to be quick.
DEFAULT_MAX_SAMPLES = 256
#: Samples the Hessian traces are estimated on: a trace is one scalar per layer, summed
#: over many output elements, so a few samples give a stable estimate.
HESSIAN_SAMPLES = 32


def _head_batches(batches: Sequence[Any], samples: int) -> list[Any]:
    out, seen = [], 0
    for batch in batches:
        if seen >= samples:
            break
        out.append(batch)
        seen += probes.batch_size(batch)
    return out


def _measure(
    prepared: PreparedModel,
    proxy: str,
    loss_name: str,
    names: list[str],
    cells: list[Cell],
    batches: Sequence[Any],
    base: QuantConfig,
    hessian_probes: int,
    seed: int,
    show_progress: bool,
    context: Cell | Mapping[str, Cell] | None = None,
) -> dict[str, dict[Cell, float]]:
    """Measure ``cells`` of ``names`` with one proxy (no caching here)."""
    loss = loss_function(loss_name)
    model = prepared.float_model

    def layers_for(cell: Cell) -> dict[str, Any]:
        return quantized_layers(prepared, base, cell, names)

    if proxy == "loss":
        total = len(names) * len(cells)
        desc = f"sensitivity (loss, {len(batches)} batches per cell)"
    else:
        total = len(batches) + (len(_head_batches(batches, HESSIAN_SAMPLES)) if proxy == "hessian" else 0)
        desc = f"sensitivity ({proxy})"
    with progress_bar(total=total, desc=desc, unit="cell" if proxy == "loss" else "pass",
                      enable=show_progress) as bar:
        tick = lambda: bar.update(1)  # noqa: E731
        if proxy == "loss":
            cells_around = None
            if isinstance(context, Mapping):
                cells_around = dict(context)
            elif context is not None:
                cells_around = dict.fromkeys(prepared.layer_names, context)
            around = layers_at(prepared, base, cells_around) if cells_around is not None else None
            return probes.measure_loss(model, names, cells, batches, loss, layers_for, tick, around,
                                       cells_around)
        error = probes.measure_output_error(model, names, cells, batches, layers_for, tick)
        if proxy == "output_mse":
            return error.relative()
        head = _head_batches(batches, HESSIAN_SAMPLES)
        ref = probes.float_reference(model, head, loss).outputs
        n_probes = max(1, int(hessian_probes))
        traces = output_hessian_traces(model, names, head, ref, loss, n_probes=n_probes, seed=seed,
                                       tick=_every(n_probes, tick))
        sse = error.per_sample()
        return {n: {c: 0.5 * traces[n] * e for c, e in sse[n].items()} for n in names}


def context_signature(context: Cell | Mapping[str, Cell]) -> str:
    """The cache-key part of a context: ``"4,8"`` for one width everywhere, a digest of
    the per-layer cells for an allocation."""
    if not isinstance(context, Mapping):
        return cell_key(context)
    text = json.dumps(sorted((n, cell_key(c)) for n, c in context.items()))
    return "cells:" + hashlib.sha256(text.encode()).hexdigest()[:24]


def _every(n: int, tick: Any) -> Any:
    count = [0]

    def fn() -> None:
        count[0] += 1
        if count[0] % n == 0:
            tick()
    return fn


def resolved_loss(prepared: PreparedModel, batches: Sequence[Any], loss: str = "auto") -> str:
    """The concrete loss (``ce``, ``kl``, ``top1-ce``, ``cosine``, ``mse``) ``loss`` stands for on these
    batches (``auto`` looks at the float model's output and the batches' labels)."""
    with torch.no_grad():
        first = output_tensor(probes.run_model(prepared.float_model, batches[0]))
    return resolve_loss(loss, first, batches[0])


def measure_sensitivity(
    prepared: PreparedModel,
    data: Iterable[Any] | None = None,
    *,
    candidates: Candidates | None = None,
    proxy: str = "loss",
    loss: str = "auto",
    base_config: QuantConfig | None = None,
    max_samples: int | None = DEFAULT_MAX_SAMPLES,
    seed: int = 0,
    layers: Sequence[str] | None = None,
    cache_path: str | Path | None = None,
    storage: str | None = None,
    hessian_probes: int = 4,
    context_bits: int | None = None,
    context_cells: Mapping[str, Cell] | None = None,
    show_progress: bool = True,
) -> SensitivityTable:
    """Measure the sensitivity table of a prepared model.

    Args:
        prepared: The model from :func:`quantune.prepare`.
        data: Batches to measure on; default: the calibration data (a seeded subset of
            ``max_samples`` samples). Labelled ``(inputs, labels)`` batches give the task
            loss with ``loss="auto"``.
        candidates: Candidate widths (default: weights 2/3/4/6/8, activations 4/8).
        proxy: ``loss``, ``output_mse`` or ``hessian`` (see the module docstring).
        loss: ``auto``, ``ce``, ``kl``, ``cosine`` or ``mse``.
        base_config: Schemes and range methods of the layers (default ``QuantConfig()``);
            only the bit widths vary.
        max_samples: Cap on samples (seeded subset); ``None`` uses all the data.
        seed: Seed of the subset and of the Hessian probes.
        layers: Layers to measure (default: every quantizable layer).
        cache_path: JSON file that persists measurements across processes.
        storage: Optuna storage URL that persists them in the study storage.
        hessian_probes: Hutchinson probes per batch (``hessian`` proxy).
        context_bits: ``loss`` proxy only: every layer not being probed runs with weights
            at this width (activations at the widest candidate) instead of float, and a
            cell's value is the loss increase over that all-quantized model. The table is
            then linearized around a model near the budget, where the allocation lands,
            instead of around float: a layer whose error only hurts on top of the others'
            (compounding low-bit noise) shows it. Default: around float.
        context_cells: ``loss`` proxy only: ``{layer: (w_bits, a_bits)}``; every layer not
            being probed runs at its own cell (layers left out stay float), and a cell's
            value is the loss increase over that model: the table linearized around an
            allocation (see :mod:`quantune.search.allocation_relinearize`). Exclusive
            with ``context_bits``.
        show_progress: Show a progress bar with ETA.

    Returns:
        The table; ``measured`` counts the cells measured by this call (0 when every
        cell came from a cache).

    Raises:
        UserInputError: Unknown proxy, loss or layer, or bad candidates.
    """
    if proxy not in PROXIES:
        raise UserInputError(f"unknown sensitivity proxy {proxy!r}; use one of {PROXIES}")
    for what, given in (("context_bits", context_bits), ("context_cells", context_cells)):
        if given is not None and proxy != "loss":
            raise UserInputError(f"{what} needs the 'loss' proxy (the {proxy!r} proxy measures each "
                                 f"layer on float inputs); drop {what} or use proxy='loss'")
    if context_bits is not None and context_cells is not None:
        raise UserInputError("give context_bits or context_cells, not both")
    candidates = candidates or Candidates()
    context: Cell | dict[str, Cell] | None = None
    if context_cells is not None:
        unknown_context = sorted(set(context_cells) - set(prepared.layer_names))
        if unknown_context:
            raise UserInputError(f"context_cells names unknown layers {unknown_context}")
        context = {n: (int(c[0]), int(c[1])) for n, c in context_cells.items()}
    elif context_bits is not None:
        if context_bits not in candidates.weight_bits:
            raise UserInputError(f"context_bits={context_bits} is not a candidate weight width "
                                 f"{candidates.weight_bits}")
        context = (int(context_bits), candidates.top[1])
    base = base_config or QuantConfig()
    names = list(layers) if layers is not None else prepared.layer_names
    unknown = sorted(set(names) - set(prepared.layer_names))
    if unknown:
        raise UserInputError(f"unknown layers {unknown}; quantizable layers are {prepared.layer_names}")
    if data is None:
        batches = list(prepared.calibration_data(max_samples, seed))
    else:
        from quantune.calibration.data import calibration_batches

        batches = list(calibration_batches(data, max_samples, seed))
    loss_name = resolved_loss(prepared, batches, loss)
    # Without a context the key has no context part, so caches written before the option
    # existed stay valid.
    around = {} if context is None else {"context": context_signature(context)}
    key = cache_key(model=model_fingerprint(prepared.float_model, prepared.layer_names),
                    data=data_fingerprint(batches), base=base_signature(base), proxy=proxy,
                    loss=loss_name, probes=str(hessian_probes) if proxy == "hessian" else "",
                    seed=str(seed) if proxy == "hessian" else "", **around)
    store = open_store(cache_path, storage)
    entry = store.get(key)
    wanted = candidates.measured_cells()
    cached = {n: {parse_cell_key(k): v for k, v in entry.get(n, {}).items()} for n in names}
    missing_cells = [c for c in wanted if any(c not in cached[n] for n in names)]
    missing_layers = [n for n in names if any(c not in cached[n] for c in missing_cells)]
    start = time.perf_counter()
    measured = 0
    if missing_cells:
        new = _measure(prepared, proxy, loss_name, missing_layers, missing_cells, batches, base,
                       hessian_probes, seed, show_progress, context)
        for n, cells in new.items():
            for c, v in cells.items():
                if c not in cached[n]:
                    measured += 1
                cached[n][c] = finite_or_zero(float(v))
        for n in names:
            entry.setdefault(n, {}).update({cell_key(c): v for c, v in cached[n].items()})
        store.put(key, entry)
    total_wanted = len(names) * len(wanted)
    values = {n: derive_cells(cached[n], candidates) for n in names}
    return SensitivityTable(
        proxy=proxy, loss="relative_output_mse" if proxy == "output_mse" else loss_name,
        candidates=candidates, values=values,
        n_samples=sum(probes.batch_size(b) for b in batches), measured=measured,
        cached=total_wanted - measured, seconds=time.perf_counter() - start, context_bits=context_bits,
        context_cells=context if isinstance(context, dict) else None)


__all__ = ["DEFAULT_MAX_SAMPLES", "Candidates", "SensitivityTable", "measure_sensitivity", "resolved_loss"]
