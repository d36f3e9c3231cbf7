"""Shared pieces of the scoreboard: result rows, timing, sizes, machine description."""

from __future__ import annotations

import io
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from quantune.batches import model_inputs, run_model

THREADS = 2


@dataclass
class Row:
    """One (model, method) result; ``metric`` is the entry's primary metric."""

    model: str
    method: str
    metric_name: str
    metric: float | None
    metrics: dict[str, float] = field(default_factory=dict)
    latency_ms: float | None = None
    latency_batch: int = 1
    size_bytes: int | None = None
    prepare_s: float | None = None
    eval_s: float | None = None
    n_eval: int = 0
    note: str = ""
    error: str = ""
    machine: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Prepared:
    """What a method hands back: something callable on batch inputs, and its cost."""

    predict: Callable[..., Any]
    size_bytes: int | None
    prepare_s: float
    note: str = ""


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
        if names:
            cpu = names[0]
    except OSError:
        pass
    try:
        load = f"load average {os.getloadavg()[0]:.1f}"
    except OSError:
        load = "load average unknown"
    return (
        f"{cpu}, {os.cpu_count()} logical cores ({load} at start), {THREADS} threads; Linux {platform.release()}; "
        f"Python {platform.python_version()}, torch {torch.__version__}"
    )


def set_threads() -> None:
    """Pin intra-op parallelism to THREADS (ORT sessions get the same number)."""
    torch.set_num_threads(THREADS)
    os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))


def latency_batch(batch: Any, n: int = 1) -> Any:
    """The first ``n`` samples of a batch's inputs, same structure."""
    inputs = model_inputs(batch)
    if isinstance(inputs, dict):
        return {k: v[:n] for k, v in inputs.items()}
    return inputs[:n]


def median_latency_ms(predict: Callable[..., Any], inputs: Any, *, warmup: int, repeats: int, budget_s: float) -> float:
    """Median wall time of one call on ``inputs``, in milliseconds.

    Stops early (with at least one timed call) once ``budget_s`` is spent, so a very
    slow method cannot stall the run.
    """
    times: list[float] = []
    with torch.inference_mode():
        start = time.perf_counter()
        for _ in range(warmup):
            run_model(predict, inputs)  # type: ignore[arg-type]
            if time.perf_counter() - start > budget_s / 2:
                break
        start = time.perf_counter()
        for _ in range(repeats):
            t0 = time.perf_counter()
            run_model(predict, inputs)  # type: ignore[arg-type]
            times.append(time.perf_counter() - t0)
            if time.perf_counter() - start > budget_s:
                break
    return 1000.0 * statistics.median(times)


def tensor_bytes(module: nn.Module) -> int:
    """Bytes of every distinct tensor a module holds (parameters, buffers, graph constants).

    Exported graphs (PT2E) keep quantized weights as plain attributes outside the
    state dict, so ``get_attr`` nodes of a GraphModule are counted too.
    """
    seen: dict[tuple[int, int], int] = {}

    def add(t: Any) -> None:
        if torch.is_tensor(t):
            try:
                key = (t.untyped_storage().data_ptr(), t.nbytes)
                seen[key] = t.nbytes
            except (RuntimeError, NotImplementedError):  # tensor subclasses
                seen[(id(t), 0)] = serialized_bytes(t)

    for t in list(module.parameters()) + list(module.buffers()):
        add(t)
    graph = getattr(module, "graph", None)
    if graph is not None:
        for node in graph.nodes:
            if node.op == "get_attr":
                obj: Any = module
                for part in str(node.target).split("."):
                    obj = getattr(obj, part, None)
                add(obj)
    return sum(seen.values())


def serialized_bytes(obj: Any) -> int:
    """Size of ``torch.save(obj)``: a fair size for tensor subclasses (torchao)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.tell()


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0
