"""ONNX Runtime peers: FP32, static QDQ (MinMax / Entropy / Percentile), dynamic int8.

The float model is exported once per entry with the TorchScript exporter (the
``torch.export`` one needs onnxscript, which is not a dependency), with a dynamic
batch dimension. Static quantization follows ONNX Runtime's documented recipe:
``quant_pre_process`` (shape inference + graph optimization), then ``quantize_static``
in QDQ format with per-channel int8 weights and uint8 activations, calibrated on the
same calibration batches quantune gets.

Static quantization is restricted to the compute ops (Conv, MatMul, Gemm), ONNX
Runtime's own advice for transformers and the same layer set quantune quantizes (plus
the attention matmuls). With ORT's default of quantizing every op, the attention-mask
``Add`` (whose fill value is the float32 minimum) swamps the activation ranges: on
MiniLM-L6 that gave a mean cosine of 0.37 (MinMax) and made the Entropy calibrator
fail with "Too many bins", so the default would measure a misuse, not the tool.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scoreboard_common import THREADS, Prepared, timed

from quantune.batches import model_inputs
from quantune.zoo import ZooEntry

STATIC_OP_TYPES = ("Conv", "MatMul", "Gemm")


def _feeds(inputs: Any, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    if isinstance(inputs, dict):
        return {k: inputs[k].cpu().numpy() for k in names}
    return {names[0]: inputs.cpu().numpy()}


class OrtPredictor:
    """Callable like the torch model (tensor or keyword inputs) over an ORT session."""

    def __init__(self, path: str, input_names: tuple[str, ...]) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = THREADS
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        self.input_names = input_names

    def __call__(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        inputs = kwargs if kwargs else args[0]
        out = self.session.run(None, _feeds(inputs, self.input_names))[0]
        return torch.from_numpy(out)


def export_onnx(entry: ZooEntry, workdir: Path) -> Path:
    """FP32 ONNX export of the entry's model with a dynamic batch dimension."""
    path = workdir / f"{entry.name}-fp32.onnx"
    if path.exists():
        return path
    example = model_inputs(entry.calib_batches[0])
    names = entry.input_names
    if isinstance(example, dict):
        args: tuple[Any, ...] = tuple(example[k] for k in names)
    else:
        args = (example,)
    dynamic = {n: {0: "batch"} for n in names} | {"output": {0: "batch"}}
    torch.onnx.export(
        entry.model, args, str(path), input_names=list(names), output_names=["output"],
        dynamic_axes=dynamic, opset_version=17, dynamo=False,
    )
    return path


class _Reader:
    """ONNX Runtime CalibrationDataReader over the entry's calibration batches."""

    def __init__(self, entry: ZooEntry) -> None:
        self._batches = entry.calib_batches
        self._names = entry.input_names
        self._it: Iterator[Any] = iter(self._batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._it, None)
        return None if batch is None else _feeds(model_inputs(batch), self._names)

    def rewind(self) -> None:
        self._it = iter(self._batches)


def fp32(entry: ZooEntry, workdir: Path) -> Prepared:
    path, secs = timed(lambda: export_onnx(entry, workdir))
    return Prepared(OrtPredictor(str(path), entry.input_names), os.path.getsize(path), secs, note="export time")


def static(entry: ZooEntry, workdir: Path, calibrator: str) -> Prepared:
    """QDQ static int8 (per-channel weights) with ORT's ``calibrator`` (MinMax/Entropy/Percentile)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    fp32_path = export_onnx(entry, workdir)  # export time is not part of calibration
    out = workdir / f"{entry.name}-static-{calibrator.lower()}.onnx"
    pre = workdir / f"{entry.name}-pre.onnx"

    class Reader(_Reader, CalibrationDataReader):
        pass

    def run() -> None:
        if not pre.exists():
            quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=False)
        quantize_static(
            str(pre), str(out), Reader(entry), quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            calibrate_method=getattr(CalibrationMethod, calibrator),
            op_types_to_quantize=list(STATIC_OP_TYPES),
        )

    _, secs = timed(run)
    return Prepared(OrtPredictor(str(out), entry.input_names), os.path.getsize(out), secs)


def dynamic(entry: ZooEntry, workdir: Path) -> Prepared:
    """Dynamic int8 (weights per channel, activations quantized per call)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fp32_path = export_onnx(entry, workdir)
    out = workdir / f"{entry.name}-dynamic.onnx"
    _, secs = timed(lambda: quantize_dynamic(str(fp32_path), str(out), weight_type=QuantType.QInt8, per_channel=True))
    return Prepared(OrtPredictor(str(out), entry.input_names), os.path.getsize(out), secs)
