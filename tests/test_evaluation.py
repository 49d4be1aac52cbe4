"""Evaluation against ground truth: hand-computed examples, then the ``reglink evaluate`` CLI."""

from __future__ import annotations

import json
import math
import warnings
from itertools import combinations

import numpy as np
import pandas as pd
import pytest

from matching.errors import MatchingError, MatchingWarning
from matching.evaluation import evaluate_clusters, f1_score
from pipelines.cli import main

NAN = math.nan

# Two people. Person P1 has a birth record (civil 1), an ID card (national_id 1) and a marriage
# record (civil 2); person P2 has a birth record (civil 3) and an ID card (national_id 2).
RECORDS = [
    ("civil", "1"),
    ("national_id", "1"),
    ("civil", "2"),
    ("civil", "3"),
    ("national_id", "2"),
]
TRUTH = ["P1", "P1", "P1", "P2", "P2"]


def _frame(ids, column):
    return pd.DataFrame(
        {
            "register": [r for r, _ in RECORDS],
            "record_id": [i for _, i in RECORDS],
            column: ids,
        }
    )


def _close(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b)


@pytest.mark.parametrize(
    "case, clusters, pairwise, bcubed",
    [
        # (true pairs, predicted pairs, TP, P, R, F1), (B3 P, R, F1)
        ("perfect", ["a", "a", "a", "b", "b"], (4, 4, 4, 1.0, 1.0, 1.0), (1.0, 1.0, 1.0)),
        # the marriage record of P1 was put with P2: TP = C(2,2) + C(2,2) = 2 of 1 + 3
        # predicted; B3 P = (2²/2 + 1²/3 + 2²/3) / 5 = 11/15, R = (2²/3 + 1²/3 + 2²/2) / 5
        (
            "marriage record in the wrong person",
            ["x", "x", "y", "y", "y"],
            (4, 4, 2, 0.5, 0.5, 0.5),
            (11 / 15, 11 / 15, 11 / 15),
        ),
        # all five in one cluster: 10 predicted pairs, 4 right; B3 P = (3² + 2²) / 5 / 5
        (
            "everyone in one cluster",
            ["z"] * 5,
            (4, 10, 4, 0.4, 1.0, 2 * 0.4 / 1.4),
            (13 / 25, 1.0, 2 * (13 / 25) / (1 + 13 / 25)),
        ),
        # nothing linked: precision undefined, recall 0, F1 0; B3 R = (3·1/3 + 2·1/2) / 5
        (
            "all singletons",
            ["1", "2", "3", "4", "5"],
            (4, 0, 0, NAN, 0.0, 0.0),
            (1.0, 2 / 5, 2 * 0.4 / 1.4),
        ),
    ],
)
def test_overall_figures_by_hand(case, clusters, pairwise, bcubed):
    result = evaluate_clusters(_frame(TRUTH, "person_id"), _frame(clusters, "cluster_id"))
    pw = result.pairwise
    assert (pw.true_pairs, pw.predicted_pairs, pw.true_positives) == pairwise[:3], case
    for got, want in zip((pw.precision, pw.recall, pw.f1), pairwise[3:], strict=True):
        assert _close(got, want), (case, got, want)
    b3 = result.bcubed
    for got, want in zip((b3.precision, b3.recall, b3.f1), bcubed, strict=True):
        assert _close(got, want), (case, got, want)
    assert result.n_records == 5


def test_per_register_pair_by_hand():
    # true pairs: civil–civil {c1,c2}; civil–national_id {c1,n1} {c2,n1} {c3,n2}
    # predicted (x = c1,n1; y = c2,c3,n2): civil–civil {c2,c3}; civil–national_id {c1,n1}
    # {c2,n2} {c3,n2}; right: {c1,n1} {c3,n2}
    result = evaluate_clusters(
        _frame(TRUTH, "person_id"), _frame(["x", "x", "y", "y", "y"], "cluster_id")
    )
    table = result.per_register_pair.set_index(["register_a", "register_b"])
    assert table.index.tolist() == [("civil", "civil"), ("civil", "national_id")]
    civil = table.loc[("civil", "civil")]
    assert (civil.true_pairs, civil.predicted_pairs, civil.true_positives) == (1, 1, 0)
    assert (civil.precision, civil.recall, civil.f1) == (0.0, 0.0, 0.0)
    cross = table.loc[("civil", "national_id")]
    assert (cross.true_pairs, cross.predicted_pairs, cross.true_positives) == (3, 3, 2)
    assert math.isclose(cross.precision, 2 / 3) and math.isclose(cross.recall, 2 / 3)
    # the rows add up to the overall counts
    assert table.true_positives.sum() == result.pairwise.true_positives


