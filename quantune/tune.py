"""``quantune.tune``: search the PTQ configuration space of a model for the best configuration.

The float model is prepared once (BN folded, statistics collected); each trial builds a
quantized model from the cached statistics, evaluates it (on a growing subset first, so
hopeless configurations are pruned early), and records metric, size and latency in an
Optuna study (an SQLite file in the output folder by default, so a killed run resumes).
The best configuration is re-applied in integer mode, evaluated, and returned.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from torch import nn

from quantune.errors import UserInputError
from quantune.evaluation import Evaluator
from quantune.latency import measure_latency_ms
from quantune.prepare import PreparedModel
from quantune.progress import suppressed
from quantune.tune_bits import BitPolicy
from quantune.tune_result import TrialRow, TuneResult
from quantune.tune_space import (
    DEFAULTS,
    default_dimensions,
    describe_point,
    point_to_config,
    ptq_space,
)

OBJECTIVES = ("metric", "size", "latency")
# The first evaluation of a trial uses this share of the evaluation batches.
PARTIAL_FRACTION = 0.25
# Below this many MACs per sample, timing every trial costs little.
SMALL_MODEL_MACS = 100_000_000


def model_descriptor(prepared: PreparedModel) -> dict[str, float]:
    """Floats describing the model, for the cost model's transfer across models."""
    layers = prepared.layers
    n = max(len(layers), 1)
    macs = sum(info.macs for info in layers)
    return {
        "n_layers": float(len(layers)),
        "n_conv": float(sum(info.kind != "linear" for info in layers)),
        "n_linear": float(sum(info.kind == "linear" for info in layers)),
        "depthwise_share": sum(info.depthwise for info in layers) / n,
        "log_params": math.log10(1 + sum(info.params for info in layers)),
        "log_macs": math.log10(1 + macs),
        "depthwise_mac_share": sum(info.macs for info in layers if info.depthwise) / max(macs, 1),
    }


def _display_url(storage: str | None) -> str | None:
    from quantune.workers import display_url

    return display_url(storage)


def _default_metric(eval_batches: Sequence[Any]) -> str:
    from quantune.batches import batch_labels

    return "top1" if eval_batches and batch_labels(eval_batches[0]) is not None else "fidelity"


def _edges_within_budget(
    bits: BitPolicy, a_values: Sequence[int], dimensions: Mapping[str, Sequence[Any]] | None,
    defaults: dict[str, tuple[Any, ...]],
) -> tuple[Mapping[str, Sequence[Any]] | None, dict[str, tuple[Any, ...]]]:
    """``(dimensions, defaults)`` without 8-bit first and last layers when the budget cannot
    hold them (a small model: two 8-bit layers of four already average above 4.5 bits);
    every such trial would fail. Raises the allocator's error when the user asked for them."""
    if all(bits.edges_fit(a) for a in a_values):
        return dimensions, defaults
    asked = tuple((dimensions or {}).get("first_last_8bit", ()))
    if asked == (True,):
        bits.allocate("ilp", a_values[0], pins=bits.edge_pins(a_values[0]))  # raises, naming the bound
    warnings.warn("The bit budget cannot keep the first and last layer at 8 bits: searching "
                  "allocations that may quantize them lower.", stacklevel=3)
    if dimensions is not None:
        return {**dimensions, "first_last_8bit": (False,)}, defaults
    return None, {**defaults, "first_last_8bit": (False,)}


