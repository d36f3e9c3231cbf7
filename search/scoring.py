"""Turning trial values into "higher is better" scores, and Pareto ranks.

The cost model learns one scalar per trial. For a single objective that is the value
(negated when minimised); for several objectives it is minus the non-domination rank
(the Pareto front scores 0, the next front -1, ...) or, when a target on the metric is set,
"meets the target, then smallest/fastest" (see :func:`scalar_scores`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

Scalarizer = Callable[[np.ndarray], np.ndarray]


def signs(directions: Sequence[str]) -> np.ndarray:
    """+1 for each maximised objective, -1 for each minimised one."""
    out = []
    for d in directions:
        name = getattr(d, "name", d)
        name = str(name).lower()
        if name not in ("maximize", "minimize"):
            raise ValueError(f"direction must be 'maximize' or 'minimize', got {d!r}")
        out.append(1.0 if name == "maximize" else -1.0)
    return np.asarray(out)


def pareto_ranks(scores: np.ndarray) -> np.ndarray:
    """Non-domination rank of each row of ``scores`` (all objectives maximised).

    Row ``a`` dominates ``b`` when it is >= on every column and > on at least one.
    Quadratic in the number of rows, which is fine for the hundreds of trials of a
    PTQ search.
    """
    scores = np.asarray(scores, dtype=np.float64)
    n = scores.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    ge = (scores[:, None, :] >= scores[None, :, :]).all(axis=2)
    gt = (scores[:, None, :] > scores[None, :, :]).any(axis=2)
    dominates = ge & gt  # dominates[a, b]: a dominates b
    ranks = np.full(n, -1, dtype=np.int64)
    remaining = np.ones(n, dtype=bool)
    level = 0
    while remaining.any():
        dominated = (dominates[remaining][:, remaining]).any(axis=0)
        idx = np.flatnonzero(remaining)[~dominated]
        ranks[idx] = level
        remaining[idx] = False
        level += 1
    return ranks


def _rank01(x: np.ndarray) -> np.ndarray:
    """Ranks of ``x`` scaled to [0, 1] (ties share their mean rank)."""
    if x.size <= 1:
        return np.ones_like(x, dtype=np.float64)
    order = np.argsort(np.argsort(x, kind="stable"), kind="stable").astype(np.float64)
    for value in np.unique(x):  # average the ranks of ties
        same = x == value
        order[same] = order[same].mean()
    return order / (x.size - 1)


def scalar_scores(
    values: Sequence[Sequence[float]],
    directions: Sequence[str],
    threshold: float | None = None,
    scalarize: Scalarizer | None = None,
) -> np.ndarray:
    """One "higher is better" score per trial.

    Args:
        values: Objective values of each trial (one sequence per trial).
        directions: ``"maximize"``/``"minimize"`` per objective.
        threshold: Optional target on objective 0 (the metric) for several objectives:
            trials meeting it score in (1, 2], ordered by the secondary objectives
            (their summed ranks), so the search looks for the smallest/fastest
            configuration that meets the target; the others score in [0, 1) by the
            metric alone, so the model still learns where accuracy is.
        scalarize: Optional custom map from the (n_trials, n_objectives) value matrix
            to scores; used as is, bypassing the rules above.
    """
    if len(values) == 0:
        return np.zeros(0)
    matrix = np.asarray(values, dtype=np.float64)
    if scalarize is not None:
        return np.asarray(scalarize(matrix), dtype=np.float64)
    signed = matrix * signs(directions)[None, :]
    if signed.shape[1] == 1:
        return signed[:, 0]
    if threshold is None:
        return -pareto_ranks(signed).astype(np.float64)
    feasible = signed[:, 0] >= threshold * signs(directions)[0]
    out = np.empty(signed.shape[0])
    out[~feasible] = 0.999 * _rank01(signed[~feasible, 0])
    if feasible.any():
        rest = sum(_rank01(signed[feasible, j]) for j in range(1, signed.shape[1]))
        out[feasible] = 1.0 + _rank01(np.asarray(rest, dtype=np.float64))
    return out
