"""Small, typed functions the steps use to read and write the MPI database.

Every function takes an open :class:`~sqlalchemy.engine.Connection` and leaves the
transaction to the caller, so that a step (publish above all) writes everything or nothing::

    with engine.begin() as conn:
        start_run(conn, run_id, seed=42, config_hash=h)

Writes are idempotent: a rerun of the same run, or of one task of it, upserts on the table's
key (or replaces that run's rows) and never adds duplicates.

Bulk helpers (:func:`bulk_insert`, :func:`upsert`, :func:`replace_run_rows`) take a DataFrame
or a list of dicts. On PostgreSQL they stream rows with ``COPY`` (hundreds of thousands of
rows in seconds); an upsert copies into a temporary table first and merges with
``INSERT ... ON CONFLICT``. On SQLite they use ``executemany``.
"""

from __future__ import annotations

import io
import json
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from tqdm import tqdm

from pipelines.store import schema
from pipelines.store.schema import UTCDateTime, utcnow

log = logging.getLogger(__name__)

Rows = pd.DataFrame | Sequence[Mapping[str, Any]]

#: Rows sent per COPY / executemany batch: bounds memory, not speed.
CHUNK_ROWS = 50_000

QUARANTINE_COLUMNS = (
    "run_id",
    "register",
    "record_id",
    "source_row",
    "source_file",
    "rule",
    "column",
    "value",
    "severity",
)


# --------------------------------------------------------------------------------------- runs


def start_run(
    conn: Connection,
    run_id: str,
    seed: int,
    config_hash: str,
    *,
    model_path: str | None = None,
    data_docs_path: str | None = None,
) -> None:
    """Record that ``run_id`` started (status ``running``).

    Starting a run that already exists (a rerun after a failure) sets it back to
    ``running`` with the given seed and config hash and keeps its ``started_at``.
    """
    values = {
        "run_id": run_id,
        "status": "running",
        "seed": int(seed),
        "config_hash": config_hash,
        "model_path": model_path,
        "data_docs_path": data_docs_path,
        "finished_at": None,
        "message": None,
    }
    previous = conn.execute(
        sa.select(schema.runs.c.status).where(schema.runs.c.run_id == run_id)
    ).scalar_one_or_none()
    if previous is not None:
        log.info("run %s restarted (was %s)", run_id, previous)
    stmt = _insert(conn, schema.runs).values(started_at=utcnow(), **values)
    update = {k: v for k, v in values.items() if k != "run_id"}
    conn.execute(stmt.on_conflict_do_update(index_elements=["run_id"], set_=update))


def finish_run(
    conn: Connection,
    run_id: str,
    status: str,
    counts: Mapping[str, Any] | None = None,
    *,
    message: str | None = None,
) -> None:
    """Set the run's status: ``validated``, ``published`` or ``failed``.

    A published run is never set ``failed``: its index is the current one. A later step's
    failure is kept as the run's ``message``.

    ``counts`` is merged into the run's counts (a key given again is replaced), so each step
    can add its own. ``published`` and ``failed`` also set ``finished_at``.

    Raises:
        ValueError: unknown status, or no such run (``start_run`` was not called).
    """
    if status not in ("validated", "published", "failed"):
        raise ValueError(f"status {status!r}: expected validated, published or failed")
    runs = schema.runs
    existing = conn.execute(
        sa.select(runs.c.counts, runs.c.status).where(runs.c.run_id == run_id)
    ).one_or_none()
    if existing is None:
        raise ValueError(f"run {run_id!r} is not in the runs table; call start_run first")
    if existing.status == "published" and status == "failed":
        # A step after publish (consistency, reports) failed: the index stays published.
        status = "published"
    merged = {**(existing.counts or {}), **(counts or {})}
    values: dict[str, Any] = {"status": status, "counts": merged or None, "message": message}
    if status != "validated":
        values["finished_at"] = utcnow()
    conn.execute(sa.update(runs).where(runs.c.run_id == run_id).values(**values))


def update_run(conn: Connection, run_id: str, **values: Any) -> None:
    """Set other columns of a run, e.g. ``model_path=...`` or ``data_docs_path=...``."""
    unknown = set(values) - set(schema.runs.c.keys())
    if unknown:
        raise ValueError(f"runs has no column(s) {sorted(unknown)}")
    conn.execute(sa.update(schema.runs).where(schema.runs.c.run_id == run_id).values(**values))


def last_published_run(conn: Connection) -> str | None:
    """The newest published run (whose index is the current one), or None."""
    runs = schema.runs
    return conn.execute(
        sa.select(runs.c.run_id)
        .where(runs.c.status == "published")
        .order_by(runs.c.started_at.desc(), runs.c.run_id.desc())
        .limit(1)
    ).scalar_one_or_none()


