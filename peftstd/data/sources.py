"""Turn a `data:` section into train/validation/test examples.

A source is a registered dataset name, a local .jsonl/.csv/.tsv/.parquet file with a
column mapping, or a hub dataset id. Rows with missing text or label are reported with
file and line numbers (policy `data.bad_rows`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable

from peftstd.data.examples import Example, Splits
from peftstd.data.registry import DATASETS
from peftstd.data.splits import split_examples
from peftstd.errors import DataError

FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet")


def load_splits(section) -> Splits:
    """The three splits of `section` (a `DataSection`), validated and deterministic."""
    bad: list[str] = []
    named = read_source(section.source, section, bad)
    sources = {"train": section.source}
    if "validation" in named and "test" in named:
        train, validation, test = named["train"], named["validation"], named["test"]
        sources.update(validation=section.source, test=section.source)
    else:
        fractions = (section.split.train, section.split.validation, section.split.test)
        train, validation, test = split_examples(named["train"], fractions, section.split_seed)
        sources.update(validation=f"{section.source} (split)", test=f"{section.source} (split)")
    if section.validation_source:
        validation = read_source(section.validation_source, section, bad)["train"]
        sources["validation"] = section.validation_source
    if section.test_source:
        test = read_source(section.test_source, section, bad)["train"]
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


def read_source(spec: str, section, bad: list[str]) -> dict[str, list[Example]]:
    """Examples of one source, keyed by split name ('train' only unless the source has its own splits)."""
    if spec in DATASETS:
        return {"train": DATASETS[spec].load()}
    path = Path(spec).expanduser()
    if path.exists() or path.suffix.lower() in FILE_SUFFIXES or spec.startswith((".", "/", "~")):
        return {"train": read_file(path, section, bad)}
    return read_hub_dataset(spec, section, bad)


def read_file(path: Path, section, bad: list[str]) -> list[Example]:
    if not path.is_file():
        raise DataError(f"data file {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    if suffix not in FILE_SUFFIXES:
        raise DataError(f"data file {str(path)!r} has an unsupported type; allowed: {', '.join(FILE_SUFFIXES)}")
    if path.stat().st_size == 0:
        raise DataError(f"data file {str(path)!r} is empty")
    if suffix in (".jsonl", ".json"):
        records = read_jsonl(path)
    else:
        records = read_table(path, suffix)
    examples = to_examples(records, section, bad)
    if not examples and not bad:
        raise DataError(f"data file {str(path)!r} holds no rows")
    return examples


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
    except Exception as error:  # pandas raises many parser types; all mean "unreadable file"
        raise DataError(f"data file {str(path)!r} could not be read: {str(error).splitlines()[0]}") from None
    return [(f"{path.name}:{i + first_line}", row) for i, row in enumerate(frame.to_dict("records"))]


def read_hub_dataset(spec: str, section, bad: list[str]) -> dict[str, list[Example]]:
    import datasets

    try:
        loaded = datasets.load_dataset(spec)
    except Exception as error:  # network, auth, missing repo: all are "cannot load this id"
        raise DataError(
            f"data.source {spec!r} is not a registered dataset ({', '.join(DATASETS)}), a local file, "
            f"or a loadable hub dataset: {str(error).splitlines()[0]}"
        ) from None
    aliases = {"train": "train", "validation": "validation", "dev": "validation", "test": "test"}
    out: dict[str, list[Example]] = {}
    for split_name, rows in loaded.items():
        if split_name in aliases:
            records = ((f"{spec}[{split_name}]:{i + 1}", row) for i, row in enumerate(rows))
            out[aliases[split_name]] = to_examples(records, section, bad)
    if "train" not in out:
        raise DataError(f"hub dataset {spec!r} has no 'train' split (it has: {', '.join(loaded)})")
    return out


def to_examples(records: Iterable[tuple[str, dict[str, Any]]], section, bad: list[str]) -> list[Example]:
    examples = []
    for origin, row in records:
        text = row.get(section.text_column)
        label = row.get(section.label_column)
        pair = row.get(section.text_pair_column) if section.text_pair_column else None
        if is_missing(text) or is_missing(label) or (section.text_pair_column and is_missing(pair)):
            bad.append(origin)
            continue
        examples.append(Example(text=str(text), label=str(label), text_pair=None if pair is None else str(pair), origin=origin))
    return examples


def is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()
