"""Hutchinson estimates of the loss Hessian's trace with respect to each layer's output.

The Hessian proxy predicts the loss increase of quantizing layer ``l`` as

    dL ~= 1/2 * h_l * E[ ||y_q - y||^2 ]

where ``y`` is the layer's float output, ``y_q`` its output with the layer quantized
(weights and input activation), and ``h_l`` the mean diagonal of the per-sample loss
Hessian with respect to ``y`` (second-order Taylor expansion; the first-order term
vanishes for fidelity losses, whose gradient is zero at the float model, and averages
out for a trained model's task loss). This is HAWQ-v2's trace-weighted perturbation,
taken at the layer output so that one quantity covers weight and activation noise.

Trace estimation (Hutchinson): for Rademacher vectors ``v``, ``E[v^T H v] = tr(H)``.
All layers are probed in one double-backward pass: a zero tensor ``z_l`` is added to
each layer's output, and ``H v`` is the gradient of ``<grad_z L, v>``. Cross-layer
blocks of ``H`` contribute ``v_l^T H_lk v_k`` with independent ``v_l, v_k``, which has zero
mean, so each layer's estimate stays unbiased.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from quantune.batches import batch_size, run_model
from quantune.search.sensitivity_losses import LossFn, output_tensor


def _rademacher(like: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    bits = torch.randint(0, 2, like.shape, generator=gen, dtype=torch.int8)
    return bits.to(like.dtype).mul_(2).sub_(1)


def _add_zero_perturbations(
    modules: dict[str, nn.Module], names: Sequence[str], zs: dict[str, torch.Tensor]
) -> list[Any]:
    """Hooks that add a fresh zero tensor (requiring grad) to each layer's first output."""

    def hook(name: str) -> Callable[..., Any]:
        def fn(mod: nn.Module, inputs: tuple[Any, ...], out: Any) -> Any:
            if not torch.is_tensor(out) or name in zs:
                return None
            z = torch.zeros_like(out, requires_grad=True)
            zs[name] = z
            return out + z
        return fn

    return [modules[n].register_forward_hook(hook(n)) for n in names]


def _probe_batch(
    model: nn.Module,
    modules: dict[str, nn.Module],
    names: Sequence[str],
    batch: Any,
    ref: torch.Tensor,
    loss: LossFn,
    n_probes: int,
    gen: torch.Generator,
    tick: Callable[[], None],
) -> dict[str, list[float]]:
    """Per layer, ``n_probes`` estimates of the per-sample mean Hessian diagonal."""
    zs: dict[str, torch.Tensor] = {}
    handles = _add_zero_perturbations(modules, names, zs)
    try:
        with torch.enable_grad():
            value = loss(output_tensor(run_model(model, batch)), ref, batch)
    finally:
        for h in handles:
            h.remove()
    ran = [n for n in names if n in zs]
    if not ran or not value.requires_grad:
        return {}
    # A layer whose output never reaches the loss (e.g. an unused pooler) has no
    # gradient: its Hessian is zero, and it is left out of the probes.
    first = torch.autograd.grad(value, [zs[n] for n in ran], create_graph=True, allow_unused=True)
    estimates: dict[str, list[float]] = {name: [0.0] for name, g in zip(ran, first, strict=True) if g is None}
    ran = [name for name, g in zip(ran, first, strict=True) if g is not None]
    grads = [g for g in first if g is not None]
    if not ran:
        return estimates
    n = batch_size(batch)
    estimates.update({name: [] for name in ran})
    for _ in range(n_probes):
        vs = [_rademacher(zs[name], gen) for name in ran]
        hvs = torch.autograd.grad(grads, [zs[name] for name in ran], grad_outputs=vs,
                                  retain_graph=True, allow_unused=True)
        for name, v, hv in zip(ran, vs, hvs, strict=True):
            # v^T H v estimates tr(H) of the batch-mean loss; times n, the per-sample
            # loss's trace; over the elements of one sample, its mean diagonal.
            trace = 0.0 if hv is None else float((v * hv).sum())
            estimates[name].append(trace * n / (zs[name].numel() / n))
        tick()
    return estimates


def output_hessian_traces(
    model: nn.Module,
    names: Sequence[str],
    batches: Sequence[Any],
    reference: Sequence[torch.Tensor],
    loss: LossFn,
    *,
    n_probes: int = 4,
    seed: int = 0,
    tick: Callable[[], None] = lambda: None,
) -> dict[str, float]:
    """Mean diagonal of the per-sample loss Hessian w.r.t. each layer's output.

    Args:
        model: The float model (its parameters are not differentiated).
        names: Layers to probe.
        batches: Batches to average over.
        reference: The float outputs of each batch (for fidelity losses).
        loss: Batch-mean loss ``(out, ref, batch) -> scalar``.
        n_probes: Rademacher probes per batch.
        seed: Seed of the probes.
        tick: Called after each probe.

    Returns:
        ``{layer: mean diagonal}``; 0 for a layer that never ran; clamped at >= 0 (a
        negative estimate is noise around a flat direction).
    """
    modules = dict(model.named_modules())
    gen = torch.Generator().manual_seed(int(seed))
    estimates: dict[str, list[float]] = {n: [] for n in names}
    params = list(model.parameters())
    saved = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        for batch, ref in zip(batches, reference, strict=True):
            for name, values in _probe_batch(model, modules, names, batch, ref, loss, n_probes, gen, tick).items():
                estimates[name].extend(values)
    finally:
        for p, flag in zip(params, saved, strict=True):
            p.requires_grad_(flag)
    return {n: max(sum(v) / len(v), 0.0) if v else 0.0 for n, v in estimates.items()}
