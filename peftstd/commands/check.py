"""`peftstd check`: verify a run or export folder: files, sha256s, config or gate, loadable weights."""

from __future__ import annotations

import argparse

HELP = "verify a run or export folder: files, sha256s, config or gate, loadable weights"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", help="run directory or export folder")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from peftstd.run.check import check_path

    findings = check_path(Path(args.path))
    for finding in findings:
        mark = "ok  " if finding.ok else "FAIL"
        print(f"{mark} {finding.check}" + (f": {finding.detail}" if finding.detail else ""))
    failed = [f for f in findings if not f.ok]
    print(f"{len(findings) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0
