"""Statistics over seeds: medians, IQMs and probabilities of improvement with percentile-bootstrap CIs.

The IQM, the stratified bootstrap and the probability of improvement follow the definitions of rliable
(Agarwal et al. 2021, "Deep RL at the Edge of the Statistical Precipice", arXiv 2108.13264).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

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


def _percentile_interval(boots: np.ndarray, alpha: float) -> tuple[float, float]:
    """Outward percentile interval of bootstrap statistics: no interpolation, so ``inf`` stays ``inf`` (not NaN)."""
    lo = float(np.quantile(boots, alpha / 2, method="lower"))
    hi = float(np.quantile(boots, 1 - alpha / 2, method="higher"))
    return lo, hi


def iqm(values: Sequence[float] | np.ndarray) -> float:
    """Interquartile mean: the mean of the middle 50% of runs, as rliable (``scipy.stats.trim_mean(x, 0.25)``).

    With ``n`` values, ``k = int(0.25 * n)`` (i.e. ``floor(n / 4)``) values are removed from *each* end of the
    sorted values and the remaining ``n - 2k`` are averaged. When ``n`` is not a multiple of 4 this trims *less*
    than a quarter (n=10: 2 from each end, mean of the middle 6); for n < 4 nothing is trimmed (plain mean).

    ``+inf``/``-inf`` (e.g. a steps-to-target that was never reached) sort to the ends like any number: the IQM
    is ``inf`` if one survives trimming, finite otherwise. An empty input, any NaN, or both ``+inf`` and ``-inf``
    among the kept values give NaN.

    Args:
        values: One score per run (pooled over tasks if there are several).

    Returns:
        The 25%-trimmed mean.

    >>> iqm([1.0, 2.0, 3.0, 100.0])
    2.5
    >>> iqm([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, float("inf")])
    4.5
    """
    x = np.asarray(values, dtype=float).ravel()
    if x.size == 0 or np.isnan(x).any():
        return float("nan")
    k = int(0.25 * x.size)
    kept = np.sort(x)[k : x.size - k]
    with np.errstate(invalid="ignore"):
        return float(np.mean(kept))


def stratified_bootstrap_ci(
    scores: Mapping[str, Sequence[float]] | Sequence[float],
    statistic: Callable[[np.ndarray], float],
    n_boot: int = 2000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float, float]:
    """(point, low, high) of ``statistic`` with rliable's stratified percentile bootstrap.

    Each bootstrap replicate resamples the runs of every stratum (task) with replacement *within that stratum*,
    independently of the other strata, so each stratum keeps its own size; the strata's resamples are then
    concatenated (in the mapping's order) and ``statistic`` is applied to the pooled array. A plain sequence is
    a single stratum, i.e. the ordinary bootstrap. Empty strata are ignored.

    The point estimate is ``statistic`` on the original pooled data. The interval is the percentile interval
    of the ``n_boot`` replicates, taken outward without interpolation (the ``alpha/2`` quantile rounded down and
    the ``1 - alpha/2`` quantile rounded up to actual replicate values), so replicates equal to ``inf`` give
    ``inf`` bounds rather than NaN. The result depends only on the inputs and ``seed``.

    Args:
        scores: Runs per stratum (``{task: [score per run]}``), or a single stratum's runs.
        statistic: Maps a 1-D array of pooled scores to a number (e.g. :func:`iqm`, ``np.mean``).
        n_boot: Number of bootstrap replicates.
        alpha: 1 - confidence level (0.05 gives a 95% interval).
        seed: Seed of the ``numpy`` random generator.

    Returns:
        ``(point, lo, hi)``; all NaN if there are no scores.

    >>> point, lo, hi = stratified_bootstrap_ci({"a": [0.1, 0.2, 0.3], "b": [0.9]}, iqm, n_boot=500)
    >>> point, lo <= point <= hi
    (0.25, True)
    """
    strata = list(scores.values()) if isinstance(scores, Mapping) else [scores]
    arrays = [np.asarray(v, dtype=float).ravel() for v in strata]
    arrays = [a for a in arrays if a.size > 0]
    if not arrays:
        return float("nan"), float("nan"), float("nan")
    with np.errstate(invalid="ignore"):
        point = float(statistic(np.concatenate(arrays)))
    rng = np.random.default_rng(seed)
    # (n_boot, total runs): each stratum's block is resampled from that stratum only
    samples = np.concatenate([a[rng.integers(0, a.size, size=(n_boot, a.size))] for a in arrays], axis=1)
    with np.errstate(invalid="ignore"):
        boots = np.array([float(statistic(row)) for row in samples])
    lo, hi = _percentile_interval(boots, alpha)
    return point, lo, hi


def probability_of_improvement(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """P(X > Y) + 0.5 P(X = Y) over all pairs of runs: the Mann-Whitney U statistic of ``x`` over ``y`` / (n m).

    This is rliable's probability of improvement on one task (a tie counts one half). Values compare as plain
    numbers, ``inf`` included (``inf == inf`` is a tie); for a lower-is-better metric pass negated values.
    ``probability_of_improvement(x, y) + probability_of_improvement(y, x) == 1``.

    Args:
        x: Scores of the runs of method X.
        y: Scores of the runs of method Y.

    Returns:
        The probability in [0, 1]; NaN if either sample is empty or contains NaN.

    >>> probability_of_improvement([3.0, 4.0], [1.0, 3.0])
    0.875
    """
    a = np.asarray(x, dtype=float).ravel()
    b = np.sort(np.asarray(y, dtype=float).ravel())
    if a.size == 0 or b.size == 0 or np.isnan(a).any() or np.isnan(b).any():
        return float("nan")
    below = np.searchsorted(b, a, side="left")  # for each x: number of y < x
    below_or_tied = np.searchsorted(b, a, side="right")  # number of y <= x
    u = below.sum() + 0.5 * (below_or_tied - below).sum()
    return float(u / (a.size * b.size))


def probability_of_improvement_ci(
    x: Sequence[float] | np.ndarray,
    y: Sequence[float] | np.ndarray,
    n_boot: int = 2000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float, float]:
    """(point, low, high) of :func:`probability_of_improvement` of ``x`` over ``y``.

    A stratified bootstrap with ``x`` and ``y`` as the two strata: each replicate resamples the runs of ``x``
    and of ``y`` with replacement, independently; the interval is the outward percentile interval of
    :func:`stratified_bootstrap_ci`.

    Args:
        x: Scores of the runs of method X.
        y: Scores of the runs of method Y.
        n_boot: Number of bootstrap replicates.
        alpha: 1 - confidence level.
        seed: Seed of the ``numpy`` random generator.

    Returns:
        ``(point, lo, hi)``; all NaN if either sample is empty.

    >>> p, lo, hi = probability_of_improvement_ci([3.0, 4.0, 5.0], [1.0, 2.0, 3.0], n_boot=500)
    >>> p, lo <= p <= hi
    (0.9444444444444444, True)
    """
    a = np.asarray(x, dtype=float).ravel()
    b = np.asarray(y, dtype=float).ravel()
    if a.size == 0 or b.size == 0:
        return float("nan"), float("nan"), float("nan")
    n = a.size
    return stratified_bootstrap_ci(
        {"x": a, "y": b},
        lambda pooled: probability_of_improvement(pooled[:n], pooled[n:]),
        n_boot=n_boot,
        alpha=alpha,
        seed=seed,
    )


def auc(evals: Sequence[tuple[int, float]], total_steps: int | None = None) -> float:
    """Normalised area under the eval-accuracy curve: trapezoid-rule area over step / step span.

    The points are taken in step order; the span runs from the first evaluated step to the last one, or to
    ``total_steps`` if given, the last value being held flat up to it. A constant curve at ``c`` gives ``c``;
    a single point (or all points at one step) gives its value (their mean).

    Args:
        evals: ``(step, accuracy)`` pairs.
        total_steps: Step the curve is extended to (flat); must not precede the last evaluated step.

    Returns:
        The step-weighted mean accuracy; NaN if ``evals`` is empty.

    Raises:
        ValueError: If ``total_steps`` is before the last evaluated step.

    >>> auc([(0, 0.0), (10, 1.0)])
    0.5
    >>> auc([(0, 0.0), (10, 1.0)], total_steps=20)
    0.75
    """
    if len(evals) == 0:
        return float("nan")
    pts = sorted(((float(s), float(v)) for s, v in evals), key=lambda p: p[0])
    steps = np.array([p[0] for p in pts])
    vals = np.array([p[1] for p in pts])
    if total_steps is not None:
        if total_steps < steps[-1]:
            raise ValueError(f"total_steps={total_steps} precedes the last evaluated step {steps[-1]:g}")
        steps = np.append(steps, float(total_steps))
        vals = np.append(vals, vals[-1])
    span = steps[-1] - steps[0]
    if span == 0:
        return float(np.mean(vals[: len(pts)]))
    area = float(np.sum(np.diff(steps) * (vals[1:] + vals[:-1]) / 2))
    return area / float(span)
