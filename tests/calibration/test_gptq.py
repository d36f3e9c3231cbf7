"""GPTQ: grid-exact weights, never worse than nearest rounding, correct input Hessians."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from quantune.calibration.gptq import gptq_quantize
from quantune.calibration.input_hessian import InputMoments
from quantune.config import (
    ActQuant,
    CalibrationProcedure,
    LayerQuantConfig,
    QuantConfig,
    WeightQuant,
)
from quantune.modules import QuantizedLayer
from quantune.prepare import PreparedModel

pytestmark = pytest.mark.usefixtures("one_thread")


def _nearest(w: torch.Tensor, scale: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    s = scale.reshape(-1, 1) if scale.numel() > 1 else scale
    return torch.clamp(torch.round(w / s), lo, hi) * s


def _smooth_inputs(n: int, k: int, seed: int) -> torch.Tensor:
    """Strongly correlated inputs (a shared component plus a little noise), like image patches."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, generator=g) + 0.05 * torch.randn(n, k, generator=g)


@pytest.mark.parametrize("bits", [8, 4, 3])
@pytest.mark.parametrize("per_row", [True, False])
def test_gptq_beats_nearest_rounding_on_correlated_inputs(bits: int, per_row: bool) -> None:
    x = _smooth_inputs(2048, 27, seed=bits)
    w = torch.randn(12, 27, generator=torch.Generator().manual_seed(1))
    hi = 2 ** (bits - 1) - 1
    scale = w.abs().amax(1) / hi if per_row else w.abs().max() / hi
    h = x.t() @ x / x.shape[0]
    q = gptq_quantize(w, h, scale, torch.zeros_like(scale), (-hi, hi))
    s = scale.reshape(-1, 1) if per_row else scale
    codes = q / s
    assert torch.allclose(codes, torch.round(codes), atol=1e-4)  # on the grid
    assert codes.abs().max() <= hi + 1e-4
    err_gptq = ((x @ (q - w).t()) ** 2).mean()
    err_nearest = ((x @ (_nearest(w, scale, -hi, hi) - w).t()) ** 2).mean()
    assert err_gptq < 0.5 * err_nearest


def test_gptq_on_independent_inputs_is_nearest_rounding() -> None:
    # A diagonal Hessian couples no columns: there is no error to compensate.
    w = torch.randn(6, 10, generator=torch.Generator().manual_seed(2))
    scale = w.abs().amax(1) / 7
    h = torch.diag(torch.rand(10, generator=torch.Generator().manual_seed(3)) + 0.5)
    q = gptq_quantize(w, h, scale, torch.zeros(6), (-7, 7))
    assert torch.allclose(q, _nearest(w, scale, -7, 7), atol=1e-6)


def _layer(module: nn.Module) -> QuantizedLayer:
    return QuantizedLayer(module, LayerQuantConfig(WeightQuant(bits=8), ActQuant(bits=8)))


@pytest.mark.parametrize("groups", [1, 2, 8])
def test_conv_hessian_matches_explicit_patches(groups: int) -> None:
    conv = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=groups)
    x = torch.randn(3, 8, 9, 9)
    hess = InputMoments(_layer(conv))
    hess.update(x[:2])
    hess.update(x[2:])
    cols = F.unfold(x, 3, padding=1, stride=2)  # [B, 8*9, L]
    per = 8 // groups * 9
    for g in range(groups):
        rows = cols[:, g * per:(g + 1) * per].permute(0, 2, 1).reshape(-1, per).double()
        assert torch.allclose(hess.hessian()[g], rows.t() @ rows / rows.shape[0], atol=1e-5)


@pytest.mark.parametrize(("padding", "mode", "pads"), [
    ("same", "zeros", (1, 2, 1, 2)),  # even kernel: the odd zero goes right / bottom
    (1, "reflect", (1, 1, 1, 1)),
    ((2, 1), "replicate", (1, 1, 2, 2)),
])
def test_conv_hessian_sees_the_input_as_the_convolution_pads_it(padding, mode, pads) -> None:
    conv = nn.Conv2d(3, 4, 4, padding=padding, padding_mode=mode)
    x = torch.randn(2, 3, 7, 8)
    hess = InputMoments(_layer(conv))
    hess.update(x)
    cols = F.unfold(F.pad(x, pads, mode="constant" if mode == "zeros" else mode), 4)
    rows = cols.permute(0, 2, 1).reshape(-1, 3 * 16).double()
    assert cols.shape[-1] == conv(x).shape[2] * conv(x).shape[3]
    assert torch.allclose(hess.hessian()[0], rows.t() @ rows / rows.shape[0], atol=1e-5)


def test_conv1d_hessian_with_same_padding() -> None:
    conv = nn.Conv1d(2, 3, 4, padding="same")
    x = torch.randn(2, 2, 9)
    hess = InputMoments(_layer(conv))
    hess.update(x)
    cols = F.unfold(F.pad(x, (1, 2)).unsqueeze(2), (1, 4))
    rows = cols.permute(0, 2, 1).reshape(-1, 2 * 4).double()
    assert torch.allclose(hess.hessian()[0], rows.t() @ rows / rows.shape[0], atol=1e-5)


def test_linear_hessian_counts_tokens_as_rows() -> None:
    x = torch.randn(4, 5, 7)
    hess = InputMoments(_layer(nn.Linear(7, 3)))
    hess.update(x)
    rows = x.reshape(-1, 7).double()
    assert hess.rows == 20
    assert torch.allclose(hess.hessian()[0], rows.t() @ rows / 20, atol=1e-5)


