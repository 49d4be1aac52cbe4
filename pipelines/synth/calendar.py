"""Dates as day numbers (days since 1900-01-01) with precomputed text forms.

Every date of the synthetic country is an int32 day number; rendering a million dates in
a register's format is one fancy-indexing lookup into a table built once.
"""

from __future__ import annotations

import datetime as dt

import numpy as np

EPOCH = dt.date(1900, 1, 1)
LAST = dt.date(2031, 12, 31)
N_DAYS = (LAST - EPOCH).days + 1
NO_DATE = np.int32(2**31 - 1)  # "never" (alive, not married)

_days = np.datetime64(EPOCH.isoformat(), "D") + np.arange(N_DAYS).astype("timedelta64[D]")
ISO = np.datetime_as_string(_days, unit="D").astype(object)
YEAR = (_days.astype("datetime64[Y]").astype(np.int64) + 1970).astype(np.int32)
MONTH = (_days.astype("datetime64[M]").astype(np.int64) % 12 + 1).astype(np.int32)
DAY = (_days - _days.astype("datetime64[M]").astype("datetime64[D]")).astype(np.int32) + 1

_iso = ISO.tolist()
FORMATS: dict[str, np.ndarray] = {
    "%Y-%m-%d": ISO,
    "%d.%m.%Y": np.array([f"{d[8:]}.{d[5:7]}.{d[:4]}" for d in _iso], dtype=object),
    "%d/%m/%Y": np.array([f"{d[8:]}/{d[5:7]}/{d[:4]}" for d in _iso], dtype=object),
    "%Y%m%d": np.array([d.replace("-", "") for d in _iso], dtype=object),
}
NUMBER_TEXT = np.array([str(i) for i in range(10000)], dtype=object)

# First day number of each month since January 1900, to rebuild dates from parts.
_month_starts = np.arange(
    np.datetime64("1900-01"), np.datetime64("2032-01"), dtype="datetime64[M]"
).astype("datetime64[D]")
MONTH_START = (_month_starts - np.datetime64("1900-01-01")).astype(np.int32)


def day(year: int, month: int = 1, day_of_month: int = 1) -> int:
    """Day number of a calendar date."""
    return (dt.date(year, month, day_of_month) - EPOCH).days


def from_parts(year: np.ndarray, month: np.ndarray, day_of_month: np.ndarray) -> np.ndarray:
    """Day numbers from parts; the day is clipped to 28 where the month is shorter."""
    start = MONTH_START[(year - 1900) * 12 + (month - 1)]
    next_start = MONTH_START[np.minimum((year - 1900) * 12 + month, len(MONTH_START) - 1)]
    length = np.where(next_start > start, next_start - start, 31)
    return (start + np.minimum(day_of_month, length) - 1).astype(np.int32)


def years(days: np.ndarray | int) -> np.ndarray:
    """Whole-ish years for a number of days (for ages and durations)."""
    return np.asarray(days) / 365.2425


def render(days: np.ndarray, fmt: str) -> np.ndarray:
    """Dates in ``fmt`` (a key of FORMATS); NO_DATE or negative gives an empty string."""
    days = np.asarray(days)
    ok = (days >= 0) & (days < N_DAYS)
    out = np.full(days.shape, "", dtype=object)
    out[ok] = FORMATS[fmt][days[ok]]
    return out
