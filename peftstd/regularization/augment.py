"""Text augmentation without external data: random word deletion, swap and insertion (the three
vocabulary-free operations of EDA, Wei & Zou 2019). Written here because the library that offers
them (nlpaug) has been unmaintained since 2022 and would pull pandas and its own model loaders in for
twenty lines; inserted words come from the model's own tokenizer vocabulary, so they are in-vocabulary.
"""

from __future__ import annotations

import random
from dataclasses import replace

from peftstd.data.examples import Example


def insertable_words(tokenizer) -> list[str]:
    """Whole-word, alphabetic entries of the tokenizer vocabulary (no special tokens, no '##' pieces)."""
    special = set(tokenizer.all_special_tokens)
    words = [t.lstrip("Ġ▁") for t in tokenizer.get_vocab() if t not in special and not t.startswith("##")]
    return sorted({w for w in words if w.isalpha() and len(w) > 2})


def augment_text(text: str, rate: float, operations: list[str], vocabulary: list[str], rng: random.Random) -> str:
    words = text.split()
    for _ in range(max(1, round(rate * len(words)))):
        operation = rng.choice(operations)
        if operation == "delete" and len(words) > 1:
            del words[rng.randrange(len(words))]
        elif operation == "swap" and len(words) > 1:
            i, j = rng.sample(range(len(words)), 2)
            words[i], words[j] = words[j], words[i]
        elif operation == "insert":
            words.insert(rng.randrange(len(words) + 1), rng.choice(vocabulary))
    return " ".join(words)


def augment_examples(rows: list[Example], copies: int, rate: float, operations: list[str], tokenizer, seed: int) -> list[Example]:
    """`copies` edited copies of every row (labels kept), deterministic in `seed`; text pairs are left as they are."""
    if copies == 0:
        return []
    rng, vocabulary = random.Random(seed), insertable_words(tokenizer)
    return [replace(row, text=augment_text(row.text, rate, operations, vocabulary, rng), origin=f"{row.origin}+aug{copy}")
            for copy in range(1, copies + 1) for row in rows]
