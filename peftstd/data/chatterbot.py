"""English question/answer pairs of the chatterbot-corpus 1.3.3 sdist (21 topic files of short conversations).

Each conversation is a list of turns; every consecutive pair of turns becomes a prompt and its response.
The corpus repeats many pairs across and within its files: only the first of identical pairs is kept, or a
random split would put copies of test pairs into training (58 of the first 120 test pairs before this).
Its text licence is unclear, so it is fetched at run time into the cache (pinned by sha256), never committed.
"""

from __future__ import annotations

import itertools
import tarfile

import yaml

from peftstd.data.cache import fetch
from peftstd.data.examples import PromptExample

SDIST_URL = (
    "https://files.pythonhosted.org/packages/ba/62/df61012e843f93b9037b2831997b22547f16d1d379bbdb49ffabf49f8eed/"
    "chatterbot_corpus-1.3.3.tar.gz"
)
SDIST_SHA256 = "615b5c4c605154f60ae51d03ed918ed92e9d32bc2b144b759bbc64ecdbe18481"
ENGLISH = "chatterbot_corpus-1.3.3/chatterbot_corpus/data/english/"


def load_chatterbot_english() -> list[PromptExample]:
    sdist = fetch(SDIST_URL, SDIST_SHA256, "chatterbot_corpus-1.3.3.tar.gz")
    pairs, seen = [], set()
    with tarfile.open(sdist) as archive:
        members = sorted((m for m in archive.getmembers() if m.name.startswith(ENGLISH) and m.name.endswith(".yml")), key=lambda m: m.name)
        for member in members:
            document = yaml.safe_load(archive.extractfile(member).read().decode("utf-8")) or {}
            topic = member.name.rsplit("/", 1)[-1]
            for number, conversation in enumerate(document.get("conversations") or [], start=1):
                turns = [str(turn).strip() for turn in conversation if turn is not None]
                for prompt, response in itertools.pairwise(turns):
                    if len(prompt) > 1 and len(response) > 1 and (prompt, response) not in seen:  # a few turns are one character
                        seen.add((prompt, response))
                        pairs.append(PromptExample(prompt, response, origin=f"{topic}:conversation {number}"))
    return pairs
