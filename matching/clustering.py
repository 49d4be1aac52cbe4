"""Constrained clustering of linked records (DESIGN.md, step 5).

Records are nodes ``0 .. n_records - 1``; scored pairs are edges. A cluster is a connected
component of the edges whose weight reaches the auto-link threshold, with three constraints:

- a **must-link** pair (a steward's decision) is always in one cluster, with or without an edge;
- a **cannot-link** pair (a steward's decision) is never in one cluster;
- two records with **different valid PINs** are never in one cluster.

When links would join records that must stay apart, the weakest links are cut: edges are
taken in descending weight order and an edge that would put a cannot-link pair or two
different PINs into one component is refused (Kruskal with refusals). Ties in weight are
broken by the record indices of the edge, so the result does not depend on the input order.
A must-link wins over the other constraints; such conflicts are reported, not hidden.

For speed, plain connected components are computed first (scipy); only the components that
contain a conflict go through the ordered union-find in Python, the others are final.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy.sparse import coo_array
from scipy.sparse.csgraph import connected_components

from matching.errors import MatchingError, MatchingWarning

__all__ = ["ClusterReport", "ClusterResult", "cluster_records"]

log = logging.getLogger(__name__)

NO_PIN = -1
# pin code of a component that holds several PINs (only possible through must-links)
_MANY_PINS = -2

CUT_CANNOT_LINK = "cannot_link"
CUT_PIN = "pin_conflict"


@dataclass(frozen=True)
class ClusterReport:
    """Counts a steward reads in the match report."""

    n_records: int
    n_clusters: int
    n_singletons: int
    largest_cluster_size: int
    n_edges: int
    """Edges given (self-pairs included)."""
    n_edges_above_threshold: int
    n_edges_joining: int
    """Links that joined two components (spanning edges and must-links actually used)."""
    n_edges_cut_cannot_link: int
    """Edges at or above the threshold refused because they would join a cannot-link pair."""
    n_edges_cut_pin: int
    """Edges at or above the threshold refused because they would join two different PINs."""
    n_must_link: int
    n_cannot_link: int
    n_must_link_conflicts: int
    """Cannot-link pairs and different-PIN pairs that must-links forced into one cluster."""
    n_conflicted_components: int
    """Plain connected components that needed the constrained union-find."""

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class ClusterResult:
    """Output of :func:`cluster_records`.

    Attributes:
        cluster_id: int64 per record, dense ``0 .. n_clusters - 1``, numbered in the order of
            each cluster's smallest record index (so identical input gives identical ids).
        cut_edges: indices into the input edge arrays of the edges at or above the threshold
            that were refused, ascending.
        cut_reasons: ``"cannot_link"`` or ``"pin_conflict"`` for each of ``cut_edges``.
        report: the counts.
    """

    cluster_id: np.ndarray
    cut_edges: np.ndarray
    cut_reasons: np.ndarray
    report: ClusterReport
    warnings: tuple[str, ...] = field(default=())


def _as_pairs(name: str, pairs: np.ndarray | None, n_records: int) -> np.ndarray:
    if pairs is None:
        return np.empty((0, 2), dtype=np.int64)
    arr = np.asarray(pairs)
    if arr.size == 0:
        return np.empty((0, 2), dtype=np.int64)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise MatchingError(f"{name} must be a k×2 array of record indices, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise MatchingError(f"{name} must hold integer record indices, got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    _check_range(name, arr.ravel(), n_records)
    return arr


def _check_range(name: str, idx: np.ndarray, n_records: int) -> None:
    if idx.size and (idx.min() < 0 or idx.max() >= n_records):
        bad = idx[(idx < 0) | (idx >= n_records)]
        raise MatchingError(
            f"{name} holds {bad.size} record indices outside 0..{n_records - 1} "
            f"(first: {int(bad[0])}); indices must refer to the records being clustered"
        )


def _unique(values: np.ndarray) -> np.ndarray:
    """``np.unique(values)`` by sorting (numpy 2.4's hash-based unique is many times slower
    on millions of integers)."""
    ordered = np.sort(values, kind="stable")
    return ordered[np.r_[True, ordered[1:] != ordered[:-1]]] if ordered.size else ordered


def _unique_rows(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """``np.unique(np.stack([first, second], axis=1), axis=0)`` for integer columns, by
    sorting."""
    order = np.lexsort((second, first))
    a, b = first[order], second[order]
    keep = np.r_[True, (a[1:] != a[:-1]) | (b[1:] != b[:-1])] if a.size else np.empty(0, bool)
    return np.stack([a[keep], b[keep]], axis=1)


def _dense_ids(labels: np.ndarray) -> np.ndarray:
    """Relabel so that clusters are numbered in the order of their smallest member."""
    n = labels.size
    if n == 0:
        return np.empty(0, dtype=np.int64)
    _, inverse = np.unique(labels, return_inverse=True)
    smallest = np.full(inverse.max() + 1, n, dtype=np.int64)
    np.minimum.at(smallest, inverse, np.arange(n, dtype=np.int64))
    order = np.argsort(smallest, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size, dtype=np.int64)
    return rank[inverse].astype(np.int64)


def _components(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    graph = coo_array((np.ones(a.size, dtype=np.int8), (a, b)), shape=(n, n)).tocsr()
    _, labels = connected_components(graph, directed=False)
    return labels.astype(np.int64)


class _ConstrainedUnionFind:
    """Union-find whose components remember their PINs and cannot-link partners."""

    def __init__(self, pin: list[int], cannot: np.ndarray) -> None:
        self.parent = list(range(len(pin)))
        self.size = [1] * len(pin)
        self.pin = pin  # NO_PIN, a code >= 0, or _MANY_PINS (see self.pins)
        self.pins: dict[int, frozenset[int]] = {}
        # root -> records that some member of the component must never be joined with
        self.forbid: dict[int, set[int]] = {}
        for x, y in cannot.tolist():
            self.forbid.setdefault(x, set()).add(y)
            self.forbid.setdefault(y, set()).add(x)

    def find(self, x: int) -> int:
        parent = self.parent
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:
            parent[x], x = root, parent[x]
        return root

    def _pin_set(self, r: int) -> frozenset[int]:
        p = self.pin[r]
        if p == _MANY_PINS:
            return self.pins[r]
        return frozenset() if p == NO_PIN else frozenset((p,))

    def conflict(self, ra: int, rb: int) -> str | None:
        """Why components ``ra`` and ``rb`` must not be joined, or None."""
        pa, pb = self.pin[ra], self.pin[rb]
        if pa != NO_PIN and pb != NO_PIN and pa != pb:
            if pa >= 0 and pb >= 0:
                return CUT_PIN
            sa, sb = self._pin_set(ra), self._pin_set(rb)
            # a component that already holds several PINs (must-link) may still take on a
            # record whose PIN it holds; only a new disagreement is refused
            if not (sa <= sb or sb <= sa):
                return CUT_PIN
        fa, fb = self.forbid.get(ra), self.forbid.get(rb)
        if fa and fb:
            small, other = (fa, rb) if len(fa) <= len(fb) else (fb, ra)
            find = self.find
            for x in small:
                if find(x) == other:
                    return CUT_CANNOT_LINK
        return None

    def union(self, ra: int, rb: int) -> None:
        if self.size[ra] < self.size[rb]:
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.size[ra] += self.size[rb]
        pa, pb = self.pin[ra], self.pin[rb]
        if pb == NO_PIN or (pa == pb and pa != _MANY_PINS):
            pass
        elif pa == NO_PIN:
            self.pin[ra] = pb
            if pb == _MANY_PINS:
                self.pins[ra] = self.pins.pop(rb)
        else:
            merged = self._pin_set(ra) | self._pin_set(rb)
            self.pins.pop(rb, None)
            self.pin[ra] = _MANY_PINS if len(merged) > 1 else next(iter(merged))
            if len(merged) > 1:
                self.pins[ra] = merged
        fb = self.forbid.pop(rb, None)
        if fb:
            fa = self.forbid.get(ra)
            if fa is None:
                self.forbid[ra] = fb
            elif len(fa) >= len(fb):
                fa |= fb
            else:
                fb |= fa
                self.forbid[ra] = fb


def cluster_records(
    n_records: int,
    left: np.ndarray,
    right: np.ndarray,
    weight: np.ndarray,
    *,
    threshold: float,
    must_link: np.ndarray | None = None,
    cannot_link: np.ndarray | None = None,
    pin_key: np.ndarray | None = None,
) -> ClusterResult:
    """Cluster records from scored pairs, honouring steward decisions and PINs.

    Args:
        n_records: number of records; records are the indices ``0 .. n_records - 1``.
        left, right: record indices of each scored pair (same length as ``weight``).
        weight: match weight (or probability) of each pair; pairs with ``weight >= threshold``
            are links. Must not be NaN.
        threshold: the auto-link threshold.
        must_link: k×2 record indices that are always joined, whatever the edges say.
        cannot_link: k×2 record indices that are never in one cluster (unless a must-link
            forces it, which is reported).
        pin_key: int code per record of its valid PIN, ``-1`` for none (malformed or missing
            PINs must be ``-1``: only valid PINs separate records).

    Returns:
        A :class:`ClusterResult`. The same input always gives the same result, whatever the
        order of the edges or of the constraint pairs.

    Raises:
        MatchingError: arrays of different lengths, indices out of range, NaN weights.
    """
    if n_records < 0:
        raise MatchingError(f"n_records must be >= 0, got {n_records}")
    left = np.asarray(left)
    right = np.asarray(right)
    weight = np.asarray(weight, dtype=np.float64)
    if not (left.shape == right.shape == weight.shape) or left.ndim != 1:
        raise MatchingError(
            "left, right and weight must be 1-D arrays of the same length, got shapes "
            f"{left.shape}, {right.shape}, {weight.shape}"
        )
    if left.size and not (
        np.issubdtype(left.dtype, np.integer) and np.issubdtype(right.dtype, np.integer)
    ):
        raise MatchingError(
            f"left and right must hold integer record indices, got {left.dtype}, {right.dtype}"
        )
    left = left.astype(np.int64, copy=False)
    right = right.astype(np.int64, copy=False)
    _check_range("left", left, n_records)
    _check_range("right", right, n_records)
    nan_at = np.flatnonzero(np.isnan(weight))
    if nan_at.size:
        raise MatchingError(
            f"{nan_at.size} pair weights are NaN (first at pair {int(nan_at[0])}); "
            "score every pair before clustering"
        )
    if np.isnan(threshold):
        raise MatchingError("threshold is NaN; give the auto-link threshold as a number")
    must = _as_pairs("must_link", must_link, n_records)
    cannot = _as_pairs("cannot_link", cannot_link, n_records)
    if pin_key is None:
        pin = np.full(n_records, NO_PIN, dtype=np.int64)
    else:
        pin = np.asarray(pin_key)
        if pin.shape != (n_records,) or (pin.size and not np.issubdtype(pin.dtype, np.integer)):
            raise MatchingError(
                f"pin_key must be {n_records} integer codes (-1 for no valid PIN), "
                f"got shape {pin.shape} and dtype {pin.dtype}"
            )
        pin = np.where(pin < 0, NO_PIN, pin).astype(np.int64)

    messages: list[str] = []

    def warn(message: str) -> None:
        messages.append(message)
        warnings.warn(message, MatchingWarning, stacklevel=3)

    if n_records == 0:
        warn("no records to cluster: the result is empty")
    elif left.size == 0 and must.shape[0] == 0:
        warn(f"no candidate pairs: each of the {n_records} records is its own cluster")

    # Edges as (low, high) so that the tie-break does not depend on the edge's direction;
    # self-pairs join nothing.
    lo = np.minimum(left, right)
    hi = np.maximum(left, right)
    accepted = (weight >= threshold) & (lo != hi)
    n_above = int((weight >= threshold).sum())
    if left.size and n_above == 0:
        warn(
            f"none of the {left.size} pairs reaches the threshold {threshold:g}: no links are made"
        )
    edge_idx = np.flatnonzero(accepted)
    must = np.sort(must, axis=1)
    must = must[must[:, 0] != must[:, 1]]
    cannot = np.sort(cannot, axis=1)
    n_self_cannot = int((cannot[:, 0] == cannot[:, 1]).sum())
    if n_self_cannot:
        warn(f"{n_self_cannot} cannot-link pairs name the same record twice; ignored")
        cannot = cannot[cannot[:, 0] != cannot[:, 1]]

    labels = _components(
        n_records,
        np.concatenate([lo[edge_idx], must[:, 0]]),
        np.concatenate([hi[edge_idx], must[:, 1]]),
    )

    # Which plain components hold a conflict: a cannot-link pair inside, or several PINs.
    conflicted = np.zeros(max(n_records, 1), dtype=bool)
    if cannot.shape[0]:
        inside = labels[cannot[:, 0]] == labels[cannot[:, 1]]
        conflicted[labels[cannot[inside, 0]]] = True
    has_pin = np.flatnonzero(pin != NO_PIN)
    if has_pin.size:
        comp_pin = _unique_rows(labels[has_pin], pin[has_pin])
        comps, counts = np.unique(comp_pin[:, 0], return_counts=True)
        conflicted[comps[counts > 1]] = True
    n_conflicted = int(conflicted.sum())

    final = labels.copy()
    cut_edges: list[int] = []
    cut_reasons: list[str] = []
    n_forced = 0
    n_joining = int(n_records - _unique(labels).size) if n_records else 0
    if n_conflicted:
        (final, cut_edges, cut_reasons, n_forced, n_joining_conflicted) = _constrained(
            labels, conflicted, lo, hi, weight, edge_idx, must, cannot, pin
        )
        # spanning edges in the conflict-free components, plus those the union-find used
        free = ~conflicted[labels]
        n_joining = int(free.sum() - _unique(labels[free]).size) + n_joining_conflicted
        if n_forced:
            warn(
                f"{n_forced} cannot-link or different-PIN pairs are in one cluster because "
                "must-link decisions join them; review those decisions"
            )

    cluster_id = _dense_ids(final)
    sizes = np.bincount(cluster_id) if n_records else np.empty(0, dtype=np.int64)
    order = np.argsort(np.asarray(cut_edges, dtype=np.int64), kind="stable")
    cut_arr = np.asarray(cut_edges, dtype=np.int64)[order]
    reason_arr = np.asarray(cut_reasons, dtype=object)[order]
    report = ClusterReport(
        n_records=int(n_records),
        n_clusters=int(sizes.size),
        n_singletons=int((sizes == 1).sum()),
        largest_cluster_size=int(sizes.max()) if sizes.size else 0,
        n_edges=int(left.size),
        n_edges_above_threshold=n_above,
        n_edges_joining=n_joining,
        n_edges_cut_cannot_link=int(sum(r == CUT_CANNOT_LINK for r in cut_reasons)),
        n_edges_cut_pin=int(sum(r == CUT_PIN for r in cut_reasons)),
        n_must_link=int(must.shape[0]),
        n_cannot_link=int(cannot.shape[0]),
        n_must_link_conflicts=n_forced,
        n_conflicted_components=n_conflicted,
    )
    log.info(
        "clustered %d records into %d clusters (%d singletons, largest %d); "
        "%d links cut by cannot-link, %d by different PINs",
        report.n_records,
        report.n_clusters,
        report.n_singletons,
        report.largest_cluster_size,
        report.n_edges_cut_cannot_link,
        report.n_edges_cut_pin,
    )
    return ClusterResult(
        cluster_id=cluster_id,
        cut_edges=cut_arr,
        cut_reasons=reason_arr,
        report=report,
        warnings=tuple(messages),
    )


def _constrained(
    labels: np.ndarray,
    conflicted: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    weight: np.ndarray,
    edge_idx: np.ndarray,
    must: np.ndarray,
    cannot: np.ndarray,
    pin: np.ndarray,
) -> tuple[np.ndarray, list[int], list[str], int, int]:
    """Ordered union-find over the records of the conflicted components only."""
    n = labels.size
    nodes = np.flatnonzero(conflicted[labels])
    local = np.full(n, -1, dtype=np.int64)
    local[nodes] = np.arange(nodes.size, dtype=np.int64)

    def in_scope(pairs: np.ndarray) -> np.ndarray:
        return pairs[conflicted[labels[pairs[:, 0]]]]

    must_l = local[in_scope(must)]
    # Constraint pairs that straddle two plain components can never be violated.
    cannot_in = cannot[labels[cannot[:, 0]] == labels[cannot[:, 1]]] if cannot.size else cannot
    cannot_l = local[in_scope(cannot_in)] if cannot_in.size else cannot_in
    uf = _ConstrainedUnionFind(pin[nodes].tolist(), cannot_l)

    n_joining = 0
    # Must-links first, in a fixed order; they win over every other constraint.
    n_forced = 0
    for a, b in np.unique(must_l, axis=0).tolist() if must_l.size else []:
        ra, rb = uf.find(a), uf.find(b)
        if ra == rb:
            continue
        if uf.conflict(ra, rb) is not None:
            n_forced += 1
        uf.union(ra, rb)
        n_joining += 1

    edges = edge_idx[conflicted[labels[lo[edge_idx]]]]
    # descending weight, then (low, high) ascending: a total order independent of input order
    order = np.lexsort((edges, hi[edges], lo[edges], -weight[edges]))
    edges = edges[order]
    cut_edges: list[int] = []
    cut_reasons: list[str] = []
    find, conflict, union = uf.find, uf.conflict, uf.union
    for e, a, b in zip(
        edges.tolist(), local[lo[edges]].tolist(), local[hi[edges]].tolist(), strict=True
    ):
        ra, rb = find(a), find(b)
        if ra == rb:
            continue
        why = conflict(ra, rb)
        if why is None:
            union(ra, rb)
            n_joining += 1
        else:
            cut_edges.append(e)
            cut_reasons.append(why)

    # Count the cannot-link and PIN pairs that must-links forced together (for the report).
    roots = np.fromiter((find(i) for i in range(nodes.size)), dtype=np.int64, count=nodes.size)
    final = labels.copy()
    # offset keeps union-find roots apart from the untouched component labels
    final[nodes] = n + roots
    if n_forced:
        n_forced = _count_forced(roots, cannot_l, pin[nodes])
    return final, cut_edges, cut_reasons, n_forced, n_joining


def _count_forced(roots: np.ndarray, cannot_l: np.ndarray, pin_l: np.ndarray) -> int:
    """Cannot-link pairs inside one final cluster, plus extra PINs per final cluster."""
    forced = 0
    if cannot_l.size:
        forced += int((roots[cannot_l[:, 0]] == roots[cannot_l[:, 1]]).sum())
    has = pin_l != NO_PIN
    if has.any():
        pairs = _unique_rows(roots[has], pin_l[has])
        _, counts = np.unique(pairs[:, 0], return_counts=True)
        forced += int((counts - 1).sum())
    return forced
