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

The next run reads the published index from these files (when their row counts match the
database; else from the database) and recomputes golden records only for the persons whose
records changed, so that a nightly delta costs seconds, not a pass over the whole country.
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
from collections.abc import Mapping
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
from pipelines.link import KEY, read_records, records_path
from pipelines.mpi.golden import golden_records, load_rules
from pipelines.store import repository as repo
from pipelines.store import schema

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


def _crosswalk_hash(crosswalk: pd.DataFrame) -> str:
    h = pd.util.hash_pandas_object(crosswalk[[*KEY, "cluster_id", "link_basis"]], index=False)
    return hashlib.sha256(h.to_numpy().tobytes()).hexdigest()[:16]


def _write_parquet(path: Path, frame: pd.DataFrame) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    frame.to_parquet(tmp, index=False)
    os.replace(tmp, path)


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


def _is_in(values: pd.Series, wanted: Any) -> np.ndarray:
    """``values.isin(wanted)`` for text, hashed by Arrow (pandas takes seconds to hash a
    million Python strings)."""
    if len(values) == 0:
        return np.zeros(0, dtype=bool)
    found = pc.is_in(pa.array(pd.Series(values, dtype="string")),
                     value_set=pa.array(pd.Series(wanted, dtype="string")))
    return pc.fill_null(found, False).to_numpy(zero_copy_only=False)


def _rows_of(persons: pd.DataFrame, ids: pd.Series) -> pd.DataFrame:
    """The rows of ``persons`` (by ``mpi_id``) for ``ids``, indexed by them; missing rows
    (new IDs) are all missing."""
    if len(persons) == 0 or len(ids) == 0:
        return persons.set_index("mpi_id").reindex(ids)
    pos = pc.fill_null(pc.index_in(pa.array(pd.Series(ids, dtype="string")),
                                   value_set=pa.array(persons["mpi_id"].astype("string"))),
                       -1).to_numpy(zero_copy_only=False).astype(np.int64)
    rows = persons.iloc[np.maximum(pos, 0)].set_index("mpi_id")
    rows.index = pd.Index(np.asarray(ids, dtype=object), name="mpi_id")
    return rows.mask(np.broadcast_to((pos < 0)[:, None], rows.shape))


def _arrow_text(values: pd.Series) -> bool:
    return (pd.api.types.is_string_dtype(values) and not pd.api.types.is_object_dtype(values))


def _canonical_json(values: pd.Series) -> pd.Series:
    return values.map(lambda v: json.dumps(json.loads(v) if isinstance(v, str) else v,
                                           sort_keys=True) if v is not None else None)


def _record_keys(register: pd.Series, record_id: pd.Series) -> pd.Series:
    """(register, record_id) as one text key (Arrow strings: aligned without Python objects)."""
    return register.astype("string") + "\x00" + record_id.astype("string")


def _objects(values: pd.Series) -> np.ndarray:
    """A text column as an object array sharing one Python string per distinct value
    (a column of millions of repeated run ids or MPI IDs stays small)."""
    codes, uniques = pd.factorize(values)
    return np.append(np.asarray(uniques, dtype=object), None)[codes]  # code -1: None


def golden_rules_key(configs: Mapping[str, Any], rules: tuple[str, ...]) -> str:
    """A hash of everything golden records depend on besides the records: the registers'
    trust ranks and the survivorship rules. When it changes, every golden record is redone."""
    trust = {name: dict(cfg.trust) for name, cfg in sorted(configs.items())}
    text = json.dumps({"trust": trust, "recency_first": list(rules)}, sort_keys=True,
                      default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _index_from_files(conn: Connection, last: str, data_dir: Path
                      ) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]] | None:
    """The published index as the run that published it left it in ``assign/``
    (``person_records.parquet`` and ``persons.parquet``), or None when those files are gone
    or do not match the database (then the index is read from the database)."""
    folder = Path(data_dir) / "runs" / last / "assign"
    paths = [folder / "person_records.parquet", folder / PERSONS_FILE, folder / "summary.json"]
    if not all(p.is_file() for p in paths):
        return None
    n_records = conn.execute(sa.select(sa.func.count()).select_from(
        schema.person_records)).scalar_one()
    p = schema.persons
    n_persons = conn.execute(sa.select(sa.func.count()).select_from(p).where(
        p.c.status == "active")).scalar_one()
    records = pd.read_parquet(paths[0], columns=RECORD_COLUMNS)
    persons = pd.read_parquet(paths[1])
    if len(records) != n_records or len(persons) != n_persons:
        log.warning("assign: the files of run %s do not match the published index (%d/%d "
                    "records, %d/%d persons); reading the index from the database", last,
                    len(records), n_records, len(persons), n_persons)
        return None
    return records, persons, json.loads(paths[2].read_text())


