"""`peftstd predict DIR "text"`: run an exported artifact on a few texts, for a quick look."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from peftstd.errors import UserError
from peftstd.tasks import GENERATIVE_TASKS


def artifact_path(export_dir: Path, artifact: str) -> Path:
    """The artifact file in an export folder, or a one-line error listing the ones there are."""
    path = export_dir / artifact
    if not path.is_file():
        available = sorted(p.name for p in export_dir.glob("*.onnx")) if export_dir.is_dir() else []
        raise UserError(f"{str(path)!r} does not exist; artifacts here: {', '.join(available) or 'none'}")
    return path


def predict(export_dir: Path, texts: list[str], artifact: str = "model.onnx", context: str | None = None) -> list[dict]:
    from scipy.special import softmax
    from transformers import AutoTokenizer

    from peftstd.export.inference import onnx_session

    info = json.loads((export_dir / "export.json").read_text()) if (export_dir / "export.json").is_file() else {}
    if info.get("task") in GENERATIVE_TASKS:
        return predict_generations(export_dir, texts, artifact, info)
    path = artifact_path(export_dir, artifact)
    labels = json.loads((export_dir / "labels.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(export_dir)
    session = onnx_session(path)
    names = {i.name for i in session.get_inputs()}
    if info.get("task") == "token-classification":
        return predict_entities(session, names, tokenizer, texts, labels, info["max_length"])
    if info.get("task") == "question-answering":
        if not context:
            raise UserError("this export answers questions: give the passage with --context \"...\"")
        return predict_answers(session, tokenizer, texts, context, info)
    if context:
        raise UserError(f"--context applies to question-answering exports; this one is {info.get('task')}")
    encoded = tokenizer(texts, padding=True, truncation=True, max_length=info["max_length"], return_tensors="np")
    logits = session.run(["logits"], {k: v.astype(np.int64) for k, v in encoded.items() if k in names})[0]
    probabilities = softmax(logits, axis=-1)
    return [{"text": text, "label": labels[int(p.argmax())], "probability": float(p.max()),
             "probabilities": dict(zip(labels, map(float, p)))} for text, p in zip(texts, probabilities)]


def predict_entities(session, names, tokenizer, texts: list[str], labels: list[str], max_length: int) -> list[dict]:
    """Token classification: each text split on whitespace, tagged on each word's first piece, as entity spans."""
    from seqeval.metrics.sequence_labeling import get_entities

    from peftstd.tasks.token_classification import first_pieces

    words = [text.split() for text in texts]
    encoded = tokenizer(words, is_split_into_words=True, padding=True, truncation=True, max_length=max_length, return_tensors="np")
    logits = session.run(["logits"], {k: v.astype(np.int64) for k, v in encoded.items() if k in names})[0]
    out = []
    for i, (text, row_words) in enumerate(zip(texts, words)):
        first = first_pieces(encoded.word_ids(i))
        tags = [labels[int(logits[i, first[w]].argmax())] if w in first else "O" for w in range(len(row_words))]  # cut words: O
        entities = [{"type": t, "text": " ".join(row_words[a : b + 1]), "start": a, "end": b + 1} for t, a, b in get_entities(tags)]
        out.append({"text": text, "tags": tags, "entities": entities,
                    "label": "; ".join(f"{e['type']}: {e['text']}" for e in entities) or "(no entities)"})
    return out


def predict_answers(session, tokenizer, questions: list[str], context: str, info: dict) -> list[dict]:
    """Question answering: each question over the context's windows (batched as the gate runs them), the
    best span as the answer."""
    from peftstd.data.examples import QAExample
    from peftstd.export.heldout import task_data
    from peftstd.export.inference import onnx_logits
    from peftstd.tasks.question_answering import QuestionAnswering

    task = QuestionAnswering(settings=info.get("task_settings"))
    data = task_data([QAExample(question, context, (), ()) for question in questions], [], tokenizer, info["max_length"], task)
    _, answers = task.stacked_answers(onnx_logits(session, tokenizer, data, 32, info["max_length"]), data.label_ids)
    return [{"text": question, "answer": answer, "label": answer or "(no answer)"} for question, answer in zip(questions, answers)]


def predict_generations(export_dir: Path, prompts: list[str], artifact: str, info: dict, max_new_tokens: int = 48) -> list[dict]:
    """Causal-LM and seq2seq: greedy responses to the prompts (the chat template applied as in training), from
    the fp32 artifact (`model.onnx`, the default) or the int8 one (`--artifact int8`)."""
    from transformers import AutoTokenizer

    from peftstd.data.examples import PromptExample
    from peftstd.export.generative import load_artifact, quiet
    from peftstd.tasks import get_task

    folder = export_dir if artifact in ("model.onnx", "fp32", ".") else export_dir / artifact
    if not folder.is_dir() or not any(folder.glob("*.onnx")):
        available = ["model.onnx"] + [p.name for p in export_dir.iterdir() if p.is_dir() and any(p.glob("*.onnx"))]
        raise UserError(f"{artifact!r} is not an artifact of this export; artifacts here: {', '.join(available)}")
    task, tokenizer = get_task(info["task"]), AutoTokenizer.from_pretrained(folder)
    with quiet():
        model = load_artifact(folder, task, info["stages"]["onnx"]["kv_cache"])
        responses = []
        for batch in task.prompt_batches(tokenizer, [PromptExample(p, "") for p in prompts], 8, info["max_length"]):
            generated = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
            responses += tokenizer.batch_decode(task.new_tokens(model, generated, batch), skip_special_tokens=True)
    return [{"text": prompt, "label": response.strip(), "response": response.strip()} for prompt, response in zip(prompts, responses)]
