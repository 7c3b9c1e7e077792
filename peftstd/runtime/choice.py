"""Which artifact, on which runtime, serves fastest on this machine: measured where it runs, not read from an order
measured on another CPU. On an AVX2-only EPYC static int8 ran slower than dynamic int8, while the order peftstd
served by came from an AVX-512 VNNI machine (issue 32); the gap between int8 and fp32 also changes with the CPU.

The export times every artifact that passed its gate, on every runtime it passed on, through the predictor that
serves it (so dynamic int8's one row per call is in the figure), on rows of the test split's token lengths at
batch 1 and 32, and records the ranking with the CPU's model and instruction sets (export.json `choice`).
`serve --artifact auto` and `predict` take the first of that ranking on the same kind of CPU; on another, they
measure again (a few seconds at start) and keep the result in the user cache, so a machine measures once.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from peftstd.errors import UserError
from peftstd.runtime.folders import Choice, ExportFolder, GateArtifact, Timing
from peftstd.runtime.predictors import Predictor, open_predictor

BATCHES = (1, 32)  # a lone request, and the server's default largest batch
ROWS = 16  # token lengths timed at batch 1 (quantiles of the test split's)
ROUNDS = 3  # timed rounds after one warm-up round; the median of each counts
DEFAULT_LENGTHS = [16, 24, 32, 48, 64, 96, 128]  # for an export that recorded none (made before this module)
FILLER = "the film was a quiet , moving story about two friends who travel across a cold country in winter . " * 40


def machine() -> dict:
    """What makes timings comparable between two machines: the CPU model, its vector/int8 instruction sets, cores."""
    from peftstd.basics.hardware import hardware

    info = hardware()
    return {"cpu": info["cpu"], "isa": info["isa"], "cores": info["cores"]}


def same_machine(recorded: Mapping, current: Mapping) -> bool:
    return all(recorded.get(key) == current.get(key) for key in ("cpu", "isa", "cores"))


def sample_lengths(lengths: list[int], count: int = ROWS) -> list[int]:
    """`count` token lengths spread evenly over the sorted `lengths` (its quantiles): the timed rows."""
    ordered = sorted(lengths)
    return [ordered[min(len(ordered) - 1, (2 * i + 1) * len(ordered) // (2 * count))] for i in range(count)]


def id_rows(tokenizer, lengths: list[int]) -> list[list[int]]:
    """Token ids of each length, special tokens included; timing does not depend on which tokens they are."""
    ids = tokenizer(FILLER, add_special_tokens=False, truncation=True, max_length=max(lengths))["input_ids"]
    special = tokenizer.num_special_tokens_to_add()
    return [tokenizer.build_inputs_with_special_tokens(ids[: max(1, n - special)]) for n in lengths]


def time_predictors(predictors: Mapping[tuple[str, str], Predictor], lengths: list[int], batches=BATCHES,
                    rounds: int = ROUNDS) -> list[Timing]:
    """Rows per second of each (artifact, runtime) predictor at each batch size, interleaved round by round so that
    drift on a shared machine hits all alike; best score first. Batch 1 runs one row of each of `lengths`; a larger
    batch runs rows of their median length, as the server's batcher groups rows of similar length (max_padding)."""
    median = sorted(lengths)[len(lengths) // 2]
    calls = {b: [lengths[i : i + 1] for i in range(len(lengths))] if b == 1 else [[median] * b] for b in batches}
    items = {key: {b: [[p.encode_ids(row) for row in id_rows(p.tokenizer, call)] for call in calls[b]] for b in batches}
             for key, p in predictors.items()}
    rates: dict[tuple[str, str], dict[int, list[float]]] = {key: {b: [] for b in batches} for key in predictors}
    for round_ in range(rounds + 1):  # round 0 warms up (ONNX Runtime's first calls, OpenVINO's per-shape kernels)
        for key, predictor in predictors.items():
            for batch in batches:
                started = time.perf_counter()
                for call in items[key][batch]:
                    predictor.run(call)
                if round_:
                    rates[key][batch].append(sum(map(len, items[key][batch])) / (time.perf_counter() - started))
    timings = []
    for (artifact, runtime), by_batch in rates.items():
        medians = {b: float(np.median(v)) for b, v in by_batch.items()}
        timings.append(Timing(artifact=artifact, runtime=runtime, samples_per_s=medians,
                              score=math.exp(sum(math.log(v) for v in medians.values()) / len(medians))))
    return sorted(timings, key=lambda t: t.score, reverse=True)


def cache_path(export: ExportFolder, current: Mapping) -> Path:
    """Where another machine's ranking of this export is kept: one file per export content and machine."""
    from peftstd.data.cache import cache_dir

    key = hashlib.sha256(json.dumps([export.record.files, dict(current)], sort_keys=True).encode()).hexdigest()[:20]
    return cache_dir() / "choice" / f"{key}.json"


def known_ranking(export: ExportFolder, current: Mapping) -> Choice | None:
    """The ranking measured on a machine like this one: the export's own, else the cache's; None when neither."""
    recorded = export.record.choice
    if recorded is not None and same_machine(recorded.machine, current):
        return recorded
    path = cache_path(export, current)
    if path.is_file():
        try:
            cached = Choice.model_validate_json(path.read_text())
        except ValueError:  # a damaged cache file is measured again
            return None
        if same_machine(cached.machine, current):
            return cached
    return None


def remember(export: ExportFolder, choice: Choice) -> None:
    from peftstd.basics.atomic import write_json

    path = cache_path(export, choice.machine)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, choice.model_dump(mode="json"))


