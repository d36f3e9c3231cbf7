"""Reconstruction units for block-wise calibration: blocks of layers, and lone layers.

BRECQ (Li et al., 2021) reconstructs the output of a *block* (a residual block, an
inverted-bottleneck block, a transformer layer) rather than of each layer: the rounding
of the layers inside a block is chosen jointly, so a later layer can absorb what an
earlier one got wrong before the block's nonlinearities and residual add. A network's
repeated blocks are the children of its ``nn.ModuleList`` / ``nn.Sequential``
containers (``_blocks.3`` in EfficientNet, ``layer1.0`` in ResNet, ``encoder.layer.2``
in BERT); a child that holds at least two quantized layers is a block, every quantized
layer outside such a child is a unit of its own.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from quantune.modules import QuantizedLayer


@dataclass(frozen=True)
class ReconstructionUnit:
    """A block (``name`` is a container child) or one layer (``name`` is the layer)."""

    name: str
    layers: tuple[str, ...]

    @property
    def is_block(self) -> bool:
        return self.layers != (self.name,)


def _quantized_under(module: nn.Module, prefix: str) -> list[str]:
    return [f"{prefix}.{n}" if n else prefix for n, m in module.named_modules() if isinstance(m, QuantizedLayer)]


def find_units(model: nn.Module, layer_order: list[str]) -> list[ReconstructionUnit]:
    """The reconstruction units of ``model``, ordered by their first layer in ``layer_order``.

    Args:
        model: The model holding :class:`QuantizedLayer` modules.
        layer_order: The quantized layers to cover, in execution order; every one of
            them ends up in exactly one unit.

    A block is the outermost container child with at least two of the layers; the model
    itself is never a block (a plain ``nn.Sequential`` network gives lone layers).
    """
    wanted = set(layer_order)
    taken: dict[str, str] = {}  # layer -> block
    blocks: dict[str, tuple[str, ...]] = {}
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList | nn.Sequential):
            continue
        for child_name, child in module.named_children():
            full = f"{name}.{child_name}" if name else child_name
            inside = [n for n in _quantized_under(child, full) if n in wanted and n not in taken]
            if len(inside) >= 2:
                blocks[full] = tuple(n for n in layer_order if n in inside)
                taken.update({n: full for n in inside})
    units: list[ReconstructionUnit] = []
    seen: set[str] = set()
    for layer in layer_order:
        block = taken.get(layer)
        if block is None:
            units.append(ReconstructionUnit(layer, (layer,)))
        elif block not in seen:
            seen.add(block)
            units.append(ReconstructionUnit(block, blocks[block]))
    return units