def _smooth_images(n: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, 3, 4, 4, generator=g)
    return list(F.interpolate(base, size=16, mode="bilinear", align_corners=False).split(8))


def _quantized(model: nn.Module, n_calib: int, w_bits: int, a_bits: int, procedure: CalibrationProcedure):
    """``(prepared, simulated model)`` of ``model`` calibrated on smooth images with ``procedure``."""
    prepared = PreparedModel(model, _smooth_images(n_calib, seed=0), show_progress=False)
    config = QuantConfig(LayerQuantConfig(WeightQuant(bits=w_bits), ActQuant(bits=a_bits)), procedure=procedure)
    return prepared, prepared.quantize(config, mode="simulate")


@pytest.mark.parametrize("sequential", [True, False])
def test_gptq_procedure_brings_the_model_closer_to_float(convnet, sequential: bool) -> None:
    calib = _smooth_images(32, seed=0)
    prepared = PreparedModel(convnet, calib, show_progress=False)
    layer = LayerQuantConfig(WeightQuant(bits=3), ActQuant(bits=8))
    plain = prepared.quantize(QuantConfig(layer), mode="simulate")
    gptq = prepared.quantize(QuantConfig(layer, procedure=CalibrationProcedure(gptq=True, gptq_sequential=sequential)),
                             mode="simulate")
    evals = torch.cat(_smooth_images(32, seed=1))
    with torch.no_grad():
        ref = prepared.float_model(evals)
        err_plain = F.mse_loss(plain(evals), ref)
        err_gptq = F.mse_loss(gptq(evals), ref)
    assert err_gptq < err_plain
    assert [r["name"] for r in gptq.calibration_log["gptq"]["layers"]] == list(gptq.quantized_layers())
    # The rounded weights stay on the layer's grid: integer execution matches simulation.
    with torch.no_grad():
        sim = gptq(evals)
        gptq.set_mode("integer")
        assert torch.allclose(gptq(evals), sim, atol=1e-4, rtol=1e-4)


def test_gptq_options_round_trip_and_validate() -> None:
    config = QuantConfig(procedure=CalibrationProcedure(gptq=True, gptq_damp=0.05, gptq_act_order=False))
    assert QuantConfig.from_dict(config.to_dict()) == config
    with pytest.raises(Exception, match="gptq_damp"):
        CalibrationProcedure(gptq=True, gptq_damp=0.0)


def test_float_target_weights_are_the_least_squares_solution() -> None:
    # W* = argmin E||W x_f - W* x_q||^2 absorbs a known input distortion in closed form.
    from quantune.calibration.gptq_layers import _float_target_weights

    g = torch.Generator().manual_seed(4)
    x_f = torch.randn(4000, 6, generator=g)
    x_q = x_f @ (torch.eye(6) + 0.1 * torch.randn(6, 6, generator=g)) + 0.01 * torch.randn(4000, 6, generator=g)
    layer = _layer(nn.Linear(6, 3))
    moments = InputMoments(layer)
    moments.update(x_q, x_f)
    w = layer.weight.detach().double().reshape(1, 3, 6)
    got = _float_target_weights(w, moments, damp=1e-9)[0]
    expected = torch.linalg.lstsq(x_q.double(), (x_f.double() @ w[0].t())).solution.t()
    assert torch.allclose(got, expected, atol=1e-6)
    assert not torch.allclose(got, w[0], atol=1e-2)  # the distortion really is absorbed


def test_float_target_mode_tries_the_closed_form_candidate(convnet) -> None:
    _, q = _quantized(convnet, 64, 3, 8, CalibrationProcedure(gptq=True, gptq_float_target=True))
    layers = q.calibration_log["gptq"]["layers"]
    tried = [r for r in layers if r["error_float_target"] is not None]
    assert tried  # enough rows per input on the conv layers
    for r in layers:  # each layer keeps its least-error candidate
        best = min(e for e in (r["error_nearest"], r["error_gptq"], r["error_float_target"]) if e is not None)
        chosen = {"nearest": r["error_nearest"], "gptq": r["error_gptq"],
                  "gptq_float_target": r["error_float_target"]}[r["chosen"]]
        assert chosen == best


def test_fused_bias_correction_matches_every_layer_mean_to_float(convnet) -> None:
    from quantune.calibration.bias_correction import output_means

    prepared, q = _quantized(convnet, 32, 3, 4, CalibrationProcedure(gptq=True, bias_correction=True))
    assert q.calibration_log["bias_correction"]["fused_with"] == "gptq"
    kinds = {n: m.kind for n, m in q.quantized_layers().items()}
    batches = list(prepared.calibration_data(None, 0))
    want = output_means(prepared.float_model, kinds, batches, stop=False)
    got = output_means(q.model, kinds, batches, stop=False)
    uncorrected = prepared.quantize(QuantConfig(LayerQuantConfig(WeightQuant(bits=3), ActQuant(bits=4)),
                                                procedure=CalibrationProcedure(gptq=True)), mode="simulate")
    before = output_means(uncorrected.model, kinds, batches, stop=False)
    for name in kinds:
        shift = (got[name].mean - want[name].mean).abs().max()
        assert shift < 1e-4 * (1 + want[name].mean.abs().max())
    assert any((before[n].mean - want[n].mean).abs().max() > 1e-3 for n in kinds)
