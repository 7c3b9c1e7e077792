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


def paired_test(metric_a: Metric, metric_b: Metric, n: int, resamples: int = 1000, seed: int = 0) -> dict[str, float]:
    """Observed difference B - A, its 95% interval, and the two-sided p-value of 'no difference'.

    Resampled differences are centred on the observed one (the null distribution); p is the share of
    them at least as far from zero as the observed difference.
    """
    everything = np.arange(n)
    observed = metric_b(everything) - metric_a(everything)
    rng = np.random.default_rng(seed)
    differences = np.empty(resamples)
    for i in range(resamples):
        index = rng.integers(0, n, n)
        differences[i] = metric_b(index) - metric_a(index)
    p_value = float(np.mean(np.abs(differences - observed) >= abs(observed) - 1e-12))
    low, high = np.percentile(differences, [2.5, 97.5])
    return {"difference": float(observed), "ci95": [float(low), float(high)], "p_value": p_value, "resamples": resamples}
