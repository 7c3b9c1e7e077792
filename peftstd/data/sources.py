"""Turn a `data:` section into train/validation/test examples.

A source is a registered dataset name, a local .jsonl/.csv/.tsv/.parquet file with a
column mapping (token classification: also CoNLL-style .conll/.txt/.bio/.iob files), or a
hub dataset id. Rows with missing text or label are reported with file and line numbers
(policy `data.bad_rows`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from peftstd.data.conll import read_conll
from peftstd.data.examples import Example, PromptExample, QAExample, Splits, TokenExample
from peftstd.data.registry import DATASETS
from peftstd.data.splits import split_examples
from peftstd.errors import DataError

FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet")
CONLL_SUFFIXES = (".conll", ".txt", ".bio", ".iob")
TOKEN_TASKS = ("token-classification",)
PROMPT_TASKS = ("causal-lm", "seq2seq")  # prompt/response rows


def load_splits(section, task: str = "text-classification") -> Splits:
    """The three splits of `section` (a `DataSection`) for `task`, validated and deterministic."""
    bad: list[str] = []
    named = read_source(section.source, section, bad, task)
    sources = {"train": section.source}
    if "validation" in named and "test" in named:
        train, validation, test = named["train"], named["validation"], named["test"]
        sources.update(validation=section.source, test=section.source)
    else:
        # A split with a file of its own takes nothing from `source`: its fraction goes to the others, in proportion,
        # instead of being cut out and thrown away.
        own = {"validation": bool(section.validation_source), "test": bool(section.test_source)}
        fractions = (section.split.train, 0.0 if own["validation"] else section.split.validation, 0.0 if own["test"] else section.split.test)
        if any(own.values()):
            fractions = tuple(f / sum(fractions) for f in fractions)
        train, validation, test = split_examples(named["train"], fractions, section.split_seed)
        share = {name: f"{section.source} (split, {fraction:.3f})" for name, fraction in zip(("train", "validation", "test"), fractions)}
        sources.update(validation=share["validation"], test=share["test"])
        if any(own.values()):
            sources["train"] = share["train"]
    if section.validation_source:
        validation = read_source(section.validation_source, section, bad, task)["train"]
        sources["validation"] = section.validation_source
    if section.test_source:
        test = read_source(section.test_source, section, bad, task)["train"]
        sources["test"] = section.test_source
    if bad and section.bad_rows == "error":
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise DataError(
            f"{len(bad)} row(s) with missing text or label ({shown}); fix them or set data.bad_rows=skip"
        )
    if section.max_train_samples:
        train = train[: section.max_train_samples]
    for name, rows in (("train", train), ("validation", validation), ("test", test)):
        if not rows:
            raise DataError(f"the {name} split of {sources[name]!r} is empty; give more data or change data.split")
    return Splits(train, validation, test, skipped_rows=len(bad), sources=sources)


def make_paths_absolute(section) -> None:
    """Local data files named relative to the working directory become absolute, so the config a run records
    reads the same files from anywhere (export works in a scratch directory; eval may run from elsewhere)."""
    for key in ("source", "validation_source", "test_source"):
        spec = getattr(section, key, None)
        if spec and spec not in DATASETS and Path(spec).expanduser().exists():
            setattr(section, key, str(Path(spec).expanduser().resolve()))


def read_source(spec: str, section, bad: list[str], task: str = "text-classification") -> dict[str, list]:
    """Examples of one source, keyed by split name ('train' only unless the source has its own splits)."""
    if spec in DATASETS:
        if task == "corpus":  # pretraining reads the text of any registered dataset
            return {"train": [Example(row.text, "", origin=row.origin) for row in DATASETS[spec].load()]}
        if DATASETS[spec].task != task and not {DATASETS[spec].task, task} <= set(PROMPT_TASKS):
            raise DataError(f"dataset {spec!r} is a {DATASETS[spec].task} dataset, not {task}; "
                            f"{task} datasets: {', '.join(n for n, d in DATASETS.items() if d.task == task) or 'none registered'}")
        return {"train": DATASETS[spec].load()}
    path = Path(spec).expanduser()
    if path.exists() or path.suffix.lower() in FILE_SUFFIXES + CONLL_SUFFIXES or spec.startswith((".", "/", "~")):
        return {"train": read_file(path, section, bad, task)}
    return read_hub_dataset(spec, section, bad, task)


def read_file(path: Path, section, bad: list[str], task: str = "text-classification") -> list:
    if not path.is_file():
        raise DataError(f"data file {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    nested = (".jsonl", ".json", ".parquet")  # rows holding lists or dicts
    allowed = {"corpus": (*FILE_SUFFIXES, ".txt"), "causal-lm": nested, "seq2seq": FILE_SUFFIXES, "question-answering": nested}.get(
        task, (".jsonl", ".json", *CONLL_SUFFIXES) if task in TOKEN_TASKS else FILE_SUFFIXES)
    if suffix not in allowed:
        raise DataError(f"data file {str(path)!r} has an unsupported type for {task}; allowed: {', '.join(allowed)}")
    if path.stat().st_size == 0:
        raise DataError(f"data file {str(path)!r} is empty")
    if task == "corpus" and suffix == ".txt":  # plain text: one example per non-blank line
        lines = path.read_text(encoding="utf-8", errors="strict").splitlines()
        examples = [Example(line.strip(), "", origin=f"{path.name}:{i}") for i, line in enumerate(lines, start=1) if line.strip()]
    elif suffix in CONLL_SUFFIXES:
        examples = read_conll(path, section.conll_separator, section.conll_sentence_delimiter)
    elif suffix in (".jsonl", ".json"):
        examples = to_examples(read_jsonl(path), section, bad, task)
    else:
        examples = to_examples(read_table(path, suffix), section, bad, task)
    if not examples and not bad:
        raise DataError(f"data file {str(path)!r} holds no rows")
    return examples


def source_columns(spec: str) -> list[str]:
    """The columns of a local jsonl/json/csv/tsv/parquet file's first row (for error messages), or [] when unknown."""
    path = Path(spec).expanduser()
    suffix = path.suffix.lower()
    try:
        records = read_jsonl(path) if suffix in (".jsonl", ".json") else read_table(path, suffix) if suffix in FILE_SUFFIXES else []
        return list(next(iter(records))[1]) if records else []
    except (DataError, OSError, StopIteration):
        return []


