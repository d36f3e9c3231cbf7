"""Load the user's model from what the CLI is given, refusing code-running pickles by default.

Accepted:
- a registry name (``example``, ``efficientnet-lite0``, ``minilm-l6``);
- a factory spec ``pkg.module:function`` returning an ``nn.Module``;
- a state dict file (``.pt``/``.pth``) with ``--model-factory`` for the architecture;
- a pickled module (``torch.save(model)``): unpickling runs code from the file, so it
  is loaded only with ``trust_remote_code=True`` (CLI ``--trust-remote-code``);
- a ``torch.export`` program (``.pt2``);
- a Hugging Face model folder (``config.json`` inside; needs ``transformers``).
"""

from __future__ import annotations

import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from quantune.artifact import resolve_factory
from quantune.errors import UserInputError


@dataclass
class LoadedModel:
    """A model plus what is known of how to rebuild it and of its data."""

    model: nn.Module
    source: str
    factory: str | None = None
    registry_entry: Any = None
    extras: dict[str, Any] = field(default_factory=dict)


def _registry_names() -> list[str]:
    try:
        from quantune.zoo.registry import names
    except ImportError:
        return ["example"]
    return names()


def _as_module(obj: Any, what: str) -> nn.Module:
    if not isinstance(obj, nn.Module):
        raise UserInputError(f"{what} gave a {type(obj).__name__}, not a torch.nn.Module.")
    return obj.eval()


def load_model(
    spec: str,
    *,
    model_factory: str | None = None,
    trust_remote_code: bool = False,
    preset: str = "quick",
) -> LoadedModel:
    """Resolve ``spec`` (path, registry name or factory) into a float model."""
    path = Path(spec)
    if not path.exists():
        if spec in _registry_names():
            return _from_registry(spec, preset)
        if ":" in spec and not spec.endswith((".pt", ".pth", ".pt2")):
            return LoadedModel(_as_module(resolve_factory(spec)(), spec), spec, factory=spec)
        raise UserInputError(
            f"Model {spec!r} is not a file, a registry name ({', '.join(_registry_names())}) "
            "or a factory spec 'pkg.module:function'."
        )
    if path.is_dir():
        return _from_hf_folder(path)
    if path.suffix == ".pt2":
        try:
            program = torch.export.load(str(path))
        except Exception as exc:
            raise UserInputError(f"{path} is not a readable torch.export program: {exc}.") from exc
        from quantune.exported import modules_from_exported

        return LoadedModel(modules_from_exported(program.module()), str(path))
    return _from_torch_file(path, model_factory, trust_remote_code)


def _from_registry(name: str, preset: str) -> LoadedModel:
    if name == "example":
        try:
            from quantune.zoo.registry import get
        except ImportError:
            from quantune.example import build_model

            return LoadedModel(build_model(), "example", factory="quantune.example:build_model")
    from quantune.zoo.registry import get

    entry = get(name, preset=preset) if "preset" in get.__code__.co_varnames else get(name)
    factory = "quantune.example:build_model" if name == "example" else None
    return LoadedModel(entry.model, name, factory=factory, registry_entry=entry)


def _from_hf_folder(path: Path) -> LoadedModel:
    if not (path / "config.json").is_file():
        raise UserInputError(f"{path} is a folder but not a Hugging Face model folder (no config.json).")
    try:
        from transformers import AutoModel
    except ImportError as exc:
        raise UserInputError("Loading a Hugging Face folder needs transformers: pip install transformers.") from exc
    model = AutoModel.from_pretrained(str(path), local_files_only=True).eval()
    return LoadedModel(model, str(path), extras={"tokenizer_dir": str(path)})


def _from_torch_file(path: Path, model_factory: str | None, trust_remote_code: bool) -> LoadedModel:
    if not zipfile.is_zipfile(path) and path.stat().st_size < 64:
        raise UserInputError(f"{path} is too small to be a model file; is it truncated?")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError) as exc:
        message = str(exc)
        if "weights_only" not in message and "Unsupported global" not in message:
            raise UserInputError(f"{path} cannot be read as a torch file ({message.splitlines()[0]}); is it corrupt?") from exc
        if not trust_remote_code:
            raise UserInputError(
                f"{path} is a pickled module: loading it runs code stored in the file. If you "
                "trust its source, pass --trust-remote-code; otherwise save a state dict "
                "(torch.save(model.state_dict())) and pass --model-factory pkg.module:function."
            ) from exc
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc2:
            raise UserInputError(f"{path} could not be unpickled: {exc2}.") from exc2
        return LoadedModel(_as_module(obj, str(path)), str(path))
    except Exception as exc:  # EOFError, zip errors: truncated / corrupt files
        raise UserInputError(f"{path} cannot be read as a torch file ({exc}); is it truncated or corrupt?") from exc
    if isinstance(obj, nn.Module):
        return LoadedModel(obj.eval(), str(path))
    if isinstance(obj, dict) and obj and all(torch.is_tensor(v) for v in obj.values()):
        if model_factory is None:
            raise UserInputError(
                f"{path} holds a state dict (weights only): pass --model-factory "
                "pkg.module:function that builds the architecture."
            )
        model = _as_module(resolve_factory(model_factory)(), model_factory)
        try:
            model.load_state_dict(obj)
        except RuntimeError as exc:
            raise UserInputError(f"The state dict in {path} does not fit {model_factory}: {str(exc).splitlines()[0]}") from exc
        return LoadedModel(model, str(path), factory=model_factory)
    raise UserInputError(f"{path} holds a {type(obj).__name__}, not a model or a state dict.")
