"""`peftstd monitor`: prediction drift (PSI, JS distance) of logged inputs against the export's held-out reference (monitor.json), as `serve` publishes it."""

from __future__ import annotations

import argparse

HELP = "prediction drift (PSI, JS distance) of logged inputs against the export's held-out reference (monitor.json), as `serve` publishes it"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("export_dir", metavar="EXPORT")
    parser.add_argument("--data", required=True, help="request log of `serve --log-inputs`, a .jsonl/.csv/.tsv/.parquet "
                        "table, or a .txt file of one input per line")
    parser.add_argument("--column", default="text", help="the table's input column (default text)")
    parser.add_argument("--artifact", default="auto", help="artifact to run (default: the one `serve` picks)")
    parser.add_argument("--runtime", default="auto", choices=["auto", "onnxruntime", "openvino"],
                        help="engine (default auto: the one `serve` picks)")
    parser.add_argument("--out", help="write the figures as JSON here")
    parser.add_argument("--fail-on", choices=["moderate", "major"], help="exit 3 when any feature drifts this much or more")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from peftstd.basics.atomic import write_json
    from peftstd.evaluation.monitor import exit_code, monitor_export, print_report

    report = monitor_export(Path(args.export_dir), Path(args.data), args.column, args.artifact, args.runtime)
    print_report(report)
    if args.out:
        write_json(Path(args.out), report)
        print(f"written: {args.out}")
    return exit_code(report, args.fail_on)
