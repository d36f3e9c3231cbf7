"""Augmented copies of the real calibration images for layer-wise calibration.

AdaRound and AdaQuant fitted on a handful of photographs learn roundings that suit
their content: on EfficientNet-Lite0 W4A8, AdaRound keeps 0.90 top-1 agreement on new
crops of its six calibration photographs and 0.45 on other photographs. Photometric and
geometric variants of the same images (greyscale, saturation, contrast, brightness,
blur and sharpening, quarter turns, mixup of two images) widen the colour, contrast and
texture statistics the roundings are fitted on at no cost beyond the extra samples;
:attr:`quantune.config.CalibrationProcedure.augmented_samples` adds them to the
layer-wise training data, next to the real images, never in their place.

The inputs arrive normalized (``(pixel - mean) / std`` per channel, whatever mean and
std the user's preprocessing chose), so each channel's value range in the real data is
mapped to [0, 1], augmented there, mapped back and clamped to that range. For images
that span the full pixel range this is exactly the pixel scale up to per-channel
offsets, which is all the operations below need.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from quantune.batches import model_inputs
from quantune.errors import UserInputError

#: 5x5 binomial kernel (outer product of 1 4 6 4 1): a Gaussian blur of sigma ~1 pixel.
_BINOMIAL = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0])


@dataclass(frozen=True)
class ImageAugmentation:
    """Probabilities and factor ranges of the augmentations (applied in this order)."""

    greyscale: float = 0.3
    saturation: tuple[float, float] = (0.4, 1.6)
    contrast: tuple[float, float] = (0.5, 1.5)
    brightness: tuple[float, float] = (0.6, 1.4)
    blur: float = 0.25
    sharpen: float = 0.2
    quarter_turns: bool = True  # 0/90/180/270 degrees on square images, 0/180 otherwise
    mixup: float = 0.3
    mixup_weight: tuple[float, float] = (0.6, 1.0)  # share of the image's own content

    def __post_init__(self) -> None:
        for name in ("greyscale", "blur", "sharpen", "mixup"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise UserInputError(f"ImageAugmentation.{name} is a probability in [0, 1], got {getattr(self, name)!r}.")
        if self.blur + self.sharpen > 1.0:
            raise UserInputError("ImageAugmentation.blur + sharpen must be <= 1 (they exclude each other).")
        for name in ("saturation", "contrast", "brightness", "mixup_weight"):
            lo, hi = getattr(self, name)
            if not 0.0 <= lo <= hi:
                raise UserInputError(f"ImageAugmentation.{name} is a range (lo, hi) with 0 <= lo <= hi, "
                                     f"got {getattr(self, name)!r}.")


def _real_images(batches: Sequence[Any]) -> torch.Tensor:
    """The calibration inputs as one ``[N, C, H, W]`` float tensor, or a clear error."""
    tensors = [model_inputs(b) for b in batches]
    if not tensors or not all(torch.is_tensor(t) and t.is_floating_point() and t.dim() == 4 for t in tensors):
        kinds = sorted({type(t).__name__ if not torch.is_tensor(t) else f"{t.dtype} {t.dim()}-d" for t in tensors})
        raise UserInputError("Augmented calibration data needs image inputs (one float [N, C, H, W] tensor per "
                             f"batch); this calibration data holds {', '.join(kinds) or 'nothing'}. "
                             "Use augmented_samples=0.")
    shapes = {tuple(t.shape[1:]) for t in tensors}
    if len(shapes) > 1:
        raise UserInputError(f"Augmented calibration data needs images of one shape; got {sorted(shapes)}. "
                             "Resize them in preprocessing or use augmented_samples=0.")
    return torch.cat([t.detach().float() for t in tensors])


def _uniform(gen: torch.Generator, n: int, bounds: tuple[float, float]) -> torch.Tensor:
    lo, hi = bounds
    return lo + (hi - lo) * torch.rand(n, 1, 1, 1, generator=gen)


def _chance(gen: torch.Generator, n: int, p: float) -> torch.Tensor:
    return torch.rand(n, 1, 1, 1, generator=gen) < p


def _blurred(u: torch.Tensor) -> torch.Tensor:
    kernel = _BINOMIAL[:, None] * _BINOMIAL[None, :]
    kernel = (kernel / kernel.sum()).expand(u.shape[1], 1, 5, 5)
    mode = "reflect" if min(u.shape[2:]) > 2 else "replicate"
    return F.conv2d(F.pad(u, (2, 2, 2, 2), mode=mode), kernel, groups=u.shape[1])


def _augment_unit(u: torch.Tensor, policy: ImageAugmentation, gen: torch.Generator) -> torch.Tensor:
    """Augment images whose channels are scaled to [0, 1]."""
    n, channels = u.shape[:2]
    if channels > 1:  # colour operations need colour
        grey = u.mean(1, keepdim=True).expand_as(u)
        u = torch.where(_chance(gen, n, policy.greyscale), grey, u)
        u = grey + (u - grey) * _uniform(gen, n, policy.saturation)
    mean = u.mean((1, 2, 3), keepdim=True)
    u = mean + (u - mean) * _uniform(gen, n, policy.contrast)
    u = u * _uniform(gen, n, policy.brightness)
    blurred = _blurred(u)
    pick = torch.rand(n, 1, 1, 1, generator=gen)
    # Unsharp masking with amount 1: the image plus its difference to the blur.
    u = torch.where(pick < policy.blur, blurred, torch.where(pick < policy.blur + policy.sharpen, 2 * u - blurred, u))
    if policy.quarter_turns:
        square = u.shape[2] == u.shape[3]
        turns = torch.randint(0, 4, (n,), generator=gen) if square else 2 * torch.randint(0, 2, (n,), generator=gen)
        u = torch.stack([torch.rot90(img, int(k), (1, 2)) for img, k in zip(u, turns, strict=True)])
    partner = torch.randperm(n, generator=gen)
    own = _uniform(gen, n, policy.mixup_weight)
    u = torch.where(_chance(gen, n, policy.mixup), own * u + (1 - own) * u[partner], u)
    return u.clamp(0.0, 1.0)


def augment_images(batches: Sequence[Any], n: int, *, seed: int = 0, batch_size: int | None = None,
                   policy: ImageAugmentation | None = None) -> list[torch.Tensor]:
    """``n`` augmented copies of the images in ``batches``, in batches.

    Each real image is used in turn (in a seeded order), so ``n`` = 2x the calibration
    set gives every image two variants. Deterministic per ``seed``.

    Args:
        batches: the real calibration batches (tensors or ``(inputs, labels)`` pairs).
        n: number of augmented images.
        seed: seed of the image order and of every random choice.
        batch_size: images per returned batch; default the first real batch's size.
        policy: which augmentations, how strong; default :class:`ImageAugmentation`.

    Raises:
        UserInputError: the inputs are not image tensors of one shape.
    """
    if n <= 0:
        return []
    real = _real_images(batches)
    # Augmented on the CPU, where the seeded generator lives (the same images on any
    # device), and handed back on the device the real images came on.
    device = real.device
    real = real.cpu()
    policy = policy or ImageAugmentation()
    gen = torch.Generator().manual_seed(seed)
    dims = (0, 2, 3)
    lo, hi = real.amin(dims, keepdim=True), real.amax(dims, keepdim=True)
    span = (hi - lo).clamp_min(1e-12)
    order = torch.cat([torch.randperm(len(real), generator=gen) for _ in range(math.ceil(n / len(real)))])[:n]
    size = batch_size or int(model_inputs(batches[0]).shape[0])
    # One batch at a time: memory stays at a few batches whatever n is (mixup partners
    # come from the same batch).
    return [(_augment_unit((real[order[i:i + size]] - lo) / span, policy, gen) * span + lo).to(device)
            for i in range(0, n, size)]
