"""Natural photographs shipped with scikit-image and scikit-learn, expanded by seeded crops.

No labelled ImageNet data can be shipped, so the image entries measure fidelity to the
float model on real photographs: the few photographs that ``skimage.data`` and
``sklearn.datasets`` ship are cut into many inputs by random resized crops and flips
(the usual ImageNet training augmentation, seeded). Calibration and evaluation inputs
come from *disjoint source photographs*, so no evaluation pixel was ever seen during
calibration, not even through a different crop.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from quantune.zoo.deps import require

# The split is fixed by hand rather than drawn at random so that near-duplicate scenes
# stay on one side and both sides mix colour and greyscale photographs. Synthetic images
# (text renders, colour wheels, logos, binary masks) are left out.
CALIB_SOURCES: tuple[str, ...] = ("chelsea", "rocket", "camera", "grass", "coins", "sklearn:flower")
EVAL_SOURCES: tuple[str, ...] = (
    "astronaut", "coffee", "hubble_deep_field", "retina", "immunohistochemistry",
    "stereo_motorcycle", "sklearn:china", "moon", "gravel", "brick", "clock", "cell", "page",
)

# RandomResizedCrop defaults of torchvision, with a larger minimum area: crops under a
# quarter of a photograph are mostly texture and say little about object recognition.
CROP_SCALE = (0.25, 1.0)
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)


def load_source(name: str) -> np.ndarray:
    """One source photograph as an ``[H, W, 3]`` uint8 RGB array."""
    if name.startswith("sklearn:"):
        datasets = require("sklearn.datasets", "scikit-learn", purpose="The image entries")
        bunch = datasets.load_sample_images()
        files = [f.rsplit("/", 1)[-1].split(".")[0] for f in bunch.filenames]
        image = bunch.images[files.index(name.split(":", 1)[1])]
    else:
        data = require("skimage.data", "scikit-image", purpose="The image entries")
        image = getattr(data, name)()
        if name == "stereo_motorcycle":  # (left, right, disparity): the left view
            image = image[0]
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    return np.ascontiguousarray(image[:, :, :3]).astype(np.uint8)


def _crop_box(rng: np.random.Generator, height: int, width: int) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a random resized crop, torchvision's sampling rule."""
    area = height * width
    log_ratio = (math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1]))
    for _ in range(10):
        target = area * rng.uniform(*CROP_SCALE)
        ratio = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target * ratio))
        h = round(math.sqrt(target / ratio))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    side = min(height, width)  # fallback: the central square
    return (height - side) // 2, (width - side) // 2, side, side


def crops(
    sources: Sequence[str],
    n: int,
    *,
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
    seed: int,
    stream: int,
) -> tuple[torch.Tensor, list[str]]:
    """``n`` normalized crops ``[n, 3, size, size]`` cycling over ``sources``.

    Args:
        sources: source photograph names (see :data:`CALIB_SOURCES`).
        n: number of crops.
        size: output side in pixels.
        mean: per-channel mean subtracted from [0, 1] pixel values.
        std: per-channel divisor.
        seed: the random seed.
        stream: separates the random streams of calibration and evaluation, so that
            changing the number of one never changes the other.

    Returns:
        The crops and, for each crop, the name of its source photograph.
    """
    photos = {name: torch.from_numpy(load_source(name)).permute(2, 0, 1) for name in dict.fromkeys(sources)}
    mean_t = torch.tensor(list(mean), dtype=torch.float32).view(3, 1, 1)
    std_t = torch.tensor(list(std), dtype=torch.float32).view(3, 1, 1)
    out = torch.empty(n, 3, size, size)
    origin: list[str] = []
    for i in range(n):
        name = sources[i % len(sources)]
        rng = np.random.default_rng([seed, stream, i])
        photo = photos[name]
        top, left, h, w = _crop_box(rng, photo.shape[1], photo.shape[2])
        patch = photo[:, top : top + h, left : left + w].float().unsqueeze(0) / 255.0
        # Antialiased bilinear resize, as PIL does: no aliasing on strong downscales.
        patch = F.interpolate(patch, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
        if rng.uniform() < 0.5:
            patch = patch.flip(2)
        out[i] = (patch.clamp(0.0, 1.0) - mean_t) / std_t
        origin.append(name)
    return out, origin