def reason(choice: Choice) -> str:
    """One line: what was picked, at what speed, against the runner-up."""
    best = choice.timings[0]
    rates = ", ".join(f"batch {b}: {v:.0f}/s" for b, v in best.samples_per_s.items())
    line = f"{best.artifact} on {best.runtime} ({rates})"
    if len(choice.timings) > 1:
        second = choice.timings[1]
        line += f", {best.score / second.score:.2f}x {second.artifact} on {second.runtime}"
    return line + f", measured on {choice.machine['cpu']} ({', '.join(choice.machine['isa']) or 'no AVX2'})"


def encoder_runtimes() -> list[str]:
    """The runtimes an encoder export can run on here: ONNX Runtime, and OpenVINO where its package is installed."""
    import importlib.util

    return ["onnxruntime"] + (["openvino"] if importlib.util.find_spec("openvino") else [])


def named_artifact(export: ExportFolder, artifact: str, runtime: str) -> GateArtifact:
    """An artifact asked for by name, refused in one line unless it passed the gate on `runtime`."""
    record = export.artifact(artifact)
    if not record.passed_on(runtime):
        if not record.passed:
            why = "failed the export gate"
        elif record.runtime != "onnxruntime":
            why = f"is {record.runtime}'s own format and runs on {record.runtime} only"
        elif record.openvino is None:
            why = f"was not judged on {runtime} by the export gate (re-export with the `{runtime}` package installed)"
        else:
            why = f"failed the export gate on {runtime}"
        raise UserError(f"artifact {record.artifact} of {str(export.path)!r} {why}; serve one that passed")
    return record


def choose_artifact(export: ExportFolder, artifact: str = "auto", runtime: str = "auto", threads: int | None = None,
                    spinning: bool = True) -> tuple[GateArtifact, str]:
    """(artifact, runtime) to run: as named, or (`auto`) the pair measured fastest on this machine among those that
    passed the gate (see the module's docstring). GGUF exports run on llama.cpp, Q8_0 first (`GGUF_ORDER`, a
    preference, not a speed); generative ONNX exports on onnxruntime, fp32 first."""
    if export.runtime == "llama.cpp" and runtime not in ("auto", "llama.cpp"):
        raise UserError(f"{str(export.path)!r} holds GGUF files, which run in llama.cpp, not {runtime}: `peftstd predict` runs them, "
                        "and llama.cpp's llama-server or Ollama (the folder's Modelfile) serve them")
    if export.generative and runtime not in ("auto", "onnxruntime", "llama.cpp"):
        raise UserError(f"{str(export.path)!r} is a {export.task} export: generative exports run on onnxruntime only, not {runtime}")
    if export.runtime == "llama.cpp" or export.generative:
        runtime = export.runtime
    if artifact != "auto":
        runtime = export.artifact(artifact).runtime if runtime == "auto" else runtime  # the runtime its gate ran it on
        return named_artifact(export, artifact, runtime), runtime
    runtimes = encoder_runtimes() if runtime == "auto" else [runtime]
    candidates = passed_on(export, runtimes)
    if not candidates:
        raise UserError(f"no artifact of {str(export.path)!r} passed the export gate on {' or '.join(runtimes)}; nothing to serve")
    if export.runtime == "llama.cpp":
        from peftstd.runtime.gguf_model import GGUF_ORDER

        return min(candidates, key=lambda c: GGUF_ORDER.index(c[0].artifact) if c[0].artifact in GGUF_ORDER else len(GGUF_ORDER))
    if export.generative or len(candidates) == 1:
        return candidates[0]
    timings = ranking(export, candidates, threads, spinning).timings
    by_key = {(record.artifact, rt): (record, rt) for record, rt in candidates}
    return next(by_key[t.artifact, t.runtime] for t in timings if (t.artifact, t.runtime) in by_key)


