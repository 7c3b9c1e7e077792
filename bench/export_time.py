#!/usr/bin/env python
"""Wall time of `peftstd export RUN --int8` at this commit against an earlier commit, alternating (issue 32).

    python bench/export_time.py runs/latest --baseline 41f2c82 [--rounds 1] [--out bench/results/export_time]

Each export is a fresh `python -m peftstd export RUN --int8` process; the baseline runs from a git worktree of its
commit with the same installed packages. Records the wall time, each stage's seconds (export.json `timings_s`),
what the quantize stage kept in float and the gate's drops, so a faster export is seen not to have bought its
speed with the gate: the budget, the test split and the checks are the same on both sides.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from provenance import machine_line, provenance, write_report


def export_once(source: Path, run: Path, out: Path) -> dict:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "peftstd", "export", str(run), "--int8", "--out", str(out)],
                          cwd=source, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"export from {source} exited {done.returncode}: {done.stderr[-2000:]}")
    report = json.loads((out / "export.json").read_text())
    return {"wall_s": wall, "timings_s": report["timings_s"],
            "kept_in_float": {k: v.get("kept_in_float") for k, v in report["stages"]["quantize"]["artifacts"].items()},
            "gate": {a["artifact"]: {"drop_points": a["drop_points"], "passed": a["passed"]} for a in report["gate"]["artifacts"]},
            "budget_points": report["gate"]["budget_points"], "examples": report["gate"]["examples"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--baseline", required=True, help="the earlier commit")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--out", default="bench/results/export_time")
    args = parser.parse_args()
    run = Path(args.run).resolve()
    results: dict[str, list[dict]] = {"baseline": [], "current": []}
    with tempfile.TemporaryDirectory() as scratch:
        worktree = Path(scratch) / "baseline"
        subprocess.run(["git", "worktree", "add", "--detach", str(worktree), args.baseline], cwd=REPO, check=True, capture_output=True)
        try:
            sources = {"baseline": worktree, "current": REPO}
            for round_index in range(args.rounds):
                for side in ("baseline", "current") if round_index % 2 == 0 else ("current", "baseline"):
                    row = export_once(sources[side], run, Path(scratch) / f"{side}-{round_index}")
                    results[side].append(row)
                    print(f"round {round_index + 1} {side:<9} {row['wall_s']:6.1f} s  {row['timings_s']}", flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(worktree)], cwd=REPO, capture_output=True)
    baseline_commit = subprocess.run(["git", "rev-parse", args.baseline], cwd=REPO, capture_output=True, text=True).stdout.strip()
    report = {**provenance(), "run": str(run), "baseline": baseline_commit, "runs": results}
    mean = {side: sum(r["wall_s"] for r in rows) / len(rows) for side, rows in results.items()}
    stages = list(dict.fromkeys(k for rows in results.values() for r in rows for k in r["timings_s"]))
    lines = ["# Export time: `peftstd export RUN --int8`, this commit against an earlier one", "", f"`{report['command']}`", "",
             f"{machine_line(report)}. Run: `{run.name}`. Baseline: {baseline_commit[:10]}; {args.rounds} alternating round(s), "
             "a fresh process each.", "",
             f"- wall time: **{mean['current']:.1f} s** against {mean['baseline']:.1f} s, **{mean['baseline'] / mean['current']:.2f}x** faster", "",
             "| stage | " + " | ".join(f"{side} (s)" for side in results) + " |", "|---|---|---|"]
    for stage in stages:
        values = [sum(r["timings_s"][stage] for r in rows) / len(rows) if stage in rows[0]["timings_s"] else None for rows in results.values()]
        lines.append(f"| {stage} | " + " | ".join("-" if v is None else f"{v:.1f}" for v in values) + " |")
    lines += ["", "Same gate on both sides (budget, test split, checks); what each made:", "",
              "| side | artifact | test drop (points) | passed | kept in float |", "|---|---|---|---|---|"]
    for side, rows in results.items():
        last = rows[-1]
        lines += [f"| {side} | {name} | {gate['drop_points']:+.2f} | {gate['passed']} | {last['kept_in_float'].get(name) or '-'} |"
                  for name, gate in last["gate"].items()]
    write_report(Path(args.out), report, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
