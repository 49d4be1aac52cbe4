"""Where a step's time goes: named laps, reported in the step's summary."""

from __future__ import annotations

import time


class Laps:
    """``lap("read")`` records the seconds since the previous lap (or since ``start``)."""

    def __init__(self, start: float | None = None) -> None:
        self.seconds: dict[str, float] = {}
        self._mark = time.perf_counter() if start is None else start

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = round(now - self._mark, 2)
        self._mark = now
