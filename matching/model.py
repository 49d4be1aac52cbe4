"""The Fellegi–Sunter model: u from random pairs, m by EM, λ, term frequencies; JSON I/O.

- **u** (how often a level occurs between two records of different persons) is counted on
  seeded, uniformly random record pairs (``u_sample_pairs``, at most ``u_pairs_per_record``
  per record, every pair when there are fewer): almost all of them are non-matches. A level
  never seen gets a small floor, so that no u is 0.
- **m** (how often a level occurs between two records of the same person) is estimated by EM
  with u fixed, following Splink: one EM session per training blocking rule on the candidate
  pairs that rule generates, leaving out the comparisons that read the rule's own columns
  (they agree by construction there); each comparison's m is the mean of the sessions in
  which it was free. EM runs on the distinct comparison vectors with their counts. m is
  smoothed (:func:`smooth_m`): a Dirichlet prior and a floor of ``min_log2_bayes_factor``
  bits, because a disagreement unseen among training matches still happens in real data.
- **λ** is the share of matches among all record pairs: the expected number of matches
  among the candidates (EM on λ alone, m and u fixed) divided by n(n-1)/2.
- **Term frequencies**: on the exact level of a comparison with ``tf_adjustment``, the Bayes
  factor m/u is replaced by m/tf(value) (Splink's u-adjustment), so that two Karimovs count
  less than two Zulfiqorovs; the frequency tables are kept in the model.
- A missing value (level -1) contributes nothing.

A model is saved as JSON (settings, m, u, λ, TF tables, seed, versions, training statistics)
and reloaded to score new records without retraining.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from matching.blocking import CandidatePairs
from matching.comparisons import Comparison, RecordColumns, build_comparison, compare_pairs
from matching.errors import MatchingError, MatchingWarning
from matching.settings import LinkageSettings

__all__ = [
    "ComparisonParameters",
    "FellegiSunterModel",
    "active_comparisons",
    "train_model",
]

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


def smooth_m(counts: np.ndarray, u: np.ndarray, prior_pairs: float,
             min_log2_bayes_factor: float) -> np.ndarray:
    """m of one comparison from the (expected) match counts per level, smoothed.

    Two guards against a level that happened not to occur among the training matches:

    - a Dirichlet prior of ``prior_pairs`` pseudo-matches spread over the levels like u
      (m = u is "no evidence", the neutral belief before any data);
    - a floor m >= u * 2**min_log2_bayes_factor, so that no level counts less than
      ``min_log2_bayes_factor`` bits. Real registers miscode a field (sex, a digit of the
      date, the patronymic) in something like 1 record in 1,000 or more, which training data
      (synthetic or one clean batch) may never show; a disagreement seen 0 times in training
      must not outvote the rest of the evidence, as a 1e-6 floor (-20 bits) did.
    """
    c = np.asarray(counts, dtype=np.float64)
    u = np.asarray(u, dtype=np.float64)
    m = (c + prior_pairs * u) / max(c.sum() + prior_pairs, 1e-300)
    m = np.maximum(m, u * 2.0 ** min_log2_bayes_factor)
    return m / m.sum()


@dataclass
class ComparisonParameters:
    """m and u per level (index = gamma) of one comparison, and its TF table."""

    name: str
    kind: str
    labels: list[str]
    m: list[float]
    u: list[float]
    tf_column: str | None = None
    tf_level: int | None = None
    tf_total: int = 0
    tf_counts: dict[str, int] = field(default_factory=dict)
    trained: bool = True

    def log2_bayes_factors(self) -> np.ndarray:
        """log2(m/u) per level, float64; index 0 is null (0), then gamma 0, 1, ..."""
        m = np.asarray(self.m, dtype=np.float64)
        u = np.asarray(self.u, dtype=np.float64)
        return np.concatenate([[0.0], np.log2(m) - np.log2(u)])

    def to_dict(self) -> dict[str, Any]:
        d = {
            "name": self.name, "kind": self.kind, "labels": self.labels,
            "m": [float(x) for x in self.m], "u": [float(x) for x in self.u],
            "trained": self.trained,
            "log2_bayes_factor": [round(float(x), 4) for x in self.log2_bayes_factors()[1:]],
        }
        if self.tf_column:
            d["tf"] = {"column": self.tf_column, "level": self.tf_level,
                       "total": self.tf_total, "counts": self.tf_counts}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ComparisonParameters:
        tf = d.get("tf") or {}
        return cls(
            name=d["name"], kind=d["kind"], labels=list(d["labels"]),
            m=[float(x) for x in d["m"]], u=[float(x) for x in d["u"]],
            tf_column=tf.get("column"), tf_level=tf.get("level"),
            tf_total=int(tf.get("total", 0)), tf_counts=dict(tf.get("counts", {})),
            trained=bool(d.get("trained", True)),
        )


@dataclass
class FellegiSunterModel:
    """A trained model: enough to score any records that have the settings' columns."""

    settings: LinkageSettings
    parameters: list[ComparisonParameters]
    lambda_: float
    seed: int
    training: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)

    @property
    def prior_weight(self) -> float:
        """log2 of the prior odds λ/(1-λ): the match weight of a pair with no evidence."""
        return float(np.log2(self.lambda_) - np.log2(1.0 - self.lambda_))

    @property
    def comparison_names(self) -> list[str]:
        return [p.name for p in self.parameters]

    def comparisons(self) -> list[Comparison]:
        """The comparison objects, in the order of the parameters."""
        specs = {c.name: c for c in self.settings.comparisons}
        out = []
        for p in self.parameters:
            comp = build_comparison(specs[p.name])
            if comp.labels != p.labels:
                raise MatchingError(
                    f"model comparison {p.name!r}: saved levels {p.labels} differ from the "
                    f"levels this version computes ({comp.labels}); retrain the model")
            out.append(comp)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "versions": self.versions,
            "seed": self.seed,
            "lambda": self.lambda_,
            "prior_weight": self.prior_weight,
            "thresholds": self.settings.thresholds.to_dict(),
            "training": self.training,
            "comparisons": [p.to_dict() for p in self.parameters],
            "settings": self.settings.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, source: str = "model") -> FellegiSunterModel:
        try:
            if d.get("format_version") != FORMAT_VERSION:
                raise MatchingError(f"{source}: model format {d.get('format_version')!r} is "
                                    f"not {FORMAT_VERSION}; retrain the model")
            settings = LinkageSettings.from_dict(d["settings"], source=f"{source} (settings)")
            params = [ComparisonParameters.from_dict(c) for c in d["comparisons"]]
            lam = float(d["lambda"])
        except (KeyError, TypeError, ValueError) as exc:
            raise MatchingError(f"{source}: not a reglink model ({exc!r})") from exc
        if not 0 < lam < 1:
            raise MatchingError(f"{source}: lambda must be in (0, 1), got {lam}")
        return cls(settings=settings, parameters=params, lambda_=lam, seed=int(d["seed"]),
                   training=dict(d.get("training", {})), versions=dict(d.get("versions", {})))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1, ensure_ascii=False),
                              encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> FellegiSunterModel:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise MatchingError(f"{path}: cannot read the model: {exc}") from exc
        except json.JSONDecodeError as exc:
            raise MatchingError(f"{path}: not valid JSON: {exc}") from exc
        return cls.from_dict(data, source=str(path))


