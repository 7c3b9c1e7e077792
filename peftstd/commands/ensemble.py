"""`peftstd ensemble`: average the probabilities of several runs or exports and evaluate the ensemble."""

from __future__ import annotations

import argparse

HELP = "average the probabilities of several runs or exports and evaluate the ensemble"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("members", nargs="+", help="run directories or export folders (at least 2)")
    parser.add_argument("--out", required=True, help="folder for ensemble.json, eval.md and predictions.jsonl")
    parser.add_argument("--data", help="data source (registry name, file, hub id); default: the members' own data")
    parser.add_argument("--split", default="test", choices=["train", "validation", "test"], help="split (default test)")
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples (default %(default)s)")


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    import numpy as np

    from peftstd.basics.atomic import write_json, write_text
    from peftstd.evaluation.ensemble import ensemble
    from peftstd.evaluation.evaluate import markdown, public, summary_line

    results, labels = ensemble([Path(m) for m in args.members], args.data, args.split, args.resamples)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    combined = results[-1]
    write_json(out / "ensemble.json", {"members": [str(Path(m).resolve()) for m in args.members], "combination": "mean probability",
                                       "labels": labels, **public(combined), "member_results": [public(r) for r in results[:-1]]})
    write_text(out / "eval.md", markdown(results, None))
    write_text(out / "predictions.jsonl", "".join(
        json.dumps({"prediction": labels[int(p)], "label": labels[int(t)], "probabilities": np.exp(row).round(6).tolist()}) + "\n"
        for p, t, row in zip(combined["_logits"].argmax(-1), combined["_labels"], combined["_logits"])))
    for r in results:
        print(summary_line(r))
    print(f"written: {out / 'ensemble.json'}, {out / 'eval.md'}")
    return 0
