"""The PTQ search space: which dimensions quantune searches and how a point becomes a QuantConfig.

A point is a plain dict (``{"w_bits": 4, "a_method": "entropy", ...}``) so the search
engine stays model-independent. Users extend or restrict the space by passing their own
``dimensions`` mapping (name -> allowed values) to :func:`ptq_space`; unknown names are
rejected, missing ones take the default value listed in ``DEFAULTS``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from quantune.config import (
    ActQuant,
    CalibrationProcedure,
    LayerQuantConfig,
    QuantConfig,
    WeightQuant,
)
from quantune.errors import UserInputError

if TYPE_CHECKING:
    from quantune.tune_bits import BitPolicy

# Dimension -> (values searched by default, value used when the dimension is fixed).
# Activation methods are "name" or "percentile:<p>". 7-bit weights are stored as int8
# like 8-bit ones but run one GEMM instead of two on x86 CPUs without VNNI (the
# "reduce range" format; see quantune/kernels/onednn_pack.py).
# AdaRound off, fitting each layer to the float model's output (True: it also absorbs the
# error of the layers before it) or to the float layer on its own input ("own"). Which works
# is model-specific: EfficientNet-Lite0 W4A8 0.52 vs 0.08, MiniLM-L6 W4A8 0.85 vs 0.957.
# "block": float-model targets per block (BRECQ), an opt-in value (not in the default space).
ADAROUND_VALUES: tuple[Any, ...] = (False, True, "own", "block")
DEFAULT_DIMENSIONS: dict[str, tuple[Any, ...]] = {
    "w_bits": (8, 7, 6, 4),
    "a_bits": (8,),
    "w_granularity": ("per_channel", "per_tensor"),
    "w_method": ("minmax", "mse"),
    "a_method": ("minmax", "percentile:99.99", "percentile:99.999", "entropy", "mse", "aciq"),
    "a_symmetric": (False, True),
    # SmoothQuant's migration strength (None: off; "auto": chosen per layer by measured
    # output error): divides outlier input channels before the per-tensor activation grid
    # and moves their range into the weights. Searched by default only on models whose
    # Linear layers carry most MACs (default_dimensions): MiniLM-L6 W8A8 0.993 -> 0.998 at
    # 0.8 (0.5: 0.991), W4A8 0.932 -> 0.952 with "auto" (0.876 at 0.8); EfficientNet-Lite0
    # W8A8 0.81 -> 0.58-0.69 with any.
    "a_smoothing": (None, 0.8, "auto"),
    "first_last_8bit": (True, False),
    "bias_correction": (False, True),
    "gptq": (False, True),
    "adaround": (False, True, "own"),
    "adaquant": (False, True),
    "calib_samples": (None,),
    # Inputs distilled from BatchNorm statistics added to AdaRound / AdaQuant's data (CNNs
    # only; opt in with e.g. (0, 32): each distillation costs minutes on a CPU).
    "synthetic_samples": (0,),
    # Augmented copies of the real calibration images added the same way (image models
    # only; opt in with e.g. (0, 64): costs AdaRound / AdaQuant time, no distillation).
    "augmented_samples": (0,),
    # AdaRound / AdaQuant's output error: "mse", or "fisher" (weighted by the squared
    # gradient of the float model's top-1 cross-entropy; classifiers only, opt in).
    "layerwise_loss": ("mse",),
    "float_fallback": (0,),
}
# Ordered dimensions with the prior "the metric does not fall towards the end of this
# order" (values least to most precise; None: numbers ascending). The xgboost sampler
# constrains its cost model to them (see quantune.search.dimension.Dimension.monotone).
# Calibration steps (bias correction, GPTQ, AdaRound, AdaQuant) and range methods get no prior:
# which helps is model-specific.
PRIORS: dict[str, tuple[Any, ...] | None] = {
    "w_bits": None,
    "a_bits": None,
    "float_fallback": None,
    "w_granularity": ("per_tensor", "per_channel"),
    "first_last_8bit": (False, True),
}
DEFAULTS: dict[str, Any] = {
    "w_bits": 8,
    "a_bits": 8,
    "w_granularity": "per_channel",
    "w_method": "minmax",
    "a_method": "minmax",
    "a_symmetric": False,
    "a_smoothing": None,
    "first_last_8bit": True,
    "bias_correction": False,
    "gptq": False,
    "adaround": False,
    "adaquant": False,
    "calib_samples": None,
    "synthetic_samples": 0,
    "augmented_samples": 0,
    "layerwise_loss": "mse",
    "float_fallback": 0,
    "bit_policy": "uniform",
}
# A small space for quick runs (the bundled example's default sweep).
QUICK_DIMENSIONS: dict[str, tuple[Any, ...]] = {
    "w_bits": (8, 4),
    "w_granularity": ("per_channel", "per_tensor"),
    "a_method": ("minmax", "percentile:99.99", "entropy", "mse"),
    "bias_correction": (False, True),
}


def default_dimensions(layers: Sequence[Any]) -> dict[str, tuple[Any, ...]]:
    """``DEFAULT_DIMENSIONS`` for a model with these :class:`~quantune.capture.LayerInfo`:
    SmoothQuant is searched only where Linear layers carry most of the MACs (transformers);
    on convolutional networks, whose activations have no outlier channels for it to
    tame, it only spends the weights' precision."""
    dims = dict(DEFAULT_DIMENSIONS)
    total = sum(info.macs for info in layers)
    linear = sum(info.macs for info in layers if info.kind == "linear")
    if total == 0 or linear < 0.5 * total:
        dims["a_smoothing"] = (None,)
    return dims


