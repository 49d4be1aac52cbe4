"""Stable MPI IDs: map this run's clusters to the previous index's IDs, and say what changed.

The first run gives every cluster a new ID. Later runs count, for every pair of (cluster of
this run, active MPI ID of the published index), how many records they share, and assign IDs
greedily by that overlap: the largest overlap first; ties go to the older ID (created in an
earlier run), then to the smaller ID, then to the cluster whose smallest record key is
smallest, so the result never depends on row order. Hence:

- a person keeps their ID through corrected typos, new records and changed names, as long as
  their records are still linked together;
- **merge**: when two IDs' records end up in one cluster, the one with the larger overlap
  (ties: the older) keeps its ID; the other is retired with ``merged_into`` pointing to it;
- **split**: when one ID's records end up in several clusters, the largest part keeps the
  ID and each other part gets a new ID;
- **new**: a cluster that shares no record with the index gets a new ID;
- **retire**: an ID none of whose records is left (all deleted or quarantined);
- **update**: a kept ID whose records or golden values changed.

Each of these is an event in ``mpi_events`` with the run and the reason.

New IDs are opaque: ``P`` and 12 characters of a keyed hash (HMAC-SHA256) of the run and
the cluster's smallest record key. The key is random, kept in ``<data-dir>/mpi-id.key`` (or
``$REGLINK_MPI_ID_KEY``), so an ID says nothing about the person, and rerunning a run against
the same index gives the same IDs.

The step writes ``runs/<run_id>/assign/``: ``person_records.parquet`` (the new index: every
record and its ID), ``persons.parquet`` (every active person's golden record after the run),
``records_upsert.parquet`` / ``records_delete.parquet`` (what changes in ``person_records``),
``persons_upsert.parquet`` / ``persons_retire.parquet`` (what changes in ``persons``),
``events.parquet`` and ``summary.json``. Publish applies them.

The next run reads the published index from these files when publish recorded them as the
assignment it published (for a run published before such marks, when they have the row
counts it published); else from the database. Its cost follows what changed:

- a cluster whose records are exactly the records of one previous ID keeps that ID (no other
  cluster can claim it, nor it another ID), found for all clusters at once; only the other
  clusters, those with new, moved or deleted records, go through the greedy mapping;
- golden records are recomputed only for the persons whose records changed (new, changed
  content, joined, left), unless the trust ranks or survivorship rules changed;
- records are matched to the index by key without hashing every key: both are sorted by key.

``assign_run(..., shortcut=False)`` maps every cluster and recomputes every golden record;
it writes the same files.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import logging
import os
import secrets
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from pipelines.errors import ReglinkError
from pipelines.keys import (
    as_text,
    is_sorted,
    key_positions,
    positions,
    record_keys,
    sorted_by_key,
    take_increasing,
    text_buffers,
)
from pipelines.link import KEY, records_path
from pipelines.mpi.golden import golden_records, load_rules
from pipelines.store import repository as repo
from pipelines.store import schema
from pipelines.timing import Laps

log = logging.getLogger(__name__)

KEY_ENV = "REGLINK_MPI_ID_KEY"
KEY_FILE = "mpi-id.key"
_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford base32: no I, L, O, U
_B32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
PERSON_COLUMNS = ["mpi_id", *schema.GOLDEN_ATTRIBUTES, "surname_key", "given_key"]
RECORD_COLUMNS = ["register", "record_id", "mpi_id", "match_probability", "link_basis",
                  "linked_run", "first_seen_run"]
#: The whole golden table of the active persons after the run (the next run's index).
PERSONS_FILE = "persons.parquet"


class PublishConflictError(ReglinkError):
    """The index moved since this run was assigned or started; the run must be redone."""


# ------------------------------------------------------------------------------------ runs


def base_run(conn: Connection, run_id: str, data_dir: str | Path | None = None) -> str | None:
    """The published run this run builds on: the newest published run other than this one
    that started before it (the current index, unless this run is already published)."""
    runs = schema.runs
    started = conn.execute(
        sa.select(runs.c.started_at).where(runs.c.run_id == run_id)
    ).scalar_one_or_none()
    query = sa.select(runs.c.run_id).where(runs.c.status == "published",
                                           runs.c.run_id != run_id)
    if started is not None:
        query = query.where(runs.c.started_at <= started)
    return conn.execute(
        query.order_by(runs.c.started_at.desc(), runs.c.run_id.desc()).limit(1)
    ).scalar_one_or_none()


# -------------------------------------------------------------------------------- new IDs


def id_key(data_dir: str | Path) -> bytes:
    """The secret that new MPI IDs are hashed with (created on first use)."""
    env = os.environ.get(KEY_ENV)
    if env:
        return env.encode()
    path = Path(data_dir) / KEY_FILE
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
        tmp.write_text(secrets.token_hex(32))
        os.chmod(tmp, 0o600)
        try:
            os.link(tmp, path)  # atomic create-if-absent: two processes agree on one key
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
    return path.read_text().strip().encode()


_TO_CROCKFORD = str.maketrans(_B32, _ALPHABET)


def new_id(key: bytes, run_id: str, anchor: str, attempt: int = 0) -> str:
    """``P`` + 12 base32 characters of HMAC(key, run, anchor[, attempt])."""
    return _new_ids_of(key, run_id, [anchor], [attempt])[0]


def _new_ids_of(key: bytes, run_id: str, anchors: list[str], attempts: list[int]
                ) -> list[str]:
    """:func:`new_id` of many anchors (the keyed hash prepared once)."""
    keyed = hmac.new(key, digestmod=hashlib.sha256)
    out = []
    for anchor, attempt in zip(anchors, attempts, strict=True):
        mac = keyed.copy()
        mac.update(f"{run_id}\x00{anchor}\x00{attempt}".encode())
        out.append(mac.digest()[:10])
    text = base64.b32encode(b"".join(out)).decode().translate(_TO_CROCKFORD)
    return ["P" + text[16 * i:16 * i + 12] for i in range(len(out))]


# ------------------------------------------------------------------------------- reading


def read_query(conn: Connection, query: sa.Select, columns: list[str]) -> pd.DataFrame:
    """Rows of ``query`` as a DataFrame of text (``None`` for NULL); COPY on PostgreSQL."""
    if conn.dialect.name == "postgresql":
        sql = str(query.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True}))
        buffer = io.StringIO()
        cursor = conn.connection.dbapi_connection.cursor()
        try:
            cursor.copy_expert(f"COPY ({sql}) TO STDOUT WITH (FORMAT csv, HEADER false)",
                               buffer)
        finally:
            cursor.close()
        buffer.seek(0)
        if buffer.getvalue() == "":
            return pd.DataFrame({c: pd.Series(dtype=object) for c in columns})
        frame = pd.read_csv(buffer, names=columns, dtype=str, keep_default_na=False,
                            na_values=[""])
        return frame.astype(object).where(frame.notna(), None)
    rows = conn.execute(query).all()
    return pd.DataFrame([tuple(r) for r in rows], columns=columns, dtype=object)


def current_index(conn: Connection) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The published index: (person_records, active persons)."""
    pr = schema.person_records
    records = read_query(conn, sa.select(*(pr.c[c] for c in RECORD_COLUMNS)), RECORD_COLUMNS)
    records["match_probability"] = pd.to_numeric(records["match_probability"])
    p = schema.persons
    cols = [*PERSON_COLUMNS, "provenance", "created_run", "updated_run"]
    persons = read_query(conn, sa.select(*(p.c[c] for c in cols)).where(p.c.status == "active"),
                         cols)
    return records, persons


