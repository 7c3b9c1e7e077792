"""The in-memory form of a dataset: one example type per task family."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Example:
    """A text (or text pair) with one label: text classification."""

    text: str
    label: str
    text_pair: str | None = None
    origin: str = ""  # "file:line" of the row, for error messages

    def content(self) -> list:
        return [self.text, self.text_pair, self.label]


@dataclass(frozen=True)
class TokenExample:
    """Words with one tag each (BIO/IOB2): token classification."""

    tokens: tuple[str, ...]
    tags: tuple[str, ...]
    origin: str = ""

    def content(self) -> list:
        return [list(self.tokens), list(self.tags)]

    @property
    def text(self) -> str:
        return " ".join(self.tokens)


@dataclass(frozen=True)
class PromptExample:
    """A prompt and the response to learn (causal-LM supervised fine-tuning); `history` holds earlier
    chat turns as (role, content) pairs, for chat-format data."""

    prompt: str
    response: str
    origin: str = ""
    history: tuple[tuple[str, str], ...] = ()

    def content(self) -> list:
        return [[list(turn) for turn in self.history], self.prompt, self.response]

    @property
    def text(self) -> str:
        return self.prompt

    def messages(self) -> list[dict[str, str]]:
        """The conversation up to the prompt, in the chat-template format."""
        return [{"role": role, "content": text} for role, text in self.history] + [{"role": "user", "content": self.prompt}]


@dataclass(frozen=True)
class QAExample:
    """A question about a context and its gold answers (SQuAD-style: text and character start in the context)."""

    question: str
    context: str
    answers: tuple[str, ...]
    answer_starts: tuple[int, ...]
    origin: str = ""

    def content(self) -> list:
        return [self.question, self.context, list(self.answers), list(self.answer_starts)]

    @property
    def text(self) -> str:
        return self.question


@dataclass
class Splits:
    train: list  # of one example type
    validation: list
    test: list
    skipped_rows: int = 0
    sources: dict[str, str] = field(default_factory=dict)  # split -> where it came from

    def items(self):
        return (("train", self.train), ("validation", self.validation), ("test", self.test))

    def sha256(self) -> dict[str, str]:
        """A content hash per split (text, pair and label of every row, in order)."""
        return {name: hash_examples(rows) for name, rows in self.items()}


def hash_examples(rows: list) -> str:
    digest = hashlib.sha256()
    for row in rows:
        digest.update(json.dumps(row.content(), ensure_ascii=False).encode())
        digest.update(b"\n")
    return digest.hexdigest()
