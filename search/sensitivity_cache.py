"""Where measured sensitivities are kept, so that a second allocation measures nothing.

Entries are keyed by what the values depend on: a fingerprint of the model's folded
weights and layer list, of the calibration samples used, of the base configuration's
schemes and range methods, and the proxy and loss. An entry holds individual cells
(``{layer: {"w,a": value}}``), so asking for more candidate widths later measures only
the new cells.

Three stores, layered (read from the first that has the entry, written to all):

- memory (per process, always on);
- a JSON file (``cache_path``), rewritten atomically;
- an Optuna storage URL (``storage``): the entries are user attributes of a study named
  ``quantune-sensitivity`` in the same storage as the searches, so every worker of a
  multi-machine run shares them.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from quantune.batches import model_inputs
from quantune.errors import UserInputError

CACHE_VERSION = 1
SENSITIVITY_STUDY = "quantune-sensitivity"
_ATTR_PREFIX = "quantune.sensitivity:"

Entry = dict[str, dict[str, float]]


def _update_tensor(h: Any, t: torch.Tensor) -> None:
    t = t.detach().cpu().contiguous()
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")


def model_fingerprint(model: nn.Module, layer_names: Sequence[str]) -> str:
    """SHA-256 of the state (names, shapes, values) and of the quantizable layer list."""
    h = hashlib.sha256()
    h.update(json.dumps(list(layer_names)).encode())
    for name, t in model.state_dict().items():
        h.update(name.encode())
        _update_tensor(h, t)
    return h.hexdigest()[:24]


def data_fingerprint(batches: Iterable[Any]) -> str:
    """SHA-256 of every tensor in the batches (inputs and labels), in order."""
    h = hashlib.sha256()

    def visit(x: Any) -> None:
        if torch.is_tensor(x):
            _update_tensor(h, x)
        elif isinstance(x, dict):
            for k in sorted(x):
                h.update(str(k).encode())
                visit(x[k])
        elif isinstance(x, tuple | list):
            for item in x:
                visit(item)

    for batch in batches:
        visit(batch if isinstance(batch, tuple | list) else model_inputs(batch))
    return h.hexdigest()[:24]


def cache_key(**parts: str) -> str:
    """One stable key from named parts (sorted, so argument order never matters)."""
    text = json.dumps(parts, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class Store(Protocol):
    def get(self, key: str) -> Entry | None: ...

    def put(self, key: str, entry: Entry) -> None: ...


_MEMORY: dict[str, Entry] = {}


class MemoryStore:
    """Process-wide dict (shared by every call in the process)."""

    def get(self, key: str) -> Entry | None:
        entry = _MEMORY.get(key)
        return None if entry is None else {n: dict(c) for n, c in entry.items()}

    def put(self, key: str, entry: Entry) -> None:
        _MEMORY[key] = {n: dict(c) for n, c in entry.items()}


def clear_memory_cache() -> None:
    """Forget every in-memory entry (tests use it to force a measurement)."""
    _MEMORY.clear()


class JsonFileStore:
    """A JSON file ``{"version": 1, "entries": {key: entry}}``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def _read(self) -> dict[str, Entry]:
        if not self.path.exists():
            return {}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise UserInputError(f"sensitivity cache {self.path} is unreadable ({exc}); "
                                 "delete it to measure again") from exc
        if not isinstance(data, dict) or data.get("version") != CACHE_VERSION:
            raise UserInputError(f"{self.path} is not a quantune sensitivity cache of version "
                                 f"{CACHE_VERSION}; delete it or pass another cache path")
        return data.get("entries", {})

    def get(self, key: str) -> Entry | None:
        return self._read().get(key)

    def put(self, key: str, entry: Entry) -> None:
        entries = self._read()
        entries[key] = entry
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Write beside the target and rename: a crash never leaves half a file.
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".sensitivity-", suffix=".json")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"version": CACHE_VERSION, "entries": entries}, f)
        os.replace(tmp, self.path)


class OptunaStore:
    """User attributes of the ``quantune-sensitivity`` study in an Optuna storage."""

    def __init__(self, storage: str, study_name: str = SENSITIVITY_STUDY) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.study = optuna.create_study(storage=storage, study_name=study_name, load_if_exists=True)

    def get(self, key: str) -> Entry | None:
        return self.study.user_attrs.get(_ATTR_PREFIX + key)

    def put(self, key: str, entry: Entry) -> None:
        self.study.set_user_attr(_ATTR_PREFIX + key, entry)


class LayeredStore:
    """Reads the union of every store's cells, writes to all."""

    def __init__(self, stores: Sequence[Store]) -> None:
        self.stores = list(stores)

    def get(self, key: str) -> Entry:
        found = [store.get(key) or {} for store in self.stores]
        merged: Entry = {}
        for entry in found:
            for layer, cells in entry.items():
                merged.setdefault(layer, {}).update(cells)
        # Backfill the stores that lack cells (e.g. a file asked for after the values
        # were measured in memory), so that every store ends up holding everything.
        for store, entry in zip(self.stores, found, strict=True):
            if merged and entry != merged:
                store.put(key, merged)
        return merged

    def put(self, key: str, entry: Entry) -> None:
        for store in self.stores:
            store.put(key, entry)


def open_store(cache_path: str | Path | None = None, storage: str | None = None) -> LayeredStore:
    """Memory, plus the JSON file and the Optuna storage when given."""
    stores: list[Store] = [MemoryStore()]
    if cache_path is not None:
        stores.append(JsonFileStore(cache_path))
    if storage is not None:
        stores.append(OptunaStore(storage))
    return LayeredStore(stores)
