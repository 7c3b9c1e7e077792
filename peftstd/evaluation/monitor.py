"""`peftstd monitor EXPORT --data FILE`: the drift figures `peftstd serve` publishes, computed offline for a file of
logged inputs, against the export's monitor.json.

FILE is a request log of `peftstd serve --request-log F --log-inputs` (its lines' `inputs`), a .jsonl/.json/.csv/
.tsv/.parquet table with the inputs in `--column` (question answering: `question` and `context`), or a .txt file
with one input per line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from peftstd.errors import UserError
from peftstd.runtime import drift

DRIFT_EXIT_CODE = 3  # --fail-on: drift at or above the level


def read_inputs(path: Path, column: str, task: str) -> list[Any]:
    from peftstd.data.sources import read_jsonl, read_table

    if not path.is_file():
        raise UserError(f"data file {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".txt":
        return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    records = read_jsonl(path) if suffix in (".jsonl", ".json", ".log", ".ndjson") else read_table(path, suffix) if suffix in (".csv", ".tsv", ".parquet") else None
    if records is None:
        raise UserError(f"data file {str(path)!r}: allowed are .jsonl (.log: a request log), .json, .csv, .tsv, .parquet and .txt")
    inputs: list[Any] = []
    logged = 0
    for where, row in records:
        if "request_id" in row:  # a request log line; lines without inputs (errors, scrapes) are skipped
            logged += 1
            inputs += row.get("inputs") or []
        elif task == "question-answering":
            if not isinstance(row.get("question"), str) or not isinstance(row.get("context"), str):
                raise UserError(f"{where}: question-answering inputs need string 'question' and 'context'; found {sorted(row)}")
            inputs.append({"question": row["question"], "context": row["context"]})
        else:
            if not isinstance(row.get(column), str):
                raise UserError(f"{where}: no text in column {column!r}; its columns are {sorted(row)} (choose one with --column)")
            inputs.append(row[column])
    if logged and not inputs:
        raise UserError(f"the request log {str(path)!r} holds no inputs; serve with --log-inputs to log them")
    if not inputs:
        raise UserError(f"data file {str(path)!r} holds no inputs")
    return inputs


def monitor_export(export_dir: Path, data: Path, column: str = "text", artifact: str = "auto", runtime: str = "auto") -> dict:
    """{reference, examples, figures: {feature: {psi, js, n, verdict}}, rates} of the inputs in `data`."""
    from peftstd.runtime.choice import load_predictor

    predictor = load_predictor(export_dir, artifact, runtime)
    reference = predictor.export.monitor
    if reference is None:
        raise UserError(f"{str(export_dir)!r} has no monitor.json (exported before peftstd wrote one); re-export the run")
    observations = drift.observe_inputs(predictor, read_inputs(data, column, predictor.task))
    figures = drift.compare(reference, observations)
    for feature, values in figures.items():
        values["verdict"] = drift.verdict(feature, values)
    return {"export": str(export_dir), "data": str(data), "artifact": predictor.record.artifact, "examples": len(observations),
            "reference": {"split": reference.split, "examples": reference.examples, "artifact": reference.artifact, "rates": reference.rates},
            "rates": drift.rates_of(observations), "figures": figures}


def print_report(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"drift of {report['examples']} inputs of {report['data']} against the {report['reference']['examples']} "
                        f"held-out {report['reference']['split']} examples of {report['export']}")
    for column in ("feature", "values", "PSI", "JS distance", "drift"):
        table.add_column(column, justify="left" if column in ("feature", "drift") else "right")
    for feature, values in report["figures"].items():
        table.add_row(feature, str(values["n"]), f"{values['psi']:.4f}", f"{values['js']:.4f}", values["verdict"])
    Console(width=140).print(table)
    ref = report["reference"]["rates"]
    print(f"truncated inputs: {report['rates']['truncated']:.2%} (reference {ref.get('truncated', 0):.2%}); unknown tokens: "
          f"{report['rates']['unknown_tokens']:.2%} (reference {ref.get('unknown_tokens', 0):.2%})")
    print(f"PSI: below {drift.PSI_MODERATE} none, to {drift.PSI_MAJOR} moderate, above major; JS distance above {drift.JS_DRIFT}: "
          f"major for {', '.join(drift.CATEGORICAL)}")


def exit_code(report: dict, fail_on: str | None) -> int:
    levels = {"none": 0, "moderate": 1, "major": 2}
    worst = max((levels[v["verdict"]] for v in report["figures"].values()), default=0)
    return DRIFT_EXIT_CODE if fail_on and worst >= levels[fail_on] else 0