def read_jsonl(path: Path) -> Iterable[tuple[str, dict[str, Any]]]:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise DataError(f"data file {str(path)!r} is not UTF-8 (bad byte at line {line}); re-encode it as UTF-8") from None
    if path.suffix.lower() == ".json" and text.lstrip().startswith("["):
        rows = json.loads(text)
        return [(f"{path.name}:{i + 1}", row) for i, row in enumerate(rows)]
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"{path.name}:{number}: not valid JSON ({error.msg})") from None
        if not isinstance(row, dict):
            raise DataError(f"{path.name}:{number}: each line must be a JSON object, got {type(row).__name__}")
        records.append((f"{path.name}:{number}", row))
    return records


def read_table(path: Path, suffix: str) -> Iterable[tuple[str, dict[str, Any]]]:
    import pandas as pd

    try:
        if suffix == ".parquet":
            frame = pd.read_parquet(path)
            first_line = 1
        else:
            frame = pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", encoding="utf-8", keep_default_na=False, na_values=[""])
            first_line = 2  # line 1 is the header
    except UnicodeDecodeError:
        raise DataError(f"data file {str(path)!r} is not UTF-8; re-encode it as UTF-8") from None
    except Exception as error:  # noqa: BLE001 - pandas raises many parser types; all mean "unreadable file"
        raise DataError(f"data file {str(path)!r} could not be read: {str(error).splitlines()[0]}") from None
    return [(f"{path.name}:{i + first_line}", row) for i, row in enumerate(frame.to_dict("records"))]


def read_hub_dataset(spec: str, section, bad: list[str], task: str = "text-classification") -> dict[str, list]:
    import datasets

    try:
        loaded = datasets.load_dataset(spec)
    except Exception as error:  # noqa: BLE001 - network, auth, missing repo: all are "cannot load this id"
        raise DataError(
            f"data.source {spec!r} is not a registered dataset ({', '.join(DATASETS)}), a local file, "
            f"or a loadable hub dataset: {str(error).splitlines()[0]}"
        ) from None
    aliases = {"train": "train", "validation": "validation", "dev": "validation", "test": "test"}
    out: dict[str, list[Example]] = {}
    for split_name, rows in loaded.items():
        if split_name in aliases:
            records = ((f"{spec}[{split_name}]:{i + 1}", row) for i, row in enumerate(rows))
            out[aliases[split_name]] = to_examples(records, section, bad, task, tag_names(rows.features, section, task))
    if "train" not in out:
        raise DataError(f"hub dataset {spec!r} has no 'train' split (it has: {', '.join(loaded)})")
    return out


