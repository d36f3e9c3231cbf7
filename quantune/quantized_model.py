"""The quantized model returned by :func:`quantune.quantize`."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from quantune.capture import LayerInfo
from quantune.config import QuantConfig
from quantune.modules import MODES, QuantizedLayer


class QuantizedModel(nn.Module):
    """A model whose quantizable layers were swapped for :class:`QuantizedLayer`.

    Calling it calls the wrapped model (``self.model``) with the same arguments.

    Attributes:
        model: the module tree, BatchNorm folded, quantized layers swapped in.
        config: the :class:`QuantConfig` that produced it.
        layers: per-layer descriptions (shapes, params, MACs) of every quantizable layer.
        bn_pairs: ``(layer, batchnorm)`` pairs that were folded.
        unsupported: ``(name, type)`` of weighted layers kept float (not quantizable).
        float_size_bytes: size of the float model's parameters and buffers.
    """

    def __init__(
        self,
        model: nn.Module,
        config: QuantConfig,
        layers: list[LayerInfo],
        bn_pairs: list[tuple[str, str]],
        unsupported: list[tuple[str, str]],
        float_size_bytes: int,
    ) -> None:
        super().__init__()
        self.model = model
        self.config = config
        self.layers = layers
        self.bn_pairs = bn_pairs
        self.unsupported = unsupported
        self.float_size_bytes = float_size_bytes
        #: Integer mode fuses ReLU / ReLU6 / clamp / GELU into the layer before and chains
        #: integer layers (codes handed on, no quantize pass; see
        #: :mod:`quantune.activation_fusion`); planned on the first integer forward.
        self.fuse_activations = True
        self.fused_activations: dict[str, str] | None = None
        self.chains: dict[str, str] = {}
        #: SmoothQuant's alpha of each smoothed layer (None: measured best without;
        #: see ``ActQuant.smoothing``), set by quantization.
        self.smoothing_alphas: dict[str, float | None] = {}

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        plan = None
        if (getattr(self, "fuse_activations", False) and getattr(self, "fused_activations", None) is None
                and self.mode == "integer"):
            plan = self._fuse(args, kwargs)
        out = self.model(*args, **kwargs)
        if plan is not None:
            from quantune.activation_fusion import apply_chains

            # After one integer pass every layer has decided its path: link the pairs
            # that both run the integer kernel.
            self.chains = apply_chains(self.model, plan)
        return out

    def _fuse(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Plan fusion and chains on this input (one float pass) and fuse the activations."""
        from quantune.activation_fusion import apply_fusion, find_fusable

        self.set_mode("float")  # observe the data flow without timing or compiling kernels
        try:
            plan = find_fusable(self.model, lambda: self.model(*args, **kwargs))
        finally:
            self.set_mode("integer")
        apply_fusion(self.model, plan)
        self.fused_activations = plan.layers
        return plan

    def quantized_layers(self) -> dict[str, QuantizedLayer]:
        """Name -> quantized layer, for every layer that is quantized."""
        return {n: m for n, m in self.model.named_modules() if isinstance(m, QuantizedLayer)}

    @property
    def float_layers(self) -> list[str]:
        """Quantizable layers kept float by the config."""
        q = self.quantized_layers()
        return [info.name for info in self.layers if info.name not in q]

    @property
    def mode(self) -> str:
        modes = {m.mode for m in self.quantized_layers().values()}
        return modes.pop() if len(modes) == 1 else "mixed"

    def set_mode(self, mode: str) -> QuantizedModel:
        """Switch every quantized layer to ``float``, ``simulate`` or ``integer`` execution."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        for m in self.quantized_layers().values():
            m.mode = mode
        return self

    def set_backend(self, backend: str) -> QuantizedModel:
        """Pin the integer kernel backend (``auto`` picks the fastest)."""
        for m in self.quantized_layers().values():
            m.backend = backend
            m.chain_target = None
        self.fused_activations = None  # re-planned (chains included) on the next integer forward
        return self

    def size_bytes(self) -> int:
        """Deployed size: packed integer weights + scales for quantized layers, float elsewhere."""
        q = self.quantized_layers()
        skip = {id(t) for m in q.values() for t in list(m.parameters()) + list(m.buffers())}
        rest = sum(
            t.numel() * t.element_size()
            for t in list(self.model.parameters()) + list(self.model.buffers())
            if id(t) not in skip
        )
        return rest + sum(m.size_bytes() for m in q.values())

    def layer_table(self) -> list[dict[str, Any]]:
        """One row per quantizable layer: name, kind, config label, params, MACs."""
        q = self.quantized_layers()
        rows = []
        for info in self.layers:
            m = q.get(info.name)
            rows.append(
                {
                    "name": info.name,
                    "kind": info.kind + (" (depthwise)" if info.depthwise else ""),
                    "config": m.config.short_name if m is not None else "float",
                    "params": info.params,
                    "macs": info.macs,
                }
            )
        return rows

    @torch.no_grad()
    def integer_accumulators(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """int32 accumulators of layer ``name`` on its input ``x`` (integer path; for tests)."""
        from quantune.kernels import reference

        m = self.quantized_layers()[name]
        qx = m.quantize_input(x)
        qw = m.quantized_weight()
        zx = int(m.a_zero_point)
        if m.kind == "linear":
            return reference.linear_accumulate(qx, zx, qw)
        qx = m.pad_input(qx)
        if m.kind == "conv2d":
            return reference.conv2d_accumulate(qx, zx, qw, m.stride, m.padding, m.dilation, m.groups)
        return reference.conv1d_accumulate(qx, zx, qw, m.stride[0], m.padding[0], m.dilation[0], m.groups)
