"""Second moments of one layer's inputs, streamed over batches: the Hessian GPTQ rounds against.

For a layer ``y = W x`` the output error of a weight perturbation ``dW`` is
``E||dW x||^2 = tr(dW H dW^T)`` with ``H = E[x x^T]``: the (Gauss-Newton) Hessian of
the layer's output MSE with respect to each row of ``W``.

In a partially quantized model the layer sees ``x_q`` where the float model has
``x_f``. Matching the float output, ``E||W x_f - Q x_q||^2`` is a quadratic in ``Q``
with the moments ``H = E[x_q x_q^T]``, ``C = E[x_f x_q^T]`` and ``F = E[x_f x_f^T]``;
:class:`InputMoments` accumulates all three when given paired inputs.

``x`` is a row of the layer's matrix form: a Linear input row (tokens count as rows),
or one im2col patch of a convolution (``C/groups * kh * kw`` values). Grouped and
depthwise convolutions get one matrix per group (a depthwise 3x3 conv: one 9x9 matrix
per channel). Products are float32 per chunk, summed in float64; memory is
``groups * K^2`` per moment whatever the number of samples.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from quantune.modules import QuantizedLayer

# Unfolded patches are materialized this many float32 values at a time at most.
_CHUNK_VALUES = 32 * 2**20


class InputMoments:
    """Streaming per-group ``sum x_q x_q^T`` (and, for paired inputs, ``x_f x_q^T``, ``x_f x_f^T``)."""

    def __init__(self, layer: QuantizedLayer) -> None:
        self.kind = layer.kind
        self.groups = 1 if layer.kind == "linear" else int(layer.groups)
        self.k = int(layer.weight[0].numel())  # inputs per output row (per group for convs)
        self.layer = layer
        shape = (self.groups, self.k, self.k)
        self.qq = torch.zeros(shape, dtype=torch.float64)
        self.fq: torch.Tensor | None = None
        self.ff: torch.Tensor | None = None
        self.sum_q = torch.zeros(self.groups, self.k, dtype=torch.float64)  # for E[x_q]
        self.rows = 0

    def patches(self, x: torch.Tensor) -> torch.Tensor:
        """``[groups, K, rows]`` matrix-form inputs of a batch."""
        layer = self.layer
        if self.kind == "linear":
            return x.reshape(-1, x.shape[-1]).t().unsqueeze(0)
        x = layer.pad_input(x)
        if self.kind == "conv1d":
            x = x.unsqueeze(2)
            kernel, stride = (1, *layer.weight.shape[2:]), (1, *layer.stride)
            padding = (0, *layer.padding) if isinstance(layer.padding, tuple) else layer.padding
            dilation = (1, *layer.dilation)
        else:
            kernel, stride, padding, dilation = tuple(layer.weight.shape[2:]), layer.stride, layer.padding, layer.dilation
        if isinstance(padding, str):  # "same" may be asymmetric, which unfold cannot do
            pads = layer.zero_padding_amounts()
            x = F.pad(x, pads if self.kind == "conv2d" else (*pads, 0, 0))
            padding = 0
        cols = F.unfold(x, kernel, dilation=dilation, padding=padding, stride=stride)  # [B, C*kk, L]
        b, ck, n = cols.shape
        return cols.reshape(b, self.groups, ck // self.groups, n).permute(1, 2, 0, 3).reshape(self.groups, self.k, b * n)

    @torch.no_grad()
    def update(self, x_q: torch.Tensor, x_f: torch.Tensor | None = None) -> None:
        """Add one batch of layer inputs; ``x_f`` is the float model's input of the same batch."""
        x_q = x_q.detach().float()
        x_f = x_f.detach().float() if x_f is not None else None
        taps = int(self.layer.weight[0, 0].numel())  # kernel positions (1 for Linear)
        step = max(1, _CHUNK_VALUES // max(1, x_q[0].numel() * taps))
        for start in range(0, x_q.shape[0], step):
            q = self.patches(x_q[start:start + step])
            self.qq += torch.bmm(q, q.transpose(1, 2)).double()
            self.sum_q += q.sum(-1).double()
            if x_f is not None:
                f = self.patches(x_f[start:start + step])
                fq = torch.bmm(f, q.transpose(1, 2)).double()
                ff = torch.bmm(f, f.transpose(1, 2)).double()
                self.fq = fq if self.fq is None else self.fq + fq
                self.ff = ff if self.ff is None else self.ff + ff
            self.rows += int(q.shape[-1])

    @property
    def paired(self) -> bool:
        return self.fq is not None

    def hessian(self) -> torch.Tensor:
        """``E[x_q x_q^T]`` per group, ``[groups, K, K]`` float64."""
        return self.qq / max(self.rows, 1)

    def mean(self) -> torch.Tensor:
        """``E[x_q]`` per group, ``[groups, K]``: the layer's mean output is ``W E[x_q] + b``
        (exact for convolutions too: im2col patches include the zero padding)."""
        return self.sum_q / max(self.rows, 1)

    def cross(self) -> torch.Tensor:
        """``E[x_f x_q^T]`` (``H`` itself without paired inputs)."""
        return self.fq / max(self.rows, 1) if self.fq is not None else self.hessian()

    def float_moment(self) -> torch.Tensor:
        """``E[x_f x_f^T]`` (``H`` itself without paired inputs)."""
        return self.ff / max(self.rows, 1) if self.ff is not None else self.hessian()
