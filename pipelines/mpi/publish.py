"""Publish a run: one database transaction replaces the current index with the run's.

What is written, all in one transaction (SQLite and PostgreSQL alike):

- ``person_records``: the records that left the registers are deleted, new and changed
  links are upserted (the assign step computed the difference against the index it read);
- ``persons``: new and changed golden records upserted, merged or emptied IDs retired;
- ``mpi_events`` and ``match_pairs`` of the run (replaced as a whole: a rerun gives the
  same rows);
- ``watermarks``: the newest ``source_updated_at`` of each register;
- ``runs``: status ``published`` with the run's counts and the mark of the assignment it
  published (``assignment``): the next run then reads the index from the ``assign/`` files.

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

import io
import json
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from pipelines.errors import ReglinkError
from pipelines.link import records_path
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


#: Linked pairs kept in ``match_pairs`` per run (the weakest first): a first run of a whole
#: country links millions; every pair stays in ``link/pairs.parquet``.
LINKED_PAIRS_KEPT = 100_000


def _json_as_text(table: sa.Table) -> sa.Table:
    """``table`` with its JSON columns typed as text, for frames that hold JSON text already
    (built column-wise, much faster than a dict per row serialised one by one)."""
    columns = [sa.Column(c.name, sa.Text() if isinstance(c.type, sa.JSON) else c.type,
                         primary_key=c.primary_key, autoincrement=c.autoincrement,
                         default=c.default.arg if c.default is not None else None)
               for c in table.columns]
    unique = [sa.UniqueConstraint(*(c.name for c in con.columns))
              for con in table.constraints if isinstance(con, sa.UniqueConstraint)]
    return sa.Table(table.name, sa.MetaData(), *columns, *unique)


def _json_numbers(values: np.ndarray) -> np.ndarray:
    """Each number as JSON text, as ``repr`` writes it (``null`` for NaN); each distinct value
    is formatted once (weights take few distinct values)."""
    values = np.ascontiguousarray(values, dtype=np.float64)
    # Distinct by their bits: -0.0 and 0.0 are equal but written differently.
    _, first, inverse = np.unique(values.view(np.int64), return_index=True,
                                  return_inverse=True)
    text = np.array(["null" if v != v else repr(v) for v in values[first].tolist()],
                    dtype=object)
    return text[inverse.reshape(-1)]


def _explanations(table: pa.Table, names: list[str]) -> np.ndarray:
    """Each pair's ``{comparison: {"level": ..., "weight": ...}}`` as JSON text (joined by
    Arrow, column by column)."""
    pieces: list[Any] = ["{"]
    for k, name in enumerate(names):
        level = table.column(f"gamma_{name}").to_numpy().astype(np.int64).astype(str)
        weight = _json_numbers(np.round(table.column(f"w_{name}").to_numpy().astype(
            np.float64), 3))
        pieces += [("" if k == 0 else ", ") + f'"{name}": {{"level": ',
                   pa.array(level, type=pa.string()), ', "weight": ',
                   pa.array(weight, type=pa.string()), "}"]
    pieces.append("}")
    joined = pc.binary_join_element_wise(
        *(pa.scalar(p, pa.string()) if isinstance(p, str) else p for p in pieces),
        pa.scalar("", pa.string()))
    return np.asarray(joined.to_numpy(zero_copy_only=False), dtype=object)


def _pair_frame(run_dir: Path, crosswalk: pa.Table, relinked: np.ndarray
                ) -> tuple[pd.DataFrame, dict[str, int]]:
    """``match_pairs`` rows of the run: the review band (with explanations), links cut by a
    constraint, and links of records (re)linked in this run (the weakest
    :data:`LINKED_PAIRS_KEPT`); and how many pairs of each status there are in all.

    A pair is its records ``left`` and ``right``, positions in the run's records as in
    ``crosswalk`` (``register``, ``record_id``, ``cluster_id``): the keys are taken from
    there, for the pairs kept only."""
    path = run_dir / "link" / "pairs.parquet"
    names = [c[len("gamma_"):] for c in pq.read_schema(path).names if c.startswith("gamma_")]
    pairs = pq.ParquetFile(path).read(columns=["left", "right", "match_probability",
                                               "match_weight"])
    model = json.loads((run_dir / "link" / "model.json").read_text())
    link_th = float(model["settings"]["thresholds"]["link"])
    left = pairs.column("left").to_numpy()
    right = pairs.column("right").to_numpy()
    prob = pairs.column("match_probability").to_numpy().astype(np.float64)
    weight = pairs.column("match_weight").to_numpy().astype(np.float64)
    del pairs
    cluster = crosswalk.column("cluster_id").to_numpy()
    same = cluster[left] == cluster[right]
    totals = {"linked": int(same.sum()), "rejected": int((~same & (prob >= link_th)).sum()),
              "review": int((~same & (prob < link_th)).sum())}
    linked = same & (relinked[left] | relinked[right])
    linked_rows = np.flatnonzero(linked)
    if linked_rows.size > LINKED_PAIRS_KEPT:
        order = np.lexsort((linked_rows, weight[linked_rows]))[:LINKED_PAIRS_KEPT]
        linked_rows = linked_rows[order]
    rows = np.sort(np.concatenate([np.flatnonzero(~same), linked_rows]))
    status = np.where(same[rows], "linked", np.where(prob[rows] >= link_th, "rejected",
                                                     "review"))
    table = pq.ParquetFile(path).read(columns=["left", *(f"{p}_{n}" for n in names
                                                         for p in ("gamma", "w"))]
                                      ).take(pa.array(rows))
    for side, at in (("l", left[rows]), ("r", right[rows])):
        for key in ("register", "record_id"):
            table = table.append_column(f"{key}_{side}", crosswalk.column(key).take(at))
    keys = ["register_l", "record_id_l", "register_r", "record_id_r"]
    explain = status != "linked"
    explanation = np.full(len(rows), None, dtype=object)
    if explain.any() and names:
        explanation[explain] = _explanations(table.filter(pa.array(explain)), names)
    reg_l, rid_l, reg_r, rid_r = (table.column(k).to_pandas().astype(object).to_numpy()
                                  for k in keys)
    del table
    sw = (reg_l + "\x00" + rid_l) > (reg_r + "\x00" + rid_r)
    frame = pd.DataFrame({
        "register_l": np.where(sw, reg_r, reg_l),
        "record_id_l": np.where(sw, rid_r, rid_l),
        "register_r": np.where(sw, reg_l, reg_r),
        "record_id_r": np.where(sw, rid_l, rid_r),
        "match_weight": weight[rows],
        "match_probability": prob[rows],
        "status": status,
        "explanation": explanation,
    })
    return frame, totals


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
    """The run's events, ``details`` as JSON text."""
    frame = events.assign(details=events["details"].astype(object).where(
        events["details"].notna(), None))
    if over_itself:
        # Republishing over its own index: the assignment only holds what changed since,
        # so the run's earlier events are kept beside it.
        t = schema.mpi_events
        old = conn.execute(sa.select(t.c.event_type, t.c.mpi_id, t.c.other_mpi_id, t.c.reason,
                                     t.c.details).where(t.c.run_id == run_id)).all()
        earlier = pd.DataFrame([tuple(r) for r in old], columns=list(frame.columns))
        earlier["details"] = earlier["details"].map(
            lambda d: json.dumps(d) if d is not None else None)
        frame = pd.concat([earlier, frame], ignore_index=True).drop_duplicates(
            ["event_type", "mpi_id", "other_mpi_id"], keep="last")
    frame["other_mpi_id"] = frame["other_mpi_id"].astype(object).where(
        frame["other_mpi_id"].notna(), None)
    return frame


