"""`peftstd defaults`: print the standard's defaults table (Markdown)."""

from __future__ import annotations

import argparse
import sys

HELP = "print the standard's defaults table (Markdown)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """It takes none."""


def run(args: argparse.Namespace) -> int:
    from peftstd.config.docs import defaults_markdown
    from peftstd.export.profile import ExportProfile
    from peftstd.serve.config import ServeConfig

    sys.stdout.write(defaults_markdown((("Export profiles (`peftstd export --profile`, `export/*.yaml`)", ExportProfile),
                                        ("Serve settings (`peftstd serve --config`, each also a flag)", ServeConfig))))
    return 0