def all_ids(conn: Connection) -> set[str]:
    p = schema.persons
    return set(conn.execute(sa.select(p.c.mpi_id)).scalars())


# ------------------------------------------------------------------------------- mapping


def overlaps(cluster_id: np.ndarray, prev_id: np.ndarray) -> pd.DataFrame:
    """How many records each (cluster ``c``, previous MPI ID ``m``) share (``n``), by sorting
    integer codes (hashing millions of (int, text) tuples takes many seconds)."""
    codes, uniques = pd.factorize(prev_id)
    width = max(len(uniques), 1)
    key, n = np.unique(cluster_id.astype(np.int64) * width + codes, return_counts=True)
    return pd.DataFrame({"c": key // width,
                         "m": np.asarray(uniques, dtype=object)[key % width], "n": n})


def map_clusters(cluster_id: np.ndarray, anchor: np.ndarray, prev_id: np.ndarray,
                 age: Mapping[str, Any], *, overlap: pd.DataFrame | None = None
                 ) -> dict[int, str]:
    """Greedy overlap mapping: cluster → previous MPI ID (clusters left out get new IDs).

    Args:
        cluster_id: per record of this run that was in the index, its cluster.
        anchor: per cluster (indexed by cluster id), its sort key for ties.
        prev_id: per such record, its previous MPI ID.
        age: per previous MPI ID, a sortable age (older first), e.g. its creating run.
        overlap: :func:`overlaps` of ``cluster_id`` and ``prev_id``, when already counted.
    """
    if cluster_id.size == 0:
        return {}
    ov = overlaps(cluster_id, prev_id) if overlap is None else overlap
    per_c = ov.groupby("c")["m"].transform("size")
    per_m = ov.groupby("m")["c"].transform("size")
    simple = (per_c == 1) & (per_m == 1)
    mapping = dict(zip(ov.loc[simple, "c"].to_numpy().tolist(),
                       ov.loc[simple, "m"].tolist(), strict=True))
    rest = ov.loc[~simple].copy()
    if len(rest):
        rest["age"] = rest["m"].map(lambda m: str(age.get(m) or ""))
        rest["anchor"] = anchor[rest["c"].to_numpy()]
        rest = rest.sort_values(["n", "age", "m", "anchor"],
                                ascending=[False, True, True, True], kind="stable")
        taken_c: set[int] = set()
        taken_m: set[str] = set()
        for c, m in zip(rest["c"].tolist(), rest["m"].tolist(), strict=True):
            if c in taken_c or m in taken_m:
                continue
            mapping[c] = m
            taken_c.add(c)
            taken_m.add(m)
    return mapping


# ----------------------------------------------------------------------------------- step


def _crosswalk_hash(crosswalk: pa.Table) -> str:
    """A hash of what the assignment depends on in the crosswalk: keys, clusters, link basis
    (from Arrow's buffers: no Python object per row)."""
    digest = hashlib.sha256()
    for name in [*KEY, "cluster_id", "link_basis"]:
        column = crosswalk[name]
        digest.update(name.encode())
        digest.update(np.packbits(pc.is_null(column).to_numpy(zero_copy_only=False)).tobytes())
        if pa.types.is_integer(column.type):
            digest.update(pc.fill_null(column, 0).to_numpy().astype(np.int64).tobytes())
            continue
        offsets, data = text_buffers(pc.fill_null(as_text(column), "") if column.null_count
                                      else as_text(column))
        digest.update(np.diff(offsets).tobytes())
        digest.update(data)
    return digest.hexdigest()[:16]


def _read(path: Path, columns: list[str], **options: Any) -> pa.Table:
    """``columns`` of a Parquet file, one chunk per row group (``pq.read_table`` cuts them in
    batches; taking rows from a column of several chunks first copies them all into one)."""
    return pq.ParquetFile(path, **options).read(columns=columns)