def ptq_space(dimensions: Mapping[str, Sequence[Any]] | None = None, *, bit_budget: bool = False,
              defaults: Mapping[str, Sequence[Any]] | None = None) -> Any:
    """A :class:`quantune.search.space.SearchSpace` over PTQ configurations.

    Args:
        dimensions: name -> values; None gives ``defaults``. Dimensions with a single
            value are fixed.
        bit_budget: the user gave a bit budget: per-layer weight widths come from the
            ``bit_policy`` dimension (default ``ilp`` and ``uniform``), not from ``w_bits``.
        defaults: the space used when ``dimensions`` is None (``DEFAULT_DIMENSIONS``
            unless given, e.g. :func:`default_dimensions` of the model).
    """
    from quantune.search.space import SearchSpace, categorical, prior_ordinal
    from quantune.tune_bits import BIT_POLICIES, DEFAULT_BUDGET_POLICIES

    user_dims = dict(dimensions or {})
    dims = dict((DEFAULT_DIMENSIONS if defaults is None else defaults) if dimensions is None else dimensions)
    unknown = set(dims) - set(DEFAULTS)
    if unknown:
        raise UserInputError(f"Unknown search dimension(s) {sorted(unknown)}; known: {sorted(DEFAULTS)}.")
    bad_adaround = [v for v in dims.get("adaround", ()) if v not in ADAROUND_VALUES]
    if bad_adaround:
        raise UserInputError(f"Unknown adaround value(s) {bad_adaround}; use false, true (float-model "
                             "targets), \"own\" (each layer's own input) or \"block\" (whole blocks).")
    bad = set(dims.get("bit_policy", ())) - set(BIT_POLICIES)
    if bad:
        raise UserInputError(f"Unknown bit_policy value(s) {sorted(bad)}; use {BIT_POLICIES}.")
    if bit_budget:
        if "w_bits" in user_dims:
            raise UserInputError(
                "With a bit budget the allocator sets each layer's weight width: drop the w_bits "
                "dimension (choose the allocation with bit_policy: ilp, greedy, uniform).")
        dims.pop("w_bits", None)
        if "bit_policy" not in user_dims:
            dims["bit_policy"] = DEFAULT_BUDGET_POLICIES
    elif set(dims.get("bit_policy", ())) - {"uniform"}:
        raise UserInputError(
            "bit_policy ilp/greedy allocates widths under a budget: give one "
            "(tune(..., bit_budget='avg-bits=4.5') or quantune tune --bit-budget avg-bits=4.5).")
    out = []
    for name, values in dims.items():
        values = tuple(values)
        if not values:
            raise UserInputError(f"Search dimension {name!r} has no values.")
        out.append(prior_ordinal(name, values, PRIORS[name]) if name in PRIORS else categorical(name, values))
    return SearchSpace(out)


def _act(method: str, bits: int, symmetric: bool, smoothing: float | str | None = None) -> ActQuant:
    if method.startswith("percentile:"):
        return ActQuant(bits=bits, symmetric=symmetric, method="percentile", percentile=float(method.split(":", 1)[1]),
                        smoothing=smoothing)
    return ActQuant(bits=bits, symmetric=symmetric, method=method, smoothing=smoothing)


