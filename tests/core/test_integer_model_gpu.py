"""A quantized model in integer mode on CUDA matches its simulation (``-m gpu``).

End to end on the bundled example: quantize on the CPU, move the model to the GPU, run
integer mode there (Triton GEMMs for dense layers; grouped convolutions fall back), and
compare with the simulated (fake-quant) model on the CPU.
"""

from __future__ import annotations

import copy
import importlib.util

import pytest
import torch

import quantune
from quantune.config import LayerQuantConfig, QuantConfig, WeightQuant

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
    pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs Triton"),
]


@pytest.mark.parametrize("weight_bits", [8, 4])
def test_integer_mode_on_cuda_matches_simulation(example, weight_bits):
    model, calib, val = example
    cfg = QuantConfig(default=LayerQuantConfig(weight=WeightQuant(bits=weight_bits)))
    qmodel = quantune.quantize(model, cfg, calib[:4], mode="simulate")
    x = torch.cat([b[0] for b in val[:4]])
    with torch.no_grad():
        simulated = qmodel(x)
        gpu = copy.deepcopy(qmodel).to("cuda").set_mode("integer")
        integer = gpu(x.cuda()).float().cpu()
    used = {n: m.integer_decision.backend for n, m in gpu.quantized_layers().items() if m.integer_decision}
    assert "triton" in used.values(), used
    agreement = (integer.argmax(1) == simulated.argmax(1)).float().mean().item()
    assert agreement >= 0.99, agreement
    # Same int32 accumulators; outputs differ by float rounding of the epilogues, which can
    # move a requantized (chained) code by one step.
    assert (integer - simulated).abs().max().item() <= 0.01 * simulated.abs().max().item()
