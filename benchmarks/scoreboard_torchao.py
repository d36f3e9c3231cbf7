"""torchao peers on CPU: PT2E static int8 (x86 Inductor quantizer) and dynamic int8 Linear.

PT2E follows torchao's documented x86 recipe: ``torch.export`` the float model,
``prepare_pt2e`` with ``X86InductorQuantizer`` (per-channel int8 weights, per-tensor
uint8 activations), run the calibration batches, ``convert_pt2e``, then
``torch.compile`` so Inductor fuses the quantize/dequantize pairs into int8 kernels.
Compilation happens on the first call and is counted in ``prepare_s``.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from scoreboard_common import Prepared, latency_batch, serialized_bytes, tensor_bytes, timed

from quantune.batches import model_inputs, run_model
from quantune.zoo import ZooEntry


def _export_args(inputs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    return ((), dict(inputs)) if isinstance(inputs, dict) else ((inputs,), {})


def pt2e_static(entry: ZooEntry) -> Prepared:
    """PT2E static int8 with the x86 Inductor quantizer, run through torch.compile."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq

    def run() -> tuple[Any, int]:
        args, kwargs = _export_args(model_inputs(entry.calib_batches[0]))
        exported = torch.export.export(copy.deepcopy(entry.model), args, kwargs).module()
        quantizer = xiq.X86InductorQuantizer()
        quantizer.set_global(xiq.get_default_x86_inductor_quantization_config())
        prepared = prepare_pt2e(exported, quantizer)
        with torch.no_grad():
            for batch in entry.calib_batches:
                run_model(prepared, batch)
        converted = convert_pt2e(prepared)
        size = tensor_bytes(converted)
        compiled = torch.compile(converted)
        with torch.no_grad():  # trigger compilation for both shapes used later
            run_model(compiled, entry.eval_batches[0])
            run_model(compiled, latency_batch(entry.eval_batches[0]))
        return compiled, size

    (predict, size), secs = timed(run)
    return Prepared(predict, size, secs, note="prepare_s includes torch.compile")


def dynamic_int8_linear(entry: ZooEntry) -> Prepared:
    """``Int8DynamicActivationInt8WeightConfig`` on every Linear (eager, no compile)."""
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

    def run() -> Any:
        model = copy.deepcopy(entry.model)
        quantize_(model, Int8DynamicActivationInt8WeightConfig())
        return model

    model, secs = timed(run)
    return Prepared(model, serialized_bytes(model.state_dict()), secs, note="eager")
