"""Declarative discrete search spaces: dimensions, candidates, encoding, sampling.

A :class:`SearchSpace` is a list of named discrete dimensions. Its configurations are
plain dicts ``{name: value}``; the caller maps them to its own config objects. A space
is either the full Cartesian product of its dimensions or, when built from an explicit
list of candidate configurations, exactly that list (a constrained product: the
Brevitas sweep, for example, measures 540 of its 1,728 combinations).

Everything here is pure Python + numpy: no torch, no optuna, no xgboost.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from quantune.errors import UserInputError
from quantune.search.dimension import Dimension, categorical, is_number, ordinal, prior_ordinal

__all__ = ["Config", "Dimension", "SearchSpace", "categorical", "config_key", "ordinal", "prior_ordinal"]

Config = dict[str, Any]


def config_key(config: Mapping[str, Any]) -> str:
    """Canonical, hashable text of a configuration (sorted-key JSON).

    Two configurations are the same point of the space exactly when their keys match;
    samplers, the runner and the storage all use this key to recognise visited points.
    """
    return json.dumps(dict(config), sort_keys=True, separators=(",", ":"), default=str)


class SearchSpace:
    """A finite, discrete space of configurations.

    Args:
        dimensions: The axes. Names must be unique.
        candidates: Optional explicit list of allowed configurations (each a dict over
            every dimension). When given, the space is exactly this list, in this order.

    Example:
        >>> space = SearchSpace([ordinal("bits", [4, 8]), categorical("scheme", ["sym", "asym"])])
        >>> space.size
        4
        >>> space.encode({"bits": 8, "scheme": "asym"}).tolist()
        [8.0, 0.0, 1.0]
    """

    def __init__(
        self,
        dimensions: Sequence[Dimension],
        candidates: Sequence[Mapping[str, Any]] | None = None,
    ) -> None:
        self.dimensions: tuple[Dimension, ...] = tuple(dimensions)
        if not self.dimensions:
            raise UserInputError("a search space needs at least one dimension")
        names = [d.name for d in self.dimensions]
        if len(set(names)) != len(names):
            raise UserInputError(f"search dimensions must have unique names, got {names}")
        self._by_name = {d.name: d for d in self.dimensions}
        self._candidates: tuple[Config, ...] | None = None
        self._candidate_keys: dict[str, int] = {}
        if candidates is not None:
            rows = [self.validate(c) for c in candidates]
            if not rows:
                raise UserInputError("an explicit candidate list must not be empty")
            for i, row in enumerate(rows):
                self._candidate_keys.setdefault(config_key(row), i)
            if len(self._candidate_keys) != len(rows):
                raise UserInputError("the candidate list contains duplicate configurations")
            self._candidates = tuple(rows)

    @classmethod
    def from_candidates(
        cls,
        candidates: Sequence[Mapping[str, Any]],
        ordinal_names: Iterable[str] | None = None,
        priors: Mapping[str, Sequence[Any] | None] | None = None,
    ) -> SearchSpace:
        """Build a space that is exactly ``candidates``, inferring its dimensions.

        A dimension's values are those seen in the candidates, sorted when they are all
        numbers. A dimension is ordinal when named in ``ordinal_names``, or, when
        ``ordinal_names`` is None, when all of its values are numbers.

        Args:
            priors: name -> values from least to most precise (None: a numeric
                dimension's own ascending order). Each named dimension becomes ordinal in
                that order with a ``monotone=+1`` prior; its values seen in the
                candidates must all be listed.
        """
        if not candidates:
            raise UserInputError("an explicit candidate list must not be empty")
        names = list(candidates[0].keys())
        wanted = set(ordinal_names) if ordinal_names is not None else None
        dims = []
        for name in names:
            seen: dict[str, Any] = {}
            for c in candidates:
                if name not in c:
                    raise UserInputError(f"candidate {dict(c)!r} lacks parameter {name!r}")
                seen.setdefault(json.dumps(c[name], sort_keys=True, default=str), c[name])
            values = list(seen.values())
            all_numbers = all(is_number(v) for v in values)
            if all_numbers:
                values.sort()
            is_ordinal = all_numbers if wanted is None else name in wanted
            if priors is not None and name in priors:
                dims.append(prior_ordinal(name, values, priors[name]))
                continue
            dims.append(Dimension(name, tuple(values), "ordinal" if is_ordinal else "categorical"))
        return cls(dims, candidates)

    # ----------------------------------------------------------------- structure
    @property
    def names(self) -> list[str]:
        """Dimension names in order."""
        return [d.name for d in self.dimensions]

    def dimension(self, name: str) -> Dimension:
        """The dimension called ``name``."""
        return self._by_name[name]

    @property
    def candidates(self) -> tuple[Config, ...] | None:
        """The explicit candidate list, or None for a full product space."""
        return self._candidates

    @property
    def size(self) -> int:
        """Number of configurations in the space."""
        if self._candidates is not None:
            return len(self._candidates)
        return math.prod(len(d) for d in self.dimensions)

    def validate(self, config: Mapping[str, Any]) -> Config:
        """Return ``config`` as a dict over exactly the space's dimensions.

        Raises:
            UserInputError: a parameter is missing, unknown, or has a disallowed value.
        """
        extra = set(config) - set(self._by_name)
        if extra:
            raise UserInputError(f"unknown search parameters {sorted(extra)}; known: {self.names}")
        out: Config = {}
        for d in self.dimensions:
            if d.name not in config:
                raise UserInputError(f"configuration lacks parameter {d.name!r}")
            out[d.name] = d.values[d.index(config[d.name])]
        return out

    def contains(self, config: Mapping[str, Any]) -> bool:
        """Whether ``config`` is a point of this space."""
        try:
            valid = self.validate(config)
        except UserInputError:
            return False
        return self._candidates is None or config_key(valid) in self._candidate_keys

    # ----------------------------------------------------------------- encoding
    @property
    def n_features(self) -> int:
        """Length of :meth:`encode`'s vectors."""
        return sum(d.width for d in self.dimensions)

    def feature_names(self) -> list[str]:
        """Column names of :meth:`encode`'s vectors."""
        return [n for d in self.dimensions for n in d.feature_names()]

    def indices(self, config: Mapping[str, Any]) -> tuple[int, ...]:
        """Per-dimension value indices of ``config``."""
        return tuple(d.index(config[d.name]) for d in self.dimensions)

    def from_indices(self, indices: Sequence[int]) -> Config:
        """The configuration with these per-dimension value indices."""
        return {d.name: d.values[i] for d, i in zip(self.dimensions, indices, strict=True)}

    def encode(self, config: Mapping[str, Any]) -> np.ndarray:
        """Numeric feature vector of ``config`` (one-hot categoricals, ordinal values)."""
        return self.encode_many([config])[0]

    def encode_many(self, configs: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Feature matrix, one row per configuration."""
        if not configs:
            return np.zeros((0, self.n_features))
        idx = np.array([self.indices(c) for c in configs], dtype=np.int64)
        return np.hstack([d.encode_indices(idx[:, j]) for j, d in enumerate(self.dimensions)])

    # ----------------------------------------------------------------- iteration
    def enumerate(self, limit: int | None = None) -> Iterator[Config]:
        """Yield every configuration (candidates in order, else the product in
        lexicographic order of value indices), at most ``limit`` of them."""
        if self._candidates is not None:
            source: Iterable[Config] = (dict(c) for c in self._candidates)
        else:
            source = (
                self.from_indices(idx)
                for idx in itertools.product(*(range(len(d)) for d in self.dimensions))
            )
        yield from itertools.islice(source, limit)

    def sample(self, rng: np.random.Generator, n: int = 1) -> list[Config]:
        """``n`` configurations drawn uniformly (with replacement) from the space."""
        if self._candidates is not None:
            picks = rng.integers(0, len(self._candidates), size=n)
            return [dict(self._candidates[int(i)]) for i in picks]
        sizes = np.array([len(d) for d in self.dimensions])
        idx = (rng.random((n, sizes.size)) * sizes[None, :]).astype(np.int64)
        return [self.from_indices(row) for row in idx.tolist()]
