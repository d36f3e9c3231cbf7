"""Registry of real models and their data (bundled example, EfficientNet-Lite0, MiniLM-L6).

>>> from quantune import zoo
>>> entry = zoo.get("efficientnet-lite0", "quick")        # doctest: +SKIP
>>> qmodel = quantune.quantize(entry.model, None, entry.calib_batches)  # doctest: +SKIP
>>> entry.evaluate(qmodel)                                 # doctest: +SKIP
{'top1_agreement': ..., 'top5_agreement': ..., 'mean_kl': ...}

Importing this package is cheap: an entry's heavy packages (transformers, scikit-image,
...) load only when that entry is built.
"""

from __future__ import annotations

from quantune.zoo.entry import ZooEntry, ZooSize
from quantune.zoo.evaluators import (
    ClassifierFidelity,
    EmbeddingFidelity,
    Evaluator,
    LabelledAccuracy,
    collect_outputs,
)
from quantune.zoo.registry import PRESETS, default_size, get, names

__all__ = [
    "PRESETS",
    "ClassifierFidelity",
    "EmbeddingFidelity",
    "Evaluator",
    "LabelledAccuracy",
    "ZooEntry",
    "ZooSize",
    "collect_outputs",
    "default_size",
    "get",
    "names",
]
