"""Scoring: match weight, match probability and each field's contribution per pair.

The match weight of a pair is ``prior_weight + sum of its comparisons' contributions``, where
a contribution is log2 of the comparison's Bayes factor at the pair's level (0 when a side is
missing), with the term-frequency adjustment on the exact level of name comparisons. The
contributions (``w_<comparison>``) and levels (``gamma_<comparison>``) are the explanation a
steward reads: they add up to the match weight.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd

from matching.comparisons import Comparison, RecordColumns
from matching.model import ComparisonParameters, FellegiSunterModel

__all__ = ["probability_to_weight", "score_pairs", "tf_by_code", "weight_to_probability"]

log = logging.getLogger(__name__)


def weight_to_probability(weight: np.ndarray | float) -> np.ndarray | float:
    return 1.0 / (1.0 + np.exp2(-np.asarray(weight, dtype=np.float64)))


def probability_to_weight(p: float) -> float:
    p = min(max(p, 1e-300), 1 - 1e-16)
    return float(np.log2(p) - np.log2(1 - p))


def tf_by_code(param: ComparisonParameters, cols: RecordColumns, tf_minimum: float) -> np.ndarray:
    """Relative frequency of each distinct value of the TF column (index = code, last = -1).

    Frequencies come from the model's table (the training records); a value the table does not
    hold takes its frequency among the records being scored.
    """
    assert param.tf_column is not None
    codes, values = cols.codes(param.tf_column)
    floor = max(tf_minimum, 1.0 / max(param.tf_total, 1))
    table = pd.Series(param.tf_counts, dtype="float64")
    known = table.reindex(values).to_numpy(dtype=np.float64) / max(param.tf_total, 1)
    valid = codes[codes >= 0]
    here = np.bincount(valid, minlength=len(values)).astype(np.float64) / max(valid.size, 1)
    tf = np.where(np.isnan(known), here, known)
    return np.append(np.maximum(tf, floor), 1.0)


def score_pairs(
    model: FellegiSunterModel,
    comparisons: Sequence[Comparison],
    cols: RecordColumns,
    left: np.ndarray,
    right: np.ndarray,
    gammas: np.ndarray,
    *,
    threshold: float | None = None,
    explain: bool = True,
    rule: np.ndarray | None = None,
    rule_names: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Score candidate pairs with a trained model.

    Args:
        model: the trained model; ``comparisons`` and ``gammas``' columns follow its
            parameters' order.
        cols: column caches of the records being scored.
        left, right: record positions of the pairs.
        gammas: the pairs' comparison vectors.
        threshold: keep only pairs with ``match_probability >= threshold`` (``None``: all).
        explain: add ``gamma_<name>`` (int8 level) and ``w_<name>`` (float32 contribution).
        rule, rule_names: the blocking rule of each pair, reported as a ``rule`` column.

    Returns:
        A DataFrame with ``left``, ``right``, ``match_weight`` and ``match_probability``
        (float32), ``rule`` and, with ``explain``, the explanation columns; ``attrs`` holds
        ``prior_weight`` and the level labels of each comparison.
    """
    params = model.parameters
    tf_min = model.settings.training.tf_minimum
    weight = np.full(left.size, model.prior_weight, dtype=np.float64)
    tables = [p.log2_bayes_factors() for p in params]
    # per TF comparison: (TF column codes per record, log2 m_exact - log2 tf per code)
    tf_weights: list[tuple[np.ndarray, np.ndarray] | None] = []
    for k, p in enumerate(params):
        weight += tables[k][gammas[:, k].astype(np.intp) + 1]
        if p.tf_column and p.tf_level is not None and cols.has(p.tf_column):
            codes, _ = cols.codes(p.tf_column)
            # Splink's u-adjustment: m/u * u/tf = m/tf on the exact level
            per_code = np.log2(p.m[p.tf_level]) - np.log2(tf_by_code(p, cols, tf_min))
            at = np.flatnonzero(gammas[:, k] == p.tf_level)
            weight[at] += per_code[codes[left[at]]] - tables[k][p.tf_level + 1]
            tf_weights.append((codes, per_code))
        else:
            tf_weights.append(None)

    sel = slice(None) if threshold is None else np.flatnonzero(
        weight >= probability_to_weight(threshold))
    left_sel = left[sel]
    out: dict[str, np.ndarray | pd.Categorical] = {
        "left": left_sel,
        "right": right[sel],
        "match_weight": weight[sel].astype(np.float32),
        "match_probability": weight_to_probability(weight[sel]).astype(np.float32),
    }
    if rule is not None and rule_names is not None:
        out["rule"] = pd.Categorical.from_codes(rule[sel].astype(np.int64),
                                                categories=list(rule_names))
    if explain:
        g_sel = gammas[sel]
        for k, p in enumerate(params):
            out[f"gamma_{p.name}"] = np.ascontiguousarray(g_sel[:, k])
        for k, p in enumerate(params):
            w = tables[k][g_sel[:, k].astype(np.intp) + 1]
            if tf_weights[k] is not None:
                codes, per_code = tf_weights[k]
                at = np.flatnonzero(g_sel[:, k] == p.tf_level)
                w[at] = per_code[codes[left_sel[at]]]
            out[f"w_{p.name}"] = w.astype(np.float32)
    df = pd.DataFrame(out, copy=False)
    df.attrs["prior_weight"] = model.prior_weight
    df.attrs["labels"] = {p.name: p.labels for p in params}
    log.info("scored %d pairs, kept %d", left.size, len(df))
    return df
