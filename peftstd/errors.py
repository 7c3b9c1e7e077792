"""User-facing errors: one line that names the problem and what is allowed, exit code 2."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable

USER_ERROR_EXIT_CODE = 2


class UserError(Exception):
    """A mistake in what the user asked for (config, data, paths); never a bug."""


class ConfigError(UserError):
    """The recipe config is malformed, unknown, or impossible."""


class DataError(UserError):
    """The data is missing, empty, or has rows that break the task's contract."""


def exit_on_user_error(main: Callable[..., int | None]) -> Callable[..., int]:
    """Wrap a command's entry point: a `UserError` prints one line and exits 2, no traceback."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs) -> int:
        try:
            return main(*args, **kwargs) or 0
        except UserError as error:
            print(f"peftstd: error: {error}", file=sys.stderr)
            return USER_ERROR_EXIT_CODE

    return wrapper
