"""Hypothesis-driven properties of the quantizer primitives and the integer GEMM core.

Quantizer: for any range and bit width, a value inside the range comes back within half
a step (one step at most), quantization is monotone, and values beyond the range
saturate at the grid ends. Kernels: ``backend="auto"`` (oneDNN on x86 CPUs, else the
reference) against ``backend="reference"`` on random shapes, scales and zero points:
with unit scales the float output *is* the int32 accumulator (exact below 2^24), so it
must equal the reference accumulation bit for bit; with random scales, bias and
activation the outputs agree to float rounding.
"""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from quantune import kernels
from quantune.kernels import reference
from quantune.kernels.weights import QuantizedWeight
from quantune.quantizer import dequantize, fake_quantize, qparams_from_range, qrange, quantize

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True)

ranges = st.tuples(
    st.floats(-1e3, 0.0, allow_nan=False, allow_infinity=False),
    st.floats(1e-3, 1e3, allow_nan=False, allow_infinity=False),
)


def _grid(lo: float, hi: float, bits: int, signed: bool, symmetric: bool):
    qmin, qmax = qrange(bits, signed)
    scale, zp = qparams_from_range(torch.tensor(lo), torch.tensor(hi), qmin, qmax, symmetric)
    return scale, zp, qmin, qmax


@SETTINGS
@given(rng=ranges, bits=st.integers(2, 8), signed=st.booleans(), symmetric=st.booleans(),
       seed=st.integers(0, 2**16))
def test_round_trip_within_one_step_inside_the_range(rng, bits, signed, symmetric, seed) -> None:
    lo, hi = rng
    scale, zp, qmin, qmax = _grid(lo, hi, bits, signed, symmetric)
    x = torch.empty(257).uniform_(lo, hi, generator=torch.Generator().manual_seed(seed))
    x = torch.cat([x, torch.tensor([lo, hi, 0.0])])
    q = quantize(x, scale, zp, qmin, qmax)
    assert int(q.min()) >= qmin and int(q.max()) <= qmax
    y = dequantize(q, scale, zp)
    step = float(scale)
    # Inside the representable range: half a step (rounding) plus float slack.
    representable = (x >= float((qmin - zp) * scale)) & (x <= float((qmax - zp) * scale))
    err = (y - x).abs()[representable]
    assert float(err.max()) if err.numel() else 0.0 <= 0.5 * step * (1 + 1e-4) + 1e-6 * max(abs(lo), hi)
    # Every value of [lo, hi] lies within one step of its round trip (the range may have
    # been widened to hold zero, symmetric grids may lose one code at an end).
    assert float((y - x).abs().max()) <= step * (1 + 1e-4) + 1e-6 * max(abs(lo), hi)
    assert torch.equal(fake_quantize(x, scale, zp, qmin, qmax), y)
    assert float(dequantize(quantize(torch.zeros(1), scale, zp, qmin, qmax), scale, zp)) == 0.0


@SETTINGS
@given(rng=ranges, bits=st.integers(2, 8), signed=st.booleans(), symmetric=st.booleans(),
       seed=st.integers(0, 2**16))
def test_quantization_is_monotone_and_saturates(rng, bits, signed, symmetric, seed) -> None:
    lo, hi = rng
    scale, zp, qmin, qmax = _grid(lo, hi, bits, signed, symmetric)
    span = hi - lo
    x = torch.empty(300).uniform_(lo - 3 * span, hi + 3 * span, generator=torch.Generator().manual_seed(seed))
    x, _ = torch.sort(x)
    q = quantize(x, scale, zp, qmin, qmax)
    assert bool((q[1:] >= q[:-1]).all())  # monotone non-decreasing
    far = 10 * span + 1
    ends = quantize(torch.tensor([lo - far, -math.inf, hi + far, math.inf]), scale, zp, qmin, qmax)
    assert ends.tolist() == [qmin, qmin, qmax, qmax]  # saturation at both ends


