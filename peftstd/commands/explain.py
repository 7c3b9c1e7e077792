"""`peftstd explain`: Integrated Gradients token attributions: per class, or per predicted entity (NER)."""

from __future__ import annotations

import argparse

from peftstd.errors import UserError

HELP = "Integrated Gradients token attributions: per class, or per predicted entity (NER)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="run directory")
    parser.add_argument("texts", nargs="*", help="texts to explain")
    parser.add_argument("--n", type=int, help="report on N examples of --data: the most confident wrong, most and least confident right")
    parser.add_argument("--data", help="data source for --n (registry name, file, hub id); default: the run's own data")
    parser.add_argument("--split", default="test", choices=["train", "validation", "test"], help="split for --n (default test)")
    parser.add_argument("--steps", type=int, default=64, help="integration steps (default %(default)s)")
    parser.add_argument("--html", help="write a self-contained HTML page here (with --n, default RUN/explain/report.html)")
    parser.add_argument("--json", help="write the attributions as JSON here")


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from peftstd.evaluation.explain import explain_data, explain_entities, explain_text, print_explanation, write_html
    from peftstd.runtime.load import load_run

    if not args.texts and args.n is None:
        raise UserError("explain needs TEXTS, or --n N (with --data SPEC or the run's own --split) for an HTML report")
    if args.texts and args.n is not None:
        raise UserError("give either TEXTS or --n N, not both")
    if args.n is not None and args.n < 1:
        raise UserError(f"--n must be a positive number of examples, got {args.n}")
    from peftstd.runtime.folders import RunFolder

    run = Path(args.run)
    task = RunFolder(run).task
    if task not in ("text-classification", "token-classification"):
        raise UserError(f"explain covers text- and token-classification runs; this run is {task}")
    if args.n is not None and task != "text-classification":
        raise UserError(f"--n reports cover text-classification runs; for this {task} run give TEXTS")
    loaded = load_run(run)
    max_length = loaded.manifest["data"]["max_length"]
    explain_one = explain_entities if task == "token-classification" else explain_text
    if args.texts:
        results = [explain_one(loaded, text, args.steps, max_length) for text in args.texts]
        for result in results:
            print_explanation(result)
        sections, title = [("", results)], f"peftstd explain: {run.name}"
    else:
        from peftstd.evaluation.evaluate import evaluation_data

        data, source, _ = evaluation_data(run, args.data, args.split)
        sections, title = explain_data(loaded, data, args.n, args.steps, max_length), f"peftstd explain: {run.name} on {source}"
        results = [r for _, section in sections for r in section]
        print(", ".join(f"{heading.split(' (')[0].lower()}: {len(section)}" for heading, section in sections) + f" of {len(data.texts)} examples")
        args.html = args.html or str(run / "explain" / "report.html")
    if args.html:
        write_html(sections, Path(args.html), title)
        print(f"written: {args.html}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0
