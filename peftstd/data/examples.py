"""The in-memory form of a classification dataset."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Example:
    text: str
    label: str
    text_pair: str | None = None
    origin: str = ""  # "file:line" of the row, for error messages


@dataclass
class Splits:
    train: list[Example]
    validation: list[Example]
    test: list[Example]
    skipped_rows: int = 0
    sources: dict[str, str] = field(default_factory=dict)  # split -> where it came from

    def items(self):
        return (("train", self.train), ("validation", self.validation), ("test", self.test))

    def sha256(self) -> dict[str, str]:
        """A content hash per split (text, pair and label of every row, in order)."""
        return {name: hash_examples(rows) for name, rows in self.items()}


def hash_examples(rows: list[Example]) -> str:
    digest = hashlib.sha256()
    for row in rows:
        digest.update(json.dumps([row.text, row.text_pair, row.label], ensure_ascii=False).encode())
        digest.update(b"\n")
    return digest.hexdigest()
