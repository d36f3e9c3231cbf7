"""SmoothQuant's per-input-channel scales (Xiao et al., 2023).

``s_j = max|x_j|^alpha / max|W_:,j|^(1 - alpha)``. Dividing input channel ``j`` by
``s_j`` and multiplying the weights that read it by ``s_j`` keeps the float product and
moves range between the two: at alpha 1 every input channel's maximum becomes 1 (the
per-tensor activation grid no longer serves a few outlier channels), at 0 every weight
column's maximum does. The weights are quantized per output channel, so the range they
take on costs them less than the activations' per-tensor grid loses.

``smoothing="auto"`` (:func:`choose_alphas`) first scores each candidate alpha, and no
smoothing, per layer (:func:`choose_alpha`): the layer quantized with it (nearest
rounding, the config's range methods) on calibration inputs, against the float layer's
output. Where weights are narrow (4 bits) and activations wide (8 bits), moving range into
the weights loses and the layer keeps its plain input; where an activation grid is
starved (4 bits, outlier channels), it wins. A layer's error is only a proxy (on
EfficientNet-Lite0 most layers preferred alpha 0.9 while the model's agreement fell), so
the per-layer choice must then beat every uniform choice (no smoothing, each alpha) on
the whole model's output error on calibration batches, or that uniform choice is taken.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from quantune.config import SMOOTHING_AUTO
from quantune.input_smoothing import weights_by_input_channel

#: Candidates of ``smoothing="auto"``, besides no smoothing.
AUTO_ALPHAS: tuple[float, ...] = (0.3, 0.5, 0.65, 0.8, 0.9)
#: Calibration inputs the candidates are scored on: Linear rows (tokens), conv samples.
AUTO_LINEAR_ROWS = 4096
AUTO_CONV_SAMPLES = 16

# Channels below this magnitude (dead inputs, all-zero weight columns) keep scale 1:
# their ratio means nothing and an extreme factor would wreck the other side's range.
_TINY = 1e-8
# Bounds on a factor, so no channel's weights or inputs leave float32's comfortable range.
_MIN_SCALE, _MAX_SCALE = 1e-4, 1e4


def smoothing_scales(act_absmax: torch.Tensor, weight: torch.Tensor, alpha: float, groups: int = 1) -> torch.Tensor:
    """``[C_in]`` float32 divisors of a layer's input channels.

    Args:
        act_absmax: the largest input magnitude seen per input channel (calibration data).
        weight: the layer's float weight (``[out, in]`` or ``[out, in/groups, *kernel]``).
        alpha: migration strength in [0, 1].
        groups: the convolution's groups (1 for Linear).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    a = act_absmax.detach().double()
    w = weights_by_input_channel(weight.detach(), groups).abs().amax(1).double()
    if a.shape != w.shape:
        raise ValueError(f"{a.numel()} input-channel maxima for a weight with {w.numel()} input channels")
    s = a.clamp(min=_TINY).pow(alpha) / w.clamp(min=_TINY).pow(1.0 - alpha)
    s = torch.where((a > _TINY) & (w > _TINY), s, torch.ones_like(s))
    return s.clamp(_MIN_SCALE, _MAX_SCALE).float()


def layer_inputs(prepared: Any, name: str, kind: str, max_samples: int | None, seed: int) -> torch.Tensor | None:
    """Up to ``AUTO_LINEAR_ROWS`` real-token rows (Linear) or ``AUTO_CONV_SAMPLES`` samples
    (convolutions) of layer ``name``'s float input, from the first calibration batches."""
    from quantune.calibration.layer_io import as_rows, capture_inputs

    data = prepared.calibration_data(max_samples, seed)
    cap = AUTO_LINEAR_ROWS if kind == "linear" else AUTO_CONV_SAMPLES
    parts, count = [], 0
    for captured in capture_inputs(prepared.float_model, name, data, kind):
        x = as_rows(captured.x, kind)[: cap - count]
        parts.append(x)
        count += x.shape[0]
        if count >= cap:
            break
    return torch.cat(parts) if parts else None


