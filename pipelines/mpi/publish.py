"""Publish a run: one database transaction replaces the current index with the run's.

What is written, all in one transaction (SQLite and PostgreSQL alike):

- ``person_records``: the records that left the registers are deleted, new and changed
  links are upserted (the assign step computed the difference against the index it read);
- ``persons``: new and changed golden records upserted, merged or emptied IDs retired;
- ``mpi_events`` and ``match_pairs`` of the run (replaced as a whole: a rerun gives the
  same rows);
- ``watermarks``: the newest ``source_updated_at`` of each register;
- ``runs``: status ``published`` with the run's counts.

Before anything is written, **row conservation** is checked on the run's files: for every
register, extracted rows = passed + quarantined, and the records being published are exactly
the records that passed. Inside the transaction, before it commits, the number of rows in
``person_records`` is checked against it again. The transaction also checks that the index
is still the one the assign step read (else :class:`PublishConflictError`).

A crash at any point before the commit leaves the previous index as it was: the database
rolls the transaction back. ``REGLINK_PUBLISH_PAUSE=<seconds>`` makes publish wait inside the
transaction, after every write and before the commit (for crash tests and demonstrations).
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from pipelines.errors import ReglinkError
from pipelines.link import read_records
from pipelines.mpi.ids import PublishConflictError
from pipelines.store import repository as repo
from pipelines.store import schema
from pipelines.store.migrations import require_head
from pipelines.store.schema import utcnow

log = logging.getLogger(__name__)

PAUSE_ENV = "REGLINK_PUBLISH_PAUSE"
_PUBLISH_LOCK = 0x72676C70  # "rglp": serialises publishes on PostgreSQL


class ConservationError(ReglinkError):
    """Rows were lost or invented between extract and publish: nothing is published."""


def check_conservation(run_dir: Path, n_records: int) -> dict[str, Any]:
    """Every extracted row is linked or quarantined, and nothing else is published.

    Returns per register: extracted, passed, quarantined.
    """
    summary_path = run_dir / "validate" / "summary.json"
    if not summary_path.is_file():
        raise ConservationError(f"{summary_path} not found: the run was not validated")
    registers = json.loads(summary_path.read_text())["registers"]
    problems = []
    for name, r in sorted(registers.items()):
        if r["extracted"] != r["passed"] + r["quarantined"]:
            problems.append(f"{name}: {r['extracted']} extracted != {r['passed']} passed + "
                            f"{r['quarantined']} quarantined")
    passed = sum(int(r["passed"]) for r in registers.values())
    if passed != n_records:
        problems.append(f"{passed} records passed validation but {n_records} would be "
                        "published")
    if problems:
        raise ConservationError(f"run {run_dir.name}: rows are not conserved, nothing is "
                                f"published: {'; '.join(problems)}. Rerun the run from "
                                "`extract`.")
    return {name: {k: r[k] for k in ("extracted", "passed", "quarantined")}
            for name, r in registers.items()}


def _pair_frame(run_dir: Path, crosswalk: pd.DataFrame, records_linked: np.ndarray
                ) -> pd.DataFrame:
    """``match_pairs`` rows of the run: the review band (with explanations), links cut by a
    constraint, and the links of records that were (re)linked in this run."""
    pairs = pd.read_parquet(run_dir / "link" / "pairs.parquet")
    model = json.loads((run_dir / "link" / "model.json").read_text())
    link_th = float(model["settings"]["thresholds"]["link"])
    cluster = crosswalk["cluster_id"].to_numpy()
    left, right = pairs["left"].to_numpy(), pairs["right"].to_numpy()
    prob = pairs["match_probability"].to_numpy(dtype=np.float64)
    same = cluster[left] == cluster[right]
    status = np.where(same, "linked", np.where(prob >= link_th, "rejected", "review"))
    relinked = np.zeros(len(crosswalk), dtype=bool)
    relinked[records_linked] = True
    keep = (status != "linked") | relinked[left] | relinked[right]
    pairs, status = pairs.loc[keep].reset_index(drop=True), status[keep]
    names = [c[len("gamma_"):] for c in pairs.columns if c.startswith("gamma_")]
    explain = status != "linked"
    explanation = np.full(len(pairs), None, dtype=object)
    if explain.any() and names:
        sub = pairs.loc[explain]
        levels = {n: sub[f"gamma_{n}"].to_numpy().tolist() for n in names}
        weights = {n: sub[f"w_{n}"].to_numpy(dtype=np.float64).round(3).tolist() for n in names}
        explanation[explain] = [
            {n: {"level": levels[n][i], "weight": weights[n][i]} for n in names}
            for i in range(len(sub))
        ]
    lo_first = (pairs["register_l"].astype(str) + "\x00" + pairs["record_id_l"].astype(str)) <= (
        pairs["register_r"].astype(str) + "\x00" + pairs["record_id_r"].astype(str))
    sw = ~lo_first.to_numpy()

    def side(a: str, b: str) -> np.ndarray:
        return np.where(sw, pairs[b].astype(object), pairs[a].astype(object))

    return pd.DataFrame({
        "register_l": side("register_l", "register_r"),
        "record_id_l": side("record_id_l", "record_id_r"),
        "register_r": side("register_r", "register_l"),
        "record_id_r": side("record_id_r", "record_id_l"),
        "match_weight": pairs["match_weight"].astype("float64"),
        "match_probability": pairs["match_probability"].astype("float64"),
        "status": status,
        "explanation": explanation,
    })


def _delete_keys(conn: Connection, keys: pd.DataFrame) -> int:
    """Delete these (register, record_id) rows of ``person_records``."""
    if keys.empty:
        return 0
    t = schema.person_records
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("CREATE TEMPORARY TABLE _gone (register text, record_id text) "
                             "ON COMMIT DROP")
        gone = sa.Table("_gone", sa.MetaData(), sa.Column("register", sa.Text()),
                        sa.Column("record_id", sa.Text()))
        repo._copy(conn, "_gone", gone, keys[["register", "record_id"]])
        deleted = conn.exec_driver_sql(
            "DELETE FROM person_records p USING _gone g "
            "WHERE p.register = g.register AND p.record_id = g.record_id").rowcount
        conn.exec_driver_sql("DROP TABLE _gone")
        return deleted
    stmt = sa.delete(t).where(t.c.register == sa.bindparam("r"),
                              t.c.record_id == sa.bindparam("i"))
    rows = [{"r": r, "i": i} for r, i in zip(keys["register"], keys["record_id"], strict=True)]
    return conn.execute(stmt, rows).rowcount


def _events(conn: Connection, run_id: str, events: pd.DataFrame, over_itself: bool
            ) -> pd.DataFrame:
    frame = events.assign(details=events["details"].map(
        lambda d: json.loads(d) if isinstance(d, str) else None))
    if over_itself:
        # Republishing over its own index: the assignment only holds what changed since,
        # so the run's earlier events are kept beside it.
        t = schema.mpi_events
        old = conn.execute(sa.select(t.c.event_type, t.c.mpi_id, t.c.other_mpi_id, t.c.reason,
                                     t.c.details).where(t.c.run_id == run_id)).all()
        earlier = pd.DataFrame([tuple(r) for r in old], columns=list(frame.columns))
        frame = pd.concat([earlier, frame], ignore_index=True).drop_duplicates(
            ["event_type", "mpi_id", "other_mpi_id"], keep="last")
    frame["other_mpi_id"] = frame["other_mpi_id"].astype(object).where(
        frame["other_mpi_id"].notna(), None)
    return frame


def _watermarks(records: pd.DataFrame) -> dict[str, str]:
    if "source_updated_at" not in records.columns:
        return {}
    values = records[["register", "source_updated_at"]].dropna()
    return values.groupby("register")["source_updated_at"].max().astype(str).to_dict()


def _pause() -> None:
    pause = float(os.environ.get(PAUSE_ENV) or 0)
    if pause > 0:
        log.warning("publish: pausing %.1f s inside the transaction (%s is set)", pause,
                    PAUSE_ENV)
        time.sleep(pause)


def publish_run(engine: Engine, run_id: str, run_dir: Path) -> dict[str, Any]:
    """Publish the assigned index of ``run_id`` in one transaction (see the module doc).

    Raises:
        ConservationError: rows were lost between extract and publish.
        PublishConflictError: the index changed since the assign step read it.
    """
    started = time.perf_counter()
    run_dir = Path(run_dir)
    out = run_dir / "assign"
    summary_path = out / "summary.json"
    if not summary_path.is_file():
        raise ReglinkError(f"{summary_path} not found: run the assign step of run {run_id} "
                           "first")
    summary = json.loads(summary_path.read_text())
    index = pd.read_parquet(out / "person_records.parquet")
    conservation = check_conservation(run_dir, len(index))
    crosswalk = pd.read_parquet(run_dir / "cluster" / "crosswalk.parquet",
                                columns=["register", "record_id", "cluster_id"])
    upsert_records = pd.read_parquet(out / "records_upsert.parquet")
    delete_records = pd.read_parquet(out / "records_delete.parquet")
    persons = pd.read_parquet(out / "persons_upsert.parquet")
    persons["provenance"] = persons["provenance"].map(json.loads)
    retire = pd.read_parquet(out / "persons_retire.parquet")
    events = pd.read_parquet(out / "events.parquet")
    relinked = np.flatnonzero(index["linked_run"].to_numpy() == run_id)
    pairs = _pair_frame(run_dir, crosswalk, relinked)
    watermarks = _watermarks(read_records(run_dir, columns=["register", "source_updated_at"]))
    reused = summary.get("index_run") == run_id

    with engine.begin() as conn:
        require_head(conn)
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PUBLISH_LOCK})
        last = repo.last_published_run(conn)
        index_run = summary.get("index_run")
        if last == run_id and index_run != run_id:
            # This assignment is the one already published: nothing to change.
            log.info("publish: run %s is already published; nothing to do", run_id)
            return {"run_id": run_id, "already_published": True, "records": len(index)}
        if last != index_run:
            raise PublishConflictError(
                f"the index was published by run {last} after run {run_id} read it; rerun "
                f"the assign and publish steps of run {run_id} (or start a new run)")
        deleted = _delete_keys(conn, delete_records)
        if len(retire):
            p = schema.persons
            conn.execute(
                sa.update(p).where(p.c.mpi_id == sa.bindparam("m")).values(
                    status="retired", merged_into=sa.bindparam("into"), updated_run=run_id),
                [{"m": m, "into": i if isinstance(i, str) else None}
                 for m, i in zip(retire["mpi_id"], retire["merged_into"], strict=True)])
        if len(persons):
            repo.upsert(conn, schema.persons, persons)
        if len(upsert_records):
            repo.upsert(conn, schema.person_records, upsert_records)
        repo.replace_run_rows(conn, schema.mpi_events, run_id,
                              _events(conn, run_id, events, reused))
        repo.replace_run_rows(conn, schema.match_pairs, run_id, pairs)
        for register, value in sorted(watermarks.items()):
            repo.set_watermark(conn, register, value, run_id)
        n_index = conn.execute(sa.select(sa.func.count()).select_from(
            schema.person_records)).scalar_one()
        if n_index != len(index):
            raise ConservationError(
                f"run {run_id}: after publishing, person_records would hold {n_index} rows "
                f"instead of {len(index)}; nothing is published (the index was changed "
                "outside reglink?)")
        counts = {
            "published": {"records": int(len(index)), "persons": int(summary["persons"]),
                          "events": summary["events"], "changes": summary["changes"],
                          "pairs": pairs["status"].value_counts().to_dict(),
                          "registers": conservation, "published_at": utcnow().isoformat()},
        }
        _pause()
        repo.finish_run(conn, run_id, "published", counts)
    result = {"run_id": run_id, "records": int(len(index)), "persons": summary["persons"],
              "records_deleted": int(deleted), "records_upserted": int(len(upsert_records)),
              "persons_upserted": int(len(persons)), "persons_retired": int(len(retire)),
              "events": summary["events"], "pairs": int(len(pairs)),
              "seconds": round(time.perf_counter() - started, 2)}
    log.info("publish: run %s published (%d records, %.1f s)", run_id, len(index),
             result["seconds"])
    return result