# ------------------------------------------------------------------ writing (PostgreSQL: COPY)

_COPY_ROWS = 500_000


def _copy_csv(conn: Connection, target: str, frame: pd.DataFrame) -> None:
    """``COPY target FROM STDIN`` of ``frame`` as CSV written by Arrow (PostgreSQL): missing
    values are NULL, JSON columns hold JSON text."""
    quote = conn.dialect.identifier_preparer.quote
    sql = (f"COPY {quote(target)} ({', '.join(quote(c) for c in frame.columns)}) "
           "FROM STDIN WITH (FORMAT csv)")
    options = pacsv.WriteOptions(include_header=False, quoting_style="needed")
    cursor = conn.connection.dbapi_connection.cursor()
    try:
        for start in range(0, len(frame), _COPY_ROWS):
            table = pa.Table.from_pandas(frame.iloc[start:start + _COPY_ROWS],
                                         preserve_index=False)
            # A column of only missing values has no type yet: text (NULLs) it is.
            table = table.cast(pa.schema([pa.field(f.name, pa.string())
                                          if pa.types.is_null(f.type) else f
                                          for f in table.schema]))
            sink = pa.BufferOutputStream()
            pacsv.write_csv(table, sink, options)
            cursor.copy_expert(sql, io.BytesIO(sink.getvalue().to_pybytes()))
    finally:
        cursor.close()