def test_counts_agree_with_enumerating_pairs_on_random_data():
    rng = np.random.default_rng(3)
    n = 300
    truth = pd.DataFrame(
        {
            "register": rng.choice(["civil", "health", "pension"], n),
            "record_id": [f"r{i}" for i in range(n)],
            "person_id": rng.integers(0, 120, n).astype(str),
        }
    )
    pred = truth.rename(columns={"person_id": "cluster_id"}).assign(
        cluster_id=rng.integers(0, 150, n).astype(str)
    )
    result = evaluate_clusters(truth, pred)
    counts: dict[tuple[str, str], list[int]] = {}
    rows = list(zip(truth.register, truth.person_id, pred.cluster_id, strict=True))
    for (ra, pa, ca), (rb, pb, cb) in combinations(rows, 2):
        c = counts.setdefault(tuple(sorted((ra, rb))), [0, 0, 0])
        c[0] += pa == pb
        c[1] += ca == cb
        c[2] += pa == pb and ca == cb
    table = result.per_register_pair
    got = {
        (r.register_a, r.register_b): [r.true_pairs, r.predicted_pairs, r.true_positives]
        for r in table.itertuples()
    }
    assert got == {k: v for k, v in counts.items() if v[0] or v[1]}
    assert result.pairwise.true_positives == sum(v[2] for v in counts.values())


def test_records_in_one_file_only_are_left_out_with_a_warning():
    truth = _frame(TRUTH, "person_id")
    pred = _frame(["a", "a", "a", "b", "b"], "cluster_id").iloc[:4]
    pred = pd.concat(
        [pred, pd.DataFrame({"register": ["pension"], "record_id": ["9"], "cluster_id": ["c"]})]
    )
    with pytest.warns(MatchingWarning, match="1 records are in the truth only and 1 in the"):
        result = evaluate_clusters(truth, pred)
    assert (result.n_records, result.n_truth_only, result.n_pred_only) == (4, 1, 1)
    assert result.pairwise.true_pairs == 3  # P2's pair is gone with national_id 2
    assert result.to_dict()["evaluated_on"].startswith("records present in both")


@pytest.mark.parametrize(
    "case, truth_ids, pred_ids, warning",
    [
        ("the truth has no pairs: recall undefined", ["1", "2"], ["a", "a"], "no two records"),
        ("a single record", ["1"], ["a"], "no two records"),
    ],
)
def test_undefined_figures_are_nan_with_a_warning(case, truth_ids, pred_ids, warning):
    n = len(truth_ids)
    base = pd.DataFrame({"register": ["civil"] * n, "record_id": [str(i) for i in range(n)]})
    with pytest.warns(MatchingWarning, match=warning):
        result = evaluate_clusters(
            base.assign(person_id=truth_ids), base.assign(cluster_id=pred_ids)
        )
    assert math.isnan(result.pairwise.recall)
    assert result.to_dict()["pairwise"]["recall"] is None
    json.dumps(result.to_dict(), allow_nan=False)


def test_nothing_in_common_gives_no_crash():
    truth = pd.DataFrame({"register": ["civil"], "record_id": ["1"], "person_id": ["P"]})
    pred = pd.DataFrame({"register": ["health"], "record_id": ["1"], "cluster_id": ["c"]})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = evaluate_clusters(truth, pred)
    assert any("nothing to evaluate" in str(w.message) for w in caught)
    assert result.n_records == 0 and math.isnan(result.bcubed.precision)
    assert result.per_register_pair.empty


def test_record_ids_of_different_types_still_match():
    truth = pd.DataFrame({"register": ["civil", "civil"], "record_id": [1, 2], "person_id": [7, 7]})
    pred = pd.DataFrame(
        {"register": ["civil", "civil"], "record_id": ["1", "2"], "cluster_id": [0, 0]}
    )
    assert evaluate_clusters(truth, pred).pairwise.f1 == 1.0


