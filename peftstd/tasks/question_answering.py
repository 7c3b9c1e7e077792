"""Extractive question answering (SQuAD-style): a span head predicts the answer's first and last token in the
context. Long contexts are cut into overlapping windows (`task.doc_stride`), each window one feature; the
answer of an example is the best-scoring valid span over all its windows, mapped back to the context's
characters through the tokenizer's offset mapping. Metrics: SQuAD v1.1 exact match and token F1, as fractions
(0-1) like every other peftstd metric; the SQuAD papers print them times 100."""

from __future__ import annotations

import collections
import itertools
import re
import string

import numpy as np
import torch

from peftstd.data.examples import QAExample
from peftstd.errors import DataError
from peftstd.tasks.base import EncodedSplit, Task

N_BEST = 20  # start and end candidates per window, as in transformers' run_qa.py
PUNCTUATION = set(string.punctuation)


# SQuAD v1.1's official normalization and scores, written out because `evaluate.load("squad")` fetches its
# script from the Hub and fails offline.
def normalize_answer(text: str) -> str:
    """Lower case, punctuation, articles (a, an, the) and extra whitespace removed."""
    text = "".join(ch for ch in text.lower() if ch not in PUNCTUATION)
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def exact_match(prediction: str, truth: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(truth))


def token_f1(prediction: str, truth: str) -> float:
    predicted, gold = normalize_answer(prediction).split(), normalize_answer(truth).split()
    common = sum((collections.Counter(predicted) & collections.Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def best_scores(prediction: str, row: QAExample) -> dict[str, float]:
    """Exact match and F1 of one prediction, each the best over the example's gold answers."""
    return {"exact_match": max(exact_match(prediction, a) for a in row.answers), "f1": max(token_f1(prediction, a) for a in row.answers)}


def squad_scores(predictions: list[str], rows: list[QAExample]) -> dict[str, float]:
    """Exact match and F1 (`best_scores`) averaged over the examples (0-1)."""
    scores = [best_scores(p, row) for p, row in zip(predictions, rows)]
    return {key: float(np.mean([s[key] for s in scores])) for key in ("exact_match", "f1")}


def best_span(start_logits: np.ndarray, end_logits: np.ndarray, offsets: list, max_answer_tokens: int) -> tuple[float, int, int, int, int] | None:
    """(score, first char, end char, first token, last token) of the best span inside the context of one window, or None."""
    best, ends = None, np.argsort(end_logits)[::-1][:N_BEST]
    for start in np.argsort(start_logits)[::-1][:N_BEST]:
        for end in ends:
            if start >= len(offsets) or end >= len(offsets) or offsets[start] is None or offsets[end] is None:
                continue
            if end < start or end - start + 1 > max_answer_tokens:
                continue
            score = float(start_logits[start] + end_logits[end])
            if best is None or score > best[0]:
                best = (score, offsets[start][0], offsets[end][1], int(start), int(end))
    return best


class QuestionAnswering(Task):
    name = "question-answering"
    # peft's generic PeftModel, not its QUESTION_ANS class: PeftModelForQuestionAnswering.forward (peft 0.21)
    # drops token_type_ids for LoRA-family methods, so the model trained without segment ids while the merged
    # model and every runtime feed them (the export gate caught logits 5.0 apart). The generic class passes
    # every input through.
    peft_task_type = None
    head_candidates = ("qa_outputs",)
    primary_metric = "f1"
    auto_model, ort_model = "AutoModelForQuestionAnswering", "ORTModelForQuestionAnswering"
    card_metrics = (("f1", "f1", "SQuAD F1"), ("exact_match", "exact_match", "Exact match"))

    def __init__(self, labels: list[str] | None = None, settings: dict | None = None):
        super().__init__(labels, settings)
        self.doc_stride = self.settings.get("doc_stride", 64)
        self.max_answer_tokens = self.settings.get("max_answer_tokens", 30)
        self.windows: dict[int, tuple[list[QAExample], int, list]] = {}  # feature id -> (rows, row index, context offsets)
        self._ids = itertools.count()

    def label_names(self, configured, splits) -> list[str]:
        self.labels = ["start", "end"]
        return self.labels

    def encode(self, tokenizer, rows: list[QAExample], labels: list[str], max_length: int, **_) -> EncodedSplit:
        """One feature per context window; its start/end positions point at the first gold answer's first and
        last token, or at the [CLS] position 0 when the answer is not inside that window (or `rows` carry no
        answers, as at prediction time)."""
        if not tokenizer.is_fast:
            raise DataError("question answering needs a fast tokenizer (offset mapping); this model has none")
        questions, contexts = [row.question for row in rows], [row.context for row in rows]
        longest_question = max(len(ids) for ids in tokenizer(questions, add_special_tokens=False)["input_ids"])
        if longest_question + self.doc_stride + 4 > max_length:
            raise DataError(f"model.max_length {max_length} leaves no room for a context window: the longest question has "
                            f"{longest_question} tokens and task.doc_stride is {self.doc_stride}; raise model.max_length or lower task.doc_stride")
        padding_right = tokenizer.padding_side == "right"
        encoded = tokenizer(questions if padding_right else contexts, contexts if padding_right else questions,
                            truncation="only_second" if padding_right else "only_first", max_length=max_length,
                            stride=self.doc_stride, return_overflowing_tokens=True, return_offsets_mapping=True)
        context_id = 1 if padding_right else 0
        keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in encoded]
        features, windows_per_row = [], collections.Counter()
        for i, row_index in enumerate(encoded["overflow_to_sample_mapping"]):
            row, sequence = rows[row_index], encoded.sequence_ids(i)
            offsets = [tuple(o) if s == context_id else None for o, s in zip(encoded["offset_mapping"][i], sequence)]
            first = sequence.index(context_id)
            last = len(sequence) - 1 - sequence[::-1].index(context_id)
            start = end = 0
            start_char, end_char = (row.answer_starts[0], row.answer_starts[0] + len(row.answers[0])) if row.answers else (0, 0)
            if end_char > start_char and offsets[first][0] <= start_char and offsets[last][1] >= end_char:
                start = next(t for t in range(first, last + 1) if offsets[t][1] > start_char)
                end = next(t for t in range(last, first - 1, -1) if offsets[t][0] < end_char)
            feature_id = next(self._ids)
            self.windows[feature_id] = (rows, row_index, offsets)
            windows_per_row[row_index] += 1
            features.append({**{k: encoded[k][i] for k in keys}, "start_positions": start, "end_positions": end, "feature_id": feature_id})
        return EncodedSplit(features, [len(f["input_ids"]) for f in features],
                            truncated=sum(n > 1 for n in windows_per_row.values()))  # contexts split into several windows

    def collator(self, tokenizer):
        from transformers import DataCollatorWithPadding

        return DataCollatorWithPadding(tokenizer)

    @staticmethod
    def model_inputs(batch) -> dict:
        return {k: v for k, v in batch.items() if k != "feature_id"}

    def loss(self, model, batch, label_smoothing: float = 0.0):
        """Mean of the start and end cross-entropies (the model's own, or label-smoothed ones)."""
        if not label_smoothing:
            return model(**self.model_inputs(batch)).loss
        output = model(**{k: v for k, v in self.model_inputs(batch).items() if not k.endswith("_positions")})
        smoothed = [torch.nn.functional.cross_entropy(logits.float(), batch[key], label_smoothing=label_smoothing)
                    for logits, key in ((output.start_logits, "start_positions"), (output.end_logits, "end_positions"))]
        return (smoothed[0] + smoothed[1]) / 2

    @torch.no_grad()
    def evaluate_split(self, model, loader, order, accelerator, autocast: bool = True):
        """(metrics, predicted answers in row order, None): every window scored, then one answer per example."""
        model.eval()
        logits, losses = {}, []
        for batch in loader:
            with accelerator.autocast() if autocast else torch.autocast(accelerator.device.type, enabled=False):
                output = model(**self.model_inputs(batch))
            start = accelerator.pad_across_processes(output.start_logits.float(), dim=1, pad_index=-1e4)
            end = accelerator.pad_across_processes(output.end_logits.float(), dim=1, pad_index=-1e4)
            start, end, ids, loss = accelerator.gather_for_metrics(
                (start, end, batch["feature_id"], output.loss.detach().float().reshape(1).repeat(len(batch["feature_id"]))))
            logits.update({int(i): (s.cpu().numpy(), e.cpu().numpy()) for i, s, e in zip(ids, start, end)})
            losses.append(loss.cpu())
        model.train()
        rows, answers = self.answers(logits)
        return {**squad_scores(answers, rows), "loss": float(torch.cat(losses).mean())}, answers, None

    def answers(self, logits: dict[int, tuple[np.ndarray, np.ndarray]]) -> tuple[list[QAExample], list[str]]:
        """The rows the windows came from and, per row, the text of its best span over all its windows."""
        rows = self.windows[next(iter(logits))][0]
        best: dict[int, tuple[float, int, int]] = {}
        for feature_id, (start, end) in logits.items():
            _, row_index, offsets = self.windows[feature_id]
            span = best_span(start, end, offsets, self.max_answer_tokens)
            if span and (row_index not in best or span[0] > best[row_index][0]):
                best[row_index] = span
        return rows, [rows[i].context[best[i][1] : best[i][2]] if i in best else "" for i in range(len(rows))]

    def stacked_answers(self, logits: np.ndarray, feature_ids: np.ndarray) -> tuple[list[QAExample], list[str]]:
        """`answers` from per-window start/end logits stacked as [windows, tokens, 2] (the export's form),
        `feature_ids` naming each window."""
        return self.answers({int(f): (logits[i, :, 0], logits[i, :, 1]) for i, f in enumerate(feature_ids)})

    def metrics(self, logits: np.ndarray, feature_ids: np.ndarray) -> dict[str, float]:
        """Exact match and F1 from stacked per-window logits (see `stacked_answers`)."""
        rows, answers = self.stacked_answers(logits, feature_ids)
        return squad_scores(answers, rows)

    def prediction_records(self, rows: list[QAExample], answers, label_ids, labels) -> list[dict]:
        return [{"origin": row.origin, "question": row.question, "context": row.context, "answers": list(row.answers),
                 "prediction": answer, **best_scores(answer, row)}
                for row, answer in zip(rows, answers)]

    def report(self, answers, label_ids, labels, rows=None) -> str:
        """Markdown: exact match and F1 on the test split, then the worst-scored predictions."""
        records = self.prediction_records(rows, answers, None, labels)
        lines = ["### Question answering (test)", "", f"{len(records)} questions, exact match "
                 f"{100 * np.mean([r['exact_match'] for r in records]):.2f}, F1 {100 * np.mean([r['f1'] for r in records]):.2f}", "",
                 "### Lowest-F1 predictions (test)", "", "| question | gold | predicted | F1 |", "|---|---|---|---|"]
        for record in sorted(records, key=lambda r: r["f1"])[:12]:
            cells = [record["question"], " / ".join(record["answers"]), record["prediction"]]
            lines.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ")[:120] for c in cells) + f" | {record['f1']:.2f} |")
        return "\n".join(lines) + "\n"
