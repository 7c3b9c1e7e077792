"""The start banner: what is about to be trained, on what, and where it goes."""

from __future__ import annotations

from rich.table import Table

from peftstd.basics.console import console as make_console


def print_banner(cfg, base, splits, parameters, precision, world_size, total_steps, run_dir, threads: dict | None = None,
                 distributed: dict | None = None) -> None:
    table = Table(title="peftstd fine-tune", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    table.add_row("model", f"{base.name} ({base.source})")
    table.add_row("task / method", f"{cfg.task.type} / {cfg.method}")
    table.add_row("trainable", f"{parameters['trainable']:,} of {parameters['total']:,} ({parameters['trainable_percent']:.2f}%)")
    table.add_row("data", f"train {len(splits.train):,} · validation {len(splits.validation):,} · test {len(splits.test):,}")
    table.add_row("schedule", f"{total_steps} optimizer steps · batch {cfg.training.batch_size} × {world_size} process(es) · lr {cfg.learning_rate():g}")
    table.add_row("precision", precision)
    if distributed and distributed["world_size"] > 1:
        kind = f"DeepSpeed {distributed['layout'].replace('zero', 'ZeRO')}" if distributed["type"] == "DEEPSPEED" else distributed["type"]
        table.add_row("distributed", f"{kind} ({distributed['wrapper']}), {distributed['world_size']} processes "
                      f"on {distributed['machines']} machine(s)" + (", parameters sharded" if distributed["sharded_parameters"] else ""))
    if threads:
        table.add_row("cpu threads", f"{threads['threads']} per process ({threads['reason']})")
    table.add_row("run directory", str(run_dir))
    make_console().print(table)
