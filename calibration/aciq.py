"""ACIQ: analytical clipping for integer quantization (Banner, Nahshan, Soudry, 2019).

Model the tensor as Laplace(mu, b) or Gaussian(mu, sigma) and clip to ``mu +- alpha``.
With ``M`` bits the expected squared error is clipping noise plus rounding noise
(``Delta^2 / 12`` with ``Delta = 2 alpha / 2^M``):

- Laplace:  ``2 b^2 exp(-alpha / b) + alpha^2 / (3 * 4^M)``
- Gaussian: ``2 [(alpha^2 + sigma^2) Q(alpha/sigma) - alpha sigma phi(alpha/sigma)] + alpha^2 / (3 * 4^M)``

Both scale with ``b^2`` (``sigma^2``), so the optimum is ``alpha* = k(M) * b`` with a
constant ``k`` found once per bit width by 1-D minimization (the paper's table:
Laplace 2.83, 3.89, 5.03, 6.20, 7.41, 8.64, 9.89 for 2..8 bits; Gaussian 1.71, 2.15,
2.55, 2.94, 3.29, 3.61, 3.92).

A one-sided distribution (non-negative data on an unsigned grid, e.g. after ReLU)
folded at 0 has the same clipping noise with all ``2^M`` levels on one side, which is
the two-sided problem with ``M + 1`` bits.
"""

from __future__ import annotations

import math
from functools import lru_cache

from scipy.optimize import minimize_scalar
from scipy.stats import norm

DISTRIBUTIONS = ("laplace", "gaussian")

# E|x - mu| / sigma: sqrt(2/pi) = 0.798 for a Gaussian, 1/sqrt(2) = 0.707 for a
# Laplace. "aciq" picks the prior whose ratio is closer to the measured one.
_GAUSS_RATIO = math.sqrt(2.0 / math.pi)
_LAPLACE_RATIO = 1.0 / math.sqrt(2.0)


def expected_mse(alpha: float, bits: int, distribution: str) -> float:
    """Expected squared error of clipping at ``+-alpha`` a unit-scale prior (b = 1 or sigma = 1)."""
    rounding = alpha * alpha / (3.0 * 4.0**bits)
    if distribution == "laplace":
        return 2.0 * math.exp(-alpha) + rounding
    if distribution == "gaussian":
        tail = (alpha * alpha + 1.0) * norm.sf(alpha) - alpha * norm.pdf(alpha)
        return 2.0 * tail + rounding
    raise ValueError(f"unknown ACIQ distribution {distribution!r}; use one of {DISTRIBUTIONS}")


@lru_cache(maxsize=64)
def alpha_factor(bits: int, distribution: str) -> float:
    """Optimal clipping ``alpha / b`` (Laplace) or ``alpha / sigma`` (Gaussian) for ``bits``."""
    res = minimize_scalar(
        lambda a: expected_mse(a, bits, distribution),
        bounds=(0.05, 40.0),
        method="bounded",
        options={"xatol": 1e-6},
    )
    return float(res.x)


def choose_distribution(mean_abs_dev: float, std: float) -> str:
    """The prior whose ``E|x - mu| / sigma`` is closer to the measured ratio."""
    if std <= 0.0:
        return "laplace"
    ratio = mean_abs_dev / std
    return "gaussian" if abs(ratio - _GAUSS_RATIO) < abs(ratio - _LAPLACE_RATIO) else "laplace"


def distribution_of(method: str) -> str | None:
    """``aciq-laplace`` -> ``laplace``; plain ``aciq`` -> None (choose from the data)."""
    return method.split("-", 1)[1] if "-" in method else None


def scale_parameter(distribution: str, mean_abs_dev: float, std: float) -> float:
    """Maximum-likelihood scale of the prior: ``b = E|x - mu|`` or ``sigma = std``."""
    return mean_abs_dev if distribution == "laplace" else std


def one_sided_scale(distribution: str, mean: float, mean_sq: float) -> float:
    """Scale of a half-Laplace (exponential) or half-normal fit to non-negative data.

    Uses ``E[x^2] / E[x]`` (``2b`` for the exponential, ``sigma * sqrt(pi/2)`` for the
    half-normal), which does not depend on how much of the mass sits exactly at 0
    (ReLU outputs), since that fraction cancels in the ratio.
    """
    if mean <= 0.0:
        return 0.0
    ratio = mean_sq / mean
    return ratio / 2.0 if distribution == "laplace" else ratio / math.sqrt(math.pi / 2.0)
