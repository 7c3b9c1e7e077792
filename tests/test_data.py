"""Data sources, deterministic splits and the bad-row contract."""

from __future__ import annotations

import pytest
from conftest import synthetic_rows, write_jsonl

from peftstd.config import load_config
from peftstd.data import load_splits
from peftstd.errors import DataError
from peftstd.tasks.classification import TextClassification


def section(source, *extra):
    return load_config(None, [f"data.source={source}", *extra]).data


def test_splits_are_deterministic_and_disjoint(tmp_path):
    source = write_jsonl(tmp_path / "d.jsonl", synthetic_rows(100))
    first, second = load_splits(section(source)), load_splits(section(source))
    assert first.sha256() == second.sha256()
    assert (len(first.train), len(first.validation), len(first.test)) == (80, 10, 10)
    origins = [{row.origin for row in rows} for _, rows in first.items()]
    assert not (origins[0] & origins[1]) and not (origins[0] & origins[2]) and not (origins[1] & origins[2])
    other_seed = load_splits(section(source, "data.split_seed=7"))
    assert other_seed.sha256()["test"] != first.sha256()["test"]


def test_csv_with_column_mapping(tmp_path):
    path = tmp_path / "reviews.csv"
    path.write_text("review,stars\n" + "".join(f"text number {i},{i % 3}\n" for i in range(30)))
    splits = load_splits(section(path, "data.text_column=review", "data.label_column=stars"))
    assert {row.label for row in splits.train} <= {"0", "1", "2"}
    assert splits.train[0].origin.startswith("reviews.csv:")


def test_missing_text_or_label_is_reported_with_line_numbers(tmp_path):
    rows = synthetic_rows(30)
    rows[3]["text"] = ""
    del rows[7]["label"]
    source = write_jsonl(tmp_path / "d.jsonl", rows)
    with pytest.raises(DataError, match=r"2 row\(s\) with missing text or label \(d.jsonl:4, d.jsonl:8\)"):
        load_splits(section(source))
    skipped = load_splits(section(source, "data.bad_rows=skip"))
    assert skipped.skipped_rows == 2
    assert sum(len(rows) for _, rows in skipped.items()) == 28


def test_non_utf8_file_names_the_line(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"text": "fine", "label": "a"}\n{"text": "caf\xe9", "label": "b"}\n')
    with pytest.raises(DataError, match="not UTF-8 .*line 2"):
        load_splits(section(path))


@pytest.mark.parametrize("content, message", [(b"", "is empty"), (b"\n\n", "holds no rows"), (b"not json\n", "not valid JSON")])
def test_empty_or_broken_files_are_refused(tmp_path, content, message):
    path = tmp_path / "d.jsonl"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        load_splits(section(path))


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_splits(section(tmp_path / "nope.jsonl"))


def test_labels_unseen_in_training_are_refused(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", synthetic_rows(20))
    test = write_jsonl(tmp_path / "test.jsonl", [{"text": "the movie", "label": "neutral"}])
    splits = load_splits(section(train, f"data.test_source={test}"))
    with pytest.raises(DataError, match="test label 'neutral' .*test.jsonl:1"):
        TextClassification().label_names(None, splits)


def test_subword_features_keep_lengths_and_count_truncation(tiny_model, tmp_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    rows = load_splits(section(write_jsonl(tmp_path / "d.jsonl", synthetic_rows(50)))).train
    encoded = TextClassification().encode(tokenizer, rows, ["negative", "positive"], max_length=8)
    assert max(encoded.lengths) == 8
    assert encoded.truncated == sum(len(row.text.split()) + 2 > 8 for row in rows)
    assert {f["labels"] for f in encoded.features} == {0, 1}


def test_a_split_with_its_own_file_wastes_none_of_source(tmp_path):
    """With data.test_source, source used to be cut 80/10/10 and its 10% test share thrown away."""
    from peftstd.errors import ConfigError

    train = write_jsonl(tmp_path / "train.jsonl", synthetic_rows(100, seed=1))
    test = write_jsonl(tmp_path / "test.jsonl", synthetic_rows(30, seed=2))
    splits = load_splits(load_config(None, [f"data.source={train}", f"data.test_source={test}"]).data)
    assert len(splits.train) + len(splits.validation) == 100 and len(splits.test) == 30
    assert len(splits.validation) == 11  # 0.1 of 0.9, rounded: the test share went to train and validation in proportion
    assert "(split, 0.889)" in splits.sources["train"] and splits.sources["test"] == str(test)
    explicit = load_splits(load_config(None, [f"data.source={train}", f"data.test_source={test}", "data.split.train=0.9",
                                              "data.split.validation=0.1", "data.split.test=0"]).data)
    assert len(explicit.train) + len(explicit.validation) == 100
    both = load_splits(load_config(None, [f"data.source={train}", f"data.test_source={test}", f"data.validation_source={test}"]).data)
    assert len(both.train) == 100
    with pytest.raises(ConfigError, match="data.split.test is 0 but data.test_source is not set"):
        load_config(None, [f"data.source={train}", "data.split.train=0.9", "data.split.validation=0.1", "data.split.test=0"])
