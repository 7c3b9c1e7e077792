"""`peftstd eval`: standard metrics with bootstrap intervals for a run or exported artifact."""

from __future__ import annotations

import argparse

HELP = "standard metrics with bootstrap intervals for a run or exported artifact"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", help="run directory or export folder")
    parser.add_argument("overrides", nargs="*", help="column mapping of --data as dotted data.* keys, e.g. data.text_column=sentence")
    parser.add_argument("--data", help="data source (registry name, file, hub id); default: the run's own data")
    parser.add_argument("--split", default="test", choices=["train", "validation", "test"], help="split of the run's data (default test)")
    parser.add_argument("--artifact", help="artifact file of an export folder (default model.onnx)")
    parser.add_argument("--compare", metavar="TARGET_B", help="a second run or export, compared by paired bootstrap")
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples (default %(default)s)")
    parser.add_argument("--out", help="folder for eval.json and eval.md (default TARGET/eval)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from peftstd.basics.atomic import write_json, write_text
    from peftstd.evaluation.evaluate import compare_targets, evaluate_target, markdown, public, summary_line

    targets = [Path(args.target)] + ([Path(args.compare)] if args.compare else [])
    results = [evaluate_target(t, args.data, args.split, args.artifact if i == 0 else None, args.resamples, args.overrides)
               for i, t in enumerate(targets)]
    comparison = compare_targets(results[0], results[1], args.resamples) if args.compare else None
    out = Path(args.out) if args.out else targets[0] / "eval"
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "eval.json", {"results": [public(r) for r in results], "comparison": comparison})
    write_text(out / "eval.md", markdown(results, comparison))
    for r in results:
        print(summary_line(r))
    for m, c in (comparison or {}).items():
        print(f"difference in {m}: {c['difference']:+.4f} (95% CI {c['ci95'][0]:+.4f} to {c['ci95'][1]:+.4f}), paired bootstrap p={c['p_value']:.3f}")
    print(f"written: {out / 'eval.json'}, {out / 'eval.md'}")
    return 0
