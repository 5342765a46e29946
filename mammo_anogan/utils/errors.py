"""User-facing errors: bad input or bad configuration ends in one clear line, never a traceback."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])
log = logging.getLogger(__name__)


class UserError(Exception):
    """An error caused by the user's input or configuration.

    Entry points catch it and print ``error: <message>`` on one line (exit code 2); anything else
    is a bug and keeps its traceback.
    """


class ConfigError(UserError):
    """An invalid configuration value; the message names the key and the allowed values."""


def exit_on_user_error(func: F) -> F:
    """Decorate an entry point so that a :class:`UserError` prints one line and exits with code 2."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except UserError as err:
            message = " ".join(str(err).split())  # always a single line
            log.error("error: %s", message)
            print(f"error: {message}", file=sys.stderr)
            sys.exit(2)

    return wrapper  # type: ignore[return-value]