# ---- training ----------------------------------------------------------------------------


def versions() -> dict[str, str]:
    import rapidfuzz

    def v(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "unknown"

    return {"reglink": v("reglink"), "numpy": np.__version__, "pandas": pd.__version__,
            "rapidfuzz": rapidfuzz.__version__}


def active_comparisons(settings: LinkageSettings, records: pd.DataFrame) -> list[Comparison]:
    """The comparisons whose required columns are in ``records`` (others warned about)."""
    cols = set(records.columns)
    out = []
    for spec in settings.comparisons:
        comp = build_comparison(spec)
        missing = [c for c in comp.required if c not in cols]
        if missing:
            warnings.warn(f"comparison {spec.name!r} left out of the model: column(s) "
                          f"{', '.join(missing)} not in the records", MatchingWarning,
                          stacklevel=3)
            continue
        out.append(comp)
    return out


def _random_pairs(n: int, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    total = n * (n - 1) // 2
    if total <= size:
        a, b = np.triu_indices(n, k=1)
        return a.astype(np.int64), b.astype(np.int64)
    a = rng.integers(0, n, size=size, dtype=np.int64)
    b = rng.integers(0, n - 1, size=size, dtype=np.int64)
    b += b >= a  # uniform over the other records, never the record itself
    return np.minimum(a, b), np.maximum(a, b)


def _level_counts(gammas: np.ndarray, n_levels: list[int]) -> list[np.ndarray]:
    out = []
    for k, size in enumerate(n_levels):
        g = gammas[:, k]
        out.append(np.bincount(g[g >= 0].astype(np.int64), minlength=size)[:size])
    return out


def _estimate_u(counts: list[np.ndarray]) -> tuple[list[np.ndarray], list[bool]]:
    us, ok = [], []
    for c in counts:
        total = c.sum()
        if total == 0:
            us.append(np.full(c.size, 1.0 / c.size))
            ok.append(False)
            continue
        u = np.maximum(c / total, 0.5 / total)
        us.append(u / u.sum())
        ok.append(True)
    return us, ok


def _patterns(gammas: np.ndarray, n_levels: list[int]) -> tuple[np.ndarray, np.ndarray,
                                                                np.ndarray]:
    """Distinct comparison vectors, their counts and each row's pattern index."""
    radix = [s + 1 for s in n_levels]
    if not gammas.shape[0]:
        return (np.empty((0, len(n_levels)), dtype=np.int8), np.empty(0, dtype=np.int64),
                np.empty(0, dtype=np.int64))
    if float(np.prod(np.asarray(radix, dtype=np.float64))) < 2**62:
        key = np.zeros(gammas.shape[0], dtype=np.int64)
        for k, r in enumerate(radix):
            key *= r
            key += gammas[:, k].astype(np.int64) + 1
        inverse, uniq = pd.factorize(key)
        pats = np.empty((uniq.size, len(radix)), dtype=np.int8)
        rest = uniq.copy()
        for k in range(len(radix) - 1, -1, -1):
            rest, digit = np.divmod(rest, radix[k])
            pats[:, k] = digit - 1
    else:  # very many comparisons: slower but exact
        pats, inverse = np.unique(gammas, axis=0, return_inverse=True)
        inverse = inverse.ravel()
    counts = np.bincount(inverse, minlength=pats.shape[0]).astype(np.float64)
    return pats, counts, inverse


def _pattern_log2bf(pats: np.ndarray, tables: list[np.ndarray], free: np.ndarray) -> np.ndarray:
    out = np.zeros(pats.shape[0], dtype=np.float64)
    for k, table in enumerate(tables):
        if free[k]:
            out += table[pats[:, k].astype(np.int64) + 1]
    return out


def _posterior(log2bf: np.ndarray, lam: float) -> np.ndarray:
    odds = np.log2(lam) - np.log2(1 - lam) + log2bf
    return 1.0 / (1.0 + np.exp2(-np.clip(odds, -1000, 1000)))


def _em(pats: np.ndarray, counts: np.ndarray, u: list[np.ndarray], m0: list[np.ndarray],
        free: np.ndarray, max_iter: int, tol: float, active: np.ndarray | None = None,
        prior_pairs: float = 1.0, min_log2_bayes_factor: float = -10.0,
        ) -> tuple[list[np.ndarray], float, int, bool]:
    """EM for m (u fixed) on distinct patterns with counts. Returns m, λ, iterations, converged.

    ``active`` comparisons (default: the ``free`` ones) give evidence in the E-step; only the
    ``free`` ones have their m updated, smoothed by :func:`smooth_m`.
    """
    active = free if active is None else active
    m = [x.copy() for x in m0]
    lam = 0.3
    total = counts.sum()
    for it in range(1, max_iter + 1):
        tables = [np.concatenate([[0.0], np.log2(mk) - np.log2(uk)]) for mk, uk in zip(m, u,
                                                                                       strict=True)]
        p = _posterior(_pattern_log2bf(pats, tables, active), lam)
        w = counts * p
        new_lam = float(np.clip(w.sum() / total, 1e-9, 1 - 1e-9))
        change = abs(new_lam - lam)
        new_m = []
        for k, mk in enumerate(m):
            if not free[k]:
                new_m.append(mk)
                continue
            g = pats[:, k].astype(np.int64)
            valid = g >= 0
            s = np.bincount(g[valid], weights=w[valid], minlength=mk.size)[:mk.size]
            if s.sum() <= 0:
                new_m.append(mk)
                continue
            nm = smooth_m(s, u[k], prior_pairs, min_log2_bayes_factor)
            change = max(change, float(np.abs(nm - mk).max()))
            new_m.append(nm)
        m, lam = new_m, new_lam
        if change < tol:
            return m, lam, it, True
    return m, lam, max_iter, False


def _lambda_only(pats: np.ndarray, counts: np.ndarray, tables: list[np.ndarray],
                 active: np.ndarray) -> float:
    """Share of matches among pairs, by EM on λ alone (m and u fixed)."""
    bf = _pattern_log2bf(pats, tables, active)
    lam = 0.1
    for _ in range(500):
        new = float(np.clip((counts * _posterior(bf, lam)).sum() / counts.sum(), 1e-12,
                            1 - 1e-12))
        if abs(new - lam) < 1e-10:
            return new
        lam = new
    return lam


def _initial_m(size: int) -> np.ndarray:
    # stronger agreement is likelier among matches; EM moves it from there
    m = np.exp2(np.arange(size, dtype=np.float64))
    return m / m.sum()


def _tf_table(cols: RecordColumns, column: str) -> tuple[int, dict[str, int]]:
    codes, values = cols.codes(column)
    valid = codes[codes >= 0]
    counts = np.bincount(valid, minlength=len(values))
    keep = np.flatnonzero(counts >= 2)  # a value seen once was in no exact pair
    order = keep[np.argsort(-counts[keep], kind="stable")]
    return int(valid.size), {str(values[i]): int(counts[i]) for i in order}


def train_model(
    records: pd.DataFrame,
    settings: LinkageSettings,
    candidates: CandidatePairs,
    gammas: np.ndarray,
    comparisons: list[Comparison],
    cols: RecordColumns | None = None,
) -> FellegiSunterModel:
    """Estimate u, m, λ and the TF tables.

    Args:
        records: standardised records (positions are record indices).
        settings: the linkage settings (seed, training options).
        candidates: the blocked candidate pairs of ``records``.
        gammas: comparison vectors of the candidates (from :func:`compare_pairs`).
        comparisons: the comparisons of ``gammas``' columns, in order.
        cols: column caches of ``records`` (built if not given).

    Returns:
        The trained :class:`FellegiSunterModel`.
    """
    cols = cols or RecordColumns(records)
    n = len(records)
    tr = settings.training
    rng = np.random.default_rng(settings.seed)
    n_levels = [len(c.labels) for c in comparisons]
    stats: dict[str, Any] = {"n_records": n, "n_candidates": int(len(candidates))}

    # u from random pairs
    # a multiple of n on small data: the levels' shares settle long before 2M pairs
    u_size = min(tr.u_sample_pairs, tr.u_pairs_per_record * n)
    a, b = _random_pairs(n, u_size, rng) if n >= 2 else (np.empty(0, np.int64),) * 2
    u_gammas = compare_pairs(comparisons, cols, a, b, warn=False)
    u_counts = _level_counts(u_gammas, n_levels)
    u, u_ok = _estimate_u(u_counts)
    stats["u_sample_pairs"] = int(a.size)
    del u_gammas
    for comp, ok in zip(comparisons, u_ok, strict=True):
        if not ok:
            warnings.warn(f"comparison {comp.name!r}: no pair of records has this value on "
                          "both sides; it gives no evidence", MatchingWarning, stacklevel=3)

    # m by EM, one session per training rule
    smoothing = {"prior_pairs": tr.m_prior_pairs,
                 "min_log2_bayes_factor": tr.min_log2_bayes_factor}
    cols_of = [set(c.spec.column_names) for c in comparisons]
    sessions: list[dict[str, Any]] = []
    m_sum = [np.zeros(s) for s in n_levels]
    m_n = np.zeros(len(comparisons), dtype=np.int64)
    init = [_initial_m(s) for s in n_levels]
    rule_cols = {r.name: set(r.all_columns) for r in settings.blocking_rules}
    plans: list[tuple[str, np.ndarray | None, np.ndarray]] = []
    for name in tr.blocking_rules:
        if name not in candidates.keys:
            warnings.warn(f"training rule {name!r} did not run (its columns are missing): "
                          "skipped", MatchingWarning, stacklevel=3)
            continue
        free = np.array([not (cs & rule_cols[name]) for cs in cols_of], dtype=bool)
        plans.append((name, candidates.agree_on_rule(name), free))
    run_all = not plans
    for name, mask, free in plans:
        if not free.any():
            continue
        pats, counts, _ = _patterns(gammas[mask], n_levels)
        if counts.sum() < 10:
            warnings.warn(f"training rule {name!r}: only {int(counts.sum())} pairs; "
                          "EM session skipped", MatchingWarning, stacklevel=3)
            continue
        m, lam, its, conv = _em(pats, counts, u, init, free, tr.em_max_iterations,
                                tr.em_tolerance, **smoothing)
        for k in np.flatnonzero(free):
            m_sum[k] += m[k]
            m_n[k] += 1
        sessions.append({"rule": name, "pairs": int(counts.sum()), "iterations": its,
                         "converged": conv, "lambda": lam,
                         "fixed": [comparisons[k].name for k in np.flatnonzero(~free)]})
        if not conv:
            log.warning("EM session %s did not converge in %d iterations", name, its)
    missing_m = np.flatnonzero(m_n == 0)
    if missing_m.size or run_all:
        # Comparisons free in no rule's session: estimated on all candidates from the posteriors
        # of the other comparisons (already estimated) only; letting them vote too would let a
        # level that blocking forces on every candidate call every candidate a match.
        free = np.zeros(len(comparisons), dtype=bool)
        free[missing_m if not run_all else slice(None)] = True
        start = [m_sum[k] / m_n[k] if m_n[k] else init[k] for k in range(len(comparisons))]
        pats, counts, _ = _patterns(gammas, n_levels)
        if counts.sum() >= 10 and free.any():
            m, lam, its, conv = _em(pats, counts, u, start, free, tr.em_max_iterations,
                                    tr.em_tolerance, active=None if run_all else ~free,
                                    **smoothing)
            for k in np.flatnonzero(free):
                m_sum[k] += m[k]
                m_n[k] += 1
            sessions.append({"rule": "(all candidates)", "pairs": int(counts.sum()),
                             "iterations": its, "converged": conv, "lambda": lam,
                             "fixed": [comparisons[k].name for k in np.flatnonzero(~free)]})
            if not run_all:
                log.warning("%d comparison(s) use columns of every training rule; their m "
                            "comes from all candidate pairs", missing_m.size)
    trained = m_n > 0
    m_final = []
    for k in range(len(comparisons)):
        if trained[k] and u_ok[k]:
            # the mean of smoothed sessions keeps the floor up to the renormalisation
            mk = smooth_m(m_sum[k] / m_n[k], u[k], 0.0, tr.min_log2_bayes_factor)
            # a level that no random pair showed has a guessed u: it is no evidence against
            # (the floor would make "placeholder year" count -10 bits on data that has no
            # placeholder dates at all)
            unseen = u_counts[k] == 0
            mk[unseen] = np.maximum(mk[unseen], u[k][unseen])
            m_final.append(mk / mk.sum())
        else:
            m_final.append(u[k].copy())  # no evidence either way
            trained[k] = False
    if not trained.any():
        warnings.warn(f"too few candidate pairs ({len(candidates)}) among {n} records to "
                      "estimate m: the model gives no evidence", MatchingWarning, stacklevel=3)
    stats["em_sessions"] = sessions

    # λ: expected matches among the candidates over all record pairs. The pairs of each
    # blocking rule are counted with the comparisons that rule leaves free: the ones it
    # blocks on agree by construction, so they would take every candidate for a match.
    all_pairs = max(n * (n - 1) // 2, 1)
    tables = [np.concatenate([[0.0], np.log2(mk) - np.log2(uk)]) for mk, uk in zip(m_final, u,
                                                                                   strict=True)]
    expected = 0.0
    by_rule = []
    for r_idx, r_name in enumerate(candidates.rule_names):
        mask = candidates.rule == r_idx
        if not mask.any():
            continue
        active = np.array([not (cs & rule_cols.get(r_name, set())) for cs in cols_of], bool)
        active &= trained
        pats, counts, _ = _patterns(gammas[mask], n_levels)
        lam_r = _lambda_only(pats, counts, tables, active) if active.any() else 1.0
        expected += lam_r * counts.sum()
        by_rule.append({"rule": r_name, "pairs": int(counts.sum()), "match_share": lam_r})
    lam = float(np.clip(expected / all_pairs, 1.0 / (all_pairs + 1), 0.5))
    stats["expected_matches"] = float(expected)
    stats["expected_matches_by_rule"] = by_rule

    params = []
    for k, comp in enumerate(comparisons):
        p = ComparisonParameters(name=comp.name, kind=comp.kind, labels=list(comp.labels),
                                 m=m_final[k].tolist(), u=u[k].tolist(),
                                 trained=bool(trained[k]))
        if comp.tf_column and comp.tf_level is not None:
            p.tf_column, p.tf_level = comp.tf_column, comp.tf_level
            p.tf_total, p.tf_counts = _tf_table(cols, comp.tf_column)
        params.append(p)
    log.info("model trained: %d comparisons, lambda %.3g, %d EM sessions", len(params), lam,
             len(sessions))
    return FellegiSunterModel(settings=settings, parameters=params, lambda_=lam,
                              seed=settings.seed, training=stats, versions=versions())
