"""ONNX Runtime int8 peer for the end-to-end benchmark: the same network, ORT-quantized.

Exports the float model with torch's ONNX exporter, quantizes it statically with
``onnxruntime.quantization.quantize_static`` (QDQ format, per-channel int8 weights,
uint8 activations, MinMax calibration on the same calibration batches quantune used),
and returns a callable running it with the benchmark's thread count. Any failure (ORT
or onnx not installed, an op the exporter cannot handle) returns the reason instead,
so the benchmark reports the row without the peer.
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch


def _as_inputs(batch: Any, names: Sequence[str]) -> dict[str, Any]:
    if isinstance(batch, dict):
        return {n: batch[n].numpy() for n in names}
    x = batch[0] if isinstance(batch, (tuple, list)) else batch
    return {names[0]: x.numpy()}


def _positional(batch: Any, names: Sequence[str]) -> tuple[torch.Tensor, ...]:
    if isinstance(batch, dict):
        return tuple(batch[n] for n in names)
    return (batch[0] if isinstance(batch, (tuple, list)) else batch,)


def build_ort_int8(
    model: torch.nn.Module,
    calib_batches: Sequence[Any],
    example: Any,
    input_names: Sequence[str],
    threads: int,
) -> Callable[[], Any] | str:
    """A zero-argument callable running the ORT int8 model on ``example``, or why not."""
    try:
        import onnxruntime as ort
        from onnxruntime.quantization import (
            CalibrationDataReader,
            QuantFormat,
            QuantType,
            quantize_static,
        )
    except ImportError:
        return "onnxruntime not installed (pip install 'quantune[peers]')"

    names = list(input_names)
    ort.set_default_logger_severity(3)  # errors only: exported graphs log many harmless notes

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(calib_batches)

        def get_next(self) -> dict[str, Any] | None:
            batch = next(self._it, None)
            return None if batch is None else _as_inputs(batch, names)

    tmp = Path(tempfile.mkdtemp(prefix="quantune_ort_"))
    fp32_path, int8_path = tmp / "model.onnx", tmp / "model_int8.onnx"
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            axes = {n: {0: "batch"} for n in names}
            if isinstance(example, dict):
                for n in names:
                    axes[n][1] = "seq"
            torch.onnx.export(model.eval(), _positional(example, names), str(fp32_path), dynamo=False,
                              input_names=names, dynamic_axes=axes, opset_version=17)
            quantize_static(str(fp32_path), str(int8_path), Reader(), quant_format=QuantFormat.QDQ,
                            per_channel=True, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        sess = ort.InferenceSession(str(int8_path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - a peer that cannot be built is reported, not fatal
        return f"ORT int8 build failed: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
    feed = _as_inputs(example, names)
    return lambda: sess.run(None, feed)
