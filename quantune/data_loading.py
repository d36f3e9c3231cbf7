"""Load calibration / evaluation data from files for the CLI.

Accepted:
- ``.pt``: a tensor, an ``(inputs, labels)`` pair, or a dict of tensors (HF inputs),
  read with ``weights_only=True`` (never runs code);
- ``.npy`` (inputs) / ``.npz`` (arrays ``inputs``/``x``/``images`` and optional
  ``labels``/``y``);
- a folder of images (``.png``/``.jpg``/...), preprocessed by :class:`ImageOptions`;
- a ``.txt`` file of sentences, one per line, tokenized by the model's tokenizer;
- a factory spec ``pkg.module:function`` returning an iterable of batches (streamed,
  never loaded whole).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from quantune.artifact import resolve_factory
from quantune.errors import UserInputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class ImageOptions:
    """Preprocessing of an image folder: resize the short side, center-crop, normalize."""

    resize: int = 256
    crop: int = 224
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    grayscale: bool = False


def _split(obj: Any, batch_size: int) -> list[Any]:
    if torch.is_tensor(obj):
        if obj.dim() == 0:
            raise UserInputError("The data file holds a scalar, not a batch of inputs.")
        return list(obj.split(batch_size))
    if isinstance(obj, tuple | list) and len(obj) == 2 and all(torch.is_tensor(t) for t in obj):
        x, y = obj
        if len(x) != len(y):
            raise UserInputError(f"Inputs ({len(x)}) and labels ({len(y)}) differ in length.")
        return [(x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, len(x), batch_size)]
    if isinstance(obj, dict) and obj and all(torch.is_tensor(v) for v in obj.values()):
        n = len(next(iter(obj.values())))
        return [{k: v[i : i + batch_size] for k, v in obj.items()} for i in range(0, n, batch_size)]
    raise UserInputError(
        f"Unsupported data object {type(obj).__name__}: save a tensor, an (inputs, labels) "
        "pair or a dict of tensors."
    )


class FactoryBatches:
    """Re-iterable batches of a factory that returns one-shot iterators (generators).

    Every pass after the first calls the factory again, so calibration streams the
    batches as often as it needs to and never holds the whole data set (a plain
    generator would have to be materialized to be read twice).
    """

    def __init__(self, factory: Callable[[], Iterable[Any]], first: Iterable[Any]) -> None:
        self._factory = factory
        self._first: Iterable[Any] | None = first

    def __iter__(self) -> Iterator[Any]:
        first, self._first = self._first, None
        return iter(first if first is not None else self._factory())


def load_batches(
    spec: str,
    batch_size: int = 32,
    *,
    image_options: ImageOptions | None = None,
    tokenizer: Callable[[list[str]], dict[str, torch.Tensor]] | None = None,
) -> Iterable[Any]:
    """Batches from a data file, folder or factory spec (see the module docstring)."""
    if batch_size < 1:
        raise UserInputError("--batch-size must be >= 1.")
    path = Path(spec)
    if not path.exists():
        if ":" in spec:
            factory = resolve_factory(spec)
            data = factory()
            if not isinstance(data, Iterable):
                raise UserInputError(f"Data factory {spec!r} must return an iterable of batches.")
            return FactoryBatches(factory, data) if iter(data) is data else data
        raise UserInputError(f"Data {spec!r} does not exist (a file, a folder, or pkg.module:function).")
    if path.is_dir():
        return _image_folder(path, batch_size, image_options or ImageOptions())
    suffix = path.suffix.lower()
    if suffix == ".pt":
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise UserInputError(
                f"{path} cannot be read as tensors ({str(exc).splitlines()[0]}); save plain tensors "
                "with torch.save (pickled objects are refused)."
            ) from exc
        return _split(obj, batch_size)
    if suffix == ".npy":
        return _split(torch.from_numpy(_np_load(path)), batch_size)
    if suffix == ".npz":
        with _np_load(path) as z:
            x_key = next((k for k in ("inputs", "x", "images", "data") if k in z), None) or z.files[0]
            y_key = next((k for k in ("labels", "y", "targets") if k in z), None)
            x = torch.from_numpy(_npz_array(z, x_key, path))
            if x.dtype == torch.float64:
                x = x.float()
            obj: Any = (x, torch.from_numpy(_npz_array(z, y_key, path)).long()) if y_key else x
        return _split(obj, batch_size)
    if suffix == ".txt":
        if tokenizer is None:
            raise UserInputError(
                "A text file needs a tokenizer: pass --tokenizer DIR (or minilm-l6), or give a "
                "Hugging Face model folder, whose tokenizer is used."
            )
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
        if not lines:
            raise UserInputError(f"{path} holds no sentences.")
        return [tokenizer(lines[i : i + batch_size]) for i in range(0, len(lines), batch_size)]
    raise UserInputError(f"Unknown data format {suffix!r}: use .pt, .npy, .npz, .txt, an image folder or a factory.")


def _np_load(path: Path) -> Any:
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise UserInputError(f"{path} cannot be read with numpy ({exc}); is it truncated?") from exc
    if isinstance(arr, np.ndarray) and arr.dtype == np.float64:
        arr = arr.astype(np.float32)
    return arr


def _npz_array(z: Any, key: str, path: Path) -> np.ndarray:
    """Member ``key`` of an open ``.npz``; a clear error for damaged or non-array members."""
    try:
        arr = z[key]
    except Exception as exc:  # zipfile/numpy errors of a damaged member
        raise UserInputError(f"{path}: array {key!r} cannot be read ({exc}); is the file damaged?") from exc
    if not isinstance(arr, np.ndarray):
        raise UserInputError(f"{path}: {key!r} is not a numpy array; write the file with numpy.savez.")
    return arr


def _image_folder(path: Path, batch_size: int, opts: ImageOptions) -> list[torch.Tensor]:
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise UserInputError(f"{path} holds no images ({', '.join(IMAGE_SUFFIXES)}).")
    try:
        from PIL import Image
    except ImportError as exc:
        raise UserInputError("Image folders need Pillow: pip install pillow.") from exc
    images = []
    for f in files:
        try:
            img = Image.open(f).convert("L" if opts.grayscale else "RGB")
        except Exception as exc:
            raise UserInputError(f"{f} is not a readable image: {exc}.") from exc
        w, h = img.size
        s = opts.resize / min(w, h)
        img = img.resize((max(opts.crop, round(w * s)), max(opts.crop, round(h * s))), Image.BILINEAR)
        w, h = img.size
        left, top = (w - opts.crop) // 2, (h - opts.crop) // 2
        img = img.crop((left, top, left + opts.crop, top + opts.crop))
        arr = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)
        arr = arr.unsqueeze(0) if arr.dim() == 2 else arr.permute(2, 0, 1)
        mean = torch.tensor(opts.mean[: arr.shape[0]]).reshape(-1, 1, 1)
        std = torch.tensor(opts.std[: arr.shape[0]]).reshape(-1, 1, 1)
        images.append((arr - mean) / std)
    x = torch.stack(images)
    return list(x.split(batch_size))