def tag_names(features, section, task: str) -> list[str] | None:
    """Names of integer-coded tags (a hub dataset's ClassLabel sequence, e.g. conll2003's ner_tags)."""
    feature = features.get(section.tags_column) if task in TOKEN_TASKS else None
    inner = getattr(feature, "feature", None)
    return list(inner.names) if inner is not None and hasattr(inner, "names") else None


def to_examples(records: Iterable[tuple[str, dict[str, Any]]], section, bad: list[str], task: str = "text-classification",
                names: list[str] | None = None) -> list:
    if task in TOKEN_TASKS:
        return to_token_examples(records, section, bad, names)
    if task in PROMPT_TASKS:
        return to_prompt_examples(records, section, bad)
    if task == "question-answering":
        return to_qa_examples(records, section, bad)
    examples = []
    for origin, row in records:
        text = row.get(section.text_column)
        label = row.get(section.label_column) if task != "corpus" else ""  # a corpus needs text only
        pair = row.get(section.text_pair_column) if section.text_pair_column else None
        if is_missing(text) or (task != "corpus" and is_missing(label)) or (section.text_pair_column and is_missing(pair)):
            bad.append(origin)
            continue
        examples.append(Example(text=str(text), label=str(label), text_pair=None if pair is None else str(pair), origin=origin))
    return examples


def to_token_examples(records, section, bad: list[str], names: list[str] | None) -> list[TokenExample]:
    """Rows with a list of words (`data.tokens_column`) and a list of tags (`data.tags_column`) of equal length."""
    examples = []
    for origin, row in records:
        tokens, tags = row.get(section.tokens_column), row.get(section.tags_column)
        if not isinstance(tokens, (list, tuple)) or not isinstance(tags, (list, tuple)) or not tokens:
            bad.append(origin)
            continue
        if len(tokens) != len(tags):
            raise DataError(f"{origin}: {len(tokens)} tokens but {len(tags)} tags; each word needs exactly one tag")
        tags = [names[t] if names and isinstance(t, int) else str(t) for t in tags]
        examples.append(TokenExample(tuple(str(t) for t in tokens), tuple(tags), origin=origin))
    return examples


def to_prompt_examples(records, section, bad: list[str]) -> list[PromptExample]:
    """Prompt/response columns, or a chat `messages` list ({role, content} dicts) whose last turn is the
    assistant's response to learn."""
    examples = []
    for origin, row in records:
        messages = row.get(section.messages_column)
        if isinstance(messages, (list, tuple)) and len(messages) >= 2:
            turns = [(str(m.get("role")), str(m.get("content"))) for m in messages if isinstance(m, dict)]
            if len(turns) != len(messages) or turns[-1][0] != "assistant" or turns[-2][0] != "user":
                raise DataError(f"{origin}: {section.messages_column} must be {{role, content}} turns ending with a user turn and the assistant's reply")
            examples.append(PromptExample(turns[-2][1], turns[-1][1], origin=origin, history=tuple(turns[:-2])))
            continue
        prompt, response = row.get(section.prompt_column), row.get(section.response_column)
        if is_missing(prompt) or is_missing(response):
            bad.append(origin)
            continue
        examples.append(PromptExample(str(prompt), str(response), origin=origin))
    return examples


def to_qa_examples(records, section, bad: list[str]) -> list[QAExample]:
    """SQuAD-style rows: question, context, and answers {text: [...], answer_start: [...]} whose every
    answer must be found at its character offset in the context."""
    examples = []
    for origin, row in records:
        question, context, answers = row.get(section.question_column), row.get(section.context_column), row.get(section.answers_column)
        texts = answers.get("text") if isinstance(answers, dict) else None
        starts = answers.get("answer_start") if isinstance(answers, dict) else None
        if is_missing(question) or is_missing(context) or texts is None or starts is None or not len(texts):
            bad.append(origin)
            continue
        texts, starts = [str(t) for t in texts], [int(a) for a in starts]
        if len(texts) != len(starts):
            raise DataError(f"{origin}: {section.answers_column} has {len(texts)} answer texts but {len(starts)} answer_start offsets")
        for text, start in zip(texts, starts):
            if str(context)[start : start + len(text)] != text:
                raise DataError(f"{origin}: answer {text!r} is not at character {start} of the context "
                                f"(found {str(context)[start : start + len(text)]!r}); answer_start counts characters from 0")
        examples.append(QAExample(str(question), str(context), tuple(texts), tuple(starts), origin=origin))
    return examples


def is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()
