"""`peftstd explain RUN "text"`: Integrated Gradients token attributions (captum) on the input embeddings.

For text classification, one attribution vector per class: how much each token moves that class's logit
from the baseline (every non-special token replaced by [PAD]) to the actual input. For token
classification, one vector per predicted entity: how much each token moves the logit of the entity's
B- tag at its first word piece. Completeness: the attributions sum to logit(input) - logit(baseline),
up to the reported convergence delta.
"""

from __future__ import annotations

import html
from pathlib import Path

import torch


def embedding_inputs(model, tokenizer, encoded, special: torch.Tensor):
    """(input embeddings, baseline embeddings, embeddings -> logits) for one encoded text. The baseline
    replaces every token but the `special` ones with [PAD]; the other inputs (attention mask, token
    types) are expanded to the batch of interpolation steps captum feeds in."""
    embed = model.get_input_embeddings()
    baseline_ids = torch.where(special, encoded["input_ids"][0], torch.tensor(tokenizer.pad_token_id)).unsqueeze(0)
    extra = {k: v for k, v in encoded.items() if k != "input_ids"}

    def logits_of(inputs_embeds):
        return model(inputs_embeds=inputs_embeds, **{k: v.expand(inputs_embeds.shape[0], -1) for k, v in extra.items()}).logits

    return embed(encoded["input_ids"]).detach(), embed(baseline_ids).detach(), logits_of


def explain_text(loaded, text: str, steps: int = 64, max_length: int = 128) -> dict:
    from captum.attr import IntegratedGradients

    model, tokenizer = loaded.model.eval(), loaded.tokenizer
    encoded = tokenizer(text, return_tensors="pt", truncation=True, max_length=max_length)
    special = torch.tensor(tokenizer.get_special_tokens_mask(encoded["input_ids"][0].tolist(), already_has_special_tokens=True)).bool()
    inputs, baseline, logits_of = embedding_inputs(model, tokenizer, encoded, special)
    with torch.no_grad():
        logits, baseline_logits = logits_of(inputs)[0], logits_of(baseline)[0]
    integrated = IntegratedGradients(logits_of)
    classes = []
    for index, label in enumerate(loaded.labels):
        attributions, delta = integrated.attribute(inputs, baselines=baseline, target=index, n_steps=steps,
                                                   internal_batch_size=16, return_convergence_delta=True)
        scores = attributions.sum(-1)[0]
        classes.append({"label": label, "logit": float(logits[index]), "baseline_logit": float(baseline_logits[index]),
                        "attributions": scores.tolist(), "attribution_sum": float(scores.sum()), "convergence_delta": float(delta)})
    probabilities = torch.softmax(logits, -1)
    return {"text": text, "tokens": tokenizer.convert_ids_to_tokens(encoded["input_ids"][0]),
            "prediction": loaded.labels[int(probabilities.argmax())], "probability": float(probabilities.max()),
            "steps": steps, "classes": classes}


def explain_entities(loaded, text: str, steps: int = 64, max_length: int = 128) -> dict:
    """Token classification: the words of `text` (split on whitespace) tagged, then one attribution
    vector per predicted entity (target: its B- logit at the entity's first word piece)."""
    from captum.attr import IntegratedGradients
    from seqeval.metrics.sequence_labeling import get_entities

    from peftstd.tasks.token_classification import first_pieces

    model, tokenizer = loaded.model.eval(), loaded.tokenizer
    words = text.split()
    encoded = tokenizer(words, is_split_into_words=True, return_tensors="pt", truncation=True, max_length=max_length)
    word_ids = encoded.word_ids()
    first_piece = first_pieces(word_ids)
    inputs, baseline, all_logits = embedding_inputs(model, tokenizer, encoded, torch.tensor([w is None for w in word_ids]))
    with torch.no_grad():
        logits, baseline_logits = all_logits(inputs)[0], all_logits(baseline)[0]
    probabilities = torch.softmax(logits, -1)
    tags = [loaded.labels[int(logits[first_piece[w]].argmax())] for w in range(len(words)) if w in first_piece]
    entities = []
    for kind, start, end in get_entities(tags):
        position = first_piece[start]
        target = int(logits[position].argmax())
        integrated = IntegratedGradients(lambda e, position=position, target=target: all_logits(e)[:, position, target])
        attributions, delta = integrated.attribute(inputs, baselines=baseline, n_steps=steps, internal_batch_size=16,
                                                   return_convergence_delta=True)
        scores = attributions.sum(-1)[0]
        name = " ".join(words[start : end + 1])
        entities.append({"label": f"{kind} '{name}' (p={float(probabilities[position, target]):.3f})", "type": kind, "text": name,
                         "start": start, "end": end + 1, "logit": float(logits[position, target]),
                         "baseline_logit": float(baseline_logits[position, target]), "attributions": scores.tolist(),
                         "attribution_sum": float(scores.sum()), "convergence_delta": float(delta)})
    summary = ", ".join(f"{e['type']}: {e['text']}" for e in entities) or "no entities"
    return {"text": text, "tokens": tokenizer.convert_ids_to_tokens(encoded["input_ids"][0]), "tags": tags, "prediction": summary,
            "probability": min((float(probabilities[first_piece[e['start']]].max()) for e in entities), default=1.0),
            "probability_name": "lowest entity p",
            "steps": steps, "classes": entities}