def ranking(export: ExportFolder, candidates: list[tuple[GateArtifact, str]], threads: int | None = None,
            spinning: bool = True) -> Choice:
    """The candidates ranked on this machine: recorded by the export or cached when measured on a machine like this
    one and covering them all, else measured now (and cached)."""
    current = machine()
    known = known_ranking(export, current)
    wanted = {(record.artifact, rt) for record, rt in candidates}
    if known is not None and wanted <= {(t.artifact, t.runtime) for t in known.timings}:
        return known
    lengths = export.record.choice.lengths if export.record.choice else sample_lengths([min(n, export.max_length) for n in DEFAULT_LENGTHS])
    print(f"peftstd: timing {len(candidates)} artifacts of {export.path} on this CPU to pick the fastest "
          f"({'measured on another CPU at export' if export.record.choice else 'not measured at export'}) ...", file=sys.stderr, flush=True)
    choice = measure(export, candidates, lengths, threads, spinning, current)
    remember(export, choice)
    print(f"peftstd: picked {reason(choice)}", file=sys.stderr, flush=True)
    return choice


def passed_on(export: ExportFolder, runtimes: list[str]) -> list[tuple[GateArtifact, str]]:
    """Every (artifact, runtime) pair of `runtimes` whose artifact passed the gate on that runtime."""
    return [(record, rt) for rt in runtimes for record in export.artifacts().values() if record.passed_on(rt)]


def open_candidates(export: ExportFolder, candidates: list[tuple[GateArtifact, str]], threads: int | None = None,
                    spinning: bool = True) -> dict[tuple[str, str], Predictor]:
    return {(record.artifact, rt): open_predictor(export, record, rt, threads, spinning) for record, rt in candidates}


def measure(export: ExportFolder, candidates: list[tuple[GateArtifact, str]], lengths: list[int], threads: int | None = None,
            spinning: bool = True, current: Mapping | None = None) -> Choice:
    predictors = open_candidates(export, candidates, threads, spinning)
    return Choice(machine=dict(current or machine()), lengths=lengths, timings=time_predictors(predictors, lengths))


def measure_export(export: ExportFolder, inputs: list) -> Choice | None:
    """The export's own ranking: every artifact on every runtime it passed on here, timed on rows of the token
    lengths of `inputs` (the held-out test inputs); None for an export with nothing to choose between."""
    candidates = passed_on(export, encoder_runtimes())
    if export.generative or export.runtime == "llama.cpp" or len(candidates) < 2:
        return None
    predictors = open_candidates(export, candidates)
    first = next(iter(predictors.values()))  # every predictor of the export tokenizes alike
    lengths = sample_lengths([len(row["input_ids"]) for value in inputs for row in first.encode(value).rows])
    return Choice(machine=machine(), lengths=lengths, timings=time_predictors(predictors, lengths))


def explain(export: ExportFolder, threads: int | None = None) -> dict:
    """What `serve --artifact auto` runs on this machine and why, for `peftstd bench`: the pick, one line of reason,
    and the ranking it came from (measured now when this machine has none)."""
    candidates = passed_on(export, encoder_runtimes())
    if not candidates:
        return {"artifact": None, "runtime": None, "why": "no artifact passed the export gate", "timings": []}
    if len(candidates) == 1:
        record, runtime = candidates[0]
        return {"artifact": record.artifact, "runtime": runtime, "why": "the only artifact that passed the gate", "timings": []}
    choice = ranking(export, candidates, threads)
    best = choice.timings[0]
    return {"artifact": best.artifact, "runtime": best.runtime, "why": reason(choice),
            "timings": [t.model_dump(mode="json") for t in choice.timings]}


def load_predictor(path: str | Path, artifact: str = "auto", runtime: str | None = None, threads: int | None = None,
                   spinning: bool = True, streams: int = 1) -> Predictor:
    """The predictor of an export folder on the artifact and runtime asked for, or (`auto`, the default) on the ones
    that run fastest here (`choose_artifact`)."""
    export = ExportFolder(path)
    record, runtime = choose_artifact(export, artifact, runtime or "auto", threads, spinning)
    return open_predictor(export, record, runtime, threads, spinning, streams)
