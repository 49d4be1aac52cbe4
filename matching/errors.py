"""Exceptions and warnings of the linkage engine.

Every error ``matching`` raises on purpose is a :class:`MatchingError`, so that callers
(``pipelines``, the CLI) can turn it into one clear message without a traceback.
"""

from __future__ import annotations

__all__ = ["MatchingError", "MatchingWarning"]


class MatchingError(Exception):
    """Base class of the errors raised by ``matching`` for bad input or settings."""


class MatchingWarning(UserWarning):
    """Something in the input was odd but the engine carried on (e.g. unparseable dates)."""
