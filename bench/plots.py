"""The bar chart the training benchmarks share: one bar per configuration and round, a panel per comparison."""

from __future__ import annotations

from pathlib import Path


def rounds_chart(path: Path, panels: list[tuple[dict[str, list[dict]], str, str, str]]) -> None:
    """One panel per (runs, key, ylabel, title): bars of `key` for every configuration (colour) in every
    alternating round (group)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 3.8), squeeze=False)
    for ax, (runs, key, ylabel, title) in zip(axes[0], panels):
        names = list(runs)
        rounds = max(len(rows) for rows in runs.values())
        width = 0.8 / len(names)
        for i, name in enumerate(names):
            values = [row[key] for row in runs[name]]
            ax.bar([r + i * width for r in range(len(values))], values, width, label=name)
        ax.set_xticks([r + width * (len(names) - 1) / 2 for r in range(rounds)], [f"round {r + 1}" for r in range(rounds)])
        ax.set(ylabel=ylabel, title=title)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
