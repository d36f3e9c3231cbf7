"""Turn a ``torch.export`` program back into a module quantune can quantize.

``ExportedProgram.module()`` is a flat FX graph: its convolutions, linear layers and
batch norms are ``aten`` calls on parameters, not ``nn.Conv2d`` / ``nn.Linear`` /
``nn.BatchNorm2d`` modules, so there is nothing to swap for a quantized layer. This
rewrites each such call whose weights are parameters of the program into a call of a
real module that holds the *same* parameter objects, named after them (``c1.weight`` ->
module ``c1``), so overrides by name, reports and BatchNorm folding work as on the
original model. The graph computes exactly what it computed before.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import fx, nn

aten = torch.ops.aten

# Positional arguments of aten.conv{1,2}d after (input, weight, bias), and their defaults.
_CONV_ARGS = ("stride", "padding", "dilation", "groups")
_CONV_DEFAULTS: dict[str, Any] = {"stride": 1, "padding": 0, "dilation": 1, "groups": 1}


def _conv_targets() -> dict[Any, type[nn.Module]]:
    """aten convolution overload -> the module that computes it."""
    return {
        aten.conv1d.default: nn.Conv1d,
        aten.conv1d.padding: nn.Conv1d,
        aten.conv2d.default: nn.Conv2d,
        aten.conv2d.padding: nn.Conv2d,
    }


def _arg(node: fx.Node, index: int, name: str, default: Any) -> Any:
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def _lookup(gm: fx.GraphModule, path: str) -> Any:
    obj: Any = gm
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _param(gm: fx.GraphModule, node: Any) -> tuple[str, torch.Tensor] | None:
    """``(attribute path, tensor)`` when ``node`` reads a parameter or buffer of ``gm``."""
    if not isinstance(node, fx.Node) or node.op != "get_attr":
        return None
    value = _lookup(gm, str(node.target))
    return (str(node.target), value) if isinstance(value, torch.Tensor) else None


def _replaceable(existing: Any, module: nn.Module) -> bool:
    """An existing holder module may give way when the new module carries everything it
    held (its parameters and buffers, under the same names, and no children)."""
    if not isinstance(existing, nn.Module) or existing._modules:
        return False
    held = set(existing._parameters) | set(existing._buffers)
    return held <= set(module._parameters) | set(module._buffers)


def _module_name(gm: fx.GraphModule, weight_path: str, module: nn.Module, taken: set[str]) -> str:
    """``c1.weight`` -> ``c1``; ``attn.in_proj_weight`` -> ``attn.in_proj``; unique."""
    owner, _, leaf = weight_path.rpartition(".")
    stem = leaf[: -len("_weight")] if leaf.endswith("_weight") else ("" if leaf == "weight" else leaf)
    name = ".".join(p for p in (owner, stem) if p) or "layer"
    base, i = name, 1
    while name in taken or not (_lookup(gm, name) is None or _replaceable(_lookup(gm, name), module)):
        name, i = f"{base}_{i}", i + 1
    return name


def _install(gm: fx.GraphModule, name: str, module: nn.Module) -> None:
    owner, _, leaf = name.rpartition(".")
    parent = gm.get_submodule(owner) if owner else gm
    # Replacing a holder module (one that only carried the parameters) keeps them
    # reachable: the new module holds the same parameter objects under the same names.
    setattr(parent, leaf, module)


def _build(node: fx.Node, gm: fx.GraphModule) -> tuple[str, nn.Module] | None:
    """The module that replaces ``node`` and the weight path it is named after."""
    weight = _param(gm, node.args[1] if len(node.args) > 1 else None)
    if weight is None:
        return None
    bias_node = _arg(node, 2, "bias", None)
    bias = _param(gm, bias_node) if bias_node is not None else None
    if bias_node is not None and bias is None:
        return None
    path, w = weight
    if node.target is aten.linear.default:
        module: nn.Module = nn.Linear(w.shape[1], w.shape[0], bias=bias is not None)
    else:
        cls = _conv_targets()[node.target]
        defaults = {**_CONV_DEFAULTS, "padding": "valid" if node.target._overloadname == "padding" else 0}
        opts = {n: _arg(node, 3 + i, n, defaults[n]) for i, n in enumerate(_CONV_ARGS)}
        opts = {n: tuple(v) if isinstance(v, (list, tuple)) else v for n, v in opts.items()}
        module = cls(w.shape[1] * opts["groups"], w.shape[0], tuple(w.shape[2:]), stride=opts["stride"],
                     padding=opts["padding"], dilation=opts["dilation"], groups=opts["groups"],
                     bias=bias is not None)
    module.weight = w if isinstance(w, nn.Parameter) else nn.Parameter(w, requires_grad=False)
    if bias is not None:
        b = bias[1]
        module.bias = b if isinstance(b, nn.Parameter) else nn.Parameter(b, requires_grad=False)
    return path, module


def _batch_norm(node: fx.Node, gm: fx.GraphModule) -> tuple[str, nn.Module] | None:
    """An eval-mode ``aten.batch_norm`` on parameters as an ``nn.BatchNorm{1,2}d``."""
    params = [_param(gm, a) for a in node.args[1:5]]
    training = _arg(node, 5, "training", False)
    val = node.args[0].meta.get("val") if isinstance(node.args[0], fx.Node) else None
    if training or any(p is None for p in params) or val is None or val.dim() not in (2, 3, 4):
        return None
    (w_path, w), (_, b), (_, mean), (_, var) = params  # type: ignore[misc]
    eps = float(_arg(node, 7, "eps", 1e-5))
    cls = nn.BatchNorm2d if val.dim() == 4 else nn.BatchNorm1d
    bn = cls(w.shape[0], eps=eps).eval()
    bn.weight, bn.bias = (p if isinstance(p, nn.Parameter) else nn.Parameter(p, requires_grad=False) for p in (w, b))
    bn.running_mean, bn.running_var = mean, var
    return w_path, bn


def modules_from_exported(gm: fx.GraphModule) -> fx.GraphModule:
    """Rewrite ``gm`` (from ``ExportedProgram.module()``) so that its linear, convolution
    and eval-mode batch-norm calls on parameters run as named modules.

    Returns:
        A plain ``fx.GraphModule`` over the rewritten graph (sharing ``gm``'s tensors).
    """
    taken: set[str] = set()
    by_weight: dict[tuple[str, Any], str] = {}
    for node in list(gm.graph.nodes):
        if node.op != "call_function":
            continue
        if node.target is aten.linear.default or node.target in _conv_targets():
            built = _build(node, gm)
        elif node.target is aten.batch_norm.default:
            built = _batch_norm(node, gm)
        else:
            continue
        if built is None:
            continue
        path, module = built
        key = (path, node.target, tuple(map(str, node.args[3:])))
        name = by_weight.get(key)
        if name is None:  # a weight used twice alike (a shared layer) becomes one module
            name = _module_name(gm, path, module, taken)
            taken.add(name)
            by_weight[key] = name
            _install(gm, name, module)
        with gm.graph.inserting_before(node):
            call = gm.graph.call_module(name, (node.args[0],))
        call.meta = dict(node.meta)
        node.replace_all_uses_with(call)
        gm.graph.erase_node(node)
    for node in list(gm.graph.nodes):
        if node.op == "get_attr" and not node.users:
            gm.graph.erase_node(node)
    gm.graph.lint()
    # A plain GraphModule over the rewritten graph: the exported module's own class
    # refuses .eval() / .train(), which every consumer of a float model calls.
    return fx.GraphModule(gm, gm.graph, class_name="ExportedModel")
