"""One discrete axis of a search space: its values, kind and numeric encoding.

Pure Python + numpy (no torch, optuna or xgboost).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from quantune.errors import UserInputError

DimensionKind = Literal["categorical", "ordinal"]


def is_number(value: Any) -> bool:
    """True for ints and floats; False for bools (an int subclass, but categories)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class Dimension:
    """One discrete axis of the space.

    Args:
        name: Parameter name (the key in configuration dicts).
        values: The allowed values, any JSON-able objects, in order. For an ordinal
            dimension the order is meaningful (e.g. bit widths 2 < 4 < 8).
        kind: ``"categorical"`` (one-hot encoded for the cost model, unordered for the
            samplers) or ``"ordinal"`` (encoded by its numeric value when all values
            are numbers, else by its rank; samplers may exploit the order).
        monotone: A prior on an ordinal dimension: +1 when the metric is believed not to
            fall along the values' order (more bits, per-channel over per-tensor, a
            float scale over a power-of-two one), -1 when not to rise, 0 (default) for
            no belief. The ``xgboost`` sampler constrains its cost model to it, so it
            need not learn the direction from its first few trials.
    """

    name: str
    values: tuple[Any, ...]
    kind: DimensionKind = "categorical"
    monotone: int = 0
    _keys: tuple[str, ...] = field(init=False, repr=False, compare=False)
    _fast: dict[tuple[type, Any], int] = field(init=False, repr=False, compare=False)
    _numeric: bool = field(init=False, repr=False, compare=False)
    _table: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.name:
            raise UserInputError("a search dimension needs a non-empty name")
        values = tuple(self.values)
        if not values:
            raise UserInputError(f"dimension {self.name!r} has no values; give at least one")
        if self.kind not in ("categorical", "ordinal"):
            raise UserInputError(
                f"dimension {self.name!r}: kind must be 'categorical' or 'ordinal', "
                f"got {self.kind!r}"
            )
        if self.monotone not in (-1, 0, 1):
            raise UserInputError(f"dimension {self.name!r}: monotone must be -1, 0 or +1, got {self.monotone!r}")
        if self.monotone and self.kind != "ordinal":
            raise UserInputError(
                f"dimension {self.name!r}: a monotone prior needs an order; declare it ordinal "
                "with its values from least to most precise")
        keys = tuple(json.dumps(v, sort_keys=True, default=str) for v in values)
        if len(set(keys)) != len(keys):
            raise UserInputError(f"dimension {self.name!r} lists a value twice: {values!r}")
        object.__setattr__(self, "values", values)
        object.__setattr__(self, "_keys", keys)
        # Hot path of encoding: hashable values looked up by (type, value), so that
        # True and 1 stay distinct; unhashable ones (lists, dicts) go through JSON.
        fast = {}
        for i, v in enumerate(values):
            try:
                fast[(type(v), v)] = i
            except TypeError:
                continue
        object.__setattr__(self, "_fast", fast)
        numeric = self.kind == "ordinal" and all(is_number(v) for v in values)
        object.__setattr__(self, "_numeric", numeric)
        # Feature rows of every value, computed once: encoding is a table lookup.
        if self.kind == "ordinal":
            table = np.array([[float(v) if numeric else float(i)] for i, v in enumerate(values)])
        else:
            table = np.eye(len(values))
        object.__setattr__(self, "_table", table)

    def __len__(self) -> int:
        return len(self.values)

    def index(self, value: Any) -> int:
        """Position of ``value`` among :attr:`values`.

        Raises:
            UserInputError: ``value`` is not one of the dimension's values.
        """
        try:
            return self._fast[(type(value), value)]
        except (KeyError, TypeError):
            pass
        key = json.dumps(value, sort_keys=True, default=str)
        try:
            return self._keys.index(key)
        except ValueError:
            raise UserInputError(
                f"{value!r} is not a value of dimension {self.name!r}; allowed: {self.values!r}"
            ) from None

    @property
    def numeric(self) -> bool:
        """True for an ordinal dimension whose values are all numbers."""
        return self._numeric

    @property
    def width(self) -> int:
        """Number of feature columns this dimension takes in :meth:`SearchSpace.encode`."""
        return 1 if self.kind == "ordinal" else len(self.values)

    def feature_names(self) -> list[str]:
        """Column names of this dimension's features."""
        if self.kind == "ordinal":
            return [self.name]
        return [f"{self.name}={k}" for k in self._keys]

    def encode_indices(self, indices: np.ndarray) -> np.ndarray:
        """Feature columns, shape (len(indices), width), of the values at ``indices``."""
        return self._table[np.asarray(indices, dtype=np.int64)]


def categorical(name: str, values: Iterable[Any]) -> Dimension:
    """An unordered dimension (one-hot encoded)."""
    return Dimension(name, tuple(values), "categorical")


def ordinal(name: str, values: Iterable[Any], monotone: int = 0) -> Dimension:
    """An ordered dimension (encoded by value when numeric, else by rank), with an
    optional monotone prior (see :class:`Dimension`)."""
    return Dimension(name, tuple(values), "ordinal", monotone)


def prior_ordinal(name: str, values: Iterable[Any], order: Iterable[Any] | None = None) -> Dimension:
    """``values`` as an ordinal dimension from least to most precise, with a ``+1`` prior.

    Args:
        name: Parameter name.
        values: The dimension's values, any order.
        order: Every value (and possibly more) from least to most precise; None sorts
            numeric values ascending (bit widths).

    Raises:
        UserInputError: a value missing from ``order``, or no order for non-numbers.
    """
    values = list(values)
    if order is None:
        if not all(is_number(v) for v in values):
            raise UserInputError(f"dimension {name!r}: give the order of its values {values!r} (least to most precise)")
        ordered = sorted(values)
    else:
        rank = {json.dumps(v, sort_keys=True, default=str): i for i, v in enumerate(order)}
        missing = [v for v in values if json.dumps(v, sort_keys=True, default=str) not in rank]
        if missing:
            raise UserInputError(f"dimension {name!r}: values {missing!r} are missing from its prior order {list(order)!r}")
        ordered = sorted(values, key=lambda v: rank[json.dumps(v, sort_keys=True, default=str)])
    return Dimension(name, tuple(ordered), "ordinal", 1)
