"""The bundled example (a small labelled classifier that ships with quantune)."""

from __future__ import annotations

from typing import Any

import torch

from quantune.batches import batch_labels, model_inputs
from quantune.errors import QuantuneError
from quantune.zoo.entry import ZooEntry, ZooSize
from quantune.zoo.evaluators import LabelledAccuracy

NAME = "example"
SIZES = {
    "quick": ZooSize(n_calib=256, n_eval=100_000, batch_size=64),
    "full": ZooSize(n_calib=512, n_eval=100_000, batch_size=64),
}


def _rebatch(batches: list[Any], limit: int, batch_size: int) -> list[Any]:
    """The first ``limit`` samples of ``batches``, re-cut into ``batch_size`` pieces."""
    xs = torch.cat([model_inputs(b) for b in batches])[:limit]
    labels = [batch_labels(b) for b in batches]
    ys = torch.cat(labels)[:limit] if all(y is not None for y in labels) else None  # type: ignore[arg-type]
    out: list[Any] = []
    for i in range(0, xs.shape[0], batch_size):
        x = xs[i : i + batch_size]
        out.append((x, ys[i : i + batch_size]) if ys is not None else x)
    return out


def build(size: ZooSize) -> ZooEntry:
    """The registry entry over :func:`quantune.example.load_example`.

    The example ships its own calibration and labelled evaluation splits; this entry
    only caps their sizes (``n_eval`` larger than the shipped split means all of it).
    """
    import quantune.example as example

    loader = getattr(example, "load_example", None)
    if loader is None:
        raise QuantuneError("This build of quantune has no bundled example (quantune.example.load_example is missing).")
    model, calib_batches, eval_batches = loader()
    calib = _rebatch(list(calib_batches), size.n_calib, size.batch_size)
    evals = _rebatch(list(eval_batches), size.n_eval, size.batch_size)
    model = model.eval()
    return ZooEntry(
        name=NAME,
        description="bundled example classifier; labelled top-1 accuracy",
        model=model,
        calib_batches=[model_inputs(b) for b in calib],
        eval_batches=evals,
        evaluator=LabelledAccuracy(evals, model),
        calib_sources=("example:calibration split",),
        eval_sources=("example:evaluation split",),
        size=size,
        input_names=("input",),
    )