def _weight(n: int, k_shape: tuple[int, ...], bits: int, per_channel: bool, asym: bool,
            g: torch.Generator) -> QuantizedWeight:
    hi = (1 << (bits - 1)) - 1
    codes = torch.randint(-hi, hi + 1, (n, *k_shape), generator=g).to(torch.int8)
    if per_channel:
        scale = torch.rand(n, generator=g) * 0.05 + 1e-3
        zp = torch.randint(-2, 3, (n,), generator=g).to(torch.int32) if asym else torch.zeros(n, dtype=torch.int32)
    else:
        scale = torch.tensor(0.02)
        zp = torch.tensor(1 if asym else 0, dtype=torch.int32)
    return QuantizedWeight(codes, bits, scale.float(), zp)


def _unit(w: QuantizedWeight) -> QuantizedWeight:
    return QuantizedWeight(w.codes, w.bits, torch.ones_like(w.scale), w.zero_point)


shapes = st.tuples(st.integers(1, 9), st.integers(1, 70), st.integers(1, 40))


@SETTINGS
@given(shape=shapes, bits=st.sampled_from([8, 4, 2]), per_channel=st.booleans(), asym=st.booleans(),
       x_zp=st.integers(0, 255), x_scale=st.floats(1e-3, 1.0), act=st.sampled_from([None, "relu", "relu6", "gelu", "gelu_tanh"]),
       seed=st.integers(0, 2**16))
def test_linear_auto_matches_reference(shape, bits, per_channel, asym, x_zp, x_scale, act, seed) -> None:
    m, k, n = shape
    g = torch.Generator().manual_seed(seed)
    w = _weight(n, (k,), bits, per_channel, asym, g)
    qx = torch.randint(0, 256, (m, k), generator=g).to(torch.uint8)
    acc = reference.linear_accumulate(qx, x_zp, w)
    unit = kernels.linear(qx, 1.0, x_zp, _unit(w), backend="auto")
    assert torch.equal(unit.double(), acc.double())  # int32 accumulator, bit-exact
    bias = torch.randn(n, generator=g)
    fast = kernels.linear(qx, x_scale, x_zp, w, bias, activation=act, backend="auto")
    ref = kernels.linear(qx, x_scale, x_zp, w, bias, activation=act, backend="reference")
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5 * max(float(ref.abs().max()), 1.0))


@SETTINGS
@given(n=st.integers(1, 3), cin=st.integers(1, 6), cout=st.integers(1, 8), hw=st.integers(3, 9),
       kernel=st.sampled_from([1, 3]), stride=st.integers(1, 2), pad=st.integers(0, 1),
       depthwise=st.booleans(), bits=st.sampled_from([8, 4]), per_channel=st.booleans(),
       x_zp=st.integers(0, 255), x_scale=st.floats(1e-3, 1.0), seed=st.integers(0, 2**16))
def test_conv2d_auto_matches_reference(n, cin, cout, hw, kernel, stride, pad, depthwise, bits,
                                       per_channel, x_zp, x_scale, seed) -> None:
    g = torch.Generator().manual_seed(seed)
    groups, cout = (cin, cin) if depthwise else (1, cout)
    w = _weight(cout, (cin // groups, kernel, kernel), bits, per_channel, False, g)
    qx = torch.randint(0, 256, (n, cin, hw, hw), generator=g).to(torch.uint8)
    geo = dict(stride=(stride, stride), padding=(pad, pad), dilation=(1, 1), groups=groups)
    acc = reference.conv2d_accumulate(qx, x_zp, w, geo["stride"], geo["padding"], geo["dilation"], groups)
    unit = kernels.conv2d(qx, 1.0, x_zp, _unit(w), backend="auto", **geo)
    assert torch.equal(unit.double(), acc.double())  # int32 accumulator, bit-exact
    bias = torch.randn(cout, generator=g)
    fast = kernels.conv2d(qx, x_scale, x_zp, w, bias, activation="relu", backend="auto", **geo)
    ref = kernels.conv2d(qx, x_scale, x_zp, w, bias, activation="relu", backend="reference", **geo)
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5 * max(float(ref.abs().max()), 1.0))
