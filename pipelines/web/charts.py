"""Geometry of the console's charts; the templates draw them as inline SVG.

No chart library and no script: the server computes rectangles and points, the template
writes ``<rect>``/``<polyline>`` with autoescaped labels, so a chart renders offline and
cannot carry a script in a label.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


def weight_of_probability(p: float) -> float:
    """The match weight (log2 odds) at which a pair reaches probability ``p``."""
    p = min(max(float(p), 1e-12), 1 - 1e-12)
    return math.log2(p) - math.log2(1 - p)


@dataclass
class Chart:
    width: int
    height: int
    bars: list[dict] = field(default_factory=list)
    lines: list[dict] = field(default_factory=list)
    ticks: list[dict] = field(default_factory=list)
    series: list[dict] = field(default_factory=list)


def histogram(weights: np.ndarray, thresholds: dict[str, float], *, bins: int = 40,
              width: int = 720, height: int = 220) -> Chart:
    """Bars of the match-weight distribution and vertical lines at the thresholds.

    Args:
        weights: match weights of the scored pairs.
        thresholds: name -> weight, e.g. ``{"link": 4.2, "review": 0.0}``.
    """
    chart = Chart(width, height)
    weights = np.asarray(weights, dtype=np.float64)
    weights = weights[np.isfinite(weights)]
    if weights.size == 0:
        return chart
    lo = math.floor(min(weights.min(), *thresholds.values()) if thresholds else weights.min())
    hi = math.ceil(max(weights.max(), *thresholds.values()) if thresholds else weights.max())
    if hi <= lo:
        hi = lo + 1
    counts, edges = np.histogram(weights, bins=bins, range=(lo, hi))
    top = max(int(counts.max()), 1)
    pad_l, pad_b, plot_h = 48, 24, height - 34
    plot_w = width - pad_l - 8

    def x_of(w: float) -> float:
        return pad_l + (w - lo) / (hi - lo) * plot_w

    link = thresholds.get("link", math.inf)
    review = thresholds.get("review", math.inf)
    for count, left, right in zip(counts, edges[:-1], edges[1:], strict=True):
        h = count / top * plot_h
        mid = (left + right) / 2
        band = "linked" if mid >= link else "review" if mid >= review else "below"
        chart.bars.append({
            "x": round(x_of(left), 1), "w": round(max(x_of(right) - x_of(left) - 1, 1), 1),
            "y": round(height - pad_b - h, 1), "h": round(h, 1), "count": int(count),
            "lo": round(float(left), 2), "hi": round(float(right), 2), "band": band,
        })
    for name, w in thresholds.items():
        chart.lines.append({"x": round(x_of(w), 1), "label": f"{name} {w:.1f}",
                            "y1": 6, "y2": height - pad_b})
    step = _nice_step((hi - lo) / 8)
    start = math.ceil(lo / step) * step
    t = start
    while t <= hi + 1e-9:
        chart.ticks.append({"x": round(x_of(t), 1), "label": f"{t:g}", "y": height - 8})
        t += step
    chart.ticks.append({"x": 4, "label": f"{top:,}", "y": height - pad_b - plot_h + 10})
    return chart


def _nice_step(raw: float) -> float:
    if raw <= 0:
        return 1.0
    exp = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 5, 10):
        if raw <= m * exp:
            return float(m * exp)
    return float(10 * exp)


def waterfall(prior: float, contributions: Sequence[tuple[str, float]], *,
              width: int = 720, row_h: int = 22) -> Chart:
    """Horizontal bars from the prior weight, one per comparison, to the final weight.

    Args:
        prior: the prior weight (log2 odds of a match before any comparison).
        contributions: (label, weight) per comparison, in the model's order.
    """
    label_w = 260
    plot_w = width - label_w - 60
    running = [prior]
    for _, w in contributions:
        running.append(running[-1] + w)
    final = running[-1]
    lo = min(0.0, *running)
    hi = max(0.0, *running)
    if hi <= lo:
        hi = lo + 1
    rows = [("prior", 0.0, prior, "prior")]
    for (label, w), start in zip(contributions, running[:-1], strict=True):
        rows.append((label, start, start + w, "plus" if w >= 0 else "minus"))
    rows.append(("match weight", 0.0, final, "final"))
    chart = Chart(width, row_h * len(rows) + 30)

    def x_of(v: float) -> float:
        return label_w + (v - lo) / (hi - lo) * plot_w

    for i, (label, a, b, kind) in enumerate(rows):
        left, right = sorted((x_of(a), x_of(b)))
        value = b - a
        chart.bars.append({
            "label": label, "x": round(left, 1), "w": round(max(right - left, 1), 1),
            "y": 4 + i * row_h, "h": row_h - 6, "kind": kind,
            "value": f"{value:+.2f}" if kind in ("plus", "minus") else f"{b:.2f}",
            "tx": round(max(right, left) + 4, 1), "ty": 4 + i * row_h + row_h - 10,
        })
    chart.lines.append({"x": round(x_of(0.0), 1), "y1": 0, "y2": chart.height - 24,
                        "label": "0"})
    return chart


def trend(points: Sequence[tuple[str, float]], *, width: int = 360, height: int = 80) -> Chart:
    """A small line chart of one rule's count over runs (oldest first)."""
    chart = Chart(width, height)
    if not points:
        return chart
    values = [v for _, v in points]
    top = max(max(values), 1)
    n = len(points)
    pad = 6
    coords = []
    for i, (run_id, v) in enumerate(points):
        x = pad + (i / (n - 1) if n > 1 else 0.5) * (width - 2 * pad)
        y = height - pad - (v / top) * (height - 2 * pad - 10)
        coords.append({"x": round(x, 1), "y": round(y, 1), "run_id": run_id,
                       "value": f"{v:,.0f}"})
    chart.series.append({"points": " ".join(f"{c['x']},{c['y']}" for c in coords),
                         "dots": coords})
    chart.ticks.append({"x": 2, "y": 10, "label": f"{top:,.0f}"})
    return chart


__all__ = ["Chart", "histogram", "trend", "waterfall", "weight_of_probability"]