def tune(
    model: nn.Module,
    calib_data: Iterable[Any],
    eval_data: Sequence[Any] | None = None,
    *,
    eval_fn: Callable[[nn.Module], float] | None = None,
    metric: str | None = None,
    dimensions: Mapping[str, Sequence[Any]] | None = None,
    strategy: str = "xgboost",
    trials: int | None = 40,
    timeout_s: float | None = None,
    max_drop: float | None = None,
    relative_drop: bool = False,
    objectives: Sequence[str] = ("metric",),
    storage: str | None = None,
    study_name: str = "quantune",
    heartbeat_interval_s: int | None = None,
    seed: int = 0,
    sensitivity_order: Sequence[str] = (),
    measure_latency: bool = True,
    trial_latency: bool | None = None,
    show_progress: bool = True,
    prepared: PreparedModel | None = None,
    bit_budget: Any = None,
) -> TuneResult:
    """Find the best quantization configuration of ``model``.

    Args:
        model: the float model (not modified).
        calib_data: iterable of calibration batches.
        eval_data: evaluation batches; labelled ``(inputs, labels)`` for top1/top5.
        eval_fn: ``eval_fn(model) -> float`` (higher is better), instead of a metric.
        metric: ``top1``, ``top5``, ``fidelity``, ``cosine`` or ``mse``; default top1 with
            labels, else fidelity (top-1 agreement with the float model).
        dimensions: the search space (see :mod:`quantune.tune_space`); None searches
            ``default_dimensions`` of the model (SmoothQuant only on Linear-heavy models).
        strategy: ``xgboost`` (cost model), ``random``, ``grid``, ``genetic``, ``tpe``.
        trials: evaluation budget of the study (resumed studies count earlier trials).
        timeout_s: wall-time budget of the search.
        max_drop: accepted metric drop vs the float model (points for percentage
            metrics); single objective: stop at the first configuration meeting it.
        relative_drop: ``max_drop`` is a fraction of the baseline.
        objectives: ``("metric",)``, or with ``"size"`` / ``"latency"`` to search for the
            smallest / fastest configuration meeting ``max_drop`` (Pareto front kept).
        storage: Optuna storage URL (``sqlite:///study.db``, ``postgresql://...``);
            None keeps the study in memory.
        study_name: study name in the storage (same name + storage = resume).
        heartbeat_interval_s: several workers share the study: detect dead workers by
            heartbeat (see :func:`quantune.workers.heartbeat_for`); None: this process
            owns the study and fails its left-over RUNNING trials at start.
        seed: seed of the search and of calibration.
        sensitivity_order: layers, most sensitive first, for the float_fallback dimension.
        measure_latency: time the float model and the best quantized model.
        trial_latency: also time every trial's integer model (default: when latency is
            an objective, or the model is small enough, < 1e8 MACs, for it to be cheap).
        show_progress: progress bars.
        prepared: a :class:`PreparedModel` of ``model`` to reuse (statistics collected).
        bit_budget: per-layer bit allocation under this budget (``"avg-bits=4.5"``,
            ``"size=2MB,bops=3G"`` or a :class:`quantune.search.allocation.Budget`): the
            ``bit_policy`` dimension (default ``ilp`` and ``uniform``) replaces ``w_bits``
            and every trial meets the budget (see :mod:`quantune.tune_bits`).

    Returns:
        :class:`TuneResult` with the best configuration, its integer model, the baseline,
        every trial and the Pareto front. Never "nothing found": when the target is not
        met the best configuration seen is returned (``target_reached`` False).
    """
    from quantune.search.pruning import BestSoFarPruner
    from quantune.search.runner import run_search
    from quantune.search.target import Target

    objectives = tuple(objectives)
    if not objectives or objectives[0] != "metric" or any(o not in OBJECTIVES for o in objectives):
        raise UserInputError(f"objectives must start with 'metric' and use {OBJECTIVES}; got {objectives}.")
    started = time.perf_counter()
    prepared = prepared or PreparedModel(model, calib_data, show_progress=show_progress)
    if isinstance(storage, str) and "://" in storage:
        from quantune.workers import ensure_storage, storage_url

        storage = storage_url(storage)  # a PostgreSQL driver that is installed
        ensure_storage(storage)  # workers starting together race to create the tables
    eval_batches = list(eval_data) if eval_data is not None else []
    if eval_fn is None and not eval_batches:
        raise UserInputError("Give evaluation data (eval_data) or an eval_fn to score configurations.")
    evaluator = Evaluator(
        eval_batches, metric or _default_metric(eval_batches), reference=prepared.float_model, eval_fn=eval_fn
    )
    directions = ["maximize" if evaluator.higher_is_better else "minimize"] + ["minimize"] * (len(objectives) - 1)
    baseline = evaluator(prepared.float_model)
    latency_batch = eval_batches[0] if eval_batches else None
    float_latency = (
        measure_latency_ms(prepared.float_model, latency_batch) if measure_latency and latency_batch is not None else None
    )
    target = Target(baseline, max_drop, relative_drop) if max_drop is not None else None
    names = prepared.layer_names
    if trial_latency is None:
        trial_latency = "latency" in objectives or sum(i.macs for i in prepared.layers) < SMALL_MODEL_MACS
    if "latency" in objectives and not (trial_latency and latency_batch is not None):
        raise UserInputError("The latency objective needs evaluation batches to time the models on.")
    defaults = default_dimensions(prepared.layers)
    bits = (
        BitPolicy(prepared, bit_budget, storage=storage if isinstance(storage, str) else None,
                  seed=seed, show_progress=show_progress)
        if bit_budget is not None else None
    )
    if bits is not None:
        # Measure before the search (not inside a timed trial) and refuse an impossible
        # budget now, naming the binding constraint, rather than failing every trial.
        a_values = sorted({int(v) for v in (dimensions or {}).get("a_bits", (DEFAULTS["a_bits"],))})
        for a_bits in a_values:
            bits.allocate("ilp", a_bits)
        dimensions, defaults = _edges_within_budget(bits, a_values, dimensions, defaults)
    space = ptq_space(dimensions, bit_budget=bit_budget is not None, defaults=defaults)
    partial = eval_fn is None and len(eval_batches) >= 4

    def objective(point: dict[str, Any], handle: Any) -> float | tuple[float, ...]:
        config = point_to_config(point, names, sensitivity_order, seed, bits)
        with suppressed():  # one bar for the whole search, not one per calibration step
            qmodel = prepared.quantize(config, mode="simulate")
        handle.set_attr("label", describe_point(point))  # also for pruned trials
        if partial and len(objectives) == 1:
            handle.prune_if_hopeless(evaluator(qmodel, PARTIAL_FRACTION), 0)
        value = evaluator(qmodel)
        size = qmodel.size_bytes()
        handle.set_attr("size_bytes", size)
        latency = None
        if trial_latency and latency_batch is not None:
            latency = measure_latency_ms(qmodel.set_mode("integer"), latency_batch, repeats=5, warmup=1)
            handle.set_attr("latency_ms", latency)
        extra = {"size": float(size), "latency": float(latency if latency is not None else math.nan)}
        if len(objectives) == 1:
            return value
        return (value, *(extra[o] for o in objectives[1:]))

    pruner = None
    if partial and len(objectives) == 1:
        # Partial metrics on a quarter of the data are noisy: only prune clear losers.
        margin = max(3.0 * (target.margin() if target else 1.0), 2.0 if evaluator.name != "cosine" else 0.02)
        pruner = BestSoFarPruner(margin=margin, n_startup=3)
    search = run_search(
        space,
        objective,
        strategy=strategy,
        n_trials=trials,
        timeout_s=timeout_s,
        storage=storage,
        study_name=study_name,
        heartbeat_interval_s=heartbeat_interval_s,
        seed=seed,
        directions=directions,
        target=target,
        progress=show_progress,
        model_descriptor=model_descriptor(prepared),
        pruner=pruner,
    )
    if search.best is None or search.best_config is None:
        raise UserInputError(
            "Every configuration failed; see the trial errors (quantune tune --debug) "
            "and check the model and data."
        )
    best_point = search.best_config
    config = point_to_config(best_point, names, sensitivity_order, seed, bits)
    qmodel = prepared.quantize(config, mode="integer")
    best_metric = evaluator(qmodel)
    latency = measure_latency_ms(qmodel, latency_batch) if measure_latency and latency_batch is not None else None
    rows = [TrialRow.from_record(r) for r in search.trials]
    return TuneResult(
        config=config,
        model=qmodel,
        point=dict(best_point),
        label=describe_point(best_point),
        metric_name=evaluator.name,
        higher_is_better=evaluator.higher_is_better,
        baseline_metric=baseline,
        best_metric=best_metric,
        float_size_bytes=prepared.float_size_bytes,
        size_bytes=qmodel.size_bytes(),
        float_latency_ms=float_latency,
        latency_ms=latency,
        target_threshold=target.threshold(directions[0]) if target else None,
        target_reached=target.met(best_metric, directions[0]) if target else None,
        trials=rows,
        pareto=[TrialRow.from_record(r) for r in search.pareto_front],
        objectives=objectives,
        strategy=strategy,
        stop_reason=search.stop_reason,
        n_evaluations=search.n_evaluations,
        study_name=search.study_name,
        storage=_display_url(storage),
        wall_s=time.perf_counter() - started,
        layers=[info.to_dict() for info in prepared.layers],
        bn_pairs=prepared.bn_pairs,
        unsupported=prepared.unsupported,
        n_calib_samples=prepared.n_samples(config.procedure.max_samples),
        bit_budget=bits.budget.to_dict() if bits is not None else None,
    )