def _write_parquet(path: Path, frame: pd.DataFrame | pa.Table, **options: Any) -> None:
    """Write atomically (a temporary name, then renamed): files may be hard-linked copies."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    if isinstance(frame, pd.DataFrame):  # what ``to_parquet(index=False)`` writes
        frame = pa.Table.from_pandas(frame, preserve_index=False)
    pq.write_table(frame, tmp, **options)
    os.replace(tmp, path)


#: How the two files of the whole index are written: without min/max statistics (nothing
#: filters on them) and with dictionaries only for the columns that repeat (a dictionary of
#: the unique IDs or record keys would be built and thrown away): the next run reads them.
_INDEX_WRITE = {
    "person_records": {"write_statistics": False,
                       "use_dictionary": ["register", "link_basis", "linked_run",
                                          "first_seen_run"]},
    "persons": {"write_statistics": False,
                "use_dictionary": [c for c in PERSON_COLUMNS if c != "mpi_id"]
                + ["created_run", "updated_run"]},
}


def _same(a: pd.Series, b: pd.Series) -> np.ndarray:
    """Element-wise equality with missing == missing."""
    a, b = a.reset_index(drop=True), b.reset_index(drop=True)
    a_na, b_na = a.isna().to_numpy(), b.isna().to_numpy()
    if _arrow_text(a) and _arrow_text(b):  # compared in Arrow, no Python string per value
        eq = pc.fill_null(pc.equal(pa.array(a.astype("string")), pa.array(
            b.astype("string"))), False).to_numpy(zero_copy_only=False)
    else:
        eq = (a.astype(object).to_numpy() == b.astype(object).to_numpy())
    return (a_na & b_na) | (~a_na & ~b_na & eq)


def _same_text(a: pa.Array, b: pa.Array) -> np.ndarray:
    """Element-wise equality of two Arrow text arrays, missing == missing."""
    equal = pc.fill_null(pc.equal(a, b), False)
    both_missing = pc.and_(pc.is_null(a), pc.is_null(b))
    return pc.or_(equal, both_missing).to_numpy(zero_copy_only=False)


def _arrow_text(values: pd.Series) -> bool:
    return (pd.api.types.is_string_dtype(values) and not pd.api.types.is_object_dtype(values))


def _canonical_json(values: pd.Series) -> pd.Series:
    return values.map(lambda v: json.dumps(json.loads(v) if isinstance(v, str) else v,
                                           sort_keys=True) if v is not None else None)


def golden_rules_key(configs: Mapping[str, Any], rules: tuple[str, ...]) -> str:
    """A hash of everything golden records depend on besides the records: the registers'
    trust ranks and the survivorship rules. When it changes, every golden record is redone."""
    trust = {name: dict(cfg.trust) for name, cfg in sorted(configs.items())}
    text = json.dumps({"trust": trust, "recency_first": list(rules)}, sort_keys=True,
                      default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


#: Every column of ``persons.parquet``: the golden table of the active persons.
PERSON_TABLE_COLUMNS = [*PERSON_COLUMNS, "provenance", "created_run", "updated_run"]
_RECORD_SCHEMA = pa.schema([(c, pa.float64() if c == "match_probability" else pa.large_string())
                            for c in RECORD_COLUMNS])
_PERSON_SCHEMA = pa.schema([(c, pa.large_string()) for c in PERSON_TABLE_COLUMNS])


def _as_table(frame: pd.DataFrame | pa.Table, schema_: pa.Schema) -> pa.Table:
    """``frame``'s columns of ``schema_``, of its types, without pandas metadata."""
    if isinstance(frame, pd.DataFrame):
        frame = pa.table({f.name: pa.array(frame[f.name], type=f.type, from_pandas=True)
                          for f in schema_})
    return pa.table({f.name: frame[f.name].cast(f.type) for f in schema_})


_PERSON_SCHEMA_NO_PROVENANCE = pa.schema([f for f in _PERSON_SCHEMA if f.name != "provenance"])
#: Persons' provenance is read and written this many persons at a time: a country's is
#: gigabytes of JSON, and memory touched for the first time is slow to get.
PROVENANCE_BATCH = 16_384


@dataclass
class Persons:
    """The active persons of the published index, by ID: their golden records without
    provenance, and where the provenance is (their file, read a batch at a time, or an
    array in memory)."""

    table: pa.Table
    provenance: Path | pa.Array

    def provenance_batches(self) -> Iterator[pa.Array]:
        """The provenance, in order, a batch of persons at a time."""
        if isinstance(self.provenance, Path):
            for batch in pq.ParquetFile(self.provenance).iter_batches(
                    batch_size=PROVENANCE_BATCH, columns=["provenance"]):
                yield as_text(batch.column(0))
        else:
            for start in range(0, len(self.provenance), PROVENANCE_BATCH):
                yield self.provenance.slice(start, PROVENANCE_BATCH)


