"""Fisher-weighted output error for layer-wise calibration (BRECQ's diagonal Fisher).

Plain layer-wise calibration weighs every output element of a layer alike, yet most of a
layer's output error never changes the prediction. BRECQ (Li et al., 2021) weighs each
element's squared error by the squared gradient of the task loss with respect to that
element: the diagonal of the Fisher information, a second-order estimate of how much
the loss grows when the element moves. Calibration data carry no labels here, so the
task loss is the cross-entropy of the float model's logits against its own top-1 class
(the prediction a quantized model must keep): confidently classified samples have
near-zero gradients and near-tied ones, the samples whose top-1 flips first, weigh most.

The weights are normalized to mean 1 per layer, so the weighted error has the scale of
the plain mean squared error and the optimizers' learning rates and regularizers apply
unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn

from quantune.batches import run_model
from quantune.errors import UserInputError
from quantune.token_mask import real_tokens


def classification_logits(output: Any) -> torch.Tensor:
    """The model output as ``[batch, classes]`` logits (an object's ``.logits`` too), or a clear error."""
    logits = getattr(output, "logits", output)
    if not torch.is_tensor(logits) or logits.dim() != 2 or logits.shape[1] < 2 or not logits.is_floating_point():
        got = (f"a {tuple(logits.shape)} tensor" if torch.is_tensor(logits) else type(logits).__name__)
        raise UserInputError(f"layerwise_loss='fisher' needs a classifier whose output is logits [batch, classes] "
                             f"(it weighs errors by the gradient of the top-1 cross-entropy); this model returns "
                             f"{got}. Use layerwise_loss='mse'.")
    return logits


def pseudo_label_loss(output: Any) -> torch.Tensor:
    """Summed cross-entropy of the logits against their own top-1 classes.

    Summed, not averaged, so that a sample's gradient does not depend on its batch size.
    """
    logits = classification_logits(output)
    labels = logits.detach().argmax(dim=1)
    return nn.functional.cross_entropy(logits.float(), labels, reduction="sum")


def output_gradients(model: nn.Module, layer_name: str, kind: str, batches: Iterable[Any]
                     ) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(batch index, d loss / d output)`` of ``layer_name``'s first call on each batch.

    The loss is :func:`pseudo_label_loss` of ``model``'s output. For a Linear layer of a
    padded text batch only the real tokens' rows are yielded, as the layer's cached
    inputs and targets hold them (:mod:`quantune.token_mask`). Batches on which the layer
    does not run are skipped.
    """
    module = model.get_submodule(layer_name)
    box: dict[str, torch.Tensor] = {}

    def hook(mod: nn.Module, inputs: tuple[Any, ...], out: Any) -> Any:
        if "out" in box or not torch.is_tensor(out):
            return None
        # A fresh leaf: its gradient is the loss's gradient at this output, whether or
        # not the model's parameters require gradients.
        leaf = out.detach().requires_grad_(True)
        box["out"] = leaf
        # Which rows are real tokens is known only while the batch's mask is active.
        if kind == "linear":
            rows = torch.arange(leaf[..., 0].numel(), device=leaf.device).view(*leaf.shape[:-1], 1)
            box["rows"] = real_tokens(rows, kind).reshape(-1)
        return leaf.clone()  # a non-leaf: in-place ops downstream (ReLU(inplace=True)) stay legal

    handle = module.register_forward_hook(hook)
    try:
        for i, batch in enumerate(batches):
            box.clear()
            with torch.enable_grad():
                output = run_model(model, batch)
                if "out" not in box:
                    continue
                (grad,) = torch.autograd.grad(pseudo_label_loss(output), box["out"], allow_unused=True)
            if grad is None:
                grad = torch.zeros_like(box["out"])
            if kind == "linear":
                grad = grad.reshape(-1, grad.shape[-1])[box["rows"]]
            yield i, grad.detach()
    finally:
        handle.remove()


def fisher_weights(gradients: torch.Tensor) -> torch.Tensor:
    """Squared gradients normalized to mean 1 (all ones where every gradient is zero)."""
    squared = gradients.float().pow(2)
    mean = squared.mean()
    if not torch.isfinite(mean) or mean <= 0:
        return torch.ones_like(squared)
    return squared / mean
