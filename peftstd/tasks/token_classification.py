"""Token classification (NER and other word tagging in BIO/IOB2): token-classification head, cross-entropy on
the first word piece of each word, entity-level precision/recall/F1 with seqeval (micro and per type)."""

from __future__ import annotations

import numpy as np

from peftstd.data.examples import Splits, TokenExample
from peftstd.errors import DataError
from peftstd.tasks.base import IGNORE, EncodedSplit, Task


def tag_order(tag: str) -> tuple[str, int]:
    """'O' first, then each entity type's B- before its I-."""
    return ("", 0) if tag == "O" else (tag[2:], 0 if tag.startswith("B-") else 1)


def first_pieces(word_ids: list[int | None]) -> dict[int, int]:
    """Word index -> position of its first word piece, from a fast tokenizer's `word_ids()`."""
    positions: dict[int, int] = {}
    for position, word in enumerate(word_ids):
        if word is not None:
            positions.setdefault(word, position)
    return positions


class TokenClassification(Task):
    name = "token-classification"
    peft_task_type = "TOKEN_CLS"
    head_candidates = ("classifier", "score")
    primary_metric = "f1"
    auto_model, ort_model = "AutoModelForTokenClassification", "ORTModelForTokenClassification"
    labelled_head = True
    card_metrics = (("f1", "f1", "Entity micro F1"), ("precision", "precision", "Entity micro precision"),
                    ("recall", "recall", "Entity micro recall"), ("accuracy", "accuracy", "Token accuracy"))

    def label_names(self, configured: list[str] | None, splits: Splits) -> list[str]:
        """Tag names in index order; every tag must be BIO ('O', 'B-type', 'I-type') and known."""
        seen = {tag for _, rows in splits.items() for row in rows for tag in row.tags}
        malformed = sorted(t for t in seen if t != "O" and not (t[:2] in ("B-", "I-") and len(t) > 2))
        if malformed:
            raise DataError(f"tags {malformed[:5]} are not BIO; token classification expects 'O', 'B-<type>' and 'I-<type>'")
        names = list(configured) if configured else sorted({t for row in splits.train for t in row.tags} | {"O"}, key=tag_order)
        unknown = sorted(seen - set(names))
        if unknown:
            source = "task.labels" if configured else "the training split"
            raise DataError(f"tags {unknown[:5]} of the validation/test data are not in {source}; list every tag under task.labels")
        self.labels = names
        return names

    def encode(self, tokenizer, rows: list[TokenExample], labels: list[str], max_length: int,
               label_all_subwords: bool = False, **_) -> EncodedSplit:
        """Word pieces of each sentence; the first piece of a word carries its tag, the others IGNORE
        (or, with `label_all_subwords`, the word's tag with B- turned into I-)."""
        if not tokenizer.is_fast:
            raise DataError("token classification needs a fast tokenizer (word alignment); this model has none")
        words = [list(row.tokens) for row in rows]
        full = tokenizer(words, is_split_into_words=True, truncation=False, verbose=False)["input_ids"]
        encoded = tokenizer(words, is_split_into_words=True, truncation=True, max_length=max_length)
        index = {name: i for i, name in enumerate(labels)}
        keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in encoded]
        features = []
        for i, row in enumerate(rows):
            previous, piece_labels = None, []
            for word in encoded.word_ids(i):
                if word is None:
                    piece_labels.append(IGNORE)
                elif word != previous:
                    piece_labels.append(index[row.tags[word]])
                elif label_all_subwords:
                    tag = row.tags[word]
                    piece_labels.append(index.get("I-" + tag[2:], index[tag]) if tag.startswith("B-") else index[tag])
                else:
                    piece_labels.append(IGNORE)
                previous = word
            features.append({**{k: encoded[k][i] for k in keys}, "labels": piece_labels})
        lengths = [len(f["input_ids"]) for f in features]
        return EncodedSplit(features, lengths, truncated=sum(len(ids) > max_length for ids in full))

    def collator(self, tokenizer):
        from transformers import DataCollatorForTokenClassification

        return DataCollatorForTokenClassification(tokenizer, label_pad_token_id=IGNORE)

    def predict(self, logits: np.ndarray) -> np.ndarray:
        return logits.argmax(axis=-1)

    @staticmethod
    def word_sequences(ids: np.ndarray, label_ids: np.ndarray, labels: list[str]) -> list[list[str]]:
        """Per sentence, the tags at the scored positions (the first piece of each word)."""
        return [[labels[int(t)] for t, gold in zip(row, gold_row) if gold != IGNORE] for row, gold_row in zip(ids, label_ids)]

    def metrics(self, logits: np.ndarray, label_ids: np.ndarray) -> dict[str, float]:
        from seqeval.metrics import accuracy_score, f1_score, precision_score, recall_score

        labels = self.labels
        true = self.word_sequences(label_ids, label_ids, labels)
        pred = self.word_sequences(self.predict(logits), label_ids, labels)
        return {"f1": float(f1_score(true, pred, zero_division=0)), "precision": float(precision_score(true, pred, zero_division=0)),
                "recall": float(recall_score(true, pred, zero_division=0)), "accuracy": float(accuracy_score(true, pred))}

    def prediction_records(self, rows: list[TokenExample], logits: np.ndarray, label_ids: np.ndarray, labels: list[str]) -> list[dict]:
        from seqeval.metrics.sequence_labeling import get_entities

        predicted = self.word_sequences(self.predict(logits), label_ids, labels)
        records = []
        for row, tags, row_logits, gold in zip(rows, predicted, logits, label_ids):
            tags = tags + ["O"] * (len(row.tokens) - len(tags))  # words cut by max_length are predicted O
            records.append({
                "origin": row.origin, "tokens": list(row.tokens), "tags": list(row.tags), "predicted": tags,
                "entities": [{"type": t, "start": s, "end": e + 1, "text": " ".join(row.tokens[s : e + 1])} for t, s, e in get_entities(tags)],
                "word_logits": row_logits[gold != IGNORE].round(5).tolist(),
            })
        return records

    def report(self, logits: np.ndarray, label_ids: np.ndarray, labels: list[str], rows: list[TokenExample] | None = None) -> str:
        """Markdown: seqeval's per-type report, then test sentences with gold and predicted entity spans."""
        from seqeval.metrics import classification_report

        true = self.word_sequences(label_ids, label_ids, labels)
        pred = self.word_sequences(self.predict(logits), label_ids, labels)
        table = classification_report(true, pred, digits=4, zero_division=0)
        lines = ["### Entity-level report (test, seqeval, micro and per type)", "", "```", table.rstrip(), "```", ""]
        if rows:
            records = self.prediction_records(rows, logits, label_ids, labels)
            shown = [r for r in records if r["entities"] or any(t != "O" for t in r["tags"])][:12]
            lines += ["### Sample test predictions (entity spans on the original words)", "",
                      "| gold | predicted |", "|---|---|"]
            for record in shown:
                lines.append(f"| {spans(record['tokens'], record['tags'])} | {spans(record['tokens'], record['predicted'])} |")
        return "\n".join(lines) + "\n"


def spans(tokens: list[str], tags: list[str]) -> str:
    """Words with entities bracketed and typed: `[Empire State Building]<sub>facility</sub> = ...` (Markdown-safe)."""
    from seqeval.metrics.sequence_labeling import get_entities

    words = [w.replace("|", "\\|") for w in tokens]
    for kind, start, end in sorted(get_entities(tags), key=lambda e: -e[1]):
        words[start : end + 1] = [f"**[{' '.join(words[start : end + 1])}]**<sub>{kind}</sub>"]
    return " ".join(words)
