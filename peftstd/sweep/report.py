"""What a sweep leaves in its folder: sweep.md (best trial, every trial, parameter importances), Optuna's matplotlib
plots, and best.yaml, a complete recipe that reproduces the best trial with `recipes/finetune.py --config best.yaml`."""

from __future__ import annotations

from pathlib import Path

import yaml

from peftstd.basics.atomic import write_text


def write_report(study, folder: Path, metric: str) -> dict:
    """sweep.md, the plots and best.yaml (when a trial completed); the study's summary."""
    from peftstd.sweep.run import summary

    result = summary(study)
    pngs = [path.name for path in plots(study, folder, metric)]
    if result["best"] is not None:
        write_best(result["best"], folder)
    write_text(folder / "sweep.md", markdown(result, metric, parameter_importances(study), pngs))
    return result


def parameter_importances(study) -> dict[str, float]:
    import optuna

    try:
        return optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError):  # fewer than two complete trials, or a parameter that never varied
        return {}


def plots(study, folder: Path, metric: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as vis

    written = []
    for name, draw in (("optimization_history", vis.plot_optimization_history), ("param_importances", vis.plot_param_importances),
                       ("parallel_coordinate", vis.plot_parallel_coordinate)):
        try:
            axes = draw(study, target_name=metric)
        except (RuntimeError, ValueError):  # too few complete trials for this plot
            continue
        figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
        figure.set_size_inches(9, 5)
        figure.tight_layout()
        figure.savefig(folder / f"{name}.png", dpi=110)
        plt.close(figure)
        written.append(folder / f"{name}.png")
    return written


def write_best(best, folder: Path) -> Path:
    """The best trial's own resolved config.yaml, written to a run of its own (`best`) in the sweep folder."""
    config = yaml.safe_load((Path(best.user_attrs["run"]) / "config.yaml").read_text())
    config["output"].update({"dir": str(folder), "name": "best", "overwrite": True})
    header = (f"# The best trial ({best.number}) of a peftstd sweep, as a complete recipe (training.cpu_threads is the trial's,\n"
              f"# so that it repeats bit for bit on CPU in fp32):\n"
              f"#   accelerate launch --cpu recipes/finetune.py --config {folder / 'best.yaml'}\n")
    write_text(folder / "best.yaml", header + yaml.safe_dump(config, sort_keys=False))
    return folder / "best.yaml"


def markdown(result: dict, metric: str, importances: dict[str, float], pngs: list[str]) -> str:
    rows, best = result["trials"], result["best"]
    params = sorted({key for t in rows for key in t.params})
    sweep = result.get("sweep") or {}
    lines = [f"# Sweep `{result['study']}`", "", f"Base recipe `{sweep.get('base')}`, fixed {sweep.get('fixed')}; space "
             + ", ".join(f"`{k}` {v}" for k, v in (sweep.get("space") or {}).items()) + ".", "",
             f"Objective: {result['direction']} validation `{metric}`. "
             f"{len(rows)} trials: " + ", ".join(f"{sum(1 for t in rows if t.state.name == s)} {s.lower()}"
                                                  for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING") if any(t.state.name == s for t in rows)) + ".", ""]
    if best is not None:
        lines += [f"**Best: trial {best.number}**, {metric} {best.value:.4f}, run `{best.user_attrs.get('run')}`; "
                  "reproduce it with `best.yaml`.", "", "| parameter | value |", "|---|---|",
                  *(f"| `{k}` | {v!r} |" for k, v in best.params.items()), ""]
    lines += ["## Trials", "", "| trial | state | " + metric + " | " + " | ".join(f"`{p}`" for p in params) + " | run |",
              "|---|---|---|" + "---|" * len(params) + "---|"]
    for t in sorted(rows, key=lambda t: t.number):
        if t.state.name == "PRUNED" and t.intermediate_values:
            step, last = max(t.intermediate_values.items())
            value = f"{last:.4f} at step {step}"
        else:
            value = f"{t.value:.4f}" if t.value is not None else ""
        cells = [f"{t.params[p]:.3g}" if isinstance(t.params.get(p), float) else str(t.params.get(p, "")) for p in params]
        note = t.user_attrs.get("error", "")
        lines.append(f"| {t.number} | {t.state.name.lower()} | {value} | " + " | ".join(cells)
                     + f" | `{Path(t.user_attrs.get('run', '')).name}` {note} |")
    if importances:
        lines += ["", "## Parameter importances (Optuna's fANOVA)", "", "| parameter | importance |", "|---|---|",
                  *(f"| `{k}` | {v:.3f} |" for k, v in importances.items())]
    lines += ["", *(f"![{name}]({name})" for name in pngs), ""]
    return "\n".join(lines)
