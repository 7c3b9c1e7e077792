"""Load-once predictors over an export folder, one per task: `encode` one input (tokenization, done on arrival),
`run` a batch of encoded inputs through the artifact, one result per input. `peftstd predict`, `peftstd serve`
and the serving benchmark all go through them, so a served answer is the answer `predict` prints.

Results are independent of batching: rows are padded to the batch's longest and the attention mask hides the
padding, so fp32 and static-int8 artifacts give a row the same logits alone or among others. Dynamic int8
computes its activation scales over the whole input tensor, padding and neighbours included (measured on the
sentiment export: up to 1.09 in a logit, 2 of 64 labels flipped), so its rows run one at a time, unpadded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
from scipy.special import softmax

from peftstd.errors import UserError
from peftstd.runtime.folders import ExportFolder, GateArtifact
from peftstd.runtime.inference import MODEL_INPUTS

BATCH_DEPENDENT = ("int8-dynamic",)  # artifacts whose rows change with their neighbours in a batch


class InputError(UserError):
    """One request input the task cannot take (wrong shape, empty, too long): a 4xx, never a 500."""


@dataclass
class Encoded:
    """One tokenized input: its model rows (QA: one per context window) and what decoding needs."""

    rows: list[dict[str, list[int]]]
    meta: Any = None
    raw: bool = False  # rows given as token ids (KServe V2 INT64 inputs): the result is the model's outputs
    truncated: bool = False

    @property
    def length(self) -> int:
        return max(len(r["input_ids"]) for r in self.rows)

    @property
    def real_tokens(self) -> int:
        """Its tokens without padding."""
        return sum(len(r["input_ids"]) for r in self.rows)


class Predictor:
    task: str
    generative = False

    streams = 1  # batches that may run at once (see `engines.open_engine`)

    def __init__(self, export: ExportFolder, record: GateArtifact, runtime: str = "onnxruntime", threads: int | None = None,
                 spinning: bool = True, streams: int = 1):
        from transformers import AutoTokenizer

        self.export, self.record, self.runtime = export, record, runtime
        self.labels = export.labels
        self.max_length = export.max_length
        self.path = export.artifact_path(record.artifact)
        self.tokenizer = AutoTokenizer.from_pretrained(self.path if self.path.is_dir() else export.path)
        self.batch_independent = record.artifact not in BATCH_DEPENDENT
        self.load(threads, spinning, streams)

    def load(self, threads: int | None, spinning: bool, streams: int) -> None:
        from peftstd.runtime.engines import open_engine

        self.engine = open_engine(self.path, self.runtime, threads, self.export.disabled_optimizers, spinning, streams)
        self.device, self.streams = self.engine.device, self.engine.streams

    @property
    def monitor(self):
        """The drift reference the export was made with (monitor.json), or None."""
        return self.export.monitor

    def describe(self) -> dict:
        gate = self.export.record.gate
        return {"task": self.task, "labels": self.labels if not self.generative and self.task != "question-answering" else [],
                "artifact": self.record.artifact, "file": self.record.file, "runtime": self.runtime,
                "device": self.device,
                "max_length": self.max_length, "rows_share_calls": self.batch_independent,  # else one row per call
                "gate": {"status": self.export.record.status, "metric": gate.metric, "value": self.record.value,
                         "trained": gate.trained_metric, "drop_points": self.record.drop_points, "passed": self.record.passed},
                "exported": self.export.created, "export_sha256": self.export.record.files.get(self.record.file)}

    @property
    def length_step(self) -> int:
        """Batches are padded to a multiple of this many tokens. OpenVINO's CPU plugin builds kernels for each new
        input shape on first sight, which a server with free-length batches pays again and again (concurrency 32
        on the sentiment export, in an exploratory run: 216 requests/s, 352 with lengths rounded to 16); a fixed set of lengths can be
        warmed up before the server is ready. ONNX Runtime has no such cost, and the padding would only slow it."""
        return 16 if self.runtime == "openvino" else 1

    @cached_property
    def unk_token_id(self) -> int | None:
        """Cached: transformers looks the token up again on every read (4 us, per served input for drift)."""
        return self.tokenizer.unk_token_id

    def padded_length(self, longest: int) -> int:
        return min(self.max_length, -(-longest // self.length_step) * self.length_step)

    def encode(self, value: Any) -> Encoded:
        raise NotImplementedError

    def encode_ids(self, input_ids: list[int], attention_mask: list[int] | None = None,
                   token_type_ids: list[int] | None = None) -> Encoded:
        """A row given as token ids (the ONNX model's own inputs); the result is the raw model output."""
        if self.generative:
            raise InputError(f"{self.task} models take text inputs, not token ids")
        if not input_ids:
            raise InputError("input_ids is empty")
        if len(input_ids) > self.max_length:
            raise InputError(f"input_ids has {len(input_ids)} tokens; this model takes at most {self.max_length}")
        vocabulary = len(self.tokenizer)
        if min(input_ids) < 0 or max(input_ids) >= vocabulary:
            raise InputError(f"input_ids must lie in [0, {vocabulary}) for this model's vocabulary")
        row = {"input_ids": list(input_ids), "attention_mask": list(attention_mask or [1] * len(input_ids))}
        if token_type_ids is not None:
            row["token_type_ids"] = list(token_type_ids)
        elif "token_type_ids" in self.engine.input_names:  # one segment, as the tokenizer would give a single text
            row["token_type_ids"] = [0] * len(input_ids)
        if any(len(v) != len(input_ids) for v in row.values()):
            raise InputError("input_ids, attention_mask and token_type_ids must have the same length")
        return Encoded([row], raw=True)

    def forward(self, rows: list[dict[str, list[int]]]) -> list[np.ndarray]:
        """The engine's outputs for each row, cut back to the row's own length for per-token outputs."""
        if not self.batch_independent:
            return [self.engine({k: np.asarray([v], dtype=np.int64) for k, v in row.items()})[0] for row in rows]
        longest = self.padded_length(max(len(r["input_ids"]) for r in rows))
        feed = {}
        for key in rows[0]:
            pad = self.tokenizer.pad_token_id if key == "input_ids" else 0
            feed[key] = np.array([r[key] + [pad or 0] * (longest - len(r[key])) for r in rows], dtype=np.int64)
        out = self.engine(feed)
        if out.ndim >= 3:  # per-token outputs: each row's own positions only
            return [out[i, : len(r["input_ids"])] for i, r in enumerate(rows)]
        return list(out)

    def run(self, items: list[Encoded]) -> list[dict]:
        rows = [row for item in items for row in item.rows]
        outputs = self.forward(rows)
        results, start = [], 0
        for item in items:
            mine = outputs[start : start + len(item.rows)]
            start += len(item.rows)
            results.append({"logits": np.stack(mine)} if item.raw else self.decode(item, mine))
        return results

    def decode(self, item: Encoded, outputs: list[np.ndarray]) -> dict:
        raise NotImplementedError

    def predict(self, values: list[Any], batch_size: int = 32) -> list[dict]:
        items = [self.encode(v) for v in values]
        return [r for start in range(0, len(items), batch_size) for r in self.run(items[start : start + batch_size])]

    def tokenize(self, *texts, **kwargs) -> dict[str, list[int]]:
        return self.model_row(self.tokenizer(*texts, truncation=True, max_length=self.max_length, **kwargs))

    def model_row(self, encoded) -> dict[str, list[int]]:
        """The model's own inputs of one tokenized row."""
        return {k: list(encoded[k]) for k in MODEL_INPUTS if k in encoded and k in self.engine.input_names}


def text_of(value: Any, key: str = "text") -> str:
    """The text of an input given as a string or as {key: string}."""
    if isinstance(value, dict):
        value = value.get(key)
    if not isinstance(value, str):
        raise InputError(f"each input must be a string or an object with a string {key!r}")
    if not value.strip():
        raise InputError("an input text is empty")
    return value


class ClassificationPredictor(Predictor):
    task = "text-classification"

    def encode(self, value: Any) -> Encoded:
        text = text_of(value)
        pair = value.get("text_pair") if isinstance(value, dict) else None
        if pair is not None and not isinstance(pair, str):
            raise InputError("text_pair must be a string")
        if self.backend is None:
            row = self.tokenize(text, pair)
            full = len(self.tokenizer(text, pair)["input_ids"]) if len(row["input_ids"]) == self.max_length else 0
            return Encoded([row], meta=text, truncated=full > self.max_length)
        encoding = self.backend.encode(text, pair)
        row = self.model_row({"input_ids": encoding.ids, "attention_mask": encoding.attention_mask, "token_type_ids": encoding.type_ids})
        return Encoded([row], meta=text, truncated=bool(encoding.overflowing))

    @cached_property
    def backend(self):
        """The `tokenizers` tokenizer under the transformers one, truncating as `tokenize` does: the same ids without
        transformers' per-call Python layers, which took 0.1 ms of the 0.5 ms a request costs the event loop
        (profiled at concurrency 32). None for a tokenizer without one (a slow, Python tokenizer)."""
        if not self.tokenizer.is_fast:
            return None
        from tokenizers import Tokenizer

        backend = Tokenizer.from_str(self.tokenizer.backend_tokenizer.to_str())
        backend.enable_truncation(self.max_length)  # longest_first, as transformers' truncation=True
        backend.no_padding()
        return backend

    def decode(self, item: Encoded, outputs: list[np.ndarray]) -> dict:
        p = softmax(outputs[0].astype(np.float64), axis=-1)
        best = int(p.argmax())
        return {"label": self.labels[best], "score": float(p[best]), "probabilities": dict(zip(self.labels, map(float, p))),
                "truncated": item.truncated}


class EntityPredictor(Predictor):
    """Token classification: the text split on whitespace into words (as the recipes' CoNLL/jsonl data are),
    each word tagged on its first piece, entities as character spans of the original text."""

    task = "token-classification"

    def encode(self, value: Any) -> Encoded:
        text = text_of(value)
        spans = [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]
        encoded = self.tokenizer([text[a:b] for a, b in spans], is_split_into_words=True, truncation=True, max_length=self.max_length)
        row = self.model_row(encoded)
        from peftstd.tasks.token_classification import first_pieces

        first = first_pieces(encoded.word_ids())
        return Encoded([row], meta=(text, spans, first), truncated=len(first) < len(spans))

    def decode(self, item: Encoded, outputs: list[np.ndarray]) -> dict:
        from seqeval.metrics.sequence_labeling import get_entities

        text, spans, first = item.meta
        p = softmax(outputs[0].astype(np.float64), axis=-1)
        best = p.argmax(-1)
        tags = [self.labels[int(best[first[w]])] if w in first else "O" for w in range(len(spans))]  # cut words: O
        scores = [float(p[first[w], best[first[w]]]) if w in first else 1.0 for w in range(len(spans))]
        entities = [{"type": kind, "text": text[spans[a][0] : spans[b][1]], "start": spans[a][0], "end": spans[b][1],
                     "score": float(np.mean(scores[a : b + 1]))} for kind, a, b in get_entities(tags)]
        return {"entities": entities, "tags": tags, "confidence": float(np.mean(scores)) if scores else 1.0, "truncated": item.truncated}


class AnswerPredictor(Predictor):
    """Extractive QA: the context cut into the run's overlapping windows, the best span over all of them."""

    task = "question-answering"

    def encode(self, value: Any) -> Encoded:
        from peftstd.data.examples import QAExample
        from peftstd.tasks.question_answering import QuestionAnswering

        if not isinstance(value, dict):
            raise InputError("each question-answering input must be an object with string 'question' and 'context'")
        question, context = text_of(value, "question"), text_of(value, "context")
        task = QuestionAnswering(settings=self.export.record.task_settings)  # one per input: its windows stay with it
        encoded = task.encode(self.tokenizer, [QAExample(question, context, (), ())], ["start", "end"], self.max_length)
        rows = [self.model_row(f) for f in encoded.features]
        offsets = [task.windows[f["feature_id"]][2] for f in encoded.features]
        return Encoded(rows, meta=(context, offsets, task.max_answer_tokens), truncated=len(rows) > 1)

    def decode(self, item: Encoded, outputs: list[np.ndarray]) -> dict:
        from peftstd.tasks.question_answering import best_span

        context, offsets, max_answer_tokens = item.meta
        best = None
        for window, out in zip(offsets, outputs):
            span = best_span(out[:, 0], out[:, 1], window, max_answer_tokens)
            if span and (best is None or span[0] > best[0]):
                start_p, end_p = softmax(out[:, 0].astype(np.float64)), softmax(out[:, 1].astype(np.float64))
                best = (span[0], span[1], span[2], float(start_p[span[3]] * end_p[span[4]]))
        if best is None:
            return {"answer": "", "score": 0.0, "start": None, "end": None, "windows": len(outputs)}
        return {"answer": context[best[1] : best[2]], "score": best[3], "start": best[1], "end": best[2], "windows": len(outputs)}


class GenerationPredictor(Predictor):
    """Causal-LM and seq2seq: greedy decoding through the artifact's KV cache, one prompt at a time (batched
    greedy decoding pads prompts, which can change a step's argmax)."""

    generative = True
    max_new_tokens = 48
    max_new_tokens_limit = 256

    def load(self, threads: int | None, spinning: bool, streams: int) -> None:
        from peftstd.runtime.engines import load_generative, quiet
        from peftstd.tasks import get_task

        self.task = self.export.task
        self.task_impl = get_task(self.task)
        with quiet():
            self.model = load_generative(self.path, self.task_impl, self.export.kv_cache, spinning, threads)
        self.batch_independent = True
        self.device = "onnxruntime CPUExecutionProvider (optimum ORTModel)"

    def describe(self) -> dict:
        return {**super().describe(), "max_new_tokens": self.max_new_tokens,
                "max_new_tokens_limit": self.max_new_tokens_limit}

    def encode(self, value: Any) -> Encoded:
        from peftstd.data.examples import PromptExample

        prompt = text_of(value, "prompt")
        wanted = value.get("max_new_tokens", self.max_new_tokens) if isinstance(value, dict) else self.max_new_tokens
        if isinstance(wanted, bool) or not isinstance(wanted, int) or not 1 <= wanted <= self.max_new_tokens_limit:
            raise InputError(f"max_new_tokens must be an integer from 1 to {self.max_new_tokens_limit}, got {wanted!r}")
        ids = self.task_impl.prompt_ids(self.tokenizer, PromptExample(prompt, ""))
        return Encoded([{"input_ids": ids[-self.max_length :]}], meta=wanted, truncated=len(ids) > self.max_length)

    def run(self, items: list[Encoded]) -> list[dict]:
        import torch

        from peftstd.runtime.engines import quiet

        results = []
        for item in items:
            ids = torch.tensor([item.rows[0]["input_ids"]])
            batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
            with quiet(), torch.inference_mode():
                generated = self.model.generate(**batch, max_new_tokens=item.meta, do_sample=False, pad_token_id=self.tokenizer.pad_token_id)
            new = self.task_impl.new_tokens(self.model, generated, batch)[0]
            results.append({"text": self.tokenizer.decode(new, skip_special_tokens=True).strip(), "tokens": len(new),
                            "truncated": item.truncated})
        return results


class GgufPredictor(GenerationPredictor):
    """A causal-LM GGUF file in llama.cpp, fed the token ids of the run's own chat template and tokenizer (what the
    export gate scored), decoded greedily to an end-of-turn token."""

    def load(self, threads: int | None, spinning: bool, streams: int) -> None:
        from peftstd.runtime.decoders import end_ids
        from peftstd.runtime.gguf_model import open_gguf
        from peftstd.tasks import get_task

        self.task = self.export.task
        self.task_impl = get_task(self.task)
        self.end_ids = end_ids(self.tokenizer, self.export.path)
        self.model = open_gguf(self.path, self.max_length + self.max_new_tokens_limit, threads)
        self.batch_independent = True
        self.device = f"llama.cpp CPU ({self.model.n_threads} threads)"

    def run(self, items: list[Encoded]) -> list[dict]:
        from peftstd.runtime.gguf_model import greedy

        results = []
        for item in items:
            new = greedy(self.model, item.rows[0]["input_ids"], item.meta, self.end_ids)
            results.append({"text": self.tokenizer.decode(new, skip_special_tokens=True).strip(), "tokens": len(new), "truncated": item.truncated})
        return results


PREDICTORS = {p.task: p for p in (ClassificationPredictor, EntityPredictor, AnswerPredictor)}


def open_predictor(export: ExportFolder, record: GateArtifact, runtime: str, threads: int | None = None, spinning: bool = True,
                   streams: int = 1) -> Predictor:
    """The predictor of an export folder's task on one of its artifacts (`runtime.choice.load_predictor` picks which);
    generative ones run one stream."""
    if record.runtime == "llama.cpp":
        return GgufPredictor(export, record, runtime, threads, spinning)
    if export.generative:
        return GenerationPredictor(export, record, runtime, threads, spinning)
    if export.task not in PREDICTORS:
        raise UserError(f"no predictor for {export.task} exports; tasks served: {', '.join([*PREDICTORS, 'causal-lm', 'seq2seq'])}")
    return PREDICTORS[export.task](export, record, runtime, threads, spinning, streams)
