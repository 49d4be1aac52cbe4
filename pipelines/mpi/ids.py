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
record and its ID), ``records_upsert.parquet`` / ``records_delete.parquet`` (what changes in
``person_records``), ``persons_upsert.parquet`` / ``persons_retire.parquet`` (what changes
in ``persons``), ``events.parquet`` and ``summary.json``. Publish applies them.
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
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from pipelines.errors import ReglinkError
from pipelines.link import KEY, read_records
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


def new_id(key: bytes, run_id: str, anchor: str, attempt: int = 0) -> str:
    """``P`` + 12 base32 characters of HMAC(key, run, anchor[, attempt])."""
    message = f"{run_id}\x00{anchor}\x00{attempt}".encode()
    digest = hmac.new(key, message, hashlib.sha256).digest()
    text = base64.b32encode(digest[:10]).decode()[:12]
    return "P" + text.translate(str.maketrans(_B32, _ALPHABET))


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


def map_clusters(cluster_id: np.ndarray, anchor: np.ndarray, prev_id: np.ndarray,
                 age: Mapping[str, Any]) -> dict[int, str]:
    """Greedy overlap mapping: cluster → previous MPI ID (clusters left out get new IDs).

    Args:
        cluster_id: per record of this run that was in the index, its cluster.
        anchor: per cluster (indexed by cluster id), its sort key for ties.
        prev_id: per such record, its previous MPI ID.
        age: per previous MPI ID, a sortable age (older first), e.g. its creating run.
    """
    if cluster_id.size == 0:
        return {}
    ov = (pd.DataFrame({"c": cluster_id, "m": prev_id}).value_counts(sort=False)
          .rename("n").reset_index())
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
    a_na, b_na = a.isna().to_numpy(), b.isna().to_numpy()
    eq = (a.astype(object).to_numpy() == b.astype(object).to_numpy())
    return (a_na & b_na) | (~a_na & ~b_na & eq)


def _canonical_json(values: pd.Series) -> pd.Series:
    return values.map(lambda v: json.dumps(json.loads(v) if isinstance(v, str) else v,
                                           sort_keys=True) if v is not None else None)


