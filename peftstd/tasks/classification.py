"""Text classification (binary and multi-class): sequence-classification head, cross-entropy,
accuracy and macro/micro precision/recall/F1 (scikit-learn)."""

from __future__ import annotations

import numpy as np

from peftstd.data.examples import Example, Splits
from peftstd.errors import DataError
from peftstd.tasks.base import EncodedSplit, Task


class TextClassification(Task):
    name = "text-classification"
    peft_task_type = "SEQ_CLS"
    head_candidates = ("classifier", "score")
    primary_metric = "accuracy"
    auto_model, ort_model = "AutoModelForSequenceClassification", "ORTModelForSequenceClassification"
    labelled_head = True
    card_metrics = (("accuracy", "accuracy", "Accuracy"), ("macro_f1", "f1", "Macro F1"),
                    ("macro_precision", "precision", "Macro precision"), ("macro_recall", "recall", "Macro recall"))

    def label_names(self, configured: list[str] | None, splits: Splits) -> list[str]:
        """Label names in index order; every validation/test label must be known."""
        names = list(configured) if configured else sorted({row.label for row in splits.train})
        if len(names) < 2:
            raise DataError(f"text classification needs at least 2 labels, the training split has {names}")
        known = set(names)
        for split_name, rows in splits.items():
            unknown = [row for row in rows if row.label not in known]
            if unknown:
                where = ", ".join(row.origin for row in unknown[:3])
                source = "task.labels" if configured else "the training split"
                raise DataError(
                    f"{split_name} label {unknown[0].label!r} ({where}) is not in {source} {names}; "
                    "fix the data or list every label under task.labels"
                )
        return names

    def encode(self, tokenizer, rows: list[Example], labels: list[str], max_length: int, **_) -> EncodedSplit:
        texts = [row.text for row in rows]
        pairs = [row.text_pair for row in rows] if rows and rows[0].text_pair is not None else None
        full = tokenizer(texts, pairs, truncation=False, return_length=True, verbose=False)["length"]
        encoded = tokenizer(texts, pairs, truncation=True, max_length=max_length)
        label_index = {name: i for i, name in enumerate(labels)}
        keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in encoded]
        features = [
            {**{k: encoded[k][i] for k in keys}, "labels": label_index[row.label]} for i, row in enumerate(rows)
        ]
        lengths = [len(f["input_ids"]) for f in features]
        return EncodedSplit(features, lengths, truncated=sum(n > max_length for n in full))

    def collator(self, tokenizer):
        from transformers import DataCollatorWithPadding

        return DataCollatorWithPadding(tokenizer)

    def predict(self, logits: np.ndarray) -> np.ndarray:
        return logits.argmax(axis=-1)

    def metrics(self, logits: np.ndarray, label_ids: np.ndarray) -> dict[str, float]:
        from sklearn.metrics import accuracy_score, precision_recall_fscore_support

        predictions = self.predict(logits)
        out = {"accuracy": float(accuracy_score(label_ids, predictions))}
        for average in ("macro", "micro"):
            p, r, f, _ = precision_recall_fscore_support(label_ids, predictions, average=average, zero_division=0)
            out.update({f"{average}_precision": float(p), f"{average}_recall": float(r), f"{average}_f1": float(f)})
        return out

    def prediction_records(self, rows: list[Example], logits: np.ndarray, label_ids: np.ndarray, labels: list[str]) -> list[dict]:
        return [{"origin": row.origin, "text": row.text, "text_pair": row.text_pair, "label": row.label,
                 "prediction": labels[int(row_logits.argmax())], "logits": row_logits.tolist()}
                for row, row_logits in zip(rows, logits)]

    def report(self, logits: np.ndarray, label_ids: np.ndarray, labels: list[str], rows=None) -> str:
        """Markdown: per-class report and confusion matrix on the test split."""
        from sklearn.metrics import classification_report, confusion_matrix

        predictions = self.predict(logits)
        indices = list(range(len(labels)))
        table = classification_report(
            label_ids, predictions, labels=indices, target_names=labels, digits=4, zero_division=0
        )
        matrix = confusion_matrix(label_ids, predictions, labels=indices)
        lines = ["### Classification report (test)", "", "```", table.rstrip(), "```", "", "### Confusion matrix (rows: true, columns: predicted)", ""]
        lines.append("| true \\ predicted | " + " | ".join(labels) + " |")
        lines.append("|---" * (len(labels) + 1) + "|")
        for name, row in zip(labels, matrix):
            lines.append(f"| **{name}** | " + " | ".join(str(int(v)) for v in row) + " |")
        return "\n".join(lines) + "\n"
