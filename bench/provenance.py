"""What every benchmark report starts with: the command, the commit, the machine and the package versions."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def provenance(**extra_versions: str) -> dict:
    """The report's header fields; `extra_versions` adds packages outside the manifest's list (e.g. trl)."""
    from peftstd.basics.hardware import hardware
    from peftstd.run.manifest import package_versions

    return {"command": shlex.join(["python", *sys.argv]),
            "git": subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=REPO).stdout.strip(),
            "machine": hardware(), "versions": {**package_versions(), **extra_versions}}


def machine_line(report: dict) -> str:
    """"AMD EPYC, 2 cores (avx2, ...); commit 0123456789": the markdown report's first facts."""
    machine = report["machine"]
    return f"{machine['cpu']}, {machine['cores']} cores ({', '.join(machine['isa'])}); commit {report['git'][:10]}"


def write_report(out: Path, result: dict, markdown: str) -> None:
    """OUT.json (every figure) and OUT.md (the table a reader sees), both printed-out versions of one result."""
    import json

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown)
    print(markdown)
