"""quantune's own rows: W8A8 with per-channel weights, simulated and on the integer core.

The model is prepared once (BatchNorm folding, activation statistics) and each
configuration is a cheap ``PreparedModel.quantize`` on the shared statistics, which is
how the tuner works too; ``prepare_s`` of each row is the shared preparation plus that
row's own quantization.
"""

from __future__ import annotations

from typing import Any

from scoreboard_common import Prepared, timed

import quantune
from quantune.config import (
    ActQuant,
    CalibrationProcedure,
    LayerQuantConfig,
    QuantConfig,
    WeightQuant,
)
from quantune.zoo import ZooEntry

W8 = WeightQuant(bits=8, symmetric=True, granularity="per_channel", method="minmax")
W7 = WeightQuant(bits=7, symmetric=True, granularity="per_channel", method="minmax")
GPTQ_BC = CalibrationProcedure.from_steps("gptq+biascorr")
CONFIGS: dict[str, QuantConfig] = {
    "quantune-w8a8": QuantConfig(default=LayerQuantConfig(W8, ActQuant(bits=8, method="minmax"))),
    "quantune-w8a8-entropy": QuantConfig(default=LayerQuantConfig(W8, ActQuant(bits=8, method="entropy"))),
    # GPTQ rounding + bias correction; 7-bit weights: one GEMM on CPUs without VNNI.
    "quantune-w8a8-gptq-bc": QuantConfig(default=LayerQuantConfig(W8, ActQuant(bits=8)), procedure=GPTQ_BC),
    "quantune-w7a8-gptq-bc": QuantConfig(default=LayerQuantConfig(W7, ActQuant(bits=8)), procedure=GPTQ_BC),
    # SmoothQuant (alpha 0.8) for transformers: outlier channels divided before the grid.
    "quantune-w8a8-sq": QuantConfig(default=LayerQuantConfig(W8, ActQuant(bits=8, smoothing=0.8))),
}


class QuantuneRunner:
    """Prepares an entry's model once and builds quantized variants from it."""

    def __init__(self, entry: ZooEntry) -> None:
        self.entry = entry
        self._prepared: Any = None
        self._prepare_s = 0.0

    def _prepare(self) -> Any:
        if self._prepared is None:
            self._prepared, self._prepare_s = timed(lambda: quantune.prepare_model(self.entry.model, self.entry.calib_batches))
        return self._prepared

    def build(self, config_name: str, mode: str) -> Prepared:
        """A quantized model of ``CONFIGS[config_name]`` in ``mode`` (simulate / integer)."""
        prepared = self._prepare()
        qmodel, secs = timed(lambda: prepared.quantize(CONFIGS[config_name], mode=mode))
        note = "fake-quant in float" if mode == "simulate" else "integer GEMM core (kernels as committed)"
        return Prepared(qmodel, qmodel.size_bytes(), self._prepare_s + secs, note=note)
