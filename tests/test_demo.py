"""`reglink demo` end to end on a small country: every step runs and the result is sane."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from pipelines.cli import main

CONFIG = Path(__file__).resolve().parents[1] / "config"


def test_demo_runs_every_step_and_links_accurately(tmp_path, monkeypatch, capsys):
    # As `make demo` does: a data folder relative to the working directory.
    monkeypatch.chdir(tmp_path)
    status = main(["demo", "--persons", "3000", "--seed", "5", "--data-dir", "data",
                   "--config", str(CONFIG)])
    out = capsys.readouterr().out
    assert status == 0, out
    tmp_path = tmp_path / "data"
    run = tmp_path / "runs" / "demo"
    assert (run / "validate" / "data_docs" / "index.html").is_file()
    crosswalk = pd.read_csv(run / "cluster" / "crosswalk.csv", dtype=str)
    truth = pd.read_csv(tmp_path / "source" / "truth.csv", dtype=str)
    quarantine = pd.read_parquet(run / "validate" / "quarantine.parquet")
    quarantined = quarantine[quarantine["severity"] == "error"]
    # Nothing lost: every source record is linked to a cluster or quarantined, not both.
    linked = set(zip(crosswalk.register, crosswalk.record_id, strict=True))
    held = set(zip(quarantined.register, quarantined.record_id, strict=True))
    assert linked.isdisjoint(held)
    assert linked | held == set(zip(truth.register, truth.record_id, strict=True))
    report = json.loads((run / "link" / "report.json").read_text())
    assert report["records"] == len(crosswalk)
    assert (run / "link" / "model.json").is_file()
    # The demo prints the evaluation; on a small country the engine must still be accurate.
    line = next(ln for ln in out.splitlines() if ln.startswith("pairwise "))
    precision, recall, f1 = (float(x) for x in line.split()[1:4])
    assert f1 > 0.95, line
    assert "demo finished" in out
    # The run was published: the MPI holds every linked record, and the demo says where.
    assert main(["export", "crosswalk", "--out", str(tmp_path / "cw.csv"),
                 "--data-dir", str(tmp_path)]) == 0
    published = pd.read_csv(tmp_path / "cw.csv", dtype=str)
    assert set(zip(published.register, published.record_id, strict=True)) == linked
    assert published["mpi_id"].nunique() == crosswalk["cluster_id"].nunique()
    assert "published" in out and "reglink person" in out
