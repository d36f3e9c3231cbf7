"""Saving and loading quantized models without trusting pickles.

An artifact is a folder:

- ``quantune.json``: format version, the :class:`QuantConfig`, the folded BatchNorm
  pairs, the layer table, and how to rebuild the float architecture (a factory spec
  ``"pkg.module:function"``), when known;
- ``state.pt``: tensors only (integer weight codes instead of float weights, scales,
  zero points, biases and every other parameter/buffer), read with
  ``torch.load(weights_only=True)``, which cannot run code;
- ``module.pt`` (optional): the whole pickled module, for architectures that have no
  factory. Unpickling runs code from the file, so it is loaded only with
  ``trust_remote_code=True``.
"""

from __future__ import annotations

import importlib
import json
import pickle
import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from quantune.bn_folding import fold_batchnorm, set_submodule
from quantune.capture import LayerInfo
from quantune.config import QuantConfig
from quantune.errors import ConfigVersionError, UserInputError
from quantune.jsonio import read_json_file
from quantune.modules import QuantizedLayer
from quantune.quantized_model import QuantizedModel
from quantune.quantizer import dequantize

FORMAT_VERSION = 1
META = "quantune.json"
STATE = "state.pt"
MODULE = "module.pt"
EXPORTED = "float_program.pt2"  # the torch.export program the float model came from
_CODES_SUFFIX = ".weight_codes"


def resolve_factory(spec: str) -> Callable[..., Any]:
    """Import ``"pkg.module:function"`` and return the callable."""
    mod_name, sep, attr = spec.partition(":")
    if not sep or not mod_name or not attr:
        raise UserInputError(f"A factory spec looks like 'pkg.module:function', got {spec!r}.")
    try:
        obj: Any = importlib.import_module(mod_name)
    except ImportError as exc:
        raise UserInputError(
            f"Cannot import {mod_name!r} for factory {spec!r}: {exc}. Is it on PYTHONPATH?"
        ) from exc
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UserInputError(f"{mod_name!r} has no attribute {attr!r} (factory {spec!r}).")
        obj = getattr(obj, part)
    if not callable(obj):
        raise UserInputError(f"Factory {spec!r} is not callable.")
    return obj


def _state_with_codes(qmodel: QuantizedModel) -> dict[str, torch.Tensor]:
    state = {k: v.detach().clone() for k, v in qmodel.model.state_dict().items()}
    for name, layer in qmodel.quantized_layers().items():
        del state[f"{name}.weight"]
        state[name + _CODES_SUFFIX] = layer.quantized_weight().codes.clone()
    return state


def save(
    qmodel: QuantizedModel,
    path: str | Path,
    *,
    factory: str | None = None,
    include_module: bool | None = None,
    exported_program: str | Path | None = None,
) -> Path:
    """Save a quantized model as an artifact folder (written atomically).

    Args:
        qmodel: the model from :func:`quantune.quantize` or ``tune``.
        path: destination folder (replaced if it exists).
        factory: ``"pkg.module:function"`` that builds the float architecture; lets
            :func:`load` rebuild the model without unpickling anything.
        include_module: also store the pickled module (default: only when neither a
            factory nor an exported program can rebuild it). A module that cannot be
            pickled is left out with a warning.
        exported_program: the ``torch.export`` file (``.pt2``) the model was loaded from;
            copied into the artifact, it rebuilds the architecture without unpickling.
    """
    path = Path(path)
    if include_module is None:
        include_module = factory is None and exported_program is None
    meta = {
        "format_version": FORMAT_VERSION,
        "config": qmodel.config.to_dict(),
        "factory": factory,
        "exported_program": EXPORTED if exported_program is not None else None,
        "bn_pairs": [list(p) for p in qmodel.bn_pairs],
        "quantized": sorted(qmodel.quantized_layers()),
        "layers": [info.to_dict() for info in qmodel.layers],
        "unsupported": [list(u) for u in qmodel.unsupported],
        "float_size_bytes": qmodel.float_size_bytes,
        "size_bytes": qmodel.size_bytes(),
        "mode": qmodel.mode,
        # Measured integer-vs-float path choices, so a loaded model runs exactly as saved.
        "path_decisions": {
            n: m.integer_decision.as_dict()
            for n, m in qmodel.quantized_layers().items()
            if getattr(m, "integer_decision", None) is not None
        },
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".quantune-", dir=path.parent))
    try:
        (tmp / META).write_text(json.dumps(meta, indent=2) + "\n")
        torch.save(_state_with_codes(qmodel), tmp / STATE)
        if exported_program is not None:
            shutil.copyfile(exported_program, tmp / EXPORTED)
        if include_module:
            _save_module(qmodel, tmp / MODULE)
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _save_module(qmodel: QuantizedModel, file: Path) -> None:
    try:
        torch.save(qmodel, file)
    except (AttributeError, TypeError, pickle.PicklingError) as exc:  # local functions, locks, ...
        file.unlink(missing_ok=True)
        warnings.warn(
            f"The quantized model cannot be pickled ({exc}); the artifact holds its weights "
            "only: load it with quantune.load(path, model=<the float model>) or a factory.",
            stacklevel=3,
        )


