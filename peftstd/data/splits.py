"""Deterministic train/validation/test splits of a single source."""

from __future__ import annotations

import numpy as np

from peftstd.data.examples import Example


def split_examples(
    rows: list[Example], fractions: tuple[float, float, float], seed: int
) -> tuple[list[Example], list[Example], list[Example]]:
    """Shuffle with `seed` (numpy's PCG64, stable across platforms) and cut by `fractions`."""
    order = np.random.default_rng(seed).permutation(len(rows))
    n_train = round(fractions[0] * len(rows))
    n_validation = round(fractions[1] * len(rows)) if fractions[2] else len(rows) - n_train  # no test: the rest validates
    picked = [rows[i] for i in order]
    return picked[:n_train], picked[n_train : n_train + n_validation], picked[n_train + n_validation :]
