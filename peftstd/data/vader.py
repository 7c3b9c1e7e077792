"""VADER movie-review snippets (Hutto & Gilbert, ICWSM 2014) as binary sentiment.

The ground truth ships inside the vaderSentiment 3.3.2 sdist on PyPI; its text licence is
unclear, so it is fetched at run time into the cache (pinned by sha256) and never committed.
Each snippet carries the mean of 10 human ratings in [-4, 4]; we keep |rating| >= 0.5 and
label it positive/negative, dropping the near-neutral ones.
"""

from __future__ import annotations

import io
import tarfile

from peftstd.data.cache import fetch
from peftstd.data.examples import Example

SDIST_URL = (
    "https://files.pythonhosted.org/packages/77/8c/4a48c10a50f750ae565e341e697d74a38075a3e43ff0df6f1ab72e186902/"
    "vaderSentiment-3.3.2.tar.gz"
)
SDIST_SHA256 = "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9"
INNER_ARCHIVE = "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz"
MOVIE_FILE = "hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt"
NEUTRAL_BAND = 0.5


def load_vader_movies() -> list[Example]:
    sdist = fetch(SDIST_URL, SDIST_SHA256, "vaderSentiment-3.3.2.tar.gz")
    with tarfile.open(sdist) as outer:
        inner_bytes = outer.extractfile(INNER_ARCHIVE).read()
    with tarfile.open(fileobj=io.BytesIO(inner_bytes)) as inner:
        text = inner.extractfile(MOVIE_FILE).read().decode("utf-8")
    examples = []
    for line_number, line in enumerate(text.splitlines(), start=1):
        _, rating, snippet = line.split("\t", 2)
        score = float(rating)
        if abs(score) >= NEUTRAL_BAND and snippet.strip():
            label = "positive" if score > 0 else "negative"
            examples.append(Example(text=snippet.strip(), label=label, origin=f"{MOVIE_FILE}:{line_number}"))
    return examples
