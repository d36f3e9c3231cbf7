"""Name -> builder of a :class:`ZooEntry`; builders are imported only when asked for."""

from __future__ import annotations

import importlib
from dataclasses import replace

from quantune.errors import UserInputError
from quantune.zoo.entry import ZooEntry, ZooSize

# name -> module with ``build(size) -> ZooEntry`` and ``SIZES = {"quick": ..., "full": ...}``.
# Adding a model is one line here plus one module.
_ENTRIES: dict[str, str] = {
    "example": "quantune.zoo.example",
    "efficientnet-lite0": "quantune.zoo.efficientnet",
    "minilm-l6": "quantune.zoo.minilm",
}
PRESETS = ("quick", "full")


def names() -> list[str]:
    """Registered entry names."""
    return list(_ENTRIES)


def _module(name: str):  # type: ignore[no-untyped-def]
    if name not in _ENTRIES:
        raise UserInputError(f"Unknown model {name!r} in the quantune zoo; choose one of: {', '.join(_ENTRIES)}.")
    return importlib.import_module(_ENTRIES[name])


def default_size(name: str, preset: str = "quick") -> ZooSize:
    """The ``quick`` or ``full`` data sizes of entry ``name``."""
    if preset not in PRESETS:
        raise UserInputError(f"Unknown size preset {preset!r}; choose one of: {', '.join(PRESETS)}.")
    return _module(name).SIZES[preset]


def get(
    name: str,
    preset: str = "quick",
    *,
    n_calib: int | None = None,
    n_eval: int | None = None,
    batch_size: int | None = None,
    seed: int = 0,
) -> ZooEntry:
    """Build the entry ``name``: float model, calibration and evaluation batches, evaluator.

    Args:
        name: one of :func:`names` (``example``, ``efficientnet-lite0``, ``minilm-l6``).
        preset: ``quick`` (small, for iterating) or ``full`` (>= 1,000 evaluation inputs).
        n_calib: overrides the preset's number of calibration samples.
        n_eval: overrides the preset's number of evaluation samples.
        batch_size: overrides the preset's batch size.
        seed: seeds every random choice of the data.

    Raises:
        UserInputError: unknown name or preset, or an optional package missing (the
            message says ``pip install 'quantune[models]'``).
    """
    base = default_size(name, preset)
    size = replace(
        base,
        n_calib=base.n_calib if n_calib is None else n_calib,
        n_eval=base.n_eval if n_eval is None else n_eval,
        batch_size=base.batch_size if batch_size is None else batch_size,
        seed=seed,
    )
    return _module(name).build(size)
