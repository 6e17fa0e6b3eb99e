"""One error hierarchy: every error a user sees is one line and carries the process exit code.

Messages name settings as ``{field}`` placeholders: ``str(e)`` shows the field name (what a
notebook or library user sets), :meth:`FlSyftError.for_cli` shows the command-line flag.
"""

from __future__ import annotations

import re

_FIELD = re.compile(r"\{([a-z_][a-z_0-9]*)\}", re.IGNORECASE)


class FlSyftError(Exception):
    """Base of every error reported to a user (one line, no traceback); ``exit_code`` for the CLI."""

    exit_code = 1

    def __init__(self, template: str):
        self.template = template
        super().__init__(_FIELD.sub(lambda m: m.group(1), template))

    def for_cli(self, flags: dict[str, str] | None = None) -> str:
        """The message with each ``{field}`` shown as its flag (``local_iters`` -> ``--local-iters``)."""
        flags = flags or {}
        return _FIELD.sub(lambda m: flags.get(m.group(1), "--" + m.group(1).replace("_", "-")), self.template)


class ConfigError(FlSyftError, ValueError):
    """A setting that cannot work (exit code 2, like any bad command-line value)."""

    exit_code = 2


class DataError(FlSyftError):
    """A data source is missing, corrupted or not MNIST-shaped (the message names the file)."""


def one_line(e: BaseException, limit: int = 300) -> str:
    """``e``'s message (PySyft's ``public_message`` if it has one) as one line of at most ``limit`` chars."""
    text = getattr(e, "public_message", None) or str(e)
    return " ".join(text.split())[:limit] or type(e).__name__


def counted(n: int, noun: str) -> str:
    """``n`` and ``noun``, plural unless ``n`` is 1: "1 round", "2 rounds"."""
    return f"{n} {noun}{'s' * (n != 1)}"
