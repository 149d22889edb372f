"""Statistics over seeds: medians with percentile-bootstrap 95% confidence intervals."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def bootstrap_ci(
    values: Sequence[float], stat: str = "median", n_boot: int = 2000, alpha: float = 0.05, seed: int = 0
) -> tuple[float, float, float]:
    """(point estimate, low, high) of ``stat`` (median or mean) with a percentile bootstrap over seeds.

    ``inf`` values (e.g. a run that never reached the target) are allowed and propagate.

    >>> m, lo, hi = bootstrap_ci([1.0, 2.0, 3.0, 4.0, 5.0])
    >>> m, lo <= m <= hi
    (3.0, True)
    """
    x = np.asarray(list(values), dtype=float)
    if x.size == 0:
        return float("nan"), float("nan"), float("nan")
    fn = np.median if stat == "median" else np.mean
    point = float(fn(x))
    if x.size == 1:
        return point, point, point
    rng = np.random.default_rng(seed)
    samples = x[rng.integers(0, x.size, size=(n_boot, x.size))]  # (n_boot, n)
    with np.errstate(invalid="ignore"):
        boots = fn(samples, axis=1)
    lo = float(np.quantile(boots, alpha / 2, method="lower"))
    hi = float(np.quantile(boots, 1 - alpha / 2, method="higher"))
    return point, lo, hi


def median_band(
    curves: np.ndarray, n_boot: int = 1000, alpha: float = 0.05, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-column median and bootstrap CI of the median for ``curves`` of shape (n_seeds, n_points)."""
    med = np.median(curves, axis=0)
    if curves.shape[0] == 1:
        return med, med, med
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, curves.shape[0], size=(n_boot, curves.shape[0]))  # (n_boot, n_seeds)
    boots = np.median(curves[idx], axis=1)  # (n_boot, n_points)
    return med, np.quantile(boots, alpha / 2, axis=0), np.quantile(boots, 1 - alpha / 2, axis=0)


def steps_to_target(evals: Sequence[tuple[int, float]], target: float) -> float:
    """First evaluated step whose accuracy is >= ``target`` (``inf`` if never)."""
    for step, acc in evals:
        if acc >= target:
            return float(step)
    return float("inf")
