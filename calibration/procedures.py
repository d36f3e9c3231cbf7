"""Data-driven steps run after a model is quantized (bias correction, AdaQuant, BN tuning)."""

from __future__ import annotations

from typing import Any

from quantune.config import CalibrationProcedure
from quantune.errors import UserInputError


def run_procedure(qmodel: Any, prepared: Any, procedure: CalibrationProcedure) -> None:
    """Apply the steps ``procedure`` asks for, in place, on ``qmodel``.

    ``prepared`` is the :class:`quantune.prepare.PreparedModel` the model came from (its
    float model and calibration data).
    """
    requested = [
        name
        for name, on in (
            ("adaquant", procedure.adaquant),
            ("bias_correction", procedure.bias_correction),
            ("bn_reestimate", procedure.bn_reestimate),
        )
        if on
    ]
    if requested:
        raise UserInputError(
            f"Calibration step(s) {requested} are not available in this build; "
            "set them to false in the config's procedure."
        )