# --------------------------------------------------------------------------------- quarantine


def record_quarantine(conn: Connection, run_id: str, frame: pd.DataFrame) -> int:
    """Write quarantined rows of ``run_id``; returns the number of rows in ``frame``.

    ``frame`` has the columns ``register``, ``source_row``, ``rule`` and optionally
    ``run_id`` (must equal ``run_id``), ``record_id``, ``source_file``, ``column`` (the
    canonical column checked; missing for a rule over the whole row), ``value`` (written as
    text) and ``severity`` (default ``error``).

    Idempotent: a row is identified by (run, register, source file, source row, rule,
    column), so recording the same frame twice keeps one copy, and a later call with the
    same key updates value and severity. The source position rather than ``record_id``
    identifies the row because a missing or repeated ``record_id`` is itself a reason for
    quarantine, and two such rows must both be kept.
    """
    missing = {"register", "source_row", "rule"} - set(frame.columns)
    unknown = set(frame.columns) - set(QUARANTINE_COLUMNS)
    if missing or unknown:
        raise ValueError(
            f"quarantine frame: missing column(s) {sorted(missing)}, unknown {sorted(unknown)}; "
            f"expected {', '.join(QUARANTINE_COLUMNS)}"
        )
    if "run_id" in frame.columns:
        others = set(frame["run_id"].dropna().unique()) - {run_id}
        if others:
            raise ValueError(f"quarantine frame holds rows of other runs: {sorted(others)}")
    n = len(frame)
    out = pd.DataFrame(
        {
            "run_id": run_id,
            "register": frame["register"].astype(object),
            "record_id": _text_or_none(frame.get("record_id"), n),
            "source_file": _text_or_none(frame.get("source_file"), n, fill=""),
            "source_row": frame["source_row"].astype("int64"),
            "rule": frame["rule"].astype(object),
            "column_name": _text_or_none(frame.get("column"), n, fill=""),
            "value": _text_or_none(frame.get("value"), n),
            "severity": _text_or_none(frame.get("severity"), n, fill="error"),
        },
        index=frame.index,
    )
    upsert(conn, schema.quarantine, out)
    return n


def _text_or_none(series: pd.Series | None, n: int, fill: str | None = None) -> Any:
    if series is None:
        return [fill] * n
    text = series.astype(object).where(series.notna(), None)
    text = text.map(lambda v: v if v is None or isinstance(v, str) else str(v))
    return text.where(text.notna(), fill) if fill is not None else text


# --------------------------------------------------------------------------------- watermarks


def get_watermark(conn: Connection, register: str) -> str | None:
    """The register's watermark (where its next incremental extract starts), or None."""
    wm = schema.watermarks
    return conn.execute(
        sa.select(wm.c.value).where(wm.c.register == register)
    ).scalar_one_or_none()


def set_watermark(conn: Connection, register: str, value: str, run_id: str | None = None) -> None:
    """Set the register's watermark; call it in the transaction that publishes the run."""
    values = {"value": str(value), "run_id": run_id, "updated_at": utcnow()}
    stmt = _insert(conn, schema.watermarks).values(register=register, **values)
    conn.execute(stmt.on_conflict_do_update(index_elements=["register"], set_=values))


# ------------------------------------------------------------------------------ bulk helpers


def bulk_insert(conn: Connection, table: sa.Table | str, rows: Rows) -> int:
    """Insert rows (no conflict handling); returns the number inserted.

    Columns the rows do not have take their server defaults. Fast on PostgreSQL (``COPY``).
    """
    table = _table(table)
    frame = _frame(table, rows)
    if frame.empty:
        return 0
    _ensure_transaction(conn)
    if conn.dialect.name == "postgresql":
        _copy(conn, table.name, table, frame)
    else:
        for chunk in _progress(frame, table.name):
            conn.execute(table.insert(), _records(chunk))
    return len(frame)


def upsert(
    conn: Connection,
    table: sa.Table | str,
    rows: Rows,
    *,
    key: Sequence[str] | None = None,
) -> int:
    """Insert rows, updating those whose key exists; returns the number of rows given.

    Args:
        key: columns of the table's primary key or of one of its unique constraints.
            Default: the natural key, i.e. the unique constraint of a table keyed by a
            surrogate ``id`` (e.g. ``quarantine``, ``match_pairs``), else the primary key.
            A key that is neither is refused: an upsert on it would not be idempotent.

    Rows repeating a key within ``rows`` count once (the last wins). Columns not in ``rows``
    keep their value on update (e.g. ``created_at``).
    """
    table = _table(table)
    key = list(key) if key is not None else _natural_key(table)
    _check_key(table, key)
    frame = _frame(table, rows)
    missing = set(key) - set(frame.columns)
    if missing:
        raise ValueError(f"upsert into {table.name}: rows lack key column(s) {sorted(missing)}")
    if frame.empty:
        return 0
    frame = frame.drop_duplicates(subset=key, keep="last")
    _ensure_transaction(conn)
    update_cols = [c for c in frame.columns if c not in key]
    if conn.dialect.name == "postgresql":
        _pg_upsert(conn, table, frame, key, update_cols)
    else:
        stmt = _insert(conn, table)
        if update_cols:
            stmt = stmt.on_conflict_do_update(
                index_elements=key, set_={c: stmt.excluded[c] for c in update_cols}
            )
        else:
            stmt = stmt.on_conflict_do_nothing(index_elements=key)
        for chunk in _progress(frame, table.name):
            conn.execute(stmt, _records(chunk))
    return len(frame)