def _write_persons(path: Path, previous: Persons, golden: pa.Table, rows: np.ndarray,
                   anchor: np.ndarray, check: np.ndarray, check_code: np.ndarray,
                   run_id: str) -> np.ndarray:
    """Write ``persons.parquet`` a batch of the previous persons at a time (their provenance
    is read as it is written: gigabytes for a country, and read once).

    The file holds ``rows`` of the previous persons and the redone ones (``golden``; a row
    ``n`` past the previous ones is golden row ``n``), in that order. ``anchor`` is, per row
    written, the previous person it stands at (itself, the one a redone person replaces or
    goes before): increasing. The redone persons ``check`` (rows of ``golden``, whose
    attributes are as before) are compared with their previous rows ``check_code`` (both
    increasing): ``golden`` holds their previous ``updated_run``, written as ``run_id`` where
    the provenance changed. Returns, per person of ``check``, whether it is the same.
    """
    n_previous = len(previous.table)
    rest = pa.concat_tables([previous.table, golden.drop_columns(["provenance"])]).take(
        pa.array(rows))
    golden_provenance = as_text(golden["provenance"])
    at_row = np.empty(len(golden), dtype=np.int64)  # where each golden row is written
    at_row[rows[rows >= n_previous] - n_previous] = np.flatnonzero(rows >= n_previous)
    same = np.ones(len(check), dtype=bool)

    def part(lo: int, hi: int, provenance: pa.Array, start: int, changed: np.ndarray
             ) -> pa.Table:
        # The provenance as slices, one per run of rows that follow each other in one
        # source, not copied (a previous batch holds mostly rows kept as they were).
        at = rows[lo:hi]
        old = at < n_previous
        first = np.flatnonzero(np.r_[True, (np.diff(at) != 1) | (old[1:] != old[:-1])])
        length = np.diff(np.r_[first, at.size])
        pieces = [provenance.slice(a - start, k) if a < n_previous
                  else golden_provenance.slice(a - n_previous, k)
                  for a, k in zip(at[first].tolist(), length.tolist(), strict=True)]
        table = rest.slice(lo, hi - lo)
        if changed.size:
            stale = np.zeros(hi - lo, dtype=bool)
            stale[at_row[changed] - lo] = True
            table = table.set_column(
                table.schema.get_field_index("updated_run"), "updated_run",
                pc.if_else(pa.array(stale), pa.scalar(run_id, pa.large_string()),
                           table["updated_run"]))
        return table.append_column("provenance", pa.chunked_array(
            pieces, type=pa.large_string())).select(PERSON_TABLE_COLUMNS)

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with pq.ParquetWriter(tmp, _PERSON_SCHEMA, **_INDEX_WRITE["persons"]) as writer:
        start = 0
        for provenance in previous.provenance_batches():
            end = start + len(provenance)
            c_lo, c_hi = np.searchsorted(check_code, [start, end])
            if c_hi > c_lo:
                same[c_lo:c_hi] = _same_text(
                    provenance.take(pa.array(check_code[c_lo:c_hi] - start)),
                    golden_provenance.take(pa.array(check[c_lo:c_hi])))
            lo, hi = np.searchsorted(anchor, [start, end])
            if hi > lo:
                changed = check[c_lo:c_hi][~same[c_lo:c_hi]]
                writer.write_table(part(lo, hi, provenance, start, changed))
            start = end
        lo = int(np.searchsorted(anchor, start))
        if lo < len(rows) or len(rows) == 0:  # persons after the last previous one
            writer.write_table(part(lo, len(rows), pa.array([], type=pa.large_string()),
                                    start, np.zeros(0, dtype=np.int64)))
    os.replace(tmp, path)
    return same


def _index_from_files(conn: Connection, last: str, data_dir: Path
                      ) -> tuple[pa.Table, Persons, dict[str, Any]] | None:
    """The published index as the run that published it left it in ``assign/``
    (``person_records.parquet`` and ``persons.parquet``), or None when those files are gone
    or are not what was published (then the index is read from the database).

    Publish records the mark of the assignment it published (``assignment`` in the summary)
    with the run; for a run published before marks were recorded, the files must have the
    row counts it published (or, older still, the database's)."""
    folder = Path(data_dir) / "runs" / last / "assign"
    paths = [folder / "person_records.parquet", folder / PERSONS_FILE, folder / "summary.json"]
    if not all(p.is_file() for p in paths):
        return None
    summary = json.loads(paths[2].read_text())
    counts = conn.execute(sa.select(schema.runs.c.counts).where(
        schema.runs.c.run_id == last)).scalar_one_or_none() or {}
    published = counts.get("published") or {}
    mark = published.get("assignment")
    if mark is not None and mark != summary.get("assignment"):
        log.warning("assign: the files of run %s are not the assignment it published; "
                    "reading the index from the database", last)
        return None
    if mark is None:
        expected = [published.get("records"), published.get("persons")]
        if None in expected:
            p = schema.persons
            expected = [
                conn.execute(sa.select(sa.func.count()).select_from(
                    schema.person_records)).scalar_one(),
                conn.execute(sa.select(sa.func.count()).select_from(p).where(
                    p.c.status == "active")).scalar_one()]
        in_files = [pq.ParquetFile(path).metadata.num_rows for path in paths[:2]]
        if in_files != expected:
            log.warning("assign: the files of run %s do not match the published index (%d/%s "
                        "records, %d/%s persons); reading the index from the database", last,
                        in_files[0], expected[0], in_files[1], expected[1])
            return None
    records = _as_table(_read(paths[0], RECORD_COLUMNS), _RECORD_SCHEMA)
    persons = _as_table(_read(paths[1], _PERSON_SCHEMA_NO_PROVENANCE.names),
                        _PERSON_SCHEMA_NO_PROVENANCE)
    if not is_sorted(as_text(persons["mpi_id"])):  # written by ID: a file from elsewhere
        return None
    return records, Persons(persons, paths[1]), summary


def _index_from_database(conn: Connection) -> tuple[pa.Table, Persons]:
    """The published index from the database: records by key, persons by ID."""
    records, persons = current_index(conn)
    persons["provenance"] = _canonical_json(persons["provenance"])
    persons = _as_table(persons, _PERSON_SCHEMA).sort_by("mpi_id")
    return (_as_table(records, _RECORD_SCHEMA).sort_by([(k, "ascending") for k in KEY]),
            Persons(persons.drop_columns(["provenance"]), as_text(persons["provenance"])))


def _previous_hashes(data_dir: Path, last: str, prev_records: pa.Table) -> np.ndarray | None:
    """Content hash of each record of the published index, from its run's records file
    (None when it is gone or does not line up with the index)."""
    path = Path(data_dir) / "runs" / last / "standardise" / "records.parquet"
    if not path.is_file():
        return None
    prev = _read(path, [*KEY, "content_hash"], read_dictionary=["register"])
    if len(prev) != len(prev_records) or not all(
            pc.all(pc.equal(as_text(prev[k]), as_text(prev_records[k]))).as_py() for k in KEY):
        return None
    return prev["content_hash"].to_numpy().astype(np.int64)


