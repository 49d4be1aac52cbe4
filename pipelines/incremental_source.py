"""Incremental extraction: read only the rows changed since the last published run.

A register whose ``source:`` has an ``incremental: {watermark_column: ...}`` block
(README.md, "Register configuration") is extracted in three moves by :func:`extract_for_run`:

1. the **watermark** is read from the MPI database (``watermarks``: the newest
   ``source_updated_at`` the register had in the run that last published it, and that run);
2. only the rows whose watermark column is newer (or empty) are read from the source: in
   SQL for PostgreSQL (a bound parameter), after reading for files (files are read whole);
3. the changed rows are **merged** into the extract of the run that set the watermark: a
   changed row replaces the earlier row with its ``record_id``, a new one is added, every
   other row is carried over as it was.

So ``extract/<register>.parquet`` always holds the register's full current records, as a
full extract would have (validation, standardisation, linking, IDs, consistency and the
row-conservation check of publish all see the whole register); only the source is spared.
``extract/<register>.json`` says what happened::

    {"mode": "incremental", "since": "2026-11-26T23:10:04", "base_run": "20261126T...",
     "rows": 412, "carried": 95120, "replaced": 380, "total": 95532, ...}

``rows`` are the rows read from the source; ``total`` those in the extract.

**Deletions are not seen**: a row deleted in the source has no newer change time, so it is
carried over run after run. A full extract (``RunContext(full_extract=True)``) reads the
source whole and drops them (its size is compared with the last run by the shrink check, as
always). A full extract also happens by itself on the first run (no watermark), when the
register's configuration changed since the watermark's run (carried rows were read with the
old mapping), and when that run's extract is no longer on disk.

The watermark only moves when a run publishes (:mod:`pipelines.mpi.publish` sets it in its
transaction), so a run that fails validation is extracted again from the same watermark.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from pipelines.extract import (
    DEFAULT_CHUNKSIZE,
    ExtractResult,
    extract_parquet_options,
    extract_register,
)
from pipelines.registers import CANONICAL_COLUMNS, RegisterConfig

__all__ = [
    "ExtractPlan",
    "Watermark",
    "extract_for_run",
    "manifest_path",
    "merge_changes",
    "plan_extract",
    "read_manifest",
    "read_watermark",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Watermark:
    """A register's watermark: where its next incremental extract starts."""

    value: str
    run_id: str | None  # the run that published it


@dataclass(frozen=True)
class ExtractPlan:
    """How one register is extracted in a run, and why."""

    mode: str  # "incremental" or "full"
    reason: str
    since: str | None = None
    base_run: str | None = None
    base_extract: Path | None = None


def manifest_path(extract_path: str | Path) -> Path:
    """``extract/<register>.json`` beside ``extract/<register>.parquet``."""
    return Path(extract_path).with_suffix(".json")


