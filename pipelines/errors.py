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


class ValidationError(ReglinkError):
    """A run's validation cannot be done or its result cannot be used (e.g. it failed)."""


class CircuitBreakerError(ValidationError):
    """A batch-level data-quality check failed: the run stops before linking.

    The message names every register and check that failed, with the observed value and
    the threshold, so the operator knows which extract to look at.
    """