def _taken_ids(conn: Connection, candidates: list[str]) -> set[str]:
    """Those of ``candidates`` that are already MPI IDs (active or retired)."""
    p = schema.persons
    if not candidates or conn.execute(sa.select(p.c.mpi_id).limit(1)).first() is None:
        return set()
    if len(candidates) > 50_000:
        return all_ids(conn) & set(candidates)
    taken: set[str] = set()
    for start in range(0, len(candidates), 5_000):
        chunk = candidates[start:start + 5_000]
        taken |= set(conn.execute(sa.select(p.c.mpi_id).where(p.c.mpi_id.in_(chunk))).scalars())
    return taken


def _new_ids(conn: Connection, secret: bytes, run_id: str, anchors: list[str],
             used: set[str]) -> list[str]:
    """A new ID per anchor, none of them issued before (retired ones included)."""
    out: list[str | None] = [None] * len(anchors)
    attempt = [0] * len(anchors)
    pending = list(range(len(anchors)))
    while pending:
        candidates = _new_ids_of(secret, run_id, [anchors[i] for i in pending],
                                 [attempt[i] for i in pending])
        taken = _taken_ids(conn, candidates)
        again = []
        for i, candidate in zip(pending, candidates, strict=True):
            if candidate in used or candidate in taken:
                attempt[i] += 1
                again.append(i)
            else:
                used.add(candidate)
                out[i] = candidate
        pending = again
    return [str(x) for x in out]


def same_as_before(cluster: np.ndarray, prev_code: np.ndarray, prev_size: np.ndarray
                   ) -> np.ndarray:
    """Per cluster, the previous ID (as a code) whose records are exactly the cluster's
    records, else -1.

    Such a cluster keeps that ID whatever happens elsewhere: it overlaps no other ID and no
    other cluster overlaps that ID, so the greedy mapping (:func:`map_clusters`) takes their
    pair whatever else it holds. Only the other clusters need the greedy mapping.

    Args:
        cluster: per record of this run, its cluster.
        prev_code: per record of this run, the code of its previous ID (-1: new record).
        prev_size: per code, how many records the previous ID had.
    """
    n_clusters = int(cluster.max()) + 1 if cluster.size else 0
    some_code = np.full(n_clusters, -1, dtype=np.int64)
    some_code[cluster] = prev_code  # one record's previous ID per cluster (any of them)
    mixed = np.zeros(n_clusters, dtype=bool)
    mixed[cluster[prev_code != some_code[cluster]]] = True
    size = np.bincount(cluster, minlength=n_clusters)
    whole = (some_code >= 0) & ~mixed
    whole[whole] = size[whole] == prev_size[some_code[whole]]
    return np.where(whole, some_code, -1)


