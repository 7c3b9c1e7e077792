"""`peftstd schema`: print the JSON Schema of recipe configs (--pretrain: of pretraining configs)."""

from __future__ import annotations

import argparse
import json

HELP = "print the JSON Schema of recipe configs (--pretrain: of pretraining configs)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pretrain", action="store_true", help="the schema of recipes/pretrain.py configs")


def run(args: argparse.Namespace) -> int:
    from peftstd.config import RecipeConfig
    from peftstd.config.pretrain import PretrainConfig

    print(json.dumps((PretrainConfig if args.pretrain else RecipeConfig).model_json_schema(), indent=2))
    return 0
