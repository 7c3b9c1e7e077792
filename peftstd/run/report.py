"""`report.md` and `curves.png`: the numbers of a run for a person to read."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_curves(history: dict[str, list[dict[str, Any]]], metric: str, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(10, 3.6))
    train = history.get("train", [])
    validation = history.get("validation", [])
    if train:
        ax_loss.plot([r["step"] for r in train], [r["loss"] for r in train], label="train")
    if validation:
        ax_loss.plot([r["step"] for r in validation], [r["loss"] for r in validation], "o-", label="validation")
        ax_metric.plot([r["step"] for r in validation], [r[metric] for r in validation], "o-", color="tab:green")
    ax_loss.set(title="loss", xlabel="optimizer step")
    ax_loss.legend()
    ax_metric.set(title=f"validation {metric}", xlabel="optimizer step")
    for ax in (ax_loss, ax_metric):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def metrics_table(rows: dict[str, dict[str, float]]) -> str:
    names = list(next(iter(rows.values())))
    lines = ["| split | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for split, values in rows.items():
        lines.append(f"| {split} | " + " | ".join(f"{values[n]:.4f}" for n in names) + " |")
    return "\n".join(lines)


def render_report(run_name: str, manifest: dict[str, Any], metrics: dict[str, Any], task_section: str) -> str:
    data = manifest["data"]
    training = manifest["training"]
    best = metrics["best"]
    return f"""# Run `{run_name}`

| | |
|---|---|
| model | `{manifest['base_model']['name']}` ({manifest['base_model']['source']}) |
| method | {manifest['method']['name']} — {manifest['parameters']['trainable']:,} of {manifest['parameters']['total']:,} parameters trained ({manifest['parameters']['trainable_percent']:.2f}%) |
| data | train {data['sizes']['train']}, validation {data['sizes']['validation']}, test {data['sizes']['test']} (from `{data['sources']['train']}`) |
| precision | {training['precision']} ({training['precision_reason']}); processes: {training['world_size']} |
| schedule | {training['optimizer_steps']} optimizer steps, learning rate {training['learning_rate']:g} |
| best checkpoint | step {best['step']}, validation {best['metric']} = {best['value']:.4f} |
| wall time | {manifest['wall_time_s']:.0f} s, peak RSS {manifest['peak_memory']['rss_mb']:.0f} MB |

## Test metrics (final model, float32)

{metrics_table({'test': metrics['test']})}

{task_section}
## Curves

![loss and validation metric](curves.png)

## Reproduce

```
{manifest['command']}
```
"""
