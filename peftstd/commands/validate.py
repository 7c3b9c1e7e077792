"""`peftstd validate`: check a fine-tune recipe or a pretraining config against its schema."""

from __future__ import annotations

import argparse

HELP = "check a fine-tune recipe or a pretraining config against its schema"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="recipe YAML")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. lora.rank=8")


def run(args: argparse.Namespace) -> int:
    """A fine-tune recipe, or a pretraining config (recognised by its top-level `objective` key)."""
    from peftstd.config import load_config
    from peftstd.config.load import read_yaml
    from peftstd.config.pretrain import PretrainConfig

    if "objective" in read_yaml(args.config) or any(o.startswith("objective=") for o in args.overrides):
        cfg = load_config(args.config, args.overrides, schema=PretrainConfig)
        print(f"ok: {args.config} (schema {cfg.schema_version}, pretraining {cfg.objective}, method {cfg.method}, "
              f"learning rate {cfg.learning_rate():g})")
        return 0
    cfg = load_config(args.config, args.overrides)
    print(f"ok: {args.config} (schema {cfg.schema_version}, task {cfg.task.type}, method {cfg.method}, "
          f"learning rate {cfg.learning_rate():g})")
    return 0
