"""A pair's weight waterfall from ``match_pairs.explanation`` and the run's model.

The explanation JSON of a pair is read in any of these forms (publish writes the first):

- ``{"prior_weight": -11.8, "comparisons": [{"name": "surname", "level": 4,
  "label": "exact", "weight": 7.1, "left": "...", "right": "..."}, ...]}``
- the pair's row of ``pairs.parquet``: ``{"gamma_surname": 4, "w_surname": 7.1, ...}``
- ``{"surname": 7.1, ...}`` or ``{"surname": {"level": 4, "weight": 7.1}, ...}``

Level labels and the prior weight missing from the explanation are taken from the run's
``model.json``.
"""

from __future__ import annotations

import math
from typing import Any


def _labels(model: dict | None) -> dict[str, list[str]]:
    if not model:
        return {}
    return {c["name"]: list(c.get("labels") or []) for c in model.get("comparisons", [])
            if isinstance(c, dict) and "name" in c}


def _label(labels: dict[str, list[str]], name: str, level: Any) -> str:
    if level is None:
        return ""
    try:
        level = int(level)
    except (TypeError, ValueError):
        return str(level)
    if level < 0:
        return "missing"
    names = labels.get(name, [])
    return names[level] if level < len(names) else f"level {level}"


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def contributions(explanation: Any, model: dict | None,
                  final_weight: float | None) -> tuple[float | None, list[dict]]:
    """(prior weight, [{"name", "level", "label", "weight", "left", "right"}, ...]).

    The prior is the explanation's, else the model's, else what makes the contributions
    add up to ``final_weight``.
    """
    labels = _labels(model)
    items: list[dict] = []
    prior = None
    if isinstance(explanation, dict):
        prior = _number(explanation.get("prior_weight"))
        comps = explanation.get("comparisons")
        if isinstance(comps, list):
            for c in comps:
                if not isinstance(c, dict) or "name" not in c:
                    continue
                level = c.get("level", c.get("gamma"))
                items.append({"name": str(c["name"]), "level": level,
                              "label": str(c.get("label") or _label(labels, str(c["name"]),
                                                                   level)),
                              "weight": _number(c.get("weight")) or 0.0,
                              "left": c.get("left"), "right": c.get("right")})
        elif any(str(k).startswith("w_") for k in explanation):
            for key, value in explanation.items():
                if not str(key).startswith("w_"):
                    continue
                name = str(key)[2:]
                level = explanation.get(f"gamma_{name}")
                items.append({"name": name, "level": level,
                              "label": _label(labels, name, level),
                              "weight": _number(value) or 0.0, "left": None, "right": None})
        else:
            for key, value in explanation.items():
                if key in ("prior_weight", "match_weight", "match_probability"):
                    continue
                if isinstance(value, dict):
                    level = value.get("level", value.get("gamma"))
                    weight = _number(value.get("weight"))
                    label = value.get("label") or _label(labels, str(key), level)
                    left, right = value.get("left"), value.get("right")
                else:
                    level, weight, label, left, right = None, _number(value), "", None, None
                if weight is None:
                    continue
                items.append({"name": str(key), "level": level, "label": str(label),
                              "weight": weight, "left": left, "right": right})
    if prior is None and model:
        prior = _number(model.get("prior_weight"))
    if prior is None and final_weight is not None and items:
        prior = final_weight - sum(i["weight"] for i in items)
    return prior, items


__all__ = ["contributions"]
