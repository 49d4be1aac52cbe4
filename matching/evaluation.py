"""Linkage quality against ground truth: pairwise and B-cubed precision, recall and F1.

Both measures come from the contingency table of (predicted cluster × true person) record
counts ``n_ij``; pairs of records are never enumerated, so a million records with large
clusters cost no more than a group-by.

- **Pairwise**: a pair is two records in one cluster. True positives ``TP = Σ C(n_ij, 2)``,
  predicted pairs ``Σ C(a_i, 2)`` over cluster sizes ``a_i``, true pairs ``Σ C(b_j, 2)`` over
  person sizes ``b_j``. Precision = TP / predicted pairs, recall = TP / true pairs.
- **B-cubed**: per record, precision is the share of its cluster that is the same person and
  recall the share of its person that is in its cluster; averaged over records:
  ``P = Σ n_ij² / a_i / N`` and ``R = Σ n_ij² / b_j / N``.
- **Per register pair** (e.g. civil–national_id, civil–civil): the pairwise figures counted
  only over pairs whose two records come from those two registers, from the per-register
  counts in each contingency cell.

Undefined ratios are NaN, never a made-up 0 or 1: precision is NaN when no pairs are
predicted (all singletons), recall is NaN when the truth has no pairs. F1 is the harmonic
mean; it is 0 when either side is 0 (whatever the other side is) and NaN when a side is NaN
and the other is not 0.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy.sparse import csr_array

from matching.errors import MatchingError, MatchingWarning

__all__ = [
    "BCubedMetrics",
    "EvaluationResult",
    "PairwiseMetrics",
    "KEY_COLUMNS",
    "PRED_COLUMNS",
    "TRUTH_COLUMNS",
    "evaluate_clusters",
    "f1_score",
]

log = logging.getLogger(__name__)

KEY_COLUMNS = ("register", "record_id")
TRUTH_COLUMNS = (*KEY_COLUMNS, "person_id")
PRED_COLUMNS = (*KEY_COLUMNS, "cluster_id")


@dataclass(frozen=True)
class PairwiseMetrics:
    true_pairs: int
    predicted_pairs: int
    true_positives: int
    precision: float
    recall: float
    f1: float


@dataclass(frozen=True)
class BCubedMetrics:
    precision: float
    recall: float
    f1: float


@dataclass(frozen=True)
class EvaluationResult:
    """Output of :func:`evaluate_clusters`.

    Attributes:
        n_records: records evaluated: those present in both the truth and the prediction.
        n_truth_only: records in the truth that the prediction does not have (not evaluated).
        n_pred_only: records in the prediction that the truth does not have (not evaluated).
        n_persons: distinct true persons among the evaluated records.
        n_clusters: distinct predicted clusters among the evaluated records.
        pairwise: pairwise figures over all evaluated records.
        bcubed: B-cubed figures over all evaluated records.
        per_register_pair: one row per register pair with any true or predicted pair:
            ``register_a <= register_b, true_pairs, predicted_pairs, true_positives,
            precision, recall, f1``, sorted by the two register names.
        warnings: the warnings raised, in plain words.
    """

    n_records: int
    n_truth_only: int
    n_pred_only: int
    n_persons: int
    n_clusters: int
    pairwise: PairwiseMetrics
    bcubed: BCubedMetrics
    per_register_pair: pd.DataFrame
    warnings: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; NaN (undefined) becomes None."""
        return {
            "n_records": self.n_records,
            "n_truth_only": self.n_truth_only,
            "n_pred_only": self.n_pred_only,
            "evaluated_on": "records present in both the truth and the prediction",
            "n_persons": self.n_persons,
            "n_clusters": self.n_clusters,
            "pairwise": _json_safe(asdict(self.pairwise)),
            "bcubed": _json_safe(asdict(self.bcubed)),
            "per_register_pair": [
                _json_safe(row) for row in self.per_register_pair.to_dict(orient="records")
            ],
            "warnings": list(self.warnings),
        }