@torch.no_grad()
def choose_alpha(prepared: Any, name: str, layer_cfg: Any, max_samples: int | None, seed: int) -> float | None:
    """The candidate (an alpha of ``AUTO_ALPHAS`` or None) with the smallest output MSE of
    layer ``name`` quantized under ``layer_cfg``, against the float layer, on calibration
    inputs; None (no smoothing) also when the layer never ran."""
    from quantune.calibration.collect import input_kind

    layer = prepared.float_model.get_submodule(name)
    kind = input_kind(layer)
    x = layer_inputs(prepared, name, kind, max_samples, seed)
    if x is None or layer_cfg.activation is None:
        return None
    target = layer(x)
    best: tuple[float, float | None] | None = None
    for alpha in (None, *AUTO_ALPHAS):
        candidate = dataclasses.replace(layer_cfg, activation=dataclasses.replace(layer_cfg.activation, smoothing=alpha))
        qlayer = prepared.quantized_layer(name, candidate, alpha, max_samples, seed)
        qlayer.mode = "simulate"
        error = float((qlayer(x) - target).pow(2).mean())
        if best is None or error < best[0]:  # ties keep the earlier, plainer candidate
            best = (error, alpha)
    assert best is not None
    return best[1]


@torch.no_grad()
def _model_error(prepared: Any, alphas: dict[str, float | None], layer_cfgs: dict[str, Any],
                 max_samples: int | None, seed: int, batches: list[Any], reference: list[torch.Tensor]) -> float:
    """Relative output error of the model with ``alphas`` (nearest rounding)."""
    import copy

    from quantune.bn_folding import set_submodule
    from quantune.calibration.output_error import relative_output_error

    model = copy.deepcopy(prepared.float_model)
    for name, cfg in layer_cfgs.items():
        qlayer = prepared.quantized_layer(name, cfg, alphas.get(name), max_samples, seed)
        qlayer.mode = "simulate"
        set_submodule(model, name, qlayer)
    return relative_output_error(model, batches, reference)


@torch.no_grad()
def choose_alphas(prepared: Any, layer_cfgs: dict[str, Any], max_samples: int | None, seed: int
                  ) -> dict[str, float | None]:
    """Alphas of the ``smoothing="auto"`` layers among ``layer_cfgs`` (every quantized
    layer's config, by name): per layer by :func:`choose_alpha`, kept only if the whole
    model's output error on calibration batches is at most every uniform choice's."""
    from quantune.calibration.output_error import CHECK_BATCHES, reference_outputs

    auto = [n for n, c in layer_cfgs.items() if c.activation is not None and c.activation.smoothing == SMOOTHING_AUTO]
    per_layer = {n: prepared.smoothing_alpha(n, layer_cfgs[n], max_samples, seed) for n in auto}
    fixed = {n: None if c.activation is None or c.activation.smoothing in (None, SMOOTHING_AUTO)
             else float(c.activation.smoothing)
             for n, c in layer_cfgs.items()}
    batches = list(prepared.calibration_data(max_samples, seed))[:CHECK_BATCHES]
    reference = reference_outputs(prepared.float_model, batches)
    if reference is None:  # outputs that are not tensors: the per-layer choice stands
        return per_layer
    candidates = [per_layer] + [{n: alpha for n in auto} for alpha in (None, *AUTO_ALPHAS)]
    errors = [_model_error(prepared, {**fixed, **c}, layer_cfgs, max_samples, seed, batches, reference)
              for c in candidates]
    return candidates[min(range(len(candidates)), key=errors.__getitem__)]  # ties: the per-layer choice


__all__ = ["AUTO_ALPHAS", "choose_alpha", "choose_alphas", "layer_inputs", "smoothing_scales"]
