"""Prepare a float model once (fold BN, describe layers, collect statistics); quantize it many times."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from quantune.batches import iter_batches, run_checked
from quantune.bn_folding import find_bn_pairs, fold_batchnorm, set_submodule
from quantune.capture import LayerInfo, describe_layers, find_quantizable, find_unsupported
from quantune.config import SMOOTHING_AUTO, LayerQuantConfig, QuantConfig
from quantune.errors import UserInputError
from quantune.modules import QuantizedLayer
from quantune.quantized_model import QuantizedModel
from quantune.quantizer import qparams_from_range


def module_size_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))


def _reiterable(data: Iterable[Any]) -> Iterable[Any]:
    """Data that can be iterated several times (one-shot iterators are materialized)."""
    if torch.is_tensor(data):
        return data  # rejected with a clear message by iter_batches
    try:
        if iter(data) is data:  # a generator or iterator: one pass only
            return list(data)
    except TypeError:
        pass
    return data


def _check_finite(model: nn.Module) -> None:
    """Refuse NaN/Inf weights: every quantization range computed from them is meaningless."""
    tensors = list(model.named_parameters()) + list(model.named_buffers())
    bad = [name for name, t in tensors if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise UserInputError(
            f"The model has NaN or Inf values in {shown}; quantization ranges cannot be "
            "computed from them. Check the checkpoint (a diverged training run?) and load a finite one."
        )


#: Calibration data kept in memory for the many-pass steps (GPTQ, AdaRound, AdaQuant,
#: the corrections); a larger source is replayed at every pass (PreparedModel.pass_batches).
DATA_CACHE_MB = 1024


class PreparedModel:
    """A float model made ready for quantization.

    Building it folds BatchNorm into the preceding layers, describes every quantizable
    layer on a real batch, and streams the calibration data once to collect activation
    statistics. :meth:`quantize` then builds quantized models for any number of
    configurations without touching the data again (unless a configuration asks for
    data-driven steps such as AdaQuant: they hold the data in memory up to
    ``data_cache_mb`` and read a larger source again at every pass, see :meth:`pass_batches`).
    """

    def __init__(self, model: nn.Module, calib_data: Iterable[Any], *, show_progress: bool = False,
                 data_cache_mb: int = DATA_CACHE_MB) -> None:
        if not isinstance(model, nn.Module):
            raise UserInputError(
                f"quantune needs a torch.nn.Module, got {type(model).__name__}; load your "
                "model first (for a TorchScript file use torch.jit.load, which is not supported)."
            )
        self.calib_data = _reiterable(calib_data)
        self.show_progress = show_progress
        if data_cache_mb < 0:
            raise UserInputError(f"data_cache_mb must be >= 0, got {data_cache_mb}.")
        self.data_cache_mb = data_cache_mb
        self.float_model = copy.deepcopy(model).eval()
        _check_finite(self.float_model)
        self.float_size_bytes = module_size_bytes(self.float_model)
        names = find_quantizable(self.float_model)
        if not names:
            raise UserInputError(
                "The model has no quantizable layer (nn.Linear, nn.Conv1d or nn.Conv2d); "
                "quantune cannot make it smaller."
            )
        self.unsupported = find_unsupported(self.float_model)
        first = next(iter(iter_batches(self.calib_data)))
        # This pass also validates the first batch (run_checked names the expected input).
        self.bn_pairs = find_bn_pairs(self.float_model, lambda: run_checked(self.float_model, first, 0))
        # The unfolded BatchNorms are kept so that calibration can re-estimate their
        # statistics on the quantized model and fold them again (bn_reestimate).
        self.bn_modules: dict[str, nn.Module] = {
            bn: copy.deepcopy(self.float_model.get_submodule(bn)) for _, bn in self.bn_pairs
        }
        fold_batchnorm(self.float_model, self.bn_pairs)
        described = describe_layers(self.float_model, names, lambda: run_checked(self.float_model, first, 0))
        # A layer that never runs as a module has no statistics, and may not even be
        # used through its forward: MultiheadAttention reads its out_proj's weights
        # directly, so "quantizing" it would change nothing but the reported size.
        self.layers: list[LayerInfo] = [info for info in described if info.input_shape]
        self.unsupported += [(info.name, "never ran as a module on the calibration data")
                             for info in described if not info.input_shape]
        if not self.layers:
            raise UserInputError(
                "No quantizable layer (nn.Linear, nn.Conv1d or nn.Conv2d) ran as a module on the "
                "calibration data; check that the data reaches the model's layers."
            )
        if self.unsupported:
            warnings.warn(
                "Kept float (not quantizable by quantune): "
                + ", ".join(f"{n} ({t})" for n, t in self.unsupported),
                stacklevel=2,
            )
        self._stats_cache: dict[tuple[int | None, int], Any] = {}  # -> InputStatistics
        self._auto_alpha_cache: dict[tuple[Any, ...], float | None] = {}
        self._auto_model_cache: dict[tuple[Any, ...], dict[str, float | None]] = {}
        self._smoothing_cache: dict[tuple[float, int | None, int], tuple[dict[str, torch.Tensor], dict[str, Any]]] = {}
        self._subset_cache: dict[tuple[int, int], Iterable[Any]] = {}
        self._synthetic_cache: dict[tuple[int, int, int], tuple[list[torch.Tensor], Any]] = {}

    @property
    def layer_names(self) -> list[str]:
        return [info.name for info in self.layers]

    def calibration_data(self, max_samples: int | None = None, seed: int = 0) -> Iterable[Any]:
        """The calibration batches, or a seeded random subset of ``max_samples`` samples (cached)."""
        if max_samples is None:
            return self.calib_data
        key = (max_samples, seed)
        if key not in self._subset_cache:
            from quantune.calibration.data import calibration_batches

            self._subset_cache[key] = calibration_batches(self.calib_data, max_samples, seed)
        return self._subset_cache[key]

    def pass_batches(self, max_samples: int | None = None, seed: int = 0) -> Sequence[Any]:
        """The calibration batches for steps that read them many times (GPTQ, AdaRound,
        AdaQuant, the corrections): kept in memory up to ``data_cache_mb``, replayed from
        the source beyond it (:mod:`quantune.calibration.replay`)."""
        from quantune.calibration.replay import batches_within

        return batches_within(self.calibration_data(max_samples, seed), self.data_cache_mb * 2**20)

    def synthetic_data(self, n: int, iters: int, seed: int = 0) -> tuple[list[torch.Tensor], Any]:
        """``(batches, report)``: ``n`` inputs distilled from the model's BatchNorm statistics
        (cached per ``(n, iters, seed)``; see :mod:`quantune.calibration.synthetic`)."""
        key = (n, iters, seed)
        if key not in self._synthetic_cache:
            from quantune.calibration.synthetic import batchnorm_targets, synthesize

            targets = batchnorm_targets(self.float_model, self.bn_pairs, self.bn_modules)
            example = next(iter(iter_batches(self.calib_data)))
            self._synthetic_cache[key] = synthesize(self.float_model, targets, example, n, iters=iters,
                                                    seed=seed, show_progress=self.show_progress)
        return self._synthetic_cache[key]

    def _collect(self, max_samples: int | None, seed: int, names: list[str],
                 input_scales: dict[str, torch.Tensor] | None = None) -> Any:
        from quantune.calibration.collect import collect_input_stats

        data = self.calibration_data(max_samples, seed)
        return collect_input_stats(self.float_model, names, data, show_progress=self.show_progress,
                                   total_batches=len(data) if hasattr(data, "__len__") else None,
                                   input_scales=input_scales)

    def input_statistics(self, max_samples: int | None = None, seed: int = 0) -> Any:
        """Every quantizable layer's :class:`~quantune.calibration.collect.InputStatistics`
        (histograms, per-channel maxima; collected once per sample cap and seed)."""
        key = (max_samples, seed if max_samples is not None else 0)
        if key not in self._stats_cache:
            self._stats_cache[key] = self._collect(max_samples, seed, self.layer_names)
        return self._stats_cache[key]

    def stats(self, max_samples: int | None = None, seed: int = 0) -> dict[str, Any]:
        """Input histograms of every quantizable layer (collected once per sample cap and seed)."""
        return self.input_statistics(max_samples, seed).histograms

    def n_samples(self, max_samples: int | None = None, seed: int = 0) -> int:
        return self.input_statistics(max_samples, seed).n_samples

    def smoothing(self, alpha: float, max_samples: int | None = None, seed: int = 0
                  ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """``(scales, histograms)`` of SmoothQuant at ``alpha``: every layer's per-input-channel
        divisors and the histograms of its smoothed input (one more pass over the
        calibration data per alpha, sample cap and seed; cached)."""
        key = (float(alpha), max_samples, seed if max_samples is not None else 0)
        if key not in self._smoothing_cache:
            from quantune.calibration.smoothing import smoothing_scales

            absmax = self.input_statistics(max_samples, seed).channel_absmax
            scales = {}
            for name, amax in absmax.items():
                layer = self.float_model.get_submodule(name)
                scales[name] = smoothing_scales(amax, layer.weight, float(alpha), int(getattr(layer, "groups", 1)))
            smoothed = self._collect(max_samples, seed, list(scales), input_scales=scales)
            self._smoothing_cache[key] = (scales, smoothed.histograms)
        return self._smoothing_cache[key]

    def quantized_layer(self, name: str, layer_cfg: LayerQuantConfig, alpha: float | None,
                        max_samples: int | None = None, seed: int = 0) -> QuantizedLayer:
        """Layer ``name`` of the float model quantized under ``layer_cfg`` with nearest
        rounding: SmoothQuant at ``alpha`` (a number or None, whatever the config says),
        weight and activation ranges from the statistics."""
        from quantune.calibration.ranges import activation_range, weight_range

        qlayer = QuantizedLayer(self.float_model.get_submodule(name), layer_cfg)
        h = self.stats(max_samples, seed).get(name)
        if alpha is not None and h is not None:
            # Smoothing changes the weight, so it comes before the weight's range.
            scales, smoothed = self.smoothing(alpha, max_samples, seed)
            qlayer.set_input_smoothing(scales[name])
            h = smoothed[name]
        lo, hi = weight_range(qlayer.weight, layer_cfg.weight)
        qlo, qhi = qlayer.w_qrange
        qlayer.set_weight_qparams(*qparams_from_range(lo, hi, qlo, qhi, layer_cfg.weight.symmetric))
        if layer_cfg.activation is not None:
            if h is None:  # the layer never ran on calibration data
                qlayer.config = type(layer_cfg)(layer_cfg.weight, None)
            else:
                alo, ahi = activation_range(h, layer_cfg.activation)
                rlo, rhi = qlayer.a_qrange  # type: ignore[misc]
                qlayer.set_act_qparams(
                    *qparams_from_range(torch.tensor(alo), torch.tensor(ahi), rlo, rhi, layer_cfg.activation.symmetric)
                )
        return qlayer

    def smoothing_alpha(self, name: str, layer_cfg: LayerQuantConfig, max_samples: int | None = None,
                        seed: int = 0) -> float | None:
        """The SmoothQuant alpha of layer ``name`` under ``layer_cfg`` on its own: the config's
        number, or for ``"auto"`` the layer's measured best (cached per layer and config;
        :meth:`auto_smoothing_alphas` then checks the choices on the whole model)."""
        alpha = None if layer_cfg.activation is None else layer_cfg.activation.smoothing
        if alpha != SMOOTHING_AUTO:
            return None if alpha is None else float(alpha)
        key = (name, layer_cfg, max_samples, seed if max_samples is not None else 0)
        if key not in self._auto_alpha_cache:
            from quantune.calibration.smoothing import choose_alpha

            self._auto_alpha_cache[key] = choose_alpha(self, name, layer_cfg, max_samples, seed)
        return self._auto_alpha_cache[key]

    def auto_smoothing_alphas(self, layer_cfgs: dict[str, LayerQuantConfig], max_samples: int | None = None,
                              seed: int = 0) -> dict[str, float | None]:
        """Alphas of the layers whose config says ``smoothing="auto"`` (none: empty), chosen
        per layer and checked on the whole model (``quantune.calibration.smoothing``; cached)."""
        if not any(c.activation is not None and c.activation.smoothing == SMOOTHING_AUTO for c in layer_cfgs.values()):
            return {}
        key = (tuple(layer_cfgs.items()), max_samples, seed if max_samples is not None else 0)
        if key not in self._auto_model_cache:
            from quantune.calibration.smoothing import choose_alphas

            self._auto_model_cache[key] = choose_alphas(self, layer_cfgs, max_samples, seed)
        return self._auto_model_cache[key]

    def quantize(self, config: QuantConfig, mode: str = "integer") -> QuantizedModel:
        """Build a quantized copy of the model under ``config``."""
        from quantune.calibration.procedures import run_procedure

        n, seed = config.procedure.max_samples, config.procedure.seed
        model = copy.deepcopy(self.float_model)
        layer_cfgs = {info.name: cfg for info in self.layers if (cfg := config.for_layer(info.name)) is not None}
        chosen = self.auto_smoothing_alphas(layer_cfgs, n, seed)
        alphas: dict[str, float | None] = {}
        for name, layer_cfg in layer_cfgs.items():
            alpha = chosen[name] if name in chosen else self.smoothing_alpha(name, layer_cfg, n, seed)
            if layer_cfg.activation is not None and layer_cfg.activation.smoothing is not None:
                alphas[name] = alpha
            set_submodule(model, name, self.quantized_layer(name, layer_cfg, alpha, n, seed))
        qmodel = QuantizedModel(
            model, config, self.layers, self.bn_pairs, self.unsupported, self.float_size_bytes
        )
        qmodel.smoothing_alphas = alphas
        run_procedure(qmodel, self, config.procedure)
        return qmodel.set_mode(mode)


def prepare(model: nn.Module, calib_data: Iterable[Any], *, show_progress: bool = False,
            data_cache_mb: int = DATA_CACHE_MB) -> PreparedModel:
    """Fold BN, describe layers and make statistics available for repeated quantization.

    ``data_cache_mb``: calibration data up to this size is held in memory while the
    many-pass steps run; a larger source (a ``DataLoader``) is read again at every pass,
    which keeps memory flat and must give the same batches each time.
    """
    return PreparedModel(model, calib_data, show_progress=show_progress, data_cache_mb=data_cache_mb)


def quantize(
    model: nn.Module,
    config: QuantConfig | None,
    calib_data: Iterable[Any],
    *,
    mode: str = "integer",
    show_progress: bool = False,
) -> QuantizedModel:
    """Quantize ``model`` under ``config`` (default: W8A8, per-channel weights).

    Args:
        model: any ``nn.Module``; it is copied, never modified.
        config: the quantization configuration; None means ``QuantConfig()``.
        calib_data: iterable of batches (tensors, dicts of tensors, or (inputs, labels)).
        mode: ``integer`` (integer GEMM core), ``simulate`` (fake-quant) or ``float``.
        show_progress: show progress bars.

    Returns:
        A :class:`QuantizedModel`, callable like the original model.
    """
    return prepare(model, calib_data, show_progress=show_progress).quantize(config or QuantConfig(), mode)


# Public alias: ``quantune.prepare`` is this module, so the package exports the function
# under this name.
prepare_model = prepare
