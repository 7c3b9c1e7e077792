"""The rich console every command prints tables with. In a terminal rich fits tables to its width; in a log file or
CI (not a TTY) it would assume 80 columns and cut cells to `model.in…`, hiding the very names a user needs, so
there it gets room enough for every table to print whole."""

from __future__ import annotations

import sys

UNBOUNDED = 10_000


def console(stderr: bool = True):
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, width=None if stream.isatty() else UNBOUNDED)