def _read_meta(path: Path) -> dict[str, Any]:
    if not (path / META).is_file():
        raise UserInputError(f"{path} is not a quantune artifact (no {META}); save one with quantune.save.")
    meta = read_json_file(path / META, "Artifact metadata")
    version = meta.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ConfigVersionError(
            f"{path} has artifact format {version!r}; this quantune reads up to "
            f"{FORMAT_VERSION}: upgrade quantune."
        )
    return meta


def load(
    path: str | Path,
    *,
    model: nn.Module | None = None,
    factory: str | None = None,
    trust_remote_code: bool = False,
    mode: str = "integer",
) -> QuantizedModel:
    """Load a quantized model saved with :func:`save`.

    The float architecture comes from ``model`` (an instance, e.g. freshly constructed),
    else ``factory``, else the factory recorded in the artifact; only when none exists is
    the pickled module used, and only with ``trust_remote_code=True``.
    """
    path = Path(path)
    meta = _read_meta(path)
    config = QuantConfig.from_dict(meta["config"])
    factory = factory or meta.get("factory")
    if model is None and factory is None and meta.get("exported_program"):
        from quantune.exported import modules_from_exported

        model = modules_from_exported(torch.export.load(str(path / meta["exported_program"])).module())
    if model is None and factory is None:
        if not (path / MODULE).is_file():
            raise UserInputError(f"{path} records no factory and holds no module; pass model=... to load().")
        if not trust_remote_code:
            raise UserInputError(
                f"{path} can only be rebuilt by unpickling {MODULE}, which runs code from the "
                "file. Pass trust_remote_code=True (CLI: --trust-remote-code) if you trust "
                "its source, or pass model=/factory= to rebuild it safely."
            )
        qmodel = torch.load(path / MODULE, map_location="cpu", weights_only=False)
        return qmodel.set_mode(mode)
    base = model if model is not None else resolve_factory(factory)()  # type: ignore[arg-type]
    return _rebuild(base, meta, config, path).set_mode(mode)


def _rebuild(base: nn.Module, meta: dict[str, Any], config: QuantConfig, path: Path) -> QuantizedModel:
    import copy

    model = copy.deepcopy(base).eval()
    fold_batchnorm(model, [tuple(p) for p in meta["bn_pairs"]])
    try:
        state = torch.load(path / STATE, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated / corrupt file
        raise UserInputError(f"{path / STATE} cannot be read ({exc}); the artifact is corrupt.") from exc
    for name in meta["quantized"]:
        layer_cfg = config.for_layer(name)
        if layer_cfg is None:
            raise UserInputError(f"Artifact lists {name} as quantized but its config keeps it float.")
        qlayer = QuantizedLayer(model.get_submodule(name), layer_cfg)
        codes = state.pop(name + _CODES_SUFFIX)
        scale, zp = state[f"{name}.w_scale"], state[f"{name}.w_zero_point"]
        axis = 0 if scale.dim() == 1 else None
        state[f"{name}.weight"] = dequantize(codes, scale, zp, axis).reshape(qlayer.weight.shape)
        if qlayer.bias is None and f"{name}.bias" in state:  # bias correction gave it one
            qlayer.bias = nn.Parameter(torch.zeros_like(state[f"{name}.bias"]))
        set_submodule(model, name, qlayer)
    from quantune.kernels.decide import PathDecision

    for name, decision in meta.get("path_decisions", {}).items():
        model.get_submodule(name).integer_decision = PathDecision(**decision)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise UserInputError(
            f"The artifact does not fit this architecture (missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}); rebuild with the model it was quantized from."
        )
    layers = [LayerInfo(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k != "depthwise"}) for d in meta["layers"]]
    return QuantizedModel(
        model, config, layers, [tuple(p) for p in meta["bn_pairs"]],
        [tuple(u) for u in meta.get("unsupported", [])], int(meta["float_size_bytes"]),
    )