def _previous_hashes(data_dir: Path, last: str, prev_records: pd.DataFrame
                     ) -> np.ndarray | None:
    """Content hash of each record of the published index, from its run's records file
    (None when it is gone or does not line up with the index)."""
    path = Path(data_dir) / "runs" / last / "standardise" / "records.parquet"
    if not path.is_file():
        return None
    prev = pd.read_parquet(path, columns=[*KEY, "content_hash"])
    if len(prev) != len(prev_records) or not (
            (prev["record_id"] == prev_records["record_id"]).all()
            and (prev["register"] == prev_records["register"]).all()):
        return None
    return prev["content_hash"].to_numpy(dtype=np.int64)


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


GOLDEN_READ = ("register", "record_id", *schema.GOLDEN_ATTRIBUTES, "source_updated_at",
               "content_hash")


def assign_run(engine: Engine, run_id: str, run_dir: Path,
               configs: Mapping[str, Any], *, config_dir: str | Path | None = None
               ) -> dict[str, Any]:
    """Assign MPI IDs and golden records to this run's clusters; writes ``assign/``.

    The published index is read from the ``assign/`` files of the run that published it
    when they match the database (else from the database). Golden records are computed again
    only for the persons whose records changed (new, changed content, joined, left), unless
    the trust ranks or survivorship rules changed.

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
    crosswalk = pd.read_parquet(cw_path, columns=[*KEY, "cluster_id", "match_probability",
                                                  "link_basis"])
    cw_hash = _crosswalk_hash(crosswalk)
    rules = load_rules(config_dir) if config_dir is not None else load_rules(
        run_dir / "__no_config__")
    rules_key = golden_rules_key(configs, rules)
    timings: dict[str, float] = {}

    mark = [started]

    def lap(name: str) -> None:
        now = time.perf_counter()
        timings[name] = round(now - mark[0], 2)
        mark[0] = now

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
            prev_records, prev_persons = current_index(conn)
            prev_persons["provenance"] = _canonical_json(prev_persons["provenance"])
            prev_summary = {}
            index_source = "database"
    prev_records["match_probability"] = pd.to_numeric(prev_records["match_probability"])
    lap("read_index")

    available = set(pq.read_schema(records_path(run_dir)).names)
    records = read_records(run_dir, columns=[c for c in GOLDEN_READ if c in available])
    if len(records) != len(crosswalk) or not (
            records["record_id"] == crosswalk["record_id"]).all():
        raise ReglinkError(f"run {run_id}: cluster/crosswalk.parquet does not match "
                           "standardise/records.parquet; rerun the link and cluster steps")
    n = len(crosswalk)
    cluster = crosswalk["cluster_id"].to_numpy(dtype=np.int64)
    n_clusters = int(cluster.max()) + 1 if n else 0
    key_text = (crosswalk["register"].astype(str) + "\x00" + crosswalk["record_id"].astype(str))
    anchor = np.full(n_clusters, "", dtype=object)
    if key_text.is_monotonic_increasing:  # records are sorted by key: the first is the least
        first_cluster, first_row = np.unique(cluster, return_index=True)
        anchor[first_cluster] = key_text.take(first_row).to_numpy(dtype=object)
    else:
        first = pd.Series(key_text.to_numpy(dtype=object)).groupby(cluster).min()
        anchor[first.index.to_numpy()] = first.to_numpy()

    # Previous position (in the index) of each record of this run; -1: new to the index.
    prev_key = _record_keys(prev_records["register"], prev_records["record_id"])
    prev_pos = pc.fill_null(pc.index_in(pa.array(key_text.astype("string")),
                                        value_set=pa.array(prev_key)), -1).to_numpy(
        zero_copy_only=False).astype(np.int64)
    in_index = prev_pos >= 0
    prev_mpi_all = _objects(prev_records["mpi_id"])

    def gather(values: np.ndarray, missing: Any = None) -> np.ndarray:
        """Per record of this run, ``values`` of its row in the index (else ``missing``)."""
        out = np.full(n, missing, dtype=values.dtype if missing is not None else object)
        out[in_index] = values[prev_pos[in_index]]
        return out

    prev_mpi = gather(prev_mpi_all)
    still_here = np.zeros(len(prev_records), dtype=bool)
    still_here[prev_pos[in_index]] = True
    # Looked up only for the few IDs whose overlap is not one-to-one.
    age = pd.Series(prev_persons["created_run"].to_numpy(dtype=object),
                    index=prev_persons["mpi_id"].to_numpy(dtype=object))
    ov = overlaps(cluster[in_index], prev_mpi[in_index])
    mapping = map_clusters(cluster[in_index], anchor, prev_mpi[in_index], age, overlap=ov)
    lap("map")

    # New IDs for clusters that kept none.
    secret = id_key(data_dir)
    cluster_mpi = np.full(n_clusters, None, dtype=object)
    for c, m in mapping.items():
        cluster_mpi[c] = m
    fresh = np.flatnonzero(pd.isna(cluster_mpi))
    with engine.connect() as conn:
        cluster_mpi[fresh] = _new_ids(conn, secret, run_id, anchor[fresh].tolist(),
                                      set(mapping.values()))
    mpi = cluster_mpi[cluster]
    lap("new_ids")

    # ---- events
    events: list[pd.DataFrame] = []
    rows: list[dict[str, Any]] = []
    prev_active = set(prev_persons["mpi_id"])
    kept = set(mapping.values())
    gone = sorted(prev_active - kept)
    retired: list[dict[str, Any]] = []
    if gone:
        ov_gone = ov[ov["m"].isin(gone)].copy()
        ov_gone["anchor"] = anchor[ov_gone["c"].to_numpy()]
        ov_gone = ov_gone.sort_values(["m", "n", "anchor"], ascending=[True, False, True])
        target = ov_gone.drop_duplicates("m").set_index("m")["c"]
        moved_n = ov_gone.groupby("m")["n"].sum()
        for m in gone:
            if m in target.index:
                into = cluster_mpi[int(target[m])]
                rows.append({"event_type": "merge", "mpi_id": into, "other_mpi_id": m,
                             "reason": "their records are now linked as one person",
                             "details": {"records_moved": int(moved_n[m])}})
                rows.append({"event_type": "retire", "mpi_id": m, "other_mpi_id": into,
                             "reason": f"merged into {into}", "details": None})
                retired.append({"mpi_id": m, "merged_into": into})
            else:
                rows.append({"event_type": "retire", "mpi_id": m, "other_mpi_id": None,
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
            rows.append({"event_type": "split", "mpi_id": source.loc[c, "m"],
                         "other_mpi_id": cluster_mpi[c],
                         "reason": "some of its records are no longer linked to it",
                         "details": {"records_moved": int(source.loc[c, "n"]),
                                     "records": int(size[c])}})
        brand_new = fresh[~split]
        # One event per new person: built column-wise (a whole country on the first run).
        events.append(pd.DataFrame({
            "event_type": "new", "mpi_id": cluster_mpi[brand_new], "other_mpi_id": None,
            "reason": "records of a new person",
            "details": ['{"records": ' + str(k) + "}" for k in size[brand_new].tolist()]}))
    lap("events")

    # ---- person_records: the new index and what changes
    new_records = pd.DataFrame({
        "register": crosswalk["register"],
        "record_id": crosswalk["record_id"],
        "mpi_id": mpi,
        "match_probability": crosswalk["match_probability"].astype("float64"),
        "link_basis": _objects(crosswalk["link_basis"]),
    })

    def prev_col(name: str) -> np.ndarray:
        return gather(_objects(prev_records[name]))

    same_mpi = in_index & (mpi == prev_mpi)
    new_records["linked_run"] = np.where(same_mpi, prev_col("linked_run"), run_id)
    first_seen = prev_col("first_seen_run")
    new_records["first_seen_run"] = np.where(pd.isna(first_seen), run_id, first_seen)
    unchanged = same_mpi & _same(new_records["link_basis"], pd.Series(prev_col("link_basis")))
    prob_new = new_records["match_probability"].to_numpy(dtype=np.float64)
    prob_old = gather(prev_records["match_probability"].to_numpy(dtype=np.float64), np.nan)
    unchanged &= (np.isnan(prob_new) & np.isnan(prob_old)) | np.isclose(
        prob_new, prob_old, rtol=0, atol=1e-7)
    records_upsert = new_records.loc[~unchanged]
    records_delete = prev_records.loc[~still_here, KEY]
    lap("records")

    # ---- golden records, only for the persons whose records changed
    prev_hash = (_previous_hashes(data_dir, last, prev_records)
                 if index_source == "files" and prev_summary.get("golden_rules") == rules_key
                 else None)
    if prev_hash is None:
        affected = np.ones(n, dtype=bool)
    else:
        hash_now = records["content_hash"].to_numpy(dtype=np.int64)
        content_changed = ~in_index | (gather(prev_hash, 0) != hash_now)
        # A person is redone when one of its records is new, changed or moved in, or when
        # its ID lost a record (moved out or deleted).
        redo = np.zeros(n_clusters, dtype=bool)
        redo[cluster[content_changed | ~same_mpi]] = True
        lost_ids = set(prev_mpi[in_index & ~same_mpi].tolist()) | set(
            prev_mpi_all[~still_here].tolist())
        redo |= pd.Series(cluster_mpi).isin(lost_ids).to_numpy()
        affected = redo[cluster]
    trust = {name: dict(cfg.trust) for name, cfg in configs.items()}
    golden = golden_records(records.loc[affected].reset_index(drop=True), mpi[affected], trust,
                            rules, provenance_as_json=True)
    del records
    prev_p = _rows_of(prev_persons, golden["mpi_id"])
    changed_attrs = pd.DataFrame(index=golden.index)
    existed = prev_p["created_run"].notna().to_numpy()
    same_all = existed.copy()  # a new person differs from nothing: compare the others only
    for col in [c for c in PERSON_COLUMNS if c != "mpi_id"]:
        same_col = np.zeros(len(golden), dtype=bool)
        same_col[existed] = _same(golden.loc[existed, col], prev_p.loc[existed, col])
        changed_attrs[col] = ~same_col
        same_all &= same_col
    same_all[existed] &= _same(golden.loc[existed, "provenance"],
                               prev_p.loc[existed, "provenance"])
    golden["status"] = "active"
    golden["merged_into"] = None
    golden["created_run"] = np.where(existed, prev_p["created_run"].to_numpy(dtype=object),
                                     run_id)
    golden["updated_run"] = np.where(existed & same_all,
                                     prev_p["updated_run"].to_numpy(dtype=object), run_id)
    persons_upsert = golden.loc[~(existed & same_all)].reset_index(drop=True)
    # The whole golden table after this run (the next run's index), kept persons unchanged.
    # Kept IDs are the previous IDs still active; those not redone stay as they were.
    keep_prev = _is_in(prev_persons["mpi_id"], list(kept)) & ~_is_in(
        prev_persons["mpi_id"], golden["mpi_id"])
    person_cols = [*PERSON_COLUMNS, "provenance", "created_run", "updated_run"]
    persons_all = pd.concat([prev_persons.loc[keep_prev, person_cols],
                             golden[person_cols]], ignore_index=True)
    persons_all = persons_all.sort_values("mpi_id", ignore_index=True)
    lap("golden")

    # update events: a kept ID whose records or golden values changed
    moved = new_records.loc[~same_mpi, "mpi_id"]
    left_behind = prev_records.loc[~still_here, "mpi_id"]
    added = moved.value_counts()
    lost = pd.concat([left_behind, pd.Series(prev_mpi[in_index & ~same_mpi])]).value_counts()
    attr_cols = list(schema.GOLDEN_ATTRIBUTES)
    merged_into_kept = {e["mpi_id"] for e in rows if e["event_type"] == "merge"}
    flags = changed_attrs[attr_cols].to_numpy()
    ids = golden["mpi_id"].to_numpy(dtype=object)
    n_added = pd.Series(ids).map(added).fillna(0).astype(int).to_numpy()
    n_lost = pd.Series(ids).map(lost).fillna(0).astype(int).to_numpy()
    is_kept = _is_in(pd.Series(ids), list(kept))
    any_attr = flags.any(axis=1)
    is_merge = pd.Series(ids).isin(merged_into_kept).to_numpy()
    todo = is_kept & (any_attr | (~is_merge & ((n_added > 0) | (n_lost > 0))))
    for i in np.flatnonzero(todo):
        rows.append({"event_type": "update", "mpi_id": ids[i], "other_mpi_id": None,
                     "reason": "records or golden values changed",
                     "details": {"records_added": int(n_added[i]),
                                 "records_removed": int(n_lost[i]),
                                 "attributes": [c for c, f in zip(attr_cols, flags[i],
                                                                  strict=True) if f]}})
    columns = ["event_type", "mpi_id", "other_mpi_id", "reason", "details"]
    listed = pd.DataFrame(rows, columns=columns)
    listed["details"] = listed["details"].map(lambda d: json.dumps(d) if d is not None else None)
    events_frame = pd.concat([listed, *events], ignore_index=True)[columns] if events else listed
    retire_frame = pd.DataFrame(retired, columns=["mpi_id", "merged_into"])

    for name, frame in (("person_records", new_records), ("records_upsert", records_upsert),
                        ("records_delete", records_delete), ("persons_upsert", persons_upsert),
                        ("persons_retire", retire_frame), ("events", events_frame),
                        ("persons", persons_all)):
        _write_parquet(out / f"{name}.parquet", frame)
    lap("write")

    counts = events_frame["event_type"].value_counts().to_dict()
    summary = {
        "run_id": run_id,
        "base_run": base,
        "index_run": last,
        "index_source": index_source,
        "crosswalk_hash": cw_hash,
        "golden_rules": rules_key,
        "records": int(n),
        "persons": int(n_clusters),
        "golden_recomputed": int(len(golden)),
        "ids_kept": len(kept),
        "previous_active_ids": len(prev_active),
        "ids_kept_share": round(len(kept) / len(prev_active), 6) if prev_active else None,
        "events": {k: int(counts.get(k, 0)) for k in schema.EVENT_TYPES},
        "changes": {"records_upsert": int(len(records_upsert)),
                    "records_delete": int(len(records_delete)),
                    "persons_upsert": int(len(persons_upsert)),
                    "persons_retire": int(len(retire_frame))},
        "timings": timings,
        "seconds": round(time.perf_counter() - started, 2),
    }
    tmp = summary_path.with_name("summary.json.tmp")
    tmp.write_text(json.dumps(summary, indent=2))
    os.replace(tmp, summary_path)
    log.info("assign: %d persons (%d golden records recomputed), %d IDs kept, index from %s, "
             "events %s", n_clusters, len(golden), len(kept), index_source, summary["events"])
    return summary