def colour(score: float, scale: float) -> tuple[int, int, int]:
    """Green for evidence for the class, red against; white for none."""
    strength = min(1.0, abs(score) / scale) if scale else 0.0
    fade = int(255 * (1 - 0.75 * strength))
    return (fade, 255, fade) if score >= 0 else (255, fade, fade)


def print_explanation(result: dict) -> None:
    from rich.text import Text

    from peftstd.basics.console import console as make_console

    console = make_console(stderr=False)
    console.print(f"prediction: [bold]{result['prediction']}[/bold] ({result.get('probability_name', 'p')}={result['probability']:.3f}); Integrated Gradients, {result['steps']} steps")
    for cls in result["classes"]:
        scale = max(abs(a) for a in cls["attributions"]) or 1.0
        line = Text(f"{cls['label']:>10}: ")
        for token, score in zip(result["tokens"], cls["attributions"]):
            red, green, blue = colour(score, scale)
            line.append(token + " ", style=f"black on rgb({red},{green},{blue})")
        line.append(f"  (sum {cls['attribution_sum']:+.3f} = Δlogit {cls['logit'] - cls['baseline_logit']:+.3f}, delta {cls['convergence_delta']:+.1e})")
        console.print(line)


def pick_examples(probabilities, label_ids, n: int) -> dict[str, list[int]]:
    """Indices for the report: the most confidently wrong predictions (up to a third of `n`), then the
    most and the least confident right ones, each example at most once."""
    import numpy as np

    order = np.argsort(-probabilities.max(-1), kind="stable")
    correct = probabilities.argmax(-1) == label_ids
    wrong = [int(i) for i in order if not correct[i]][: n // 3]
    right = [int(i) for i in order if correct[i]]
    most = right[: (n - len(wrong) + 1) // 2]
    least = [i for i in reversed(right) if i not in most][: n - len(wrong) - len(most)]
    return {"Wrong predictions (most confident first)": wrong, "Most confident predictions": most,
            "Least confident predictions": least}


def explain_data(loaded, data, n: int, steps: int, max_length: int) -> list[tuple[str, list[dict]]]:
    """Predict every example of `data`, then explain the ones `pick_examples` chooses, section by section."""
    from peftstd.runtime.inference import torch_logits

    logits = torch.from_numpy(torch_logits(loaded.model, loaded.tokenizer, data, 32, max_length))
    chosen = pick_examples(torch.softmax(logits, -1).numpy(), data.label_ids, n)
    sections = []
    for title, indices in chosen.items():
        results = []
        for i in indices:
            result = explain_text(loaded, data.texts[i], steps, max_length)
            result["label"] = loaded.labels[int(data.label_ids[i])]
            results.append(result)
        sections.append((title, results))
    return sections


def render_result(result: dict) -> str:
    truth = f", true label <b>{html.escape(result['label'])}</b>" if "label" in result else ""
    rows = [f"<h3>{html.escape(result['text'])}</h3><p>prediction <b>{html.escape(result['prediction'])}</b> "
            f"({result.get('probability_name', 'p')}={result['probability']:.3f}){truth}</p>"]
    for cls in result["classes"]:
        scale = max(abs(a) for a in cls["attributions"]) or 1.0
        spans = "".join(
            f'<span title="{score:+.4f}" style="background:rgb{colour(score, scale)}">{html.escape(token)}</span> '
            for token, score in zip(result["tokens"], cls["attributions"]))
        rows.append(f"<p><b>{html.escape(cls['label'])}</b>: {spans}<br><small>sum of attributions "
                    f"{cls['attribution_sum']:+.4f}, logit difference {cls['logit'] - cls['baseline_logit']:+.4f}, "
                    f"convergence delta {cls['convergence_delta']:+.1e}</small></p>")
    return "".join(rows)


def write_html(sections: list[tuple[str, list[dict]]], path: Path, title: str) -> None:
    """A self-contained page (inline CSS, no scripts): one coloured row per text and class, in sections."""
    body = []
    for heading, results in sections:
        if heading:
            body.append(f"<h2>{html.escape(heading)} ({len(results)})</h2>")
        body.extend(render_result(r) for r in results)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}} span{{padding:2px 1px;border-radius:3px}}</style>
</head><body><h1>{html.escape(title)}</h1><p>Integrated Gradients on the input embeddings; green supports the class, red opposes it.</p>
{''.join(body)}</body></html>
""", encoding="utf-8")
