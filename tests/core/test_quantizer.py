from __future__ import annotations

import torch

from quantune.quantizer import (
    dequantize,
    fake_quantize,
    qparams_from_range,
    qrange,
    quantize,
    symmetric_qrange,
)


def test_round_trip_within_half_step_and_zero_exact():
    x = torch.cat([torch.randn(1000) * 3, torch.zeros(1)])
    lo, hi = qrange(8, signed=False)
    s, z = qparams_from_range(x.min(), x.max(), lo, hi, symmetric=False)
    q = quantize(x, s, z, lo, hi)
    assert int(q.min()) >= lo and int(q.max()) <= hi
    err = (dequantize(q, s, z) - x).abs().max()
    assert err <= s / 2 + 1e-6
    assert dequantize(quantize(torch.zeros(1), s, z, lo, hi), s, z).item() == 0.0


def test_per_channel_symmetric_weights():
    w = torch.randn(6, 10) * torch.arange(1, 7).float()[:, None]
    lo, hi = symmetric_qrange(4)
    assert (lo, hi) == (-7, 7)
    s, z = qparams_from_range(w.amin(1), w.amax(1), lo, hi, symmetric=True)
    assert s.shape == (6,) and bool((z == 0).all())
    q = quantize(w, s, z, lo, hi, axis=0)
    # The largest magnitude of every row lands on the grid's end.
    assert bool((q.abs().amax(1) == 7).all())
    assert torch.equal(quantize(-w, s, z, lo, hi, axis=0), -q)


def test_fake_quant_equals_dequant_of_quant_and_has_ste_gradient():
    x = (torch.randn(200) * 2).requires_grad_()
    lo, hi = qrange(8, signed=False)
    s, z = qparams_from_range(torch.tensor(-1.0), torch.tensor(1.0), lo, hi, symmetric=False)
    y = fake_quantize(x, s, z, lo, hi)
    assert torch.equal(y.detach(), dequantize(quantize(x.detach(), s, z, lo, hi), s, z))
    y.sum().backward()
    inside = (x.detach() > -1 + s) & (x.detach() < 1 - s)
    assert bool((x.grad[inside] == 1).all())
    outside = (x.detach() < -1.5) | (x.detach() > 1.5)
    assert bool((x.grad[outside] == 0).all())


def test_constant_tensor_gets_valid_scale():
    s, z = qparams_from_range(torch.tensor(0.0), torch.tensor(0.0), 0, 255, symmetric=False)
    assert float(s) > 0


def test_fake_quant_without_autograd_equals_the_differentiable_path_and_leaves_x_alone():
    torch.manual_seed(0)
    x = torch.randn(4, 8, 5, 5) * 3
    scale, zero = torch.rand(8) * 0.1 + 0.01, torch.randint(-3, 3, (8,)).float()
    before = x.clone()
    with torch.no_grad():
        fast = fake_quantize(x, scale, zero, -128, 127, axis=1)
    slow = fake_quantize(x.clone().requires_grad_(), scale, zero, -128, 127, axis=1)
    assert torch.equal(fast, slow.detach())
    assert torch.equal(x, before)  # the in-place steps work on a new buffer, never on x