def _empty_tables(conn: Connection, tables: list[sa.Table]) -> set[str]:
    """Which of ``tables`` hold no row (on PostgreSQL; nothing is bulk-loaded on SQLite)."""
    if conn.dialect.name != "postgresql":
        return set()
    return {t.name for t in tables
            if conn.execute(sa.select(sa.literal(1)).select_from(t).limit(1)).first() is None}


@contextmanager
def _bulk_load(conn: Connection, tables: set[str]) -> Iterator[None]:
    """Loading a whole country into empty tables (a first run, PostgreSQL): their foreign keys
    and secondary indexes are dropped for the load and created again after it, in the same
    transaction. One set-based check per key and one sorted index build replace a trigger
    and an index insert per row (minutes for millions of rows); a crash rolls it all back."""
    if not tables:
        yield
        return
    names = sorted(tables)
    foreign = conn.exec_driver_sql(
        "SELECT c.conrelid::regclass::text, c.conname, pg_get_constraintdef(c.oid) "
        "FROM pg_constraint c JOIN pg_class t ON t.oid = c.conrelid "
        "WHERE c.contype = 'f' AND t.relname = ANY(%(t)s) "
        "AND t.relnamespace = current_schema()::regnamespace ORDER BY 1, 2",
        {"t": names}).all()
    indexes = conn.exec_driver_sql(
        "SELECT i.indexname, i.indexdef FROM pg_indexes i WHERE i.tablename = ANY(%(t)s) "
        "AND i.schemaname = current_schema() AND NOT EXISTS (SELECT 1 FROM pg_constraint c "
        "WHERE c.conname = i.indexname) ORDER BY 1", {"t": names}).all()
    quote = conn.dialect.identifier_preparer.quote
    for table, name, _ in foreign:
        conn.exec_driver_sql(f"ALTER TABLE {table} DROP CONSTRAINT {quote(name)}")
    for name, _ in indexes:
        conn.exec_driver_sql(f"DROP INDEX {quote(name)}")
    yield
    for _, definition in indexes:
        conn.exec_driver_sql(definition)
    for table, name, definition in foreign:
        conn.exec_driver_sql(f"ALTER TABLE {table} ADD CONSTRAINT {quote(name)} {definition}")
    log.info("publish: bulk-loaded %s (%d keys and %d indexes rebuilt)", ", ".join(names),
             len(foreign), len(indexes))


def _upsert(conn: Connection, table: sa.Table, frame: pd.DataFrame, empty: set[str]) -> None:
    """Insert or update ``frame``'s rows (JSON columns as JSON text)."""
    if frame.empty:
        return
    if conn.dialect.name != "postgresql":
        repo.upsert(conn, _json_as_text(table), frame)
        return
    if table.name in empty:
        _copy_csv(conn, table.name, frame)
        return
    quote = conn.dialect.identifier_preparer.quote
    stage = f"_stage_{table.name}"
    cols = ", ".join(quote(c) for c in frame.columns)
    key = [c.name for c in table.primary_key.columns]
    conn.exec_driver_sql(f"CREATE TEMPORARY TABLE {quote(stage)} ON COMMIT DROP AS "
                         f"SELECT {cols} FROM {quote(table.name)} WITH NO DATA")
    _copy_csv(conn, stage, frame)
    update = ", ".join(f"{quote(c)} = EXCLUDED.{quote(c)}" for c in frame.columns
                       if c not in key)
    conn.exec_driver_sql(
        f"INSERT INTO {quote(table.name)} ({cols}) SELECT {cols} FROM {quote(stage)} "
        f"ON CONFLICT ({', '.join(quote(c) for c in key)}) DO UPDATE SET {update}")
    conn.exec_driver_sql(f"DROP TABLE {quote(stage)}")


def _replace_run_rows(conn: Connection, table: sa.Table, run_id: str,
                      frame: pd.DataFrame) -> None:
    """The run's rows of ``table`` replaced by ``frame`` (JSON columns as JSON text)."""
    if conn.dialect.name != "postgresql":
        repo.replace_run_rows(conn, _json_as_text(table), run_id, frame)
        return
    conn.execute(sa.delete(table).where(table.c.run_id == run_id))
    if len(frame):
        _copy_csv(conn, table.name, frame.assign(run_id=run_id))