def _anchors(records: pa.Table, cluster: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Per cluster, its smallest record key (the tie-breaker and the seed of a new ID), for
    the clusters of the mask ``wanted``; '' for the others."""
    anchor = np.full(len(wanted), "", dtype=object)
    rows = np.flatnonzero(wanted[cluster])
    if rows.size == 0:
        return anchor
    if sorted_by_key(records):  # a cluster's first record has the least key
        first_cluster, first = np.unique(cluster[rows], return_index=True)
        anchor[first_cluster] = record_keys(take_increasing(records, rows[first])).to_numpy(
            zero_copy_only=False)
    else:
        least = pd.Series(record_keys(take_increasing(records, rows)).to_numpy(
            zero_copy_only=False)).groupby(cluster[rows]).min()
        anchor[least.index.to_numpy()] = least.to_numpy()
    return anchor


GOLDEN_READ = ("register", "record_id", *schema.GOLDEN_ATTRIBUTES, "source_updated_at",
               "content_hash")


def assign_run(engine: Engine, run_id: str, run_dir: Path,
               configs: Mapping[str, Any], *, config_dir: str | Path | None = None,
               shortcut: bool = True) -> dict[str, Any]:
    """Assign MPI IDs and golden records to this run's clusters; writes ``assign/``.

    The published index is read from the ``assign/`` files of the run that published it
    when they match the database (else from the database). A cluster whose records are
    exactly the records of a previous ID keeps it; only the other clusters (those with new,
    moved or deleted records) go through the overlap mapping. Golden records are computed
    again only for the persons whose records changed (new, changed content, joined, left),
    unless the trust ranks or survivorship rules changed.

    Args:
        shortcut: False maps every cluster by overlap and recomputes every golden record
            (the result is the same; for tests and doubts).

    Raises:
        PublishConflictError: a run that started after this one is already published.
    """
    started = time.perf_counter()
    run_dir = Path(run_dir)
    data_dir = run_dir.parent.parent
    out = run_dir / "assign"
    cw_path = run_dir / "cluster" / "crosswalk.parquet"
    if not cw_path.is_file():
        raise ReglinkError(f"{cw_path} not found: run the cluster step of run {run_id} first")
    crosswalk = _read(cw_path, [*KEY, "cluster_id", "match_probability", "link_basis"])
    cw_hash = _crosswalk_hash(crosswalk)
    rules = load_rules(config_dir) if config_dir is not None else load_rules(
        run_dir / "__no_config__")
    rules_key = golden_rules_key(configs, rules)
    lap = Laps(started)

    with engine.connect() as conn:
        base = base_run(conn, run_id)
        last = repo.last_published_run(conn)
        if last is not None and last not in (base, run_id):
            raise PublishConflictError(
                f"run {last} was published after run {run_id} started; publishing "
                f"{run_id} now would undo it. Start a new run instead.")
        summary_path = out / "summary.json"
        if last == run_id and summary_path.is_file():
            saved = json.loads(summary_path.read_text())
            if saved.get("crosswalk_hash") == cw_hash:
                log.info("assign: run %s is already published with these clusters; its "
                         "assignment is kept", run_id)
                return {**saved, "reused": True}
        from_files = (_index_from_files(conn, last, data_dir)
                      if last is not None and last != run_id else None)
        if from_files is not None:
            prev_records, prev_persons, prev_summary = from_files
            index_source = "files"
        else:
            prev_records, prev_persons = _index_from_database(conn)
            prev_summary = {}
            index_source = "database"
    lap("read_index")

    # The golden attributes are read as the file holds them, text dictionary-encoded (it
    # repeats): only the rows of the persons redone are decoded.
    available = pq.read_schema(records_path(run_dir))
    attributes = [c for c in GOLDEN_READ if c in available.names and c not in KEY
                  and c != "content_hash"]
    text = [c for c in attributes if pa.types.is_string(available.field(c).type)
            or pa.types.is_large_string(available.field(c).type)]
    has_hash = "content_hash" in available.names
    records = _read(records_path(run_dir),
                    ["record_id", *attributes, *(["content_hash"] if has_hash else [])],
                    read_dictionary=text)
    if len(records) != len(crosswalk) or not pc.all(pc.equal(
            records["record_id"], crosswalk["record_id"])).as_py():
        raise ReglinkError(f"run {run_id}: cluster/crosswalk.parquet does not match "
                           "standardise/records.parquet; rerun the link and cluster steps")
    n = len(crosswalk)
    cluster = crosswalk["cluster_id"].to_numpy().astype(np.int64)
    n_clusters = int(cluster.max()) + 1 if n else 0

    # Previous IDs as codes: their position among the active persons (sorted by ID), then
    # any ID a record has without an active person (an index edited by hand).
    person_ids = as_text(prev_persons.table["mpi_id"])
    n_persons = len(person_ids)
    rec_code = positions(person_ids, prev_records["mpi_id"])
    if (rec_code < 0).any():
        strays = pc.unique(as_text(prev_records["mpi_id"]).filter(pa.array(rec_code < 0)))
        strays = strays.take(pc.array_sort_indices(strays))
        rec_code[rec_code < 0] = n_persons + positions(strays, as_text(
            prev_records["mpi_id"]).filter(pa.array(rec_code < 0)))
        id_text = pa.concat_arrays([person_ids, strays])
    else:
        id_text = person_ids
    n_ids = len(id_text)
    prev_size = np.bincount(rec_code, minlength=n_ids)

    # Previous position (in the index) of each record of this run; -1: new to the index.
    prev_pos = key_positions(prev_records, crosswalk)
    in_index = prev_pos >= 0
    prev_code = np.full(n, -1, dtype=np.int64)
    prev_code[in_index] = rec_code[prev_pos[in_index]]
    still_here = np.zeros(len(prev_records), dtype=bool)
    still_here[prev_pos[in_index]] = True

    # Clusters that are exactly a previous person keep its ID; the others are mapped by
    # overlap (greedy, see the module doc) among themselves.
    cluster_code = (same_as_before(cluster, prev_code, prev_size) if shortcut
                    else np.full(n_clusters, -1, dtype=np.int64))
    touched = cluster_code < 0
    anchor = _anchors(crosswalk.select(KEY), cluster, touched)
    rows = np.flatnonzero(touched[cluster] & in_index)
    involved = np.unique(prev_code[rows])
    involved_ids = id_text.take(pa.array(involved)).to_numpy(zero_copy_only=False)
    created = as_text(prev_persons.table["created_run"]).take(pa.array(
        np.minimum(involved, n_persons - 1), mask=involved >= n_persons)).to_pylist()
    age = dict(zip(involved_ids.tolist(), created, strict=True))
    code_of = dict(zip(involved_ids.tolist(), involved.tolist(), strict=True))
    prev_mpi_rows = involved_ids[np.searchsorted(involved, prev_code[rows])]
    ov = overlaps(cluster[rows], prev_mpi_rows)
    mapping = map_clusters(cluster[rows], anchor, prev_mpi_rows, age, overlap=ov)
    for c, m in mapping.items():
        cluster_code[c] = code_of[m]
    lap("map")

    # New IDs for clusters that kept none.
    secret = id_key(data_dir)
    fresh = np.flatnonzero(cluster_code < 0)
    with engine.connect() as conn:
        fresh_ids = _new_ids(conn, secret, run_id, anchor[fresh].tolist(),
                             set(mapping.values()))
    cluster_code[fresh] = n_ids + np.arange(fresh.size)
    all_ids = pa.concat_arrays([id_text, pa.array(fresh_ids, type=pa.large_string())])

    def id_of(c: int) -> str:
        return all_ids[int(cluster_code[c])].as_py()

    code = cluster_code[cluster]  # per record, its ID now
    lap("new_ids")

    # ---- events
    events: list[pd.DataFrame] = []
    rows_out: list[dict[str, Any]] = []
    kept = np.zeros(len(all_ids), dtype=bool)
    kept[cluster_code] = True
    kept[n_ids:] = False
    gone_codes = np.flatnonzero(~kept[:n_persons])
    gone = id_text.take(pa.array(gone_codes)).to_pylist()
    retired: list[dict[str, Any]] = []
    if gone:
        ov_gone = ov[ov["m"].isin(gone)].copy()
        ov_gone["anchor"] = anchor[ov_gone["c"].to_numpy()]
        ov_gone = ov_gone.sort_values(["m", "n", "anchor"], ascending=[True, False, True])
        target = ov_gone.drop_duplicates("m").set_index("m")["c"]
        moved_n = ov_gone.groupby("m")["n"].sum()
        for m in gone:
            if m in target.index:
                into = id_of(int(target[m]))
                rows_out.append({"event_type": "merge", "mpi_id": into, "other_mpi_id": m,
                                 "reason": "their records are now linked as one person",
                                 "details": {"records_moved": int(moved_n[m])}})
                rows_out.append({"event_type": "retire", "mpi_id": m, "other_mpi_id": into,
                                 "reason": f"merged into {into}", "details": None})
                retired.append({"mpi_id": m, "merged_into": into})
            else:
                rows_out.append({"event_type": "retire", "mpi_id": m, "other_mpi_id": None,
                                 "reason": "none of its records is left in the registers",
                                 "details": None})
                retired.append({"mpi_id": m, "merged_into": None})
    if fresh.size:
        size = np.bincount(cluster, minlength=n_clusters)
        ov_new = ov[ov["c"].isin(fresh)].copy()
        ov_new["age"] = ov_new["m"].map(lambda m: str(age.get(m) or ""))
        ov_new = ov_new.sort_values(["c", "n", "age", "m"], ascending=[True, False, True, True])
        source = ov_new.drop_duplicates("c").set_index("c")
        split = np.isin(fresh, source.index.to_numpy())
        for c in fresh[split].tolist():
            rows_out.append({"event_type": "split", "mpi_id": source.loc[c, "m"],
                             "other_mpi_id": id_of(c),
                             "reason": "some of its records are no longer linked to it",
                             "details": {"records_moved": int(source.loc[c, "n"]),
                                         "records": int(size[c])}})
        brand_new = fresh[~split]
        # One event per new person: built column-wise (a whole country on the first run).
        events.append(pd.DataFrame({
            "event_type": "new",
            "mpi_id": all_ids.take(pa.array(cluster_code[brand_new])).to_numpy(
                zero_copy_only=False),
            "other_mpi_id": None,
            "reason": "records of a new person",
            "details": ['{"records": ' + str(k) + "}" for k in size[brand_new].tolist()]}))
    lap("events")

    # ---- person_records: the new index and what changes
    same_mpi = in_index & (code == prev_code)
    at_prev = pa.array(np.maximum(prev_pos, 0), mask=~in_index)
    prev_basis = as_text(prev_records["link_basis"]).take(at_prev)
    new_records = pa.table({
        "register": as_text(crosswalk["register"]),
        "record_id": as_text(crosswalk["record_id"]),
        "mpi_id": all_ids.take(pa.array(code)),
        "match_probability": crosswalk["match_probability"].cast(pa.float64()),
        "link_basis": as_text(crosswalk["link_basis"]),
        "linked_run": pc.if_else(pa.array(same_mpi),
                                 as_text(prev_records["linked_run"]).take(at_prev),
                                 pa.scalar(run_id, pa.large_string())),
        "first_seen_run": pc.coalesce(as_text(prev_records["first_seen_run"]).take(at_prev),
                                      pa.scalar(run_id, pa.large_string())),
    })
    unchanged = same_mpi & _same_text(new_records["link_basis"].combine_chunks(), prev_basis)
    prob_new = new_records["match_probability"].to_numpy()
    prob_old = np.full(n, np.nan)
    prob_old[in_index] = prev_records["match_probability"].to_numpy()[prev_pos[in_index]]
    unchanged &= (np.isnan(prob_new) & np.isnan(prob_old)) | np.isclose(
        prob_new, prob_old, rtol=0, atol=1e-7)
    records_upsert = new_records.filter(pa.array(~unchanged))
    records_delete = prev_records.select(KEY).filter(pa.array(~still_here))
    # Without its summary (written last) the folder is not an assignment: a crash while the
    # files are replaced leaves none that publish or the next run could take for this one.
    summary_path.unlink(missing_ok=True)
    # The record files are final: they are encoded on a worker thread (Arrow releases the
    # GIL) while the golden records are computed here.
    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="assign-write")
    record_writes = writer.submit(lambda: [
        _write_parquet(out / f"{name}.parquet", frame, **_INDEX_WRITE.get(name, {}))
        for name, frame in (("person_records", new_records), ("records_upsert", records_upsert),
                            ("records_delete", records_delete))])
    writer.shutdown(wait=False)
    lap("records")

    # ---- golden records, only for the persons whose records changed
    prev_hash = (_previous_hashes(data_dir, last, prev_records)
                 if shortcut and has_hash and index_source == "files"
                 and prev_summary.get("golden_rules") == rules_key else None)
    if prev_hash is None:
        affected = np.ones(n, dtype=bool)
    else:
        hash_now = records["content_hash"].to_numpy().astype(np.int64)
        content_changed = ~in_index.copy()
        content_changed[in_index] = prev_hash[prev_pos[in_index]] != hash_now[in_index]
        # A person is redone when one of its records is new, changed or moved in, or when
        # its ID lost a record (moved out or deleted).
        redo = np.zeros(n_clusters, dtype=bool)
        redo[cluster[content_changed | ~same_mpi]] = True
        lost_code = np.zeros(len(all_ids), dtype=bool)
        lost_code[prev_code[in_index & ~same_mpi]] = True
        lost_code[rec_code[~still_here]] = True
        redo |= lost_code[cluster_code]
        affected = redo[cluster]
    trust = {name: dict(cfg.trust) for name, cfg in configs.items()}
    affected_rows = np.flatnonzero(affected)
    redone_records = take_increasing(records.select(attributes), affected_rows)
    del records
    golden = golden_records(
        pd.DataFrame({
            **{c: as_text(crosswalk[c]).take(pa.array(affected_rows)).to_pandas() for c in KEY},
            **{c: (as_text(redone_records[c]) if c in text else redone_records[c]).to_pandas()
               for c in attributes}}),
        all_ids.take(pa.array(code[affected_rows])).to_numpy(zero_copy_only=False),
        trust, rules, provenance_as_json=True)
    del redone_records
    golden_code = np.unique(code[affected_rows])
    golden_code = golden_code[pc.array_sort_indices(all_ids.take(pa.array(golden_code)))
                              .to_numpy()]  # the order of golden: by ID
    existing = golden_code < n_persons
    prev_p = take_increasing(prev_persons.table, golden_code[existing]).to_pandas().set_axis(
        np.flatnonzero(existing)).reindex(range(len(golden)))
    changed_attrs = pd.DataFrame(index=golden.index)
    existed = prev_p["created_run"].notna().to_numpy()
    same_all = existed.copy()  # a new person differs from nothing: compare the others only
    for col in [c for c in PERSON_COLUMNS if c != "mpi_id"]:
        same_col = np.zeros(len(golden), dtype=bool)
        same_col[existed] = _same(golden.loc[existed, col], prev_p.loc[existed, col])
        changed_attrs[col] = ~same_col
        same_all &= same_col
    golden["status"] = "active"
    golden["merged_into"] = None
    golden["created_run"] = np.where(existed, prev_p["created_run"].to_numpy(dtype=object),
                                     run_id)
    # Kept when the provenance is the same too: compared as persons.parquet is written.
    golden["updated_run"] = np.where(same_all, prev_p["updated_run"].to_numpy(dtype=object),
                                     run_id)
    # The whole golden table after this run (the next run's index), by ID: the kept persons
    # not redone as they were, and the redone ones (each at the previous person it replaces
    # or goes before).
    redone = np.zeros(len(all_ids), dtype=bool)
    redone[golden_code] = True
    keep_prev = kept[:n_persons] & ~redone[:n_persons]
    golden_table = _as_table(golden, _PERSON_SCHEMA)
    rows_all = np.concatenate([np.flatnonzero(keep_prev), n_persons + np.arange(len(golden))])
    rows_all = rows_all[pc.sort_indices(pa.concat_arrays([
        person_ids, golden_table["mpi_id"].combine_chunks()]).take(pa.array(rows_all)))
        .to_numpy()]
    golden_at = np.where(existing, golden_code, pc.search_sorted(
        person_ids, golden_table["mpi_id"]).to_numpy().astype(np.int64))
    anchor_all = rows_all.copy()
    redone_rows = rows_all >= n_persons
    anchor_all[redone_rows] = golden_at[rows_all[redone_rows] - n_persons]
    check = np.flatnonzero(same_all)
    same_all[check] = _write_persons(out / PERSONS_FILE, prev_persons, golden_table, rows_all,
                                     anchor_all, check, golden_code[check], run_id)
    golden.loc[~same_all, "updated_run"] = run_id
    persons_upsert = golden.loc[~same_all].reset_index(drop=True)
    lap("golden")

    # update events: a kept ID whose records or golden values changed
    added = np.bincount(code[~same_mpi], minlength=len(all_ids))
    lost = (np.bincount(rec_code[~still_here], minlength=len(all_ids))
            + np.bincount(prev_code[in_index & ~same_mpi], minlength=len(all_ids)))
    attr_cols = list(schema.GOLDEN_ATTRIBUTES)
    merged_into_kept = {e["mpi_id"] for e in rows_out if e["event_type"] == "merge"}
    flags = changed_attrs[attr_cols].to_numpy()
    flag_rows = flags.tolist()
    ids = golden["mpi_id"].to_numpy(dtype=object)
    n_added = added[golden_code]
    n_lost = lost[golden_code]
    is_kept = kept[golden_code]
    any_attr = flags.any(axis=1)
    is_merge = pd.Series(ids).isin(merged_into_kept).to_numpy()
    todo = is_kept & (any_attr | (~is_merge & ((n_added > 0) | (n_lost > 0))))
    for i in np.flatnonzero(todo):
        rows_out.append({"event_type": "update", "mpi_id": ids[i], "other_mpi_id": None,
                         "reason": "records or golden values changed",
                         "details": {"records_added": int(n_added[i]),
                                     "records_removed": int(n_lost[i]),
                                     "attributes": [c for c, f in zip(attr_cols, flag_rows[i],
                                                                      strict=True) if f]}})
    columns = ["event_type", "mpi_id", "other_mpi_id", "reason", "details"]
    listed = pd.DataFrame(rows_out, columns=columns)
    listed["details"] = listed["details"].map(lambda d: json.dumps(d) if d is not None else None)
    events_frame = pd.concat([listed, *events], ignore_index=True)[columns] if events else listed
    retire_frame = pd.DataFrame(retired, columns=["mpi_id", "merged_into"])

    for name, frame in (("persons_upsert", persons_upsert), ("persons_retire", retire_frame),
                        ("events", events_frame)):
        _write_parquet(out / f"{name}.parquet", frame, **_INDEX_WRITE.get(name, {}))
    record_writes.result()
    lap("write")

    counts = events_frame["event_type"].value_counts().to_dict()
    n_kept = int(kept.sum())
    summary = {
        "run_id": run_id,
        "base_run": base,
        "index_run": last,
        "index_source": index_source,
        "crosswalk_hash": cw_hash,
        # Publish records this mark: the next run then knows these files are the index.
        "assignment": secrets.token_hex(8),
        "golden_rules": rules_key,
        "records": int(n),
        "persons": int(n_clusters),
        "clusters_mapped": int(touched.sum()),
        "golden_recomputed": int(len(golden)),
        "ids_kept": n_kept,
        "previous_active_ids": int(n_persons),
        "ids_kept_share": round(n_kept / n_persons, 6) if n_persons else None,
        "events": {k: int(counts.get(k, 0)) for k in schema.EVENT_TYPES},
        "changes": {"records_upsert": int(len(records_upsert)),
                    "records_delete": int(len(records_delete)),
                    "persons_upsert": int(len(persons_upsert)),
                    "persons_retire": int(len(retire_frame))},
        "timings": lap.seconds,
        "seconds": round(time.perf_counter() - started, 2),
    }
    tmp = summary_path.with_name("summary.json.tmp")
    tmp.write_text(json.dumps(summary, indent=2))
    os.replace(tmp, summary_path)
    log.info("assign: %d persons (%d mapped by overlap, %d golden records recomputed), %d IDs "
             "kept, index from %s, events %s", n_clusters, int(touched.sum()), len(golden),
             n_kept, index_source, summary["events"])
    return summary