def replace_run_rows(
    conn: Connection,
    table: sa.Table | str,
    run_id: str,
    rows: Rows,
    **where: Any,
) -> int:
    """Replace a run's rows in a run-scoped table: delete them, then insert ``rows``.

    For outputs a step writes as a whole (``match_pairs``, ``mpi_events``,
    ``consistency_findings``, ``consistency_metrics``): a rerun gives the same rows.
    ``where`` narrows what is replaced, e.g. ``register="civil"``. Rows without ``run_id``
    get it; rows with another ``run_id`` are refused.
    """
    table = _table(table)
    if "run_id" not in table.c:
        raise ValueError(f"{table.name} has no run_id column")
    frame = _frame(table, rows)
    if "run_id" in frame.columns:
        others = set(frame["run_id"].dropna().unique()) - {run_id}
        if others:
            raise ValueError(f"rows for {table.name} hold other runs: {sorted(others)}")
    frame = frame.assign(run_id=run_id)
    for column, value in where.items():
        if column not in table.c:
            raise ValueError(f"{table.name} has no column {column!r}")
        if column in frame.columns and not (frame[column] == value).all():
            raise ValueError(f"rows for {table.name} have {column} other than {value!r}")
    condition = table.c.run_id == run_id
    for column, value in where.items():
        condition = condition & (table.c[column] == value)
    _ensure_transaction(conn)
    deleted = conn.execute(sa.delete(table).where(condition)).rowcount
    if deleted:
        log.info("replaced %d row(s) of run %s in %s", deleted, run_id, table.name)
    return bulk_insert(conn, table, frame)


# ----------------------------------------------------------------------------------- private


def _insert(conn: Connection, table: sa.Table):
    dialect = conn.dialect.name
    if dialect == "postgresql":
        return postgresql.insert(table)
    if dialect == "sqlite":
        return sqlite.insert(table)
    raise ValueError(f"the MPI database supports SQLite and PostgreSQL, not {dialect}")


def _table(table: sa.Table | str) -> sa.Table:
    if isinstance(table, sa.Table):
        return table
    try:
        return schema.metadata.tables[table]
    except KeyError:
        raise ValueError(f"no table {table!r} in the MPI schema") from None


def _natural_key(table: sa.Table) -> list[str]:
    primary = [c.name for c in table.primary_key.columns]
    unique = [con for con in table.constraints if isinstance(con, sa.UniqueConstraint)]
    if primary == ["id"] and len(unique) == 1:
        return [c.name for c in unique[0].columns]
    return primary


def _check_key(table: sa.Table, key: list[str]) -> None:
    keys = [{c.name for c in table.primary_key.columns}] + [
        {c.name for c in con.columns}
        for con in table.constraints
        if isinstance(con, sa.UniqueConstraint)
    ]
    if set(key) not in keys:
        raise ValueError(
            f"upsert into {table.name} on {key}: not its primary key or a unique key "
            f"(those are {[sorted(k) for k in keys]})"
        )


def _frame(table: sa.Table, rows: Rows) -> pd.DataFrame:
    frame = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame.from_records(list(rows))
    unknown = [c for c in frame.columns if c not in table.c]
    if unknown:
        raise ValueError(f"{table.name} has no column(s) {unknown}")
    return frame.reset_index(drop=True)


def _ensure_transaction(conn: Connection) -> None:
    # COPY goes through the DB-API connection; an explicit BEGIN makes sure it belongs to a
    # transaction the caller's commit (or rollback) covers.
    if not conn.in_transaction():
        conn.begin()


def _progress(frame: pd.DataFrame, name: str) -> Iterator[pd.DataFrame]:
    bar = tqdm(
        total=len(frame),
        desc=f"write {name}",
        unit="row",
        disable=None if len(frame) > CHUNK_ROWS else True,
    )
    with bar:
        for start in range(0, len(frame), CHUNK_ROWS):
            chunk = frame.iloc[start : start + CHUNK_ROWS]
            yield chunk
            bar.update(len(chunk))