def _watermarks(run_dir: Path) -> dict[str, str]:
    """Per register, the newest ``source_updated_at`` of its records (canonical ISO text,
    grouped by Arrow)."""
    path = records_path(run_dir)
    if not path.is_file():
        raise ReglinkError(f"{path} not found: run the standardise step of run "
                           f"{run_dir.name} first")
    schema_ = pq.read_schema(path)
    if "source_updated_at" not in schema_.names:
        return {}
    records = pq.ParquetFile(path).read(columns=["register", "source_updated_at"])
    if not pa.types.is_large_string(records.schema.field("source_updated_at").type):
        values = records.to_pandas().dropna()
        return values.groupby("register")["source_updated_at"].max().astype(str).to_dict()
    newest = records.group_by("register").aggregate([("source_updated_at", "max")])
    return {register: value for register, value in zip(
        newest["register"].to_pylist(), newest["source_updated_at_max"].to_pylist(),
        strict=True) if register is not None and value is not None}


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
    linked_run = pq.read_table(out / "person_records.parquet", columns=["linked_run"])
    n_records = len(linked_run)
    relinked = pc.fill_null(pc.equal(linked_run["linked_run"], run_id), False).to_numpy(
        zero_copy_only=False)
    del linked_run
    conservation = check_conservation(run_dir, n_records)
    crosswalk = pq.ParquetFile(run_dir / "cluster" / "crosswalk.parquet").read(
        columns=["register", "record_id", "cluster_id"])
    upsert_records = pd.read_parquet(out / "records_upsert.parquet")
    delete_records = pd.read_parquet(out / "records_delete.parquet")
    persons = pd.read_parquet(out / "persons_upsert.parquet")
    retire = pd.read_parquet(out / "persons_retire.parquet")
    events = pd.read_parquet(out / "events.parquet")
    pairs, pair_totals = _pair_frame(run_dir, crosswalk, relinked)
    del crosswalk, relinked
    watermarks = _watermarks(run_dir)
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
            return {"run_id": run_id, "already_published": True, "records": n_records}
        if last != index_run:
            raise PublishConflictError(
                f"the index was published by run {last} after run {run_id} read it; rerun "
                f"the assign and publish steps of run {run_id} (or start a new run)")
        empty = _empty_tables(conn, [schema.persons, schema.person_records,
                                     schema.mpi_events, schema.match_pairs])
        with _bulk_load(conn, empty):
            deleted = _delete_keys(conn, delete_records)
            if len(retire):
                p = schema.persons
                conn.execute(
                    sa.update(p).where(p.c.mpi_id == sa.bindparam("m")).values(
                        status="retired", merged_into=sa.bindparam("into"),
                        updated_run=run_id),
                    [{"m": m, "into": i if isinstance(i, str) else None}
                     for m, i in zip(retire["mpi_id"], retire["merged_into"], strict=True)])
            _upsert(conn, schema.persons, persons, empty)
            _upsert(conn, schema.person_records, upsert_records, empty)
            _replace_run_rows(conn, schema.mpi_events, run_id,
                              _events(conn, run_id, events, reused))
            _replace_run_rows(conn, schema.match_pairs, run_id, pairs)
        for register, value in sorted(watermarks.items()):
            repo.set_watermark(conn, register, value, run_id)
        n_index = conn.execute(sa.select(sa.func.count()).select_from(
            schema.person_records)).scalar_one()
        if n_index != n_records:
            raise ConservationError(
                f"run {run_id}: after publishing, person_records would hold {n_index} rows "
                f"instead of {n_records}; nothing is published (the index was changed "
                "outside reglink?)")
        counts = {
            "published": {"records": int(n_records), "persons": int(summary["persons"]),
                          "assignment": summary.get("assignment"),
                          "events": summary["events"], "changes": summary["changes"],
                          "pairs": pairs["status"].value_counts().to_dict(),
                          "pairs_scored": pair_totals,
                          "registers": conservation, "published_at": utcnow().isoformat()},
        }
        _pause()
        repo.finish_run(conn, run_id, "published", counts)
    result = {"run_id": run_id, "records": int(n_records), "persons": summary["persons"],
              "records_deleted": int(deleted), "records_upserted": int(len(upsert_records)),
              "persons_upserted": int(len(persons)), "persons_retired": int(len(retire)),
              "events": summary["events"], "pairs": int(len(pairs)),
              "seconds": round(time.perf_counter() - started, 2)}
    log.info("publish: run %s published (%d records, %.1f s)", run_id, n_records,
             result["seconds"])
    return result
