"""Quantization configuration values.

A :class:`LayerQuantConfig` says how one layer is quantized (weights and input
activations); ``None`` in its place keeps the layer float. A :class:`QuantConfig`
holds the defaults plus per-layer overrides by module name or ``re:`` pattern, and the
calibration procedure. Configs are frozen, hashable and round-trip through JSON with a
format version.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quantune.errors import ConfigVersionError, UserInputError

#: ``ActQuant.smoothing`` value that picks SmoothQuant's alpha per layer by measurement.
SMOOTHING_AUTO = "auto"

#: Output errors layer-wise calibration can minimize (:attr:`CalibrationProcedure.layerwise_loss`).
LAYERWISE_LOSSES = ("mse", "fisher")

CONFIG_VERSION = 1

# "aciq" picks the Laplace or Gaussian prior from the data's shape; the suffixed names
# force one (see quantune.calibration.aciq).
RANGE_METHODS = ("minmax", "percentile", "entropy", "mse", "aciq", "aciq-laplace", "aciq-gaussian")
GRANULARITIES = ("per_tensor", "per_channel")


def _check_bits(bits: int, what: str) -> None:
    if not isinstance(bits, int) or isinstance(bits, bool) or not 2 <= bits <= 8:
        raise UserInputError(f"{what} bits must be an integer from 2 to 8, got {bits!r}.")


def _check_range_method(method: str, percentile: float | None, what: str) -> None:
    if method not in RANGE_METHODS:
        raise UserInputError(
            f"Unknown {what} range method {method!r}; choose one of {', '.join(RANGE_METHODS)}."
        )
    if method == "percentile":
        if percentile is None or not 50.0 < float(percentile) <= 100.0:
            raise UserInputError(
                f"The percentile {what} range method needs percentile in (50, 100], "
                f"got {percentile!r} (presets: 99.9, 99.99, 99.999)."
            )


@dataclass(frozen=True)
class WeightQuant:
    """Weight quantization of one layer.

    Attributes:
        bits: 2-8; values are stored as signed integers of this width.
        symmetric: zero point fixed at 0 (required by the fast integer kernels).
        granularity: ``per_channel`` (one scale per output channel) or ``per_tensor``.
        method: range method over the weight values (see ``RANGE_METHODS``).
        percentile: for ``method="percentile"``, the two-sided percentile kept.
    """

    bits: int = 8
    symmetric: bool = True
    granularity: str = "per_channel"
    method: str = "minmax"
    percentile: float | None = None

    def __post_init__(self) -> None:
        _check_bits(self.bits, "Weight")
        if self.granularity not in GRANULARITIES:
            raise UserInputError(
                f"Weight granularity must be one of {GRANULARITIES}, got {self.granularity!r}."
            )
        _check_range_method(self.method, self.percentile, "weight")


@dataclass(frozen=True)
class ActQuant:
    """Quantization of a layer's input activations (per tensor, static scale).

    Attributes:
        bits: 2-8.
        symmetric: signed grid around 0; otherwise an unsigned grid with a zero point.
        method: calibration (range) method over the collected statistics.
        percentile: for ``method="percentile"``.
        clip_ratio: extra multiplicative clipping applied to the calibrated range (<= 1).
        smoothing: SmoothQuant migration strength alpha in [0, 1], or None (off). Each
            input channel ``j`` is divided by ``s_j = max|x_j|^alpha / max|W_:,j|^(1-alpha)``
            before quantization and the weight's input column multiplied by it, which
            leaves the float product unchanged but moves outlier channels' range from
            the per-tensor activation grid into the weights (alpha 1: every channel's
            activation range equal; 0: every weight column's). ``"auto"``: each layer
            takes the alpha (or no smoothing) whose quantized output is closest to the
            float layer's on calibration inputs (``quantune.calibration.smoothing``).
    """

    bits: int = 8
    symmetric: bool = False
    method: str = "minmax"
    percentile: float | None = None
    clip_ratio: float = 1.0
    smoothing: float | str | None = None

    def __post_init__(self) -> None:
        _check_bits(self.bits, "Activation")
        _check_range_method(self.method, self.percentile, "activation")
        if not 0.0 < float(self.clip_ratio) <= 1.0:
            raise UserInputError(f"clip_ratio must be in (0, 1], got {self.clip_ratio!r}.")
        alpha = self.smoothing
        number = isinstance(alpha, int | float) and not isinstance(alpha, bool)
        if alpha is not None and alpha != SMOOTHING_AUTO and not (number and 0 <= alpha <= 1):
            raise UserInputError(
                f"smoothing (SmoothQuant's alpha) must be a number in [0, 1], {SMOOTHING_AUTO!r} (chosen per "
                f"layer) or None (off), got {self.smoothing!r}; 0.65-0.8 suits most transformers."
            )


@dataclass(frozen=True)
class LayerQuantConfig:
    """How one layer is quantized; ``activation=None`` means weight-only quantization."""

    weight: WeightQuant = field(default_factory=WeightQuant)
    activation: ActQuant | None = field(default_factory=ActQuant)

    @property
    def short_name(self) -> str:
        """A compact label such as ``W8A8`` or ``W4A16``."""
        a = self.activation.bits if self.activation is not None else 16
        return f"W{self.weight.bits}A{a}"


@dataclass(frozen=True)
class CalibrationProcedure:
    """Steps run after statistics collection (each a search dimension).

    Attributes:
        max_samples: cap on calibration samples (a seeded subset is taken), None = all.
        bias_correction: correct the expected per-channel output shift of quantized weights.
        adaquant: layer-wise calibration (AdaQuant) of weights, bias and step sizes.
        adaquant_iters: optimizer steps per layer for AdaQuant.
        bn_reestimate: re-estimate BatchNorm statistics on the quantized model.
        seed: seed of every random choice in calibration.
        adaquant_time_budget_s: total optimisation time of layer-wise calibration
            (AdaQuant, and AdaRound separately) over all layers (collecting each layer's
            inputs is not counted; None = no limit; a layer stops early when its share
            is spent, which makes results depend on machine speed).
        adaquant_sequential: feed each layer the outputs of the already-calibrated
            quantized layers before it (False: the float model's activations); also
            used by AdaRound.
        adaquant_lr: Adam learning rate; weights move in units of their initial
            quantization step, step sizes and the bias in relative units.
        adaquant_batch_size: samples per AdaQuant step for convolutions; Linear layers
            take 16x as many input rows (tokens) per step.
        adaquant_cache_mb: per-layer budget for cached inputs + float targets; when the
            calibration set is larger, a seeded subset of samples (or rows) of that
            expected size is kept (AdaQuant, AdaRound and block reconstruction).
        adaround: learn each weight's up/down rounding against the layer's output
            error (AdaRound; step sizes stay; runs after GPTQ, before AdaQuant).
        adaround_blocks: AdaRound reconstructs the output of each *block* (a child of an
            ``nn.ModuleList`` / ``nn.Sequential`` holding two or more quantized layers:
            an inverted-bottleneck or residual block) with the rounding of all its layers
            learned jointly, as BRECQ does; lone layers, and blocks whose call is not a
            single tensor in and out, stay layer-wise (step name ``brecq``).
        adaround_iters: optimizer steps per layer (per block) for AdaRound.
        adaround_lr: Adam learning rate of AdaRound's rounding logits.
        adaround_reg: weight of AdaRound's regularizer that drives each rounding
            variable to 0 or 1.
        adaround_batch_size: samples per AdaRound step for convolutions (each a random
            output window of at most 16x16 positions on large maps; Linear layers: 16x
            as many rows). Small batches buy many more steps in a time budget: on
            EfficientNet-Lite0 W4A8 (300 s) 8 beat 32 (top-1 agreement 0.64 vs 0.46).
        layerwise_holdout: share of the calibration samples AdaRound and AdaQuant keep
            out of each layer's optimization; a layer keeps its result only if its
            error fell on them (0: train and check on the same rows; with fewer than
            4 samples nothing is held out).
        layerwise_float_target: (sequential) AdaRound / AdaQuant fit each layer to the
            float model's layer output, so it also absorbs the error of the layers
            before it; False: to the float layer applied to its own (quantized-model)
            input, as GPTQ does by default.
        gptq: round the weights with GPTQ against each layer's input Hessian (runs
            first; the grid of the weight range method is kept).
        gptq_damp: GPTQ's Hessian damping, a fraction of the mean diagonal.
        gptq_act_order: GPTQ quantizes the most energetic input columns first.
        gptq_sequential: measure each layer's inputs on the model whose earlier layers
            are already rounded (False: one float pass for every layer, faster).
        gptq_float_target: (sequential) round towards the float model's layer output,
            absorbing the error of earlier layers in closed form.
        synthetic_samples: inputs distilled from the model's BatchNorm statistics
            (:mod:`quantune.calibration.synthetic`) added to the training data of
            AdaRound and AdaQuant; activation ranges, GPTQ and the corrections keep
            the real data. Only for models with BatchNorm layers and one float input.
        synthetic_iters: optimizer steps of that distillation per batch of 32 inputs.
        augmented_samples: augmented copies of the real calibration images (greyscale,
            colour, contrast, blur, quarter turns, mixup;
            :mod:`quantune.calibration.augment`) added to the training data of AdaRound
            and AdaQuant, like ``synthetic_samples``. Only for image inputs. On
            EfficientNet-Lite0 it helped at 4 bits (W4A8 AdaRound, four-seed means: 0.46 ->
            0.53 at 500 steps per layer, 0.555 at the default 1000, 0.605 at 2000) and cost at 8
            (W8A8 0.914 -> 0.893): a search dimension, not a default.
        layerwise_loss: the output error AdaRound and AdaQuant minimize per layer:
            ``mse``, or ``fisher``: each element's squared error weighted by the squared
            gradient of the float model's top-1 cross-entropy at that output (BRECQ's
            diagonal Fisher; :mod:`quantune.calibration.fisher`). ``fisher`` needs a
            classifier (logits ``[batch, classes]``) and one extra backward pass of the
            float model per layer and batch; not with ``adaround_blocks``. On
            EfficientNet-Lite0 it was level with ``mse`` (W4A8 and W8A8): opt-in.
    """

    max_samples: int | None = None
    bias_correction: bool = False
    adaquant: bool = False
    adaquant_iters: int = 200
    bn_reestimate: bool = False
    seed: int = 0
    adaquant_time_budget_s: float | None = None
    adaquant_sequential: bool = True
    adaquant_lr: float = 1e-3
    adaquant_batch_size: int = 32
    adaquant_cache_mb: int = 256
    gptq: bool = False
    gptq_damp: float = 0.01
    gptq_act_order: bool = True
    gptq_sequential: bool = True
    gptq_float_target: bool = False
    adaround: bool = False
    adaround_blocks: bool = False
    adaround_iters: int = 1000
    adaround_lr: float = 1e-2
    adaround_reg: float = 0.01
    adaround_batch_size: int = 8
    layerwise_holdout: float = 0.25
    layerwise_float_target: bool = True
    synthetic_samples: int = 0
    synthetic_iters: int = 200
    augmented_samples: int = 0
    layerwise_loss: str = "mse"

    def __post_init__(self) -> None:
        if self.max_samples is not None and self.max_samples < 1:
            raise UserInputError(f"max_samples must be >= 1 or None, got {self.max_samples}.")
        if self.adaquant_iters < 0:
            raise UserInputError("adaquant_iters must be >= 0.")
        if self.adaquant_time_budget_s is not None and not self.adaquant_time_budget_s > 0:
            raise UserInputError(
                f"adaquant_time_budget_s must be > 0 seconds or None, got {self.adaquant_time_budget_s!r}."
            )
        if not 0.0 < float(self.adaquant_lr) < 1.0:
            raise UserInputError(f"adaquant_lr must be in (0, 1), got {self.adaquant_lr!r}.")
        if self.adaquant_batch_size < 1 or self.adaquant_cache_mb < 1 or self.adaround_batch_size < 1:
            raise UserInputError("adaquant_batch_size, adaround_batch_size and adaquant_cache_mb must be >= 1.")
        if self.adaround_iters < 0:
            raise UserInputError("adaround_iters must be >= 0.")
        if not 0.0 < float(self.adaround_lr) < 10.0:
            raise UserInputError(f"adaround_lr must be in (0, 10), got {self.adaround_lr!r}.")
        if not float(self.adaround_reg) >= 0.0:
            raise UserInputError(f"adaround_reg must be >= 0, got {self.adaround_reg!r}.")
        if not 0.0 <= float(self.layerwise_holdout) <= 0.5:
            raise UserInputError(f"layerwise_holdout must be in [0, 0.5], got {self.layerwise_holdout!r}.")
        if self.synthetic_samples < 0 or self.synthetic_iters < 1:
            raise UserInputError("synthetic_samples must be >= 0 and synthetic_iters >= 1, got "
                                 f"{self.synthetic_samples!r} and {self.synthetic_iters!r}.")
        if self.augmented_samples < 0:
            raise UserInputError(f"augmented_samples must be >= 0, got {self.augmented_samples!r}.")
        if self.layerwise_loss not in LAYERWISE_LOSSES:
            raise UserInputError(f"layerwise_loss must be one of {LAYERWISE_LOSSES}, got {self.layerwise_loss!r}.")
        if self.layerwise_loss == "fisher" and self.adaround_blocks:
            raise UserInputError("layerwise_loss='fisher' weighs single layers' output errors; block reconstruction "
                                 "(adaround_blocks / 'brecq') fits block outputs with the plain error. Use one of them.")
        if not 0.0 < float(self.gptq_damp) <= 1.0:
            raise UserInputError(f"gptq_damp must be in (0, 1], got {self.gptq_damp!r}.")

    #: Step names of :meth:`from_steps`, in the order the pipeline runs them.
    STEPS = ("gptq", "adaround", "brecq", "adaquant", "bn", "biascorr")

    @classmethod
    def from_steps(cls, steps: str, **options: Any) -> CalibrationProcedure:
        """A procedure from ``"base"`` or step names joined by ``+`` (``"gptq+biascorr"``).

        Steps: ``gptq``, ``adaround``, ``brecq`` (AdaRound reconstructing whole blocks),
        ``adaquant``, ``bn`` (BatchNorm re-estimation), ``biascorr``; they run in the
        pipeline's order whatever the order written. ``options`` set other fields
        (``adaquant_iters=100``).
        """
        names = set() if steps.strip() in ("", "base") else {s.strip() for s in steps.split("+")}
        unknown = names - set(cls.STEPS)
        if unknown:
            raise UserInputError(f"Unknown calibration step(s) {sorted(unknown)} in {steps!r}; "
                                 f"use 'base' or {'+'.join(cls.STEPS)} (any subset).")
        if {"adaround", "brecq"} <= names:
            raise UserInputError(f"{steps!r}: 'brecq' is AdaRound by blocks; use 'adaround' or 'brecq', not both.")
        return cls(gptq="gptq" in names, adaround=bool(names & {"adaround", "brecq"}),
                   adaround_blocks="brecq" in names, adaquant="adaquant" in names,
                   bn_reestimate="bn" in names,
                   bias_correction="biascorr" in names, **options)

    @property
    def steps(self) -> str:
        """Inverse of :meth:`from_steps`: ``"base"`` or the steps joined by ``+``."""
        on = {"gptq": self.gptq, "adaround": self.adaround and not self.adaround_blocks,
              "brecq": self.adaround and self.adaround_blocks, "adaquant": self.adaquant,
              "bn": self.bn_reestimate,
              "biascorr": self.bias_correction}
        return "+".join(s for s in self.STEPS if on[s]) or "base"


@dataclass(frozen=True)
class QuantConfig:
    """A model's quantization: defaults plus ordered per-layer overrides.

    ``overrides`` is a tuple of ``(pattern, LayerQuantConfig | None)``. A pattern is an
    exact module name, or ``"re:<regex>"`` matched with ``re.fullmatch``. An exact name
    match wins over patterns; among patterns the last one listed wins. ``None`` keeps
    the layer float.
    """

    default: LayerQuantConfig | None = field(default_factory=LayerQuantConfig)
    overrides: tuple[tuple[str, LayerQuantConfig | None], ...] = ()
    procedure: CalibrationProcedure = field(default_factory=CalibrationProcedure)
    version: int = CONFIG_VERSION

    def __post_init__(self) -> None:
        for pattern, _ in self.overrides:
            if pattern.startswith("re:"):
                try:
                    re.compile(pattern[3:])
                except re.error as exc:
                    raise UserInputError(f"Bad override pattern {pattern!r}: {exc}.") from exc

    def for_layer(self, name: str) -> LayerQuantConfig | None:
        """The configuration that applies to the module called ``name``."""
        for pattern, cfg in self.overrides:
            if pattern == name:
                return cfg
        chosen: LayerQuantConfig | None = self.default
        for pattern, cfg in self.overrides:
            if pattern.startswith("re:") and re.fullmatch(pattern[3:], name):
                chosen = cfg
        return chosen

    def with_overrides(self, extra: dict[str, LayerQuantConfig | None]) -> QuantConfig:
        """A copy with ``extra`` appended to the overrides (later entries win)."""
        return dataclasses.replace(self, overrides=self.overrides + tuple(extra.items()))

    # ---- JSON -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "default": _layer_to_dict(self.default),
            "overrides": [[p, _layer_to_dict(c)] for p, c in self.overrides],
            "procedure": dataclasses.asdict(self.procedure),
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QuantConfig:
        if not isinstance(data, dict):
            raise UserInputError("A quantune config must be a JSON object.")
        version = data.get("version")
        if not isinstance(version, int):
            raise UserInputError("The config has no integer 'version' field; is it a quantune config?")
        if version > CONFIG_VERSION:
            raise ConfigVersionError(
                f"The config has version {version}, this quantune reads up to "
                f"{CONFIG_VERSION}: upgrade quantune (pip install -U quantune)."
            )
        _reject_unknown(data, {"version", "default", "overrides", "procedure"}, "config")
        overrides = data.get("overrides", [])
        if not isinstance(overrides, list) or not all(
            isinstance(o, list | tuple) and len(o) == 2 and isinstance(o[0], str) for o in overrides
        ):
            raise UserInputError("config 'overrides' must be a list of [pattern, layer-config] pairs.")
        return cls(
            default=_layer_from_dict(data.get("default")),
            overrides=tuple((p, _layer_from_dict(c)) for p, c in overrides),
            procedure=_build(CalibrationProcedure, data.get("procedure", {}), "procedure"),
            version=CONFIG_VERSION,
        )

    @classmethod
    def from_json(cls, text: str) -> QuantConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UserInputError(f"The config is not valid JSON: {exc}.") from exc
        return cls.from_dict(data)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | Path) -> QuantConfig:
        p = Path(path)
        if not p.is_file():
            raise UserInputError(f"Config file {p} does not exist.")
        return cls.from_json(p.read_text())


def _reject_unknown(data: dict[str, Any], known: set[str], what: str) -> None:
    unknown = set(data) - known
    if unknown:
        raise ConfigVersionError(
            f"Unknown field(s) {sorted(unknown)} in {what}: the file was written by another "
            f"quantune version or edited by hand; known fields are {sorted(known)}."
        )


def _build(cls: type, data: Any, what: str) -> Any:
    if not isinstance(data, dict):
        raise UserInputError(f"config {what} must be a JSON object, got {type(data).__name__}.")
    _reject_unknown(data, {f.name for f in dataclasses.fields(cls)}, what)
    try:
        return cls(**data)
    except TypeError as exc:
        raise UserInputError(f"Bad config {what}: {exc}.") from exc


def _layer_to_dict(cfg: LayerQuantConfig | None) -> dict[str, Any] | None:
    if cfg is None:
        return None
    return {
        "weight": dataclasses.asdict(cfg.weight),
        "activation": None if cfg.activation is None else dataclasses.asdict(cfg.activation),
    }


def _layer_from_dict(data: Any) -> LayerQuantConfig | None:
    if data is None:
        return None
    if not isinstance(data, dict):
        raise UserInputError("A layer config must be a JSON object or null (keep float).")
    _reject_unknown(data, {"weight", "activation"}, "layer config")
    act = data.get("activation")
    return LayerQuantConfig(
        weight=_build(WeightQuant, data.get("weight", {}), "weight"),
        activation=None if act is None else _build(ActQuant, act, "activation"),
    )