def _python(value: Any) -> Any:
    """A DataFrame cell as a plain Python value for the driver (NA -> None)."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, pd.Timestamp):
        return value.to_pydatetime()
    if hasattr(value, "item") and not isinstance(value, (list, dict, str, bytes)):
        return value.item()  # numpy scalar
    return value


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    columns = list(frame.columns)
    return [
        {c: _python(v) for c, v in zip(columns, row, strict=True)}
        for row in frame.itertuples(index=False, name=None)
    ]


_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _copy_cell_formatter(column: sa.Column):
    is_json = isinstance(column.type, sa.JSON)
    is_ts = isinstance(column.type, UTCDateTime)

    def fmt(value: Any) -> str:
        value = _python(value)
        if value is None:
            return "\\N"
        if is_json:
            text = json.dumps(value, ensure_ascii=False)
        elif is_ts:
            if not isinstance(value, datetime) or value.tzinfo is None:
                raise ValueError(f"{column.name}: {value!r} is not a timezone-aware datetime")
            text = value.isoformat()
        elif isinstance(value, bool):
            text = "t" if value else "f"
        elif isinstance(value, float):
            text = repr(value)
        else:
            text = str(value)
        return text.translate(_ESCAPES)

    return fmt


def _copy_text(series: pd.Series, column: sa.Column) -> pd.Series:
    """One column in COPY text format: escaped text, ``\\N`` for missing."""
    is_plain = not isinstance(column.type, (sa.JSON, UTCDateTime, sa.Boolean))
    if is_plain and (
        pd.api.types.is_string_dtype(series) or pd.api.types.is_numeric_dtype(series)
    ) and not pd.api.types.is_bool_dtype(series):
        # Vectorised (Arrow string kernels): the common case of text and number columns.
        missing = series.isna()
        if pd.api.types.is_float_dtype(series):
            text = series.map(repr, na_action="ignore").astype("string")
        else:
            text = series.astype("string")
        for raw, escaped in (("\\", "\\\\"), ("\t", "\\t"), ("\n", "\\n"), ("\r", "\\r")):
            text = text.str.replace(raw, escaped, regex=False)
        return text.where(~missing, "\\N").astype(object)
    fmt = _copy_cell_formatter(column)
    return series.map(fmt).astype(object)


def _copy(conn: Connection, target: str, table: sa.Table, frame: pd.DataFrame) -> None:
    """``COPY target (columns) FROM STDIN`` in the connection's transaction (PostgreSQL)."""
    quote = conn.dialect.identifier_preparer.quote
    columns = list(frame.columns)
    sql = f"COPY {quote(target)} ({', '.join(quote(c) for c in columns)}) FROM STDIN"
    cursor = conn.connection.dbapi_connection.cursor()
    try:
        for chunk in _progress(frame, table.name):
            cells = [_copy_text(chunk[c], table.c[c]) for c in columns]
            lines = cells[0].str.cat(cells[1:], sep="\t") if len(cells) > 1 else cells[0]
            cursor.copy_expert(sql, io.StringIO("\n".join(lines.tolist()) + "\n"))
    finally:
        cursor.close()


def _pg_upsert(
    conn: Connection,
    table: sa.Table,
    frame: pd.DataFrame,
    key: list[str],
    update_cols: list[str],
) -> None:
    quote = conn.dialect.identifier_preparer.quote
    stage = f"_stage_{table.name}"
    cols = ", ".join(quote(c) for c in frame.columns)
    # Only the columns' types, no constraints: the staging table takes the rows as given.
    conn.exec_driver_sql(
        f"CREATE TEMPORARY TABLE {quote(stage)} ON COMMIT DROP AS "
        f"SELECT {cols} FROM {quote(table.name)} WITH NO DATA"
    )
    _copy(conn, stage, table, frame)
    if update_cols:
        action = "DO UPDATE SET " + ", ".join(
            f"{quote(c)} = EXCLUDED.{quote(c)}" for c in update_cols
        )
    else:
        action = "DO NOTHING"
    conn.exec_driver_sql(
        f"INSERT INTO {quote(table.name)} ({cols}) SELECT {cols} FROM {quote(stage)} "
        f"ON CONFLICT ({', '.join(quote(c) for c in key)}) {action}"
    )
    # Dropped now so that another upsert into the same table can follow in this transaction
    # (after an error, the rollback removes it).
    conn.exec_driver_sql(f"DROP TABLE {quote(stage)}")


__all__ = [
    "CHUNK_ROWS",
    "bulk_insert",
    "finish_run",
    "get_watermark",
    "last_published_run",
    "record_quarantine",
    "replace_run_rows",
    "set_watermark",
    "start_run",
    "update_run",
    "upsert",
]