def _json_safe(d: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        if isinstance(value, (float, np.floating)):
            out[key] = None if math.isnan(value) else float(value)
        elif isinstance(value, np.integer):
            out[key] = int(value)
        else:
            out[key] = value
    return out


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den else math.nan


def f1_score(precision: float, recall: float) -> float:
    """Harmonic mean; 0 if either side is 0, NaN if a side is undefined and the other is not 0."""
    if precision == 0 or recall == 0:
        return 0.0
    if math.isnan(precision) or math.isnan(recall):
        return math.nan
    return 2 * precision * recall / (precision + recall)


def _pairs(counts: np.ndarray) -> int:
    c = counts.astype(np.int64)
    return int((c * (c - 1) // 2).sum())


def _check_frame(df: pd.DataFrame, name: str, columns: tuple[str, ...]) -> pd.DataFrame:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise MatchingError(
            f"{name} lacks column(s) {', '.join(missing)}; expected columns "
            f"{', '.join(columns)}, found {', '.join(map(str, df.columns)) or 'none'}"
        )
    out = pd.DataFrame({c: df[c].astype("string") for c in columns})
    empty = out.isna().any(axis=1)
    if empty.any():
        pos = int(np.flatnonzero(empty.to_numpy())[0])
        raise MatchingError(
            f"{name} has {int(empty.sum())} rows with an empty {', '.join(columns)} value "
            f"(first at row position {pos}); every record needs all of them"
        )
    dup = out.duplicated(list(KEY_COLUMNS), keep=False)
    if dup.any():
        positions = np.flatnonzero(dup.to_numpy())
        first = out.iloc[positions[0]]
        same = positions[
            (out["register"].iloc[positions] == first["register"]).to_numpy()
            & (out["record_id"].iloc[positions] == first["record_id"]).to_numpy()
        ]
        raise MatchingError(
            f"{name} lists the record (register, record_id) more than once: "
            f"{int(out.duplicated(list(KEY_COLUMNS)).sum())} duplicate rows, first at row "
            f"positions {', '.join(map(str, same[:5].tolist()))}; each record must appear once"
        )
    return out


def evaluate_clusters(truth: pd.DataFrame, pred: pd.DataFrame) -> EvaluationResult:
    """Compare predicted clusters with true persons.

    Args:
        truth: columns ``register, record_id, person_id`` (one row per record).
        pred: columns ``register, record_id, cluster_id`` (one row per record), e.g. a
            crosswalk.

    Returns:
        An :class:`EvaluationResult`, computed on the records present in both frames. Records
        in only one of them are counted and warned about (:class:`MatchingWarning`).

    Raises:
        MatchingError: a missing column, an empty key or id, a record listed twice.
    """
    t = _check_frame(truth, "truth", TRUTH_COLUMNS)
    p = _check_frame(pred, "prediction", PRED_COLUMNS)
    messages: list[str] = []

    def warn(message: str) -> None:
        messages.append(message)
        warnings.warn(message, MatchingWarning, stacklevel=3)

    merged = t.merge(p, on=list(KEY_COLUMNS), how="outer", indicator=True, sort=False)
    side = merged["_merge"]
    n_truth_only = int((side == "left_only").sum())
    n_pred_only = int((side == "right_only").sum())
    both = merged.loc[side == "both"]
    if n_truth_only or n_pred_only:
        warn(
            f"{n_truth_only} records are in the truth only and {n_pred_only} in the prediction "
            f"only; evaluating on the {len(both)} records present in both"
        )
    n = len(both)
    if n == 0:
        warn("no record is present in both the truth and the prediction: nothing to evaluate")

    person, _ = pd.factorize(both["person_id"], sort=True)
    cluster, _ = pd.factorize(both["cluster_id"], sort=True)
    register, register_names = pd.factorize(both["register"], sort=True)
    n_persons = int(person.max()) + 1 if n else 0
    n_clusters = int(cluster.max()) + 1 if n else 0
    if n and n_persons == n:
        warn("the truth has no two records of the same person: pairwise recall is undefined")

    cell_key = cluster.astype(np.int64) * max(n_persons, 1) + person
    cell_codes, cell, n_ij = np.unique(cell_key, return_inverse=True, return_counts=True)
    cell_cluster = cell_codes // max(n_persons, 1)
    cell_person = cell_codes % max(n_persons, 1)
    a = np.bincount(cluster, minlength=n_clusters)
    b = np.bincount(person, minlength=n_persons)

    tp = _pairs(n_ij)
    pred_pairs = _pairs(a)
    true_pairs = _pairs(b)
    precision = _ratio(tp, pred_pairs)
    recall = _ratio(tp, true_pairs)
    pairwise = PairwiseMetrics(
        true_pairs=true_pairs,
        predicted_pairs=pred_pairs,
        true_positives=tp,
        precision=precision,
        recall=recall,
        f1=f1_score(precision, recall),
    )

    sq = n_ij.astype(np.float64) ** 2
    b3_p = float((sq / a[cell_cluster]).sum() / n) if n else math.nan
    b3_r = float((sq / b[cell_person]).sum() / n) if n else math.nan
    bcubed = BCubedMetrics(precision=b3_p, recall=b3_r, f1=f1_score(b3_p, b3_r))

    per_pair = _per_register_pair(register, [str(r) for r in register_names], cell, cluster, person)
    log.info(
        "evaluated %d records: pairwise P=%.4f R=%.4f F1=%.4f, B-cubed P=%.4f R=%.4f F1=%.4f",
        n,
        pairwise.precision,
        pairwise.recall,
        pairwise.f1,
        bcubed.precision,
        bcubed.recall,
        bcubed.f1,
    )
    return EvaluationResult(
        n_records=n,
        n_truth_only=n_truth_only,
        n_pred_only=n_pred_only,
        n_persons=n_persons,
        n_clusters=n_clusters,
        pairwise=pairwise,
        bcubed=bcubed,
        per_register_pair=per_pair,
        warnings=tuple(messages),
    )


def _pair_matrix(group: np.ndarray, register: np.ndarray, n_registers: int) -> np.ndarray:
    """R×R pair counts: [r, s] pairs with one record in r and one in s, within each group.

    With ``M`` the group × register count matrix, ``MᵀM[r, s]`` (r ≠ s) counts those pairs;
    on the diagonal, ``(MᵀM[r, r] - Σ M[:, r]) / 2`` counts pairs inside register r.
    """
    if group.size == 0:
        return np.zeros((n_registers, n_registers), dtype=np.int64)
    m = csr_array(
        (np.ones(group.size, dtype=np.int64), (group, register)),
        shape=(int(group.max()) + 1, n_registers),
    )
    gram = (m.T @ m).toarray().astype(np.int64)
    diag = (np.diag(gram) - np.bincount(register, minlength=n_registers)) // 2
    np.fill_diagonal(gram, diag)
    return gram


def _per_register_pair(
    register: np.ndarray,
    names: list[str],
    cell: np.ndarray,
    cluster: np.ndarray,
    person: np.ndarray,
) -> pd.DataFrame:
    k = len(names)
    tp = _pair_matrix(cell, register, k)
    pred = _pair_matrix(cluster, register, k)
    true = _pair_matrix(person, register, k)
    rows = []
    for r in range(k):
        for s in range(r, k):
            if not (true[r, s] or pred[r, s]):
                continue
            precision = _ratio(tp[r, s], pred[r, s])
            recall = _ratio(tp[r, s], true[r, s])
            rows.append(
                {
                    "register_a": names[r],
                    "register_b": names[s],
                    "true_pairs": int(true[r, s]),
                    "predicted_pairs": int(pred[r, s]),
                    "true_positives": int(tp[r, s]),
                    "precision": precision,
                    "recall": recall,
                    "f1": f1_score(precision, recall),
                }
            )
    columns = [
        "register_a",
        "register_b",
        "true_pairs",
        "predicted_pairs",
        "true_positives",
        "precision",
        "recall",
        "f1",
    ]
    return pd.DataFrame(rows, columns=columns)
