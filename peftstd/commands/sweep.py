"""`peftstd sweep`: hyperparameter search over recipe keys with Optuna; every trial a run directory."""

from __future__ import annotations

import argparse

from peftstd.commands.arguments import positive_int

HELP = "hyperparameter search over recipe keys with Optuna; every trial a run directory"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sweep", metavar="SWEEP.yaml", help="base recipe, search space, objective (see recipes/sweeps/)")
    parser.add_argument("--trials", type=positive_int, help="trials of the study in all (default: the sweep file's)")
    parser.add_argument("--workers", type=positive_int, default=1, help="trials run at once by this process")
    parser.add_argument("--storage", help="Optuna storage URL shared by every machine (postgresql://..., mysql://..., "
                        "or journal:PATH on a shared filesystem); default: SQLite in the sweep folder")
    parser.add_argument("--study", help="study name (default: the sweep file's name); the same name continues a study")
    parser.add_argument("--out", help="sweep folder (default runs/sweeps/STUDY)")
    parser.add_argument("--threads", type=positive_int, help="CPU threads per trial (default: cores / workers)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from peftstd.sweep.report import write_report
    from peftstd.sweep.run import run_sweep
    from peftstd.sweep.spec import load_sweep
    from peftstd.sweep.storage import redacted

    spec, base = load_sweep(args.sweep)  # every mistake in the sweep file, before any trial runs
    study = args.study or Path(args.sweep).stem
    folder = Path(args.out or Path("runs") / "sweeps" / study).absolute()
    folder.mkdir(parents=True, exist_ok=True)
    storage = args.storage or f"sqlite:///{folder / 'study.db'}"
    trials = args.trials or spec.trials
    print(f"peftstd sweep: study {study!r}, {trials} trials, {args.workers} worker(s), storage {redacted(storage)}, folder {folder}", flush=True)
    result = write_report(run_sweep(spec, base, folder, storage, study, trials, args.workers, args.threads), folder,
                          spec.objective.metric)
    best = result["best"]
    if best is None:
        print(f"no trial completed; see {folder / 'sweep.md'}")
        return 1
    print(f"best: trial {best.number}, {spec.objective.metric} {best.value:.4f}, {best.params}")
    print(f"written: {folder / 'sweep.md'}, {folder / 'best.yaml'}")
    return 0