def assign_run(engine: Engine, run_id: str, run_dir: Path,
               configs: Mapping[str, Any], *, config_dir: str | Path | None = None
               ) -> dict[str, Any]:
    """Assign MPI IDs and golden records to this run's clusters; writes ``assign/``.

    Raises:
        PublishConflictError: a run that started after this one is already published.
    """
    started = time.perf_counter()
    run_dir = Path(run_dir)
    out = run_dir / "assign"
    cw_path = run_dir / "cluster" / "crosswalk.parquet"
    if not cw_path.is_file():
        raise ReglinkError(f"{cw_path} not found: run the cluster step of run {run_id} first")
    crosswalk = pd.read_parquet(cw_path)
    cw_hash = _crosswalk_hash(crosswalk)

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
        prev_records, prev_persons = current_index(conn)
        issued = all_ids(conn)

    records = read_records(run_dir)
    if len(records) != len(crosswalk) or not (
            records["record_id"].to_numpy() == crosswalk["record_id"].to_numpy()).all():
        raise ReglinkError(f"run {run_id}: cluster/crosswalk.parquet does not match "
                           "standardise/records.parquet; rerun the link and cluster steps")
    n = len(crosswalk)
    cluster = crosswalk["cluster_id"].to_numpy(dtype=np.int64)
    n_clusters = int(cluster.max()) + 1 if n else 0
    key_text = (crosswalk["register"].astype(str) + "\x00" + crosswalk["record_id"].astype(str))
    anchor = np.full(n_clusters, "", dtype=object)
    first = pd.Series(key_text.to_numpy(dtype=object)).groupby(cluster).min()
    anchor[first.index.to_numpy()] = first.to_numpy()

    # Previous ID of each record of this run (None when the record is new to the index).
    prev_keyed = prev_records.set_index(KEY)
    joined = pd.MultiIndex.from_frame(crosswalk[KEY].astype(object))
    prev_mpi = prev_keyed["mpi_id"].reindex(joined).to_numpy(dtype=object)
    in_index = pd.notna(prev_mpi)
    age = dict(zip(prev_persons["mpi_id"], prev_persons["created_run"], strict=True))
    mapping = map_clusters(cluster[in_index], anchor, prev_mpi[in_index].astype(str), age)

    # New IDs for clusters that kept none.
    secret = id_key(run_dir.parent.parent)
    cluster_mpi = np.full(n_clusters, None, dtype=object)
    for c, m in mapping.items():
        cluster_mpi[c] = m
    fresh = np.flatnonzero(pd.isna(cluster_mpi))
    used = set(issued) | set(mapping.values())
    for c in fresh:
        attempt = 0
        candidate = new_id(secret, run_id, anchor[c])
        while candidate in used:
            attempt += 1
            candidate = new_id(secret, run_id, anchor[c], attempt)
        used.add(candidate)
        cluster_mpi[c] = candidate
    mpi = cluster_mpi[cluster]

    # ---- events
    events: list[dict[str, Any]] = []
    prev_active = set(prev_persons["mpi_id"])
    kept = set(mapping.values())
    ov = pd.DataFrame({"c": cluster[in_index], "m": prev_mpi[in_index]}).value_counts(
        sort=False).rename("n").reset_index()
    gone = sorted(prev_active - kept)
    retired: list[dict[str, Any]] = []
    if gone:
        ov_gone = ov[ov["m"].isin(gone)].copy()
        ov_gone["anchor"] = anchor[ov_gone["c"].to_numpy()]
        ov_gone = ov_gone.sort_values(["m", "n", "anchor"], ascending=[True, False, True])
        target = ov_gone.drop_duplicates("m").set_index("m")["c"]
        for m in gone:
            if m in target.index:
                into = cluster_mpi[int(target[m])]
                events.append({"event_type": "merge", "mpi_id": into, "other_mpi_id": m,
                               "reason": "their records are now linked as one person",
                               "details": {"records_moved": int(ov_gone.loc[
                                   ov_gone["m"] == m, "n"].sum())}})
                events.append({"event_type": "retire", "mpi_id": m, "other_mpi_id": into,
                               "reason": f"merged into {into}", "details": None})
                retired.append({"mpi_id": m, "merged_into": into})
            else:
                events.append({"event_type": "retire", "mpi_id": m, "other_mpi_id": None,
                               "reason": "none of its records is left in the registers",
                               "details": None})
                retired.append({"mpi_id": m, "merged_into": None})
    fresh_set = set(fresh.tolist())
    if fresh_set:
        ov_new = ov[ov["c"].isin(fresh_set)].copy()
        ov_new["age"] = ov_new["m"].map(lambda m: str(age.get(m) or ""))
        ov_new = ov_new.sort_values(["c", "n", "age", "m"], ascending=[True, False, True, True])
        source = ov_new.drop_duplicates("c").set_index("c")
        size = np.bincount(cluster, minlength=n_clusters)
        for c in sorted(fresh_set):
            if c in source.index:
                origin = source.loc[c, "m"]
                events.append({"event_type": "split", "mpi_id": origin,
                               "other_mpi_id": cluster_mpi[c],
                               "reason": "some of its records are no longer linked to it",
                               "details": {"records_moved": int(source.loc[c, "n"]),
                                           "records": int(size[c])}})
            else:
                events.append({"event_type": "new", "mpi_id": cluster_mpi[c],
                               "other_mpi_id": None, "reason": "records of a new person",
                               "details": {"records": int(size[c])}})

    # ---- person_records: the new index and what changes
    new_records = pd.DataFrame({
        "register": crosswalk["register"].astype(object),
        "record_id": crosswalk["record_id"].astype(object),
        "mpi_id": mpi,
        "match_probability": crosswalk["match_probability"].astype("float64"),
        "link_basis": crosswalk["link_basis"].astype(object),
    })
    prev_aligned = prev_keyed.reindex(joined)
    same_mpi = _same(new_records["mpi_id"], prev_aligned["mpi_id"])
    new_records["linked_run"] = np.where(same_mpi, prev_aligned["linked_run"].to_numpy(
        dtype=object), run_id)
    first_seen = prev_aligned["first_seen_run"].to_numpy(dtype=object)
    new_records["first_seen_run"] = np.where(pd.isna(first_seen), run_id, first_seen)
    unchanged = same_mpi & _same(new_records["link_basis"], prev_aligned["link_basis"])
    prob_new = new_records["match_probability"].to_numpy(dtype=np.float64)
    prob_old = pd.to_numeric(prev_aligned["match_probability"]).to_numpy(dtype=np.float64)
    unchanged &= (np.isnan(prob_new) & np.isnan(prob_old)) | np.isclose(
        prob_new, prob_old, rtol=0, atol=1e-7)
    records_upsert = new_records.loc[~unchanged]
    current_keys = pd.MultiIndex.from_frame(new_records[KEY])
    records_delete = prev_records.loc[
        ~pd.MultiIndex.from_frame(prev_records[KEY]).isin(current_keys), KEY]

    # ---- golden records and what changes in persons
    trust = {name: dict(cfg.trust) for name, cfg in configs.items()}
    rules = load_rules(config_dir) if config_dir is not None else load_rules(
        run_dir / "__no_config__")
    golden = golden_records(records, mpi, trust, rules)
    prev_p = prev_persons.set_index("mpi_id").reindex(golden["mpi_id"])
    changed_attrs = pd.DataFrame(index=golden.index)
    same_all = np.ones(len(golden), dtype=bool)
    for col in [c for c in PERSON_COLUMNS if c != "mpi_id"]:
        same_col = _same(pd.Series(golden[col].to_numpy(dtype=object)),
                         pd.Series(prev_p[col].to_numpy(dtype=object)))
        changed_attrs[col] = ~same_col
        same_all &= same_col
    new_prov = golden["provenance"].map(lambda d: json.dumps(d, sort_keys=True))
    old_prov = _canonical_json(pd.Series(prev_p["provenance"].to_numpy(dtype=object)))
    same_all &= _same(new_prov.reset_index(drop=True), old_prov)
    existed = prev_p["created_run"].notna().to_numpy()
    golden["status"] = "active"
    golden["merged_into"] = None
    golden["created_run"] = np.where(existed, prev_p["created_run"].to_numpy(dtype=object),
                                     run_id)
    golden["updated_run"] = np.where(existed & same_all,
                                     prev_p["updated_run"].to_numpy(dtype=object), run_id)
    persons_upsert = golden.loc[~(existed & same_all)].reset_index(drop=True)

    # update events: a kept ID whose records or golden values changed
    moved = new_records.loc[~same_mpi | pd.isna(prev_aligned["mpi_id"]).to_numpy(), "mpi_id"]
    left_behind = prev_records.loc[~pd.MultiIndex.from_frame(prev_records[KEY]).isin(
        current_keys), "mpi_id"]
    added = moved.value_counts()
    lost = pd.concat([left_behind, prev_aligned.loc[~same_mpi & pd.notna(
        prev_aligned["mpi_id"]).to_numpy(), "mpi_id"]]).value_counts()
    attr_cols = list(schema.GOLDEN_ATTRIBUTES)
    merged_into_kept = {e["mpi_id"] for e in events if e["event_type"] == "merge"}
    flags = changed_attrs[attr_cols].to_numpy()
    ids = golden["mpi_id"].to_numpy(dtype=object)
    n_added = pd.Series(ids).map(added).fillna(0).astype(int).to_numpy()
    n_lost = pd.Series(ids).map(lost).fillna(0).astype(int).to_numpy()
    is_kept = pd.Series(ids).isin(kept).to_numpy()
    any_attr = flags.any(axis=1)
    is_merge = pd.Series(ids).isin(merged_into_kept).to_numpy()
    todo = is_kept & (any_attr | (~is_merge & ((n_added > 0) | (n_lost > 0))))
    for i in np.flatnonzero(todo):
        events.append({"event_type": "update", "mpi_id": ids[i], "other_mpi_id": None,
                       "reason": "records or golden values changed",
                       "details": {"records_added": int(n_added[i]),
                                   "records_removed": int(n_lost[i]),
                                   "attributes": [c for c, f in zip(attr_cols, flags[i],
                                                                    strict=True) if f]}})
    events_frame = pd.DataFrame(events, columns=["event_type", "mpi_id", "other_mpi_id",
                                                 "reason", "details"])
    retire_frame = pd.DataFrame(retired, columns=["mpi_id", "merged_into"])

    for name, frame in (("person_records", new_records), ("records_upsert", records_upsert),
                        ("records_delete", records_delete), ("persons_upsert", persons_upsert),
                        ("persons_retire", retire_frame), ("events", events_frame)):
        if name in ("persons_upsert",):
            frame = frame.assign(provenance=frame["provenance"].map(json.dumps))
        if name == "events":
            frame = frame.assign(details=frame["details"].map(
                lambda d: json.dumps(d) if d is not None else None))
        _write_parquet(out / f"{name}.parquet", frame)

    counts = events_frame["event_type"].value_counts().to_dict()
    summary = {
        "run_id": run_id,
        "base_run": base,
        "index_run": last,
        "crosswalk_hash": cw_hash,
        "records": int(n),
        "persons": int(n_clusters),
        "ids_kept": len(kept),
        "previous_active_ids": len(prev_active),
        "ids_kept_share": round(len(kept) / len(prev_active), 6) if prev_active else None,
        "events": {k: int(counts.get(k, 0)) for k in schema.EVENT_TYPES},
        "changes": {"records_upsert": int(len(records_upsert)),
                    "records_delete": int(len(records_delete)),
                    "persons_upsert": int(len(persons_upsert)),
                    "persons_retire": int(len(retire_frame))},
        "seconds": round(time.perf_counter() - started, 2),
    }
    tmp = summary_path.with_name("summary.json.tmp")
    tmp.write_text(json.dumps(summary, indent=2))
    os.replace(tmp, summary_path)
    log.info("assign: %d persons, %d IDs kept, events %s", n_clusters, len(kept),
             summary["events"])
    return summary
