"""Prediction drift: what a model saw and said on its held-out test split (`monitor.json`, written at export)
against what it sees and says now, as population stability index (PSI) and Jensen-Shannon distance per feature.

Features of each input: the predicted label (entity types for NER, `(none)` for a text without entities), the
top-class confidence, the input length in tokens, whether the input was truncated, and the share of its tokens
that are the tokenizer's unknown token. `peftstd serve` keeps a rolling window of them per model and publishes
the figures at /metrics; `peftstd monitor` computes the same figures for a file of logged inputs.

Conventions of the drift tools people use: PSI below 0.1 no change, 0.1-0.25 moderate, above 0.25 major;
Jensen-Shannon distance with the natural logarithm (scipy's and Evidently's), drift above 0.1 (Evidently's
categorical threshold); empty bins floored at 1e-4 as Evidently does, so PSI stays finite. Written here rather
than taken from Evidently, NannyML or Alibi Detect: each is a large dependency for a few histograms, and none
runs inside a request path.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from peftstd.runtime.folders import OTHER, FeatureProfile, MonitorRecord

PSI_MODERATE, PSI_MAJOR, JS_DRIFT = 0.1, 0.25, 0.1
FLOOR = 1e-4
CONFIDENCE_EDGES = [0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99]  # top-class probability; bins are [edge, next edge)
LENGTH_BINS = 10  # deciles of the reference's input lengths
CATEGORICAL = ("label", "truncated", "unknown_tokens")
NONE = "(none)"  # NER: a text without entities


@dataclass
class Observation:
    """What drift monitoring keeps of one input and its result."""

    labels: tuple[str, ...]  # one for classification, each entity's type (or NONE) for NER, none for QA and generation
    confidence: float | None
    length: int  # tokens, over every row (QA: every context window)
    truncated: bool
    unknown: int  # of those, the tokenizer's unknown token


def observe(predictor, item, result: dict) -> Observation:
    """The observation of one encoded input and the predictor's result for it."""
    unk = predictor.unk_token_id
    if "entities" in result:
        labels = tuple(e["type"] for e in result["entities"]) or (NONE,)
    else:
        labels = (result["label"],) if "label" in result else ()
    confidence = result.get("confidence", result.get("score"))
    unknown = sum(row["input_ids"].count(unk) for row in item.rows) if unk is not None else 0
    return Observation(labels, confidence, item.real_tokens, bool(item.truncated), unknown)


def feature_values(observations: list[Observation]) -> dict[str, list]:
    return {"label": [label for o in observations for label in o.labels],
            "confidence": [o.confidence for o in observations if o.confidence is not None],
            "length": [o.length for o in observations],
            "truncated": ["truncated" if o.truncated else "complete" for o in observations]}


def counts_of(name: str, profile: FeatureProfile, observations: list[Observation], values: dict[str, list]) -> np.ndarray:
    """The feature's counts over the profile's bins; unknown tokens are counted per token, the rest per value."""
    if name == "unknown_tokens":
        unknown = sum(o.unknown for o in observations)
        return np.array([sum(o.length for o in observations) - unknown, unknown])
    return profile.bin(values[name])


def label_categories(predictor) -> list[str] | None:
    if predictor.generative or predictor.task == "question-answering":
        return None
    if predictor.task == "token-classification":
        return sorted({label.split("-", 1)[-1] for label in predictor.labels if label != "O"}) + [NONE, OTHER]
    return [*predictor.labels, OTHER]


def reference_profile(predictor, observations: list[Observation], split: str = "test") -> MonitorRecord:
    """The reference of an export: bins fixed here (categories, confidence edges, length deciles) and counts."""
    values = feature_values(observations)
    lengths = np.asarray(values["length"])
    edges = sorted({float(q) for q in np.quantile(lengths, np.linspace(0, 1, LENGTH_BINS + 1)[1:-1])}) if len(lengths) else []
    bins: dict[str, dict[str, Any]] = {"length": {"edges": edges}, "truncated": {"categories": ["complete", "truncated"]},
                                       "unknown_tokens": {"categories": ["known", "unknown"]}}
    categories = label_categories(predictor)
    if categories is not None:
        bins["label"] = {"categories": categories}
    if values["confidence"]:
        bins["confidence"] = {"edges": CONFIDENCE_EDGES}
    features = {}
    for name, spec in bins.items():
        empty = FeatureProfile(**spec, counts=[])
        features[name] = FeatureProfile(**spec, counts=counts_of(name, empty, observations, values).tolist())
    return MonitorRecord(split=split, examples=len(observations), artifact=predictor.record.artifact, runtime=predictor.runtime,
                         features=features, rates=rates_of(observations))


