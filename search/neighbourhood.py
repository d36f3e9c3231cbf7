"""Local structure of a search space: distances, neighbours, mutation, projection.

Used where the space is too large to enumerate (the cost model scores random samples
plus mutations of the best configurations so far) and to repair proposals of samplers
that only know the product space (TPE, NSGA-II) onto an explicit candidate list.

Distance between two configurations is a per-dimension sum: 0/1 for a categorical
dimension, ``|i - j| / (n - 1)`` for an ordinal one (so neighbouring bit widths are
closer than far ones, and every dimension weighs at most 1).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from quantune.search.space import Config, SearchSpace


def _scales(space: SearchSpace) -> np.ndarray:
    """Per-dimension divisor turning an index difference into a distance in [0, 1]."""
    return np.array([max(len(d) - 1, 1) for d in space.dimensions], dtype=np.float64)


def _ordinal_mask(space: SearchSpace) -> np.ndarray:
    return np.array([d.kind == "ordinal" for d in space.dimensions])


def candidate_index_matrix(space: SearchSpace) -> np.ndarray:
    """Value indices of every candidate, shape (n_candidates, n_dims).

    Raises:
        ValueError: the space has no explicit candidate list.
    """
    if space.candidates is None:
        raise ValueError("candidate_index_matrix needs a space built from candidates")
    cached = getattr(space, "_quantune_index_matrix", None)
    if cached is None:
        cached = np.array([space.indices(c) for c in space.candidates], dtype=np.int64)
        # Cached on the instance: the matrix is immutable and costs O(n * d) to build.
        space._quantune_index_matrix = cached  # type: ignore[attr-defined]
    return cached


def distances(space: SearchSpace, config: Mapping[str, Any], others: np.ndarray) -> np.ndarray:
    """Distance from ``config`` to each row of ``others`` (value-index rows)."""
    origin = np.array(space.indices(config), dtype=np.int64)
    diff = np.abs(others - origin[None, :]).astype(np.float64)
    ordinal = _ordinal_mask(space)
    per_dim = np.where(ordinal[None, :], diff / _scales(space)[None, :], (diff > 0).astype(float))
    return per_dim.sum(axis=1)


def project(space: SearchSpace, config: Mapping[str, Any], rng: np.random.Generator) -> Config:
    """The candidate nearest to ``config`` (itself when it is a point of the space).

    Ties are broken at random with ``rng`` so the repair does not favour the first
    candidates of the list.
    """
    if space.contains(config):
        return space.validate(config)
    matrix = candidate_index_matrix(space)
    dist = distances(space, space.validate(config), matrix)
    best = np.flatnonzero(dist <= dist.min() + 1e-12)
    return dict(space.candidates[int(rng.choice(best))])  # type: ignore[index]


def neighbours(space: SearchSpace, config: Mapping[str, Any], radius: float = 1.0) -> list[Config]:
    """Configurations of the space at distance in (0, ``radius``] from ``config``.

    In a product space with the default radius these are the configurations that change
    one categorical dimension, or move one ordinal dimension by any amount. In a
    candidate space the candidates within the radius are returned; when none is that
    close (a constrained space), the nearest ones are returned instead, so local search
    never stalls.
    """
    if space.candidates is not None:
        matrix = candidate_index_matrix(space)
        dist = distances(space, config, matrix)
        dist[dist <= 1e-12] = np.inf  # not itself
        near = np.flatnonzero(dist <= radius + 1e-12)
        if near.size == 0 and np.isfinite(dist).any():
            near = np.flatnonzero(dist <= dist.min() + 1e-12)
        return [dict(space.candidates[int(i)]) for i in near]
    origin = list(space.indices(config))
    out: list[Config] = []
    for pos, d in enumerate(space.dimensions):
        for j in range(len(d)):
            if j == origin[pos]:
                continue
            step = abs(j - origin[pos]) / max(len(d) - 1, 1) if d.kind == "ordinal" else 1.0
            if step <= radius + 1e-12:
                moved = origin.copy()
                moved[pos] = j
                out.append(space.from_indices(moved))
    return out


def mutate(
    space: SearchSpace, config: Mapping[str, Any], rng: np.random.Generator, n_changes: int = 1
) -> Config:
    """A random configuration near ``config``: ``n_changes`` dimensions resampled
    (ordinal ones by one step up or down), projected onto the candidates if any."""
    idx = list(space.indices(config))
    n_dims = len(space.dimensions)
    for pos in rng.choice(n_dims, size=min(n_changes, n_dims), replace=False):
        d = space.dimensions[int(pos)]
        if len(d) == 1:
            continue
        if d.kind == "ordinal":
            step = int(rng.choice([-1, 1]))
            idx[pos] = int(np.clip(idx[pos] + step, 0, len(d) - 1))
        else:
            choices = [j for j in range(len(d)) if j != idx[pos]]
            idx[pos] = int(rng.choice(choices))
    moved = space.from_indices(idx)
    return project(space, moved, rng) if space.candidates is not None else moved
