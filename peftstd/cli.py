"""The `peftstd` command: builds the parser from the command modules in `peftstd/commands/` and dispatches to one."""

from __future__ import annotations

import argparse
import sys

from peftstd import __version__
from peftstd.commands import COMMANDS, command
from peftstd.errors import exit_on_user_error


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="peftstd", description="A standard process for fine-tuning and shipping NLP transformers.")
    parser.add_argument("--version", action="version", version=f"peftstd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        module = command(name)
        module.add_arguments(sub.add_parser(name, help=module.HELP))
    return parser


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:2] == ["serve", "keys"]:
        keys = command("keys")
        return keys.run(keys.build_parser().parse_args(argv[2:]))
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # argparse takes a positional list only in one run, so `eval RUN --data F data.text_column=x` would leave the
    # overrides after an option unparsed: dotted key=value words anywhere join the command's overrides.
    stray = [word for word in extra if "=" in word and not word.startswith("-")]
    if stray and hasattr(args, "overrides"):
        args.overrides = [*args.overrides, *stray]
        extra = [word for word in extra if word not in stray]
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return command(args.command).run(args)


if __name__ == "__main__":
    sys.exit(main())