def read_manifest(extract_path: str | Path) -> dict[str, Any] | None:
    """The manifest of an extract, or None when there is none (or it is unreadable)."""
    try:
        return json.loads(manifest_path(extract_path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def read_watermark(engine: Engine, register: str) -> Watermark | None:
    """The register's watermark in the MPI database, or None before its first publish."""
    from pipelines.store import schema

    wm = schema.watermarks
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(wm.c.value, wm.c.run_id).where(wm.c.register == register)
        ).one_or_none()
    return None if row is None else Watermark(str(row.value), row.run_id)


def _last_published(engine: Engine) -> str | None:
    from pipelines.store import repository as repo

    with engine.connect() as conn:
        return repo.last_published_run(conn)


def config_fingerprint(config: RegisterConfig) -> str:
    """A hash of what shapes the extract's rows: the source and the column mapping."""
    data = config.model_dump(mode="json", include={"source", "columns", "split"})
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def plan_extract(
    config: RegisterConfig, engine: Engine, runs_dir: str | Path, *, full_extract: bool = False
) -> ExtractPlan:
    """Decide whether the register is extracted whole or since its watermark.

    Args:
        config: the register.
        engine: the MPI database (where the watermark is).
        runs_dir: ``<data-dir>/runs``, where the watermark's run left its extract.
        full_extract: read the source whole even if the register is incremental.
    """
    if config.incremental is None:
        return ExtractPlan("full", "the register is not incremental")
    if full_extract:
        return ExtractPlan("full", "a full extract was asked for")
    watermark = read_watermark(engine, config.name)
    if watermark is None:
        return ExtractPlan("full", "no watermark yet (first published run of the register)")
    base_run = watermark.run_id or _last_published(engine)
    if base_run is None:
        return ExtractPlan("full", "the watermark names no published run")
    base_extract = Path(runs_dir) / base_run / "extract" / f"{config.name}.parquet"
    manifest = read_manifest(base_extract)
    if not base_extract.is_file() or manifest is None:
        return ExtractPlan("full", f"run {base_run}, which set the watermark, left no extract "
                           f"and manifest at {base_extract}")
    if manifest.get("config") != config_fingerprint(config):
        return ExtractPlan("full", f"the register's source or column mapping changed since "
                           f"run {base_run}")
    return ExtractPlan("incremental", f"rows changed since the watermark of run {base_run}",
                       since=watermark.value, base_run=base_run, base_extract=base_extract)


def _union_schema(first: pa.Schema, second: pa.Schema) -> pa.Schema:
    """Canonical columns, ``source_file``, then the ``src.*`` columns of both, in order."""
    fields = {f.name: f for f in second}
    fields.update({f.name: f for f in first})
    fixed = [*CANONICAL_COLUMNS, "source_file"]
    natives = [n for n in dict.fromkeys([*first.names, *second.names]) if n not in fixed]
    return pa.schema([fields[n] for n in fixed if n in fields] + [fields[n] for n in natives])


def _conform(batch: pa.RecordBatch, schema: pa.Schema) -> pa.Table:
    n = batch.num_rows
    names = set(batch.schema.names)
    return pa.Table.from_arrays(
        [batch.column(f.name).cast(f.type) if f.name in names else pa.nulls(n, f.type)
         for f in schema],
        schema=schema,
    )


@dataclass(frozen=True)
class MergeCounts:
    changed: int
    carried: int
    replaced: int
    columns: int

    @property
    def total(self) -> int:
        return self.changed + self.carried


def merge_changes(changes: str | Path, base: str | Path, out_path: str | Path) -> MergeCounts:
    """Write ``out_path`` = the rows of ``base`` whose ``record_id`` is not in ``changes``,
    then every row of ``changes``; streamed, batch by batch.

    ``base`` may be ``out_path`` itself (a run extracted again): it is read to the end before
    the result replaces it.
    """
    changes_file = pq.ParquetFile(changes)
    base_file = pq.ParquetFile(base)
    schema = _union_schema(base_file.schema_arrow, changes_file.schema_arrow)
    changed_ids = pq.read_table(changes, columns=["record_id"]).column("record_id")
    changed_ids = pc.unique(changed_ids.combine_chunks())
    out_path = Path(out_path)
    partial = out_path.with_name(out_path.name + ".partial")
    carried = replaced = 0
    try:
        batches = base_file.iter_batches(batch_size=DEFAULT_CHUNKSIZE)
        first = next(batches, None)
        with pq.ParquetWriter(partial, schema, **extract_parquet_options(
                pa.Table.from_batches([first]) if first is not None
                else schema.empty_table())) as writer:
            for batch in itertools.chain([first] if first is not None else [], batches):
                keep = pc.invert(pc.is_in(batch.column("record_id"), value_set=changed_ids))
                kept = batch.filter(keep)
                carried += kept.num_rows
                replaced += batch.num_rows - kept.num_rows
                writer.write_table(_conform(kept, schema))
            for batch in changes_file.iter_batches(batch_size=DEFAULT_CHUNKSIZE):
                writer.write_table(_conform(batch, schema))
        os.replace(partial, out_path)
    finally:
        partial.unlink(missing_ok=True)
    return MergeCounts(changes_file.metadata.num_rows, carried, replaced, len(schema))


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, path)


def extract_for_run(
    config: RegisterConfig,
    out_path: str | Path,
    *,
    source_dir: str | Path,
    engine: Engine,
    full_extract: bool = False,
    chunksize: int = DEFAULT_CHUNKSIZE,
    progress: bool = False,
) -> ExtractResult:
    """Extract one register for a run: whole, or since its watermark and merged (module doc).

    Args:
        config: the register.
        out_path: ``<data-dir>/runs/<run>/extract/<register>.parquet``; the watermark's run
            is looked up beside this run (``<data-dir>/runs/<that run>/extract/``).
        source_dir: folder that relative ``source.path`` values are resolved against.
        engine: the MPI database, where the watermark is read (never written here).
        full_extract: read the source whole even if the register is incremental.
        chunksize, progress: as for :func:`pipelines.extract.extract_register`.

    Returns:
        What was written; ``rows`` counts the whole extract (carried rows included).
        ``extract/<register>.json`` holds the plan and the counts.

    Raises:
        ConfigError, ExtractError: as :func:`pipelines.extract.extract_register`.
    """
    started = time.perf_counter()
    out_path = Path(out_path)
    plan = plan_extract(config, engine, out_path.parents[2], full_extract=full_extract)
    manifest: dict[str, Any] = {
        "register": config.name,
        **{k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(plan).items()},
        "watermark_column": config.incremental.watermark_column if config.incremental else None,
        "config": config_fingerprint(config),
    }
    if plan.mode == "full":
        result = extract_register(config, source_dir, out_path, chunksize=chunksize,
                                  progress=progress)
        manifest.update(rows=result.rows, carried=0, replaced=0, total=result.rows)
        if config.incremental is not None:
            log.info("register %s: full extract: %s", config.name, plan.reason)
    else:
        assert plan.base_extract is not None
        changes = out_path.with_name(out_path.name + ".changes")
        try:
            read = extract_register(config, source_dir, changes, chunksize=chunksize,
                                    progress=progress, since=plan.since)
            counts = merge_changes(changes, plan.base_extract, out_path)
        finally:
            changes.unlink(missing_ok=True)
        result = ExtractResult(
            register=config.name, rows=counts.total, columns=counts.columns,
            seconds=time.perf_counter() - started, path=out_path,
            unparseable=read.unparseable, unknown_codes=read.unknown_codes,
        )
        manifest.update(rows=counts.changed, carried=counts.carried, replaced=counts.replaced,
                        total=counts.total)
        log.info("register %s: incremental extract since the watermark of run %s: %d changed "
                 "rows (%d replace earlier rows), %d carried over", config.name,
                 plan.base_run, counts.changed, counts.replaced, counts.carried)
    _write_json(manifest_path(out_path), manifest)
    return result
