"""Bootstrap confidence intervals and the paired bootstrap test (Koehn 2004; Berg-Kirkpatrick et al. 2012).

scikit-learn and scipy have no paired bootstrap over an arbitrary metric; it is a dozen lines of numpy.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Metric = Callable[[np.ndarray], float]  # metric of the examples at these indices


def interval(metric: Metric, n: int, resamples: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    values = [metric(rng.integers(0, n, n)) for _ in range(resamples)]
    tail = (1 - level) / 2 * 100
    return float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))


def intervals(metrics: Callable[[np.ndarray], dict[str, float]], names: tuple[str, ...], n: int, resamples: int = 1000,
              seed: int = 0, level: float = 0.95) -> dict[str, tuple[float, float]]:
    """`interval` of several metrics that one call computes together, on the same resamples."""
    rng = np.random.default_rng(seed)
    values = [metrics(rng.integers(0, n, n)) for _ in range(resamples)]
    tail = (1 - level) / 2 * 100
    return {name: (float(np.percentile([v[name] for v in values], tail)), float(np.percentile([v[name] for v in values], 100 - tail)))
            for name in names}


def paired_test(metric_a: Metric, metric_b: Metric, n: int, resamples: int = 1000, seed: int = 0) -> dict[str, float]:
    """Observed difference B - A, its 95% interval, and the two-sided p-value of 'no difference'.

    Resampled differences are centred on the observed one (the null distribution); p is the share of
    them at least as far from zero as the observed difference.
    """
    return paired_tests(lambda idx: {"m": metric_a(idx)}, lambda idx: {"m": metric_b(idx)}, ("m",), n, resamples, seed)["m"]


def paired_tests(metrics_a: Callable[[np.ndarray], dict[str, float]], metrics_b: Callable[[np.ndarray], dict[str, float]],
                 names: tuple[str, ...], n: int, resamples: int = 1000, seed: int = 0) -> dict[str, dict[str, float]]:
    """`paired_test` of several metrics that one call computes together, on the same resamples."""
    everything = np.arange(n)
    a, b = metrics_a(everything), metrics_b(everything)
    rng = np.random.default_rng(seed)
    differences = {name: np.empty(resamples) for name in names}
    for i in range(resamples):
        index = rng.integers(0, n, n)
        a_i, b_i = metrics_a(index), metrics_b(index)
        for name in names:
            differences[name][i] = b_i[name] - a_i[name]
    out = {}
    for name in names:
        observed = b[name] - a[name]
        p_value = float(np.mean(np.abs(differences[name] - observed) >= abs(observed) - 1e-12))
        low, high = np.percentile(differences[name], [2.5, 97.5])
        out[name] = {"difference": float(observed), "ci95": [float(low), float(high)], "p_value": p_value, "resamples": resamples}
    return out
