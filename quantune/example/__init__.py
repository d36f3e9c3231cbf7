"""The bundled example: a small digits CNN with its weights and data split shipped inside.

``load_example()`` needs nothing but torch and numpy: the images (scikit-learn's
digits, BSD licence) and the trained weights lie beside this file. Re-train with
``python -m quantune.example.train`` (needs scikit-learn).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from quantune.example.model import DigitsCNN

HERE = Path(__file__).resolve().parent
WEIGHTS = HERE / "digits_cnn.pt"
DATA = HERE / "digits_data.npz"
INPUT_SHAPE = (1, 8, 8)

Batch = tuple[torch.Tensor, torch.Tensor]


def build_model() -> DigitsCNN:
    """The trained example model (eval mode). Usable as ``--model-factory``."""
    model = DigitsCNN()
    model.load_state_dict(torch.load(WEIGHTS, map_location="cpu", weights_only=True))
    return model.eval()


def _batches(idx: np.ndarray, images: np.ndarray, labels: np.ndarray, batch_size: int) -> list[Batch]:
    x = torch.from_numpy(images[idx]).float().unsqueeze(1) / 16.0
    y = torch.from_numpy(labels[idx]).long()
    return [(x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, len(idx), batch_size)]


def load_example(batch_size: int = 64) -> tuple[DigitsCNN, list[Batch], list[Batch]]:
    """The example model, its calibration batches and its labelled validation batches.

    Returns:
        ``(model, calib_batches, eval_batches)``; batches are ``(images, labels)`` with
        images ``[N, 1, 8, 8]`` in [0, 1]. Calibration samples come from the training
        split, validation samples are held out (never seen in training or calibration).
    """
    with np.load(DATA) as d:
        images, labels = d["images"], d["labels"]
        calib = _batches(d["calib_idx"], images, labels, batch_size)
        val = _batches(d["val_idx"], images, labels, batch_size)
    return build_model(), calib, val


__all__ = ["DigitsCNN", "INPUT_SHAPE", "build_model", "load_example"]