def rates_of(observations: list[Observation]) -> dict[str, float]:
    """Share of inputs truncated and of tokens unknown."""
    return {"truncated": sum(o.truncated for o in observations) / max(1, len(observations)),
            "unknown_tokens": sum(o.unknown for o in observations) / max(1, sum(o.length for o in observations))}


def shares(counts) -> np.ndarray:
    counts = np.asarray(counts, dtype=np.float64)
    return np.maximum(counts / counts.sum(), FLOOR) if counts.sum() else np.full(len(counts), 1 / len(counts))


def psi(reference_counts, current_counts) -> float:
    """Population stability index: sum over bins of (current - reference) * ln(current / reference), on shares."""
    expected, actual = shares(reference_counts), shares(current_counts)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def js_distance(reference_counts, current_counts) -> float:
    from scipy.spatial.distance import jensenshannon

    return float(jensenshannon(shares(reference_counts), shares(current_counts)))


def verdict(feature: str, figures: dict[str, float]) -> str:
    """none, moderate or major: PSI's bands, and Jensen-Shannon distance above 0.1 as major for the categorical
    features only, as Evidently uses it (a 10-bin histogram of a few hundred values reaches 0.1 by chance)."""
    if figures["psi"] > PSI_MAJOR or (feature in CATEGORICAL and figures["js"] > JS_DRIFT):
        return "major"
    return "moderate" if figures["psi"] > PSI_MODERATE else "none"


def compare(reference: MonitorRecord, observations: list[Observation]) -> dict[str, dict[str, float]]:
    """{feature: {psi, js, n}} of `observations` against the reference; features with no value in them are left out."""
    values = feature_values(observations)
    figures = {}
    for name, profile in reference.features.items():
        current = counts_of(name, profile, observations, values)
        if not current.sum():
            continue
        figures[name] = {"psi": psi(profile.counts, current), "js": js_distance(profile.counts, current), "n": int(current.sum())}
    return figures


class DriftWindow:
    """The last `size` observations of a served model, none older than `seconds`, against its reference."""

    def __init__(self, reference: MonitorRecord, size: int, seconds: float):
        self.reference, self.seconds = reference, seconds
        self.entries: deque[tuple[float, Observation]] = deque(maxlen=size)

    def add(self, observations: list[Observation]) -> None:
        now = time.monotonic()
        self.entries.extend((now, o) for o in observations)

    def current(self) -> list[Observation]:
        oldest = time.monotonic() - self.seconds
        while self.entries and self.entries[0][0] < oldest:
            self.entries.popleft()
        return [o for _, o in self.entries]

    def figures(self) -> tuple[int, dict[str, dict[str, float]]]:
        observations = self.current()
        return len(observations), compare(self.reference, observations)


def input_of(row) -> Any:
    """A data example (the recipes' example types) as the predictor input a client would send."""
    if hasattr(row, "context"):
        return {"question": row.question, "context": row.context}
    if hasattr(row, "prompt"):
        return {"prompt": row.prompt}
    if getattr(row, "text_pair", None) is not None:
        return {"text": row.text, "text_pair": row.text_pair}
    return row.text


def observe_inputs(predictor, values: list, batch_size: int = 32) -> list[Observation]:
    """Observations of the predictor on `values`; generative models are only encoded (no label, no confidence)."""
    items = [predictor.encode(v) for v in values]
    if predictor.generative:
        return [observe(predictor, item, {}) for item in items]
    observations = []
    for start in range(0, len(items), batch_size):
        batch = items[start : start + batch_size]
        observations += [observe(predictor, item, result) for item, result in zip(batch, predictor.run(batch))]
    return observations


def write_reference(folder, rows: list) -> MonitorRecord:
    """monitor.json of a passed export folder, from the held-out rows the gate judged, on the artifact that
    `peftstd serve` picks by default."""
    from peftstd.basics.atomic import write_json
    from peftstd.runtime.choice import load_predictor

    predictor = load_predictor(folder)
    record = reference_profile(predictor, observe_inputs(predictor, [input_of(r) for r in rows]))
    write_json(folder / "monitor.json", record.model_dump(exclude_none=True))
    return record
