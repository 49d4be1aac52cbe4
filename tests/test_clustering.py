"""Constrained clustering: cases a data steward would recognise, then a seeded cross-check."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from matching.clustering import cluster_records
from matching.errors import MatchingError, MatchingWarning

NO = -1  # no valid PIN


def _run(n, edges, threshold=0.5, must=None, cannot=None, pins=None):
    left = np.array([e[0] for e in edges], dtype=np.int64)
    right = np.array([e[1] for e in edges], dtype=np.int64)
    weight = np.array([e[2] for e in edges], dtype=np.float64)
    return cluster_records(
        n,
        left,
        right,
        weight,
        threshold=threshold,
        must_link=None if must is None else np.array(must, dtype=np.int64),
        cannot_link=None if cannot is None else np.array(cannot, dtype=np.int64),
        pin_key=None if pins is None else np.array(pins, dtype=np.int64),
    )


def _partition(cluster_id: np.ndarray) -> set[frozenset[int]]:
    groups: dict[int, set[int]] = {}
    for record, cid in enumerate(cluster_id.tolist()):
        groups.setdefault(cid, set()).add(record)
    return {frozenset(g) for g in groups.values()}


# (case, n_records, edges (left, right, weight), must, cannot, pins, expected clusters, cut)
CASES = [
    (
        "birth record links to an ID card and, more weakly, to another person's ID card: "
        "the weaker link to the second PIN is cut",
        3,
        [(0, 2, 0.9), (2, 1, 0.8)],
        None,
        None,
        [111, 222, NO],
        [{0, 2}, {1}],
        [(1, "pin_conflict")],
    ),
    (
        "same chain, but the link to the first PIN is the weaker one: that one is cut",
        3,
        [(0, 2, 0.7), (2, 1, 0.95)],
        None,
        None,
        [111, 222, NO],
        [{0}, {1, 2}],
        [(0, "pin_conflict")],
    ),
    (
        "two records with the same valid PIN join freely",
        3,
        [(0, 1, 0.9), (1, 2, 0.6)],
        None,
        None,
        [111, 111, NO],
        [{0, 1, 2}],
        [],
    ),
    (
        "records without a valid PIN are never separated by it",
        3,
        [(0, 1, 0.9), (1, 2, 0.9)],
        None,
        None,
        [NO, NO, NO],
        [{0, 1, 2}],
        [],
    ),
    (
        "steward said 0 and 3 are different people: the weakest link of the chain is cut",
        4,
        [(0, 1, 0.9), (1, 2, 0.8), (2, 3, 0.95)],
        None,
        [(3, 0)],
        None,
        [{0, 1}, {2, 3}],
        [(1, "cannot_link")],
    ),
    (
        "cannot-link between records that no link joins changes nothing",
        4,
        [(0, 1, 0.9)],
        None,
        [(2, 3)],
        None,
        [{0, 1}, {2}, {3}],
        [],
    ),
    (
        "steward said 0 and 3 are the same person: joined without any scored pair",
        4,
        [],
        [(0, 3)],
        None,
        None,
        [{0, 3}, {1}, {2}],
        [],
    ),
    (
        "must-link wins over two different PINs (reported as a conflict)",
        2,
        [],
        [(0, 1)],
        None,
        [111, 222],
        [{0, 1}],
        [],
    ),
    (
        "must-link joins two PINs; a third record with one of them may still join",
        3,
        [(1, 2, 0.9)],
        [(0, 1)],
        None,
        [111, 222, 222],
        [{0, 1, 2}],
        [],
    ),
    (
        "equal weights: the link between the lower record numbers is taken first",
        3,
        [(2, 1, 0.9), (1, 0, 0.9)],
        None,
        None,
        [111, NO, 222],
        [{0, 1}, {2}],
        [(0, "pin_conflict")],
    ),
    (
        "a pair exactly at the threshold is a link, just below is not",
        4,
        [(0, 1, 0.5), (2, 3, 0.4999)],
        None,
        None,
        None,
        [{0, 1}, {2}, {3}],
        [],
    ),
    (
        "a record paired with itself stays alone",
        2,
        [(1, 1, 0.99)],
        None,
        None,
        None,
        [{0}, {1}],
        [],
    ),
]


@pytest.mark.filterwarnings("ignore::matching.errors.MatchingWarning")  # checked below
@pytest.mark.parametrize(
    "case, n, edges, must, cannot, pins, expected, cut", CASES, ids=[c[0][:60] for c in CASES]
)
def test_steward_cases(case, n, edges, must, cannot, pins, expected, cut):
    result = _run(n, edges, must=must, cannot=cannot, pins=pins)
    assert _partition(result.cluster_id) == {frozenset(g) for g in expected}, case
    assert list(zip(result.cut_edges.tolist(), result.cut_reasons.tolist(), strict=True)) == cut
    assert result.report.n_clusters == len(expected)
    assert result.report.largest_cluster_size == max(len(g) for g in expected)
    assert result.report.n_singletons == sum(len(g) == 1 for g in expected)


def test_cluster_ids_are_numbered_by_smallest_member():
    result = _run(5, [(4, 3, 0.9), (2, 0, 0.9)])
    # clusters {0, 2}, {1}, {3, 4} -> ids 0, 1, 2 in the order of their smallest record
    assert result.cluster_id.tolist() == [0, 1, 0, 2, 2]
    assert result.cluster_id.dtype == np.int64


def test_must_link_conflict_is_reported_and_warned():
    with pytest.warns(MatchingWarning, match="must-link"):
        result = _run(3, [], must=[(0, 1)], cannot=[(0, 1)], pins=[111, 222, NO])
    # the cannot-link pair and the second PIN in the same cluster
    assert result.report.n_must_link_conflicts == 2
    assert _partition(result.cluster_id) == {frozenset({0, 1}), frozenset({2})}


def test_report_counts_cut_links_by_kind():
    result = _run(
        5,
        [(0, 1, 0.9), (1, 2, 0.8), (3, 4, 0.9)],
        cannot=[(0, 2)],
        pins=[NO, NO, NO, 111, 222],
    )
    report = result.report
    assert (report.n_edges_cut_cannot_link, report.n_edges_cut_pin) == (1, 1)
    assert report.n_edges_above_threshold == 3
    assert report.n_edges_joining == 1
    assert report.n_clusters == 4


@pytest.mark.parametrize(
    "case, n, edges, threshold, warning, clusters",
    [
        ("a single record", 1, [], 0.5, "no candidate pairs", 1),
        ("no scored pairs at all", 4, [], 0.5, "no candidate pairs", 4),
        ("every pair below the threshold", 3, [(0, 1, 0.2), (1, 2, 0.3)], 0.5, "none of", 3),
        ("an empty block: no records", 0, [], 0.5, "no records", 0),
    ],
)
def test_degenerate_input_warns_and_gives_singletons(case, n, edges, threshold, warning, clusters):
    with pytest.warns(MatchingWarning, match=warning):
        first = _run(n, edges, threshold=threshold)
    with pytest.warns(MatchingWarning, match=warning):
        again = _run(n, edges, threshold=threshold)
    assert first.report.n_clusters == clusters
    assert first.cluster_id.tolist() == list(range(n))
    assert np.array_equal(first.cluster_id, again.cluster_id)
    assert first.report == again.report


@pytest.mark.parametrize(
    "case, kwargs, message",
    [
        ("record index past the end", dict(n=2, edges=[(0, 2, 0.9)]), "outside 0..1"),
        ("negative record index", dict(n=2, edges=[(-1, 1, 0.9)]), "outside 0..1"),
        ("unscored pair", dict(n=2, edges=[(0, 1, float("nan"))]), "NaN"),
        ("must-link to a missing record", dict(n=2, edges=[], must=[(0, 5)]), "must_link"),
        ("PIN codes for too few records", dict(n=3, edges=[], pins=[1, 2]), "pin_key"),
    ],
)
def test_bad_input_is_a_clear_error(case, kwargs, message):
    with pytest.raises(MatchingError, match=message):
        _run(**kwargs)


def test_shapes_must_agree():
    with pytest.raises(MatchingError, match="same length"):
        cluster_records(3, np.array([0, 1]), np.array([1]), np.array([0.9, 0.9]), threshold=0.5)


def _reference(n, edges, threshold, must, cannot, pins):
    """Plain Kruskal with refusals over explicit sets: slow, obviously right."""
    cluster = {i: {i} for i in range(n)}

    def join(a, b):
        merged = cluster[a] | cluster[b]
        for r in merged:
            cluster[r] = merged

    def pins_of(group):
        return {pins[r] for r in group if pins[r] >= 0}

    for a, b in sorted(tuple(sorted(p)) for p in must):
        join(a, b)
    order = sorted((-w, min(a, b), max(a, b)) for a, b, w in edges if w >= threshold and a != b)
    for _, a, b in order:
        ga, gb = cluster[a], cluster[b]
        if ga is gb:
            continue
        pa, pb = pins_of(ga), pins_of(gb)
        if pa and pb and not (pa <= pb or pb <= pa):
            continue
        if any((x in ga and y in gb) or (x in gb and y in ga) for x, y in cannot):
            continue
        join(a, b)
    return {frozenset(g) for g in map(frozenset, cluster.values())}


@pytest.mark.parametrize("seed", range(40))
def test_matches_a_plain_reference_on_random_graphs(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 25))
    m = int(rng.integers(0, 3 * n))
    # weights on a coarse grid so that ties happen
    edges = [
        (int(a), int(b), float(w))
        for a, b, w in zip(
            rng.integers(0, n, m), rng.integers(0, n, m), rng.integers(0, 5, m) / 4, strict=True
        )
    ]
    must = [tuple(map(int, rng.integers(0, n, 2))) for _ in range(int(rng.integers(0, 3)))]
    cannot = [tuple(map(int, rng.integers(0, n, 2))) for _ in range(int(rng.integers(0, 4)))]
    cannot = [(a, b) for a, b in cannot if a != b]
    pins = np.where(rng.random(n) < 0.4, rng.integers(0, 4, n), NO).tolist()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MatchingWarning)  # "no candidate pairs" on empty draws
        result = _run(n, edges, threshold=0.5, must=must or None, cannot=cannot or None, pins=pins)
        # the same pairs in another order and direction give the same cluster ids
        perm = rng.permutation(len(edges))
        shuffled = [edges[i] if i % 2 else (edges[i][1], edges[i][0], edges[i][2]) for i in perm]
        again = _run(
            n, shuffled, threshold=0.5, must=must or None, cannot=cannot or None, pins=pins
        )
    assert _partition(result.cluster_id) == _reference(n, edges, 0.5, must, cannot, pins)
    assert np.array_equal(result.cluster_id, again.cluster_id)


def test_no_cluster_holds_two_pins_or_a_cannot_link_pair():
    rng = np.random.default_rng(7)
    n, m = 2000, 6000
    left, right = rng.integers(0, n, m), rng.integers(0, n, m)
    weight = rng.random(m)
    pins = np.where(rng.random(n) < 0.5, rng.integers(0, 300, n), NO)
    cannot = rng.integers(0, n, (200, 2))
    cannot = cannot[cannot[:, 0] != cannot[:, 1]]
    result = cluster_records(
        n, left, right, weight, threshold=0.3, cannot_link=cannot, pin_key=pins
    )
    cid = result.cluster_id
    assert not (cid[cannot[:, 0]] == cid[cannot[:, 1]]).any()
    for c in np.unique(cid):
        members = pins[cid == c]
        assert np.unique(members[members >= 0]).size <= 1
    # every cut link joins two different clusters; every other link above it, one cluster
    above = np.flatnonzero(weight >= 0.3)
    cut = np.zeros(m, dtype=bool)
    cut[result.cut_edges] = True
    assert (cid[left[cut]] != cid[right[cut]]).all()
    kept = above[~cut[above]]
    assert (cid[left[kept]] == cid[right[kept]]).all()
    assert result.cut_edges.size > 0  # the check above is not vacuous
