"""quantune: post-training quantization auto-tuner for PyTorch.

Importing ``quantune`` is cheap: heavy dependencies (xgboost, optuna, pulp) load only
when the search or the allocator is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Public name -> module that defines it (imported on first use).
_LAZY = {
    "ActQuant": "quantune.config",
    "CalibrationProcedure": "quantune.config",
    "LayerQuantConfig": "quantune.config",
    "QuantConfig": "quantune.config",
    "WeightQuant": "quantune.config",
    "QuantuneError": "quantune.errors",
    "UserInputError": "quantune.errors",
    "PreparedModel": "quantune.prepare",
    # The function is exported as prepare_model: a lazily exported name equal to a
    # submodule's name would be replaced by that module once it is imported.
    "prepare_model": "quantune.prepare",
    "quantize": "quantune.prepare",
    "QuantizedModel": "quantune.quantized_model",
    "save": "quantune.artifact",
    "tune": "quantune.tune",
    "TuneResult": "quantune.tune_result",
    "check": "quantune.check",
    "CheckResult": "quantune.check",
    "allocate_bits": "quantune.search.bits_api",
    "AllocationOptions": "quantune.search.bits_api",
    "Budget": "quantune.search.allocation",
    "Allocation": "quantune.search.allocation",
    "apply_allocation": "quantune.search.allocation",
    "load": "quantune.artifact",
}

__all__ = sorted(_LAZY) + ["__version__"]

if TYPE_CHECKING:
    from quantune.artifact import load, save
    from quantune.check import CheckResult, check
    from quantune.config import (
        ActQuant,
        CalibrationProcedure,
        LayerQuantConfig,
        QuantConfig,
        WeightQuant,
    )
    from quantune.errors import QuantuneError, UserInputError
    from quantune.prepare import PreparedModel, prepare_model, quantize
    from quantune.quantized_model import QuantizedModel
    from quantune.search.allocation import Allocation, Budget, apply_allocation
    from quantune.search.bits_api import AllocationOptions, allocate_bits
    from quantune.tune import tune
    from quantune.tune_result import TuneResult


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'quantune' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