def point_to_config(
    point: Mapping[str, Any],
    layer_names: Sequence[str],
    sensitivity_order: Sequence[str] = (),
    seed: int = 0,
    bit_policy: BitPolicy | None = None,
) -> QuantConfig:
    """The :class:`QuantConfig` of a search point for a model with ``layer_names``.

    Args:
        point: the search point; missing dimensions take ``DEFAULTS``.
        layer_names: quantizable layers in execution order (first and last matter).
        sensitivity_order: layer names, most sensitive first, for ``float_fallback``.
        seed: calibration seed.
        bit_policy: allocates per-layer weight widths under the user's bit budget; then
            every point's widths come from its ``bit_policy`` value, not ``w_bits``.
    """
    p = {**DEFAULTS, **point}
    if bit_policy is not None:
        # The allocator sets every width; the base only carries schemes and methods.
        base = point_to_config({**p, "w_bits": 8, "first_last_8bit": False, "bit_policy": "uniform"},
                               layer_names, sensitivity_order, seed)
        keep_float = [name for name, layer in base.overrides if layer is None]
        return bit_policy.apply(str(p["bit_policy"]), base, int(p["a_bits"]),
                                edges_8bit=bool(p["first_last_8bit"]), keep_float=keep_float)
    if p["bit_policy"] != "uniform":
        raise UserInputError(f"bit_policy {p['bit_policy']!r} needs a bit budget (bit_budget='avg-bits=4.5').")
    layer = LayerQuantConfig(
        weight=WeightQuant(bits=int(p["w_bits"]), granularity=p["w_granularity"], method=p["w_method"]),
        activation=_act(str(p["a_method"]), int(p["a_bits"]), bool(p["a_symmetric"]), p["a_smoothing"]),
    )
    overrides: dict[str, LayerQuantConfig | None] = {}
    if p["first_last_8bit"] and layer_names and (layer.weight.bits < 8 or layer.activation.bits < 8):  # type: ignore[union-attr]
        edge = LayerQuantConfig(
            weight=WeightQuant(bits=8, granularity=p["w_granularity"], method=p["w_method"]),
            activation=_act(str(p["a_method"]), 8, bool(p["a_symmetric"]), p["a_smoothing"]),
        )
        for name in {layer_names[0], layer_names[-1]}:
            overrides[name] = edge
    n_fallback = int(p["float_fallback"])
    if n_fallback > 0:
        if len(sensitivity_order) < n_fallback:
            raise UserInputError("float_fallback needs a per-layer sensitivity ranking.")
        for name in sensitivity_order[:n_fallback]:
            overrides[name] = None
    procedure = CalibrationProcedure(
        max_samples=p["calib_samples"],
        bias_correction=bool(p["bias_correction"]),
        adaquant=bool(p["adaquant"]),
        adaround=bool(p["adaround"]),
        adaround_blocks=p["adaround"] == "block",
        layerwise_float_target=p["adaround"] != "own",
        gptq=bool(p["gptq"]),
        synthetic_samples=int(p["synthetic_samples"]),
        augmented_samples=int(p["augmented_samples"]),
        # Block reconstruction fits block outputs with the plain error.
        layerwise_loss="mse" if p["adaround"] == "block" else str(p["layerwise_loss"]),
        seed=seed,
    )
    return QuantConfig(default=layer, overrides=tuple(overrides.items()), procedure=procedure)


def describe_point(point: Mapping[str, Any]) -> str:
    """A compact human label of a point, e.g. ``W4A8 pc mse a=entropy +bc``."""
    p = {**DEFAULTS, **point}
    allocated = "w_bits" not in point and "bit_policy" in point  # widths from the allocator
    w = f"[{p['bit_policy']}]" if allocated else p["w_bits"]
    parts = [f"W{w}A{p['a_bits']}", "pc" if p["w_granularity"] == "per_channel" else "pt"]
    if p["w_method"] != "minmax":
        parts.append(f"w={p['w_method']}")
    parts.append(f"a={str(p['a_method']).replace('percentile:', 'p')}" + ("/sym" if p["a_symmetric"] else ""))
    if p["a_smoothing"] is not None:
        parts.append(f"sq{p['a_smoothing']}")
    if not p["first_last_8bit"] and (allocated or p["w_bits"] < 8):
        parts.append("edges-low")
    if p["bias_correction"]:
        parts.append("+bc")
    if p["gptq"]:
        parts.append("+gptq")
    if p["adaround"]:
        parts.append("+adaround" + (f"({p['adaround']})" if p["adaround"] in ("own", "block") else ""))
    if p["adaquant"]:
        parts.append("+adaquant")
    if p["synthetic_samples"] and (p["adaround"] or p["adaquant"]):
        parts.append(f"+syn{p['synthetic_samples']}")
    if p["augmented_samples"] and (p["adaround"] or p["adaquant"]):
        parts.append(f"+aug{p['augmented_samples']}")
    if p["layerwise_loss"] != "mse" and (p["adaround"] or p["adaquant"]) and p["adaround"] != "block":
        parts.append(f"+{p['layerwise_loss']}")
    if p["float_fallback"]:
        parts.append(f"fp{p['float_fallback']}")
    if p["calib_samples"]:
        parts.append(f"n={p['calib_samples']}")
    return " ".join(parts)
