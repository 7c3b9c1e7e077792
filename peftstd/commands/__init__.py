"""The `peftstd` subcommands, one module each (as torchtune's `tune` subcommands and git's builtins are laid out).

A command module has `HELP` (its line in `peftstd --help`), `add_arguments(parser)` and `run(args) -> int` (the exit
code); it imports what it runs inside `run`, so `peftstd --help` loads no model library. A new command is a new
module here plus its name in `COMMANDS`.
"""

from __future__ import annotations

import importlib
from types import ModuleType

# in the order `peftstd --help` lists them
COMMANDS = ("validate", "schema", "check", "export", "predict", "eval", "ensemble", "explain", "bench", "serve", "monitor",
            "triton", "sweep", "defaults")


def command(name: str) -> ModuleType:
    return importlib.import_module(f"peftstd.commands.{name}")
