"""CoNLL-style token/tag files: one `token<sep>...<sep>tag` line per word, sentences between delimiter lines."""

from __future__ import annotations

from pathlib import Path

from peftstd.data.examples import TokenExample
from peftstd.errors import DataError


def parse_conll(text: str, name: str, separator: str | None = None, sentence_delimiter: str | None = None) -> list[TokenExample]:
    """Sentences of `text`. The token is the first field and the tag the last; `separator` None splits on
    whitespace. `sentence_delimiter` None ends a sentence at any line that is blank once stripped (this
    also covers files whose delimiter line holds only a tab); otherwise at lines equal to it. Lines
    starting with -DOCSTART- are skipped."""
    sentences: list[TokenExample] = []
    tokens: list[str] = []
    tags: list[str] = []
    start = 1

    def close(line_number: int) -> None:
        nonlocal tokens, tags, start
        if tokens:
            sentences.append(TokenExample(tuple(tokens), tuple(tags), origin=f"{name}:{start}"))
        tokens, tags, start = [], [], line_number + 1

    for number, line in enumerate(text.splitlines(), start=1):
        is_delimiter = not line.strip() if sentence_delimiter is None else line == sentence_delimiter
        if is_delimiter or line.startswith("-DOCSTART-"):
            close(number)
            continue
        fields = line.split(separator) if separator else line.split()
        if len(fields) < 2 or not fields[0] or not fields[-1].strip():
            raise DataError(f"{name}:{number}: expected 'token{separator or ' '}tag', got {line[:60]!r}")
        if not tokens:
            start = number
        tokens.append(fields[0])
        tags.append(fields[-1].strip())
    close(len(text.splitlines()))
    return sentences


def read_conll(path: Path, separator: str | None, sentence_delimiter: str | None) -> list[TokenExample]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DataError(f"data file {str(path)!r} is not UTF-8; re-encode it as UTF-8") from None
    return parse_conll(text, path.name, separator, sentence_delimiter)
