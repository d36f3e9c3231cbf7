"""Tokenizers for text-file data: sentences in, model keyword inputs out."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from quantune.errors import UserInputError

Tokenize = Callable[[list[str]], dict[str, torch.Tensor]]


def _load_hf_tokenizer(spec: str) -> Any:
    try:
        from transformers import AutoTokenizer
    except ImportError as exc:
        raise UserInputError("Text data needs transformers for tokenizing: pip install transformers.") from exc
    if spec == "minilm-l6":
        from quantune.zoo.minilm import model_dir

        spec = model_dir()
    if not Path(spec).is_dir():
        raise UserInputError(
            f"--tokenizer {spec!r} is not a tokenizer folder (tokenizer.json / vocab.txt) "
            "nor a registry name (minilm-l6); nothing is downloaded."
        )
    try:
        return AutoTokenizer.from_pretrained(spec, local_files_only=True)
    except Exception as exc:
        raise UserInputError(f"Cannot load a tokenizer from {spec}: {exc}.") from exc


def make_tokenizer(spec: str, model: nn.Module, max_length: int = 128) -> Tokenize:
    """A callable turning sentences into the keyword inputs ``model.forward`` accepts.

    Tokenizer outputs the forward does not take (``token_type_ids`` for a model whose
    forward only has ``input_ids`` and ``attention_mask``) are dropped.
    """
    tokenizer = _load_hf_tokenizer(spec)
    params = inspect.signature(model.forward).parameters
    takes_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())

    def tokenize(texts: list[str]) -> dict[str, torch.Tensor]:
        enc = tokenizer(texts, padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")
        return {k: v for k, v in enc.items() if takes_kwargs or k in params}

    return tokenize
