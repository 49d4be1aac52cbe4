"""The one base exception of ``pipelines``: a user's mistake, told in one clear message."""

from __future__ import annotations


class ReglinkError(Exception):
    """An error caused by configuration or input that the user can fix.

    The CLI prints the message (no traceback) and exits with status 2. The message should
    name the file, the column or key, the row where there is one, what was expected and
    what to do next.
    """


class ConfigError(ReglinkError):
    """A register or linkage configuration file is invalid."""


class ExtractError(ReglinkError):
    """A register extract cannot be read as its configuration says."""
