"""The run's own data for export: held-out test split (verification), training sample (calibration)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from peftstd.errors import UserError


@dataclass
class TaskData:
    """Model inputs and gold label ids of one split. Token classification: `words` holds each sentence's
    words, `texts` their joined form (lengths, speed feeds), and `label_ids` [N, max_length] per word piece
    (-100 where nothing is scored), aligned with how `inference.batches` tokenizes."""

    texts: list[str]
    pairs: list[str] | None
    label_ids: np.ndarray
    words: list[list[str]] | None = None
    features: list[dict] | None = None  # question answering: one entry per context window, `label_ids` its feature id

    def head(self, n: int) -> TaskData:
        return TaskData(self.texts[:n], self.pairs[:n] if self.pairs else None, self.label_ids[:n],
                        self.words[:n] if self.words else None, self.features[:n] if self.features else None)

    def take(self, order) -> TaskData:
        """The examples at the indices `order`, in that order."""
        def pick(values):
            return [values[i] for i in order] if values is not None else None

        return TaskData(pick(self.texts), pick(self.pairs), self.label_ids[np.asarray(order)], pick(self.words), pick(self.features))

    def by_length(self) -> tuple[TaskData, np.ndarray]:
        """The examples shortest first, and the indices that put results back in the original order. Batches of
        similar length pad less: in the data's own order, padding was about a third of the export's model runs."""
        if self.features is not None:
            sizes = [len(f["input_ids"]) for f in self.features]
        elif self.words is not None:
            sizes = [sum(map(len, w)) + len(w) for w in self.words]
        else:
            sizes = [len(t) + len(p or "") for t, p in zip(self.texts, self.pairs or [None] * len(self.texts))]
        order = np.argsort(sizes, kind="stable")
        return self.take(order), np.argsort(order)


def run_splits(run_dir, manifest):
    """The run's splits rebuilt from its config, refused unless their sha256 match the manifest."""
    from peftstd.config import load_config
    from peftstd.data import load_splits

    cfg = load_config(run_dir / "config.yaml")
    splits = load_splits(cfg.data, cfg.task.type)
    recorded = manifest["data"]["sha256"]
    for name, digest in splits.sha256().items():
        if recorded.get(name) != digest:
            raise UserError(f"the {name} split rebuilt from {run_dir}/config.yaml differs from the one the run recorded; its data changed")
    return cfg, splits


def task_data(rows, labels: list[str], tokenizer=None, max_length: int | None = None, task=None) -> TaskData:
    """`tokenizer` and `max_length` are needed for token classification (word-piece label alignment) and
    question answering, which also needs the `task` that will score the windows it encodes."""
    if rows and hasattr(rows[0], "context"):
        encoded = task.encode(tokenizer, rows, labels, max_length)
        texts = [tokenizer.decode(f["input_ids"], skip_special_tokens=True) for f in encoded.features]
        return TaskData(texts, None, np.array([f["feature_id"] for f in encoded.features]), features=encoded.features)
    if rows and hasattr(rows[0], "tokens"):
        from peftstd.tasks.base import IGNORE
        from peftstd.tasks.token_classification import TokenClassification

        encoded = TokenClassification(labels).encode(tokenizer, rows, labels, max_length)
        label_ids = np.full((len(rows), max_length), IGNORE, dtype=np.int64)
        for i, feature in enumerate(encoded.features):
            label_ids[i, : len(feature["labels"])] = feature["labels"]
        return TaskData([" ".join(r.tokens) for r in rows], None, label_ids, [list(r.tokens) for r in rows])
    index = {name: i for i, name in enumerate(labels)}
    pairs = [r.text_pair for r in rows] if rows and rows[0].text_pair is not None else None
    return TaskData([r.text for r in rows], pairs, np.array([index[r.label] for r in rows]))