@pytest.mark.parametrize(
    "case, frame, message",
    [
        (
            "a record listed twice",
            pd.DataFrame(
                {"register": ["civil", "civil"], "record_id": ["1", "1"], "cluster_id": ["a", "b"]}
            ),
            "more than once",
        ),
        (
            "a missing column",
            pd.DataFrame({"register": ["civil"], "record_id": ["1"]}),
            "cluster_id",
        ),
    ],
)
def test_bad_prediction_is_a_clear_error(case, frame, message):
    truth = pd.DataFrame({"register": ["civil"], "record_id": ["1"], "person_id": ["P"]})
    with pytest.raises(MatchingError, match=message):
        evaluate_clusters(truth, frame)


@pytest.mark.parametrize(
    "precision, recall, f1",
    [(1.0, 1.0, 1.0), (0.5, 1.0, 2 / 3), (NAN, 0.0, 0.0), (0.0, NAN, 0.0), (NAN, 0.5, NAN)],
)
def test_f1_rules(precision, recall, f1):
    assert _close(f1_score(precision, recall), f1)


# ---------------------------------------------------------------- reglink evaluate (CLI)


def _write(path, header, rows):
    path.write_text("\n".join([header, *(",".join(r) for r in rows)]) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def files(tmp_path):
    truth = _write(
        tmp_path / "truth.csv",
        "register,record_id,person_id",
        [(r, i, p) for (r, i), p in zip(RECORDS, TRUTH, strict=True)],
    )
    pred = _write(
        tmp_path / "crosswalk.csv",
        "register,record_id,cluster_id",
        [(r, i, c) for (r, i), c in zip(RECORDS, "xxyyy", strict=True)],
    )
    return truth, pred


def test_cli_prints_the_table_and_writes_json(files, tmp_path, capsys):
    truth, pred = files
    out = tmp_path / "metrics.json"
    assert main(["evaluate", "--truth", str(truth), "--pred", str(pred), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    lines = {line.split("  ")[0].strip(): line for line in printed.splitlines()}
    assert lines["pairwise"].split()[1:7] == ["0.5000", "0.5000", "0.5000", "4", "4", "2"]
    assert lines["civil – national_id"].split()[3:9] == [
        "0.6667",
        "0.6667",
        "0.6667",
        "3",
        "3",
        "2",
    ]
    assert lines["civil – civil"].split()[3:6] == ["0.0000", "0.0000", "0.0000"]
    figures = json.loads(out.read_text(encoding="utf-8"))
    assert figures["pairwise"]["true_positives"] == 2
    assert math.isclose(figures["bcubed"]["precision"], 11 / 15)

    # a rerun prints and writes exactly the same
    first_json = out.read_bytes()
    assert main(["evaluate", "--truth", str(truth), "--pred", str(pred), "--json", str(out)]) == 0
    assert capsys.readouterr().out == printed
    assert out.read_bytes() == first_json


@pytest.mark.parametrize(
    "case, header, rows, expected",
    [
        (
            "cluster column named differently",
            "register,record_id,mpi_id",
            [("civil", "1", "a")],
            ["crosswalk.csv", "lacks column(s) cluster_id", "register,record_id,cluster_id"],
        ),
        (
            "record listed twice",
            "register,record_id,cluster_id",
            [("civil", "1", "a"), ("civil", "2", "a"), ("civil", "1", "b")],
            ["crosswalk.csv", "lines 2, 4", "record_id=1", "more than once"],
        ),
        (
            "empty cluster id",
            "register,record_id,cluster_id",
            [("civil", "1", "a"), ("civil", "2", "")],
            ["crosswalk.csv", "line 3", "cluster_id is empty"],
        ),
    ],
)
def test_cli_bad_crosswalk_names_the_file(files, tmp_path, capsys, case, header, rows, expected):
    truth, _ = files
    pred = _write(tmp_path / "crosswalk.csv", header, rows)
    assert main(["evaluate", "--truth", str(truth), "--pred", str(pred)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for fragment in expected:
        assert fragment in err, (case, err)


def test_cli_missing_file(tmp_path, files, capsys):
    truth, _ = files
    assert main(["evaluate", "--truth", str(truth), "--pred", str(tmp_path / "nope.csv")]) == 2
    assert "nope.csv does not exist" in capsys.readouterr().err
