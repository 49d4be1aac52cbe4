"""The steps of one nightly run as plain, idempotent functions (DESIGN.md, "One run").

Each step takes a :class:`RunContext` and returns a small JSON-able dict of counts and paths
(in Airflow these become XComs; never DataFrames). Steps hand data to each other through the
run's folder, ``<data-dir>/runs/<run_id>/<step>/``, and the MPI database:

==================  ==========================================================================
step                writes
==================  ==========================================================================
extract (per reg.)  ``extract/<register>.parquet``; the run's row in ``runs`` (status running)
validate (per reg.) ``validate/<register>.parquet``, ``quarantine.parquet``, ``summary.json``
validation gate     quarantine rows in the database; ``runs.status = validated``, or failed
standardise         ``standardise/records.parquet`` (+ a content hash per record)
link                ``link/model.json``, ``link/pairs.parquet``, ``link/report.json``
cluster             ``cluster/crosswalk.parquet`` (+ ``crosswalk.csv``), steward decisions applied
assign IDs          ``assign/``: person_records, persons (golden), events, summary.json
publish             one transaction: the index, events, pairs, watermarks; status published
consistency         findings and metrics (``pipelines.consistency``)
report              the run's reports (``pipelines.consistency``)
==================  ==========================================================================

Re-running a step, or the whole run, gives the same result: files are replaced whole, the
database is upserted or replaced per run, and a run that is already published is published
again unchanged (no new IDs, no new events).

This module imports nothing heavy at the top, so that a DAG file may import it cheaply.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipelines.errors import ReglinkError

log = logging.getLogger(__name__)

#: At most this many registers are extracted at once by :func:`run_all`.
MAX_EXTRACT_WORKERS = 4

__all__ = [
    "RunContext",
    "assign_ids_step",
    "cluster_step",
    "configured_registers",
    "consistency_step",
    "extract_register_step",
    "link_step",
    "publish_step",
    "report_step",
    "run_all",
    "standardise_step",
    "validate_register_step",
    "validation_gate_step",
]


@dataclass(frozen=True)
class RunContext:
    """Everything a step needs to know about the run it belongs to.

    Attributes:
        run_id: the run, e.g. ``20261127T120000Z`` (sorts by time).
        config_dir: the configuration folder (``registers/*.yaml``, ``linkage.yaml``).
        data_dir: holds ``runs/`` and, by default, the SQLite MPI database.
        database_url: the MPI database; None: SQLite in ``data_dir``.
        source_dir: where relative extract paths are read; None: ``$REGLINK_SOURCE_DIR``,
            else ``<data_dir>/source``.
        seed: seed of every random choice; None: the seed of ``linkage.yaml``.
        full_relink: relink every record with a newly trained model instead of linking
            only the changed records against the index with the saved model.
        data_docs: build Great Expectations Data Docs when validating.
        full_extract: read incremental registers whole (drops rows deleted at the source).
    """

    run_id: str
    config_dir: Path = Path("config")
    data_dir: Path = Path("data")
    database_url: str | None = None
    source_dir: Path | None = None
    seed: int | None = None
    full_relink: bool = False
    data_docs: bool = True
    full_extract: bool = False

    def __post_init__(self) -> None:
        # Airflow hands strings over; keep Paths inside.
        object.__setattr__(self, "config_dir", Path(self.config_dir))
        object.__setattr__(self, "data_dir", Path(self.data_dir))
        if self.source_dir is not None:
            object.__setattr__(self, "source_dir", Path(self.source_dir))

    @property
    def run_dir(self) -> Path:
        return self.data_dir / "runs" / self.run_id

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (paths as text), e.g. to pass between Airflow tasks."""
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunContext:
        return cls(**data)


# ------------------------------------------------------------------------------------ helpers


def _settings_path(ctx: RunContext) -> Path:
    path = ctx.config_dir / "linkage.yaml"
    if not path.is_file():
        raise ReglinkError(f"{path} not found: the linkage settings are needed (copy "
                           "config/linkage.yaml of the repository and adapt it)")
    return path


def _seed(ctx: RunContext) -> int:
    if ctx.seed is not None:
        return int(ctx.seed)
    from matching.settings import LinkageSettings

    return int(LinkageSettings.from_yaml(_settings_path(ctx)).seed)


def _source_dir(ctx: RunContext) -> Path:
    if ctx.source_dir is not None:
        return ctx.source_dir
    from pipelines.extract_command import default_source_dir

    return default_source_dir(ctx.data_dir)


_ENGINES: dict[str, Any] = {}


def engine_for(ctx: RunContext):
    """The MPI database engine of the run (one per process and URL), migrated to the head.

    Migrating here means a newcomer's first ``reglink run`` on SQLite just works; on an
    up-to-date database the upgrade changes nothing.
    """
    from pipelines.store import database_url, make_engine, upgrade

    url = database_url(ctx.data_dir, ctx.database_url)
    if url not in _ENGINES:
        ctx.data_dir.mkdir(parents=True, exist_ok=True)
        engine = make_engine(url)
        upgrade(engine)
        _ENGINES[url] = engine
    return _ENGINES[url]


def close_engines() -> None:
    """Close this process's pooled MPI database connections (``engine_for`` opens new ones
    when next asked): PostgreSQL copies or drops a database only when nobody is connected."""
    while _ENGINES:
        _ENGINES.popitem()[1].dispose()


def config_hash(config_dir: Path) -> str:
    """A hash of every file of the configuration folder (names and contents)."""
    import hashlib

    h = hashlib.sha256()
    for path in sorted(p for p in Path(config_dir).rglob("*") if p.is_file()):
        h.update(str(path.relative_to(config_dir)).encode())
        h.update(b"\0")
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def ensure_run(ctx: RunContext) -> str:
    """Record the run in ``runs`` (status running) unless it is already there.

    A failed run that is started again goes back to ``running``; a published run is left
    alone (re-running it republishes the same index). Returns the run's status.
    """
    import sqlalchemy as sa

    from pipelines.store import repository as repo
    from pipelines.store import schema

    engine = engine_for(ctx)
    with engine.begin() as conn:
        status = conn.execute(
            sa.select(schema.runs.c.status).where(schema.runs.c.run_id == ctx.run_id)
        ).scalar_one_or_none()
        if status is None or status == "failed":
            repo.start_run(conn, ctx.run_id, seed=_seed(ctx),
                           config_hash=config_hash(ctx.config_dir))
            status = "running"
    return status


def _fail_run(ctx: RunContext, message: str) -> None:
    from pipelines.store import repository as repo

    try:
        with engine_for(ctx).begin() as conn:
            repo.finish_run(conn, ctx.run_id, "failed", message=message)
    except Exception:  # noqa: BLE001 - the original error matters more than this one
        log.exception("run %s: could not record the failure", ctx.run_id)


@contextmanager
def _run_lock(ctx: RunContext, name: str) -> Iterator[None]:
    """An exclusive file lock in the run folder: parallel tasks of one run take turns."""
    ctx.run_dir.mkdir(parents=True, exist_ok=True)
    with open(ctx.run_dir / f".{name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str, ensure_ascii=False))
    os.replace(tmp, path)


# -------------------------------------------------------------------------------------- steps


def configured_registers(ctx: RunContext) -> list[str]:
    """Names of the registers in ``<config>/registers/`` (one extract task each)."""
    from pipelines.registers import load_register_configs

    return sorted(load_register_configs(ctx.config_dir))


def extract_register_step(ctx: RunContext, register: str) -> dict[str, Any]:
    """Read one register's extract into ``extract/<register>.parquet``."""
    from pipelines.incremental_source import extract_for_run
    from pipelines.registers import load_register_configs

    configs = load_register_configs(ctx.config_dir)
    if register not in configs:
        raise ReglinkError(f"no register named {register!r} in {ctx.config_dir / 'registers'}; "
                           f"configured: {', '.join(sorted(configs))}")
    ensure_run(ctx)
    out = ctx.run_dir / "extract" / f"{register}.parquet"
    result = extract_for_run(configs[register], out, source_dir=_source_dir(ctx),
                             engine=engine_for(ctx), full_extract=ctx.full_extract)
    log.info("extract %s: %d rows (%.1f s)", register, result.rows, result.seconds)
    return {"register": register, "rows": result.rows, "path": str(result.path),
            "seconds": round(result.seconds, 2)}


def _validate(ctx: RunContext, registers: list[str] | None, data_docs: bool) -> dict[str, Any]:
    from pipelines.errors import CircuitBreakerError
    from pipelines.registers import load_register_configs
    from pipelines.validate import validate_run

    configs = load_register_configs(ctx.config_dir)
    # validate_run merges each call into one summary.json: parallel tasks must take turns.
    with _run_lock(ctx, "validate"):
        try:
            result = validate_run(
                ctx.data_dir, ctx.run_id, configs, config_dir=ctx.config_dir,
                registers=registers, data_docs=data_docs,
                previous_run_dir=None if ctx.full_relink else _base_run_dir(ctx),
            )
        except CircuitBreakerError as exc:
            # The gate stops the run; the other registers still get their report.
            log.warning("run %s: validation failed (circuit breaker)", ctx.run_id)
            return {"status": "failed", "registers": registers, "message": str(exc)}
    return {
        "status": result.status,
        "registers": {name: {"extracted": r.extracted, "passed": r.passed,
                             "quarantined": r.quarantined}
                      for name, r in result.registers.items()},
    }


def validate_register_step(ctx: RunContext, register: str) -> dict[str, Any]:
    """Validate one register's extract (quarantine, batch checks); never raises on bad data.

    A batch-level failure is recorded in ``validate/summary.json``; the validation gate
    stops the run. Data Docs are not built per register (each call would replace the
    others' pages); :func:`run_all` validates every register at once and builds them.
    """
    return _validate(ctx, [register], data_docs=False)


def validation_gate_step(ctx: RunContext) -> dict[str, Any]:
    """The circuit breaker: stop the run unless every register passed validation.

    Records the run's quarantined rows in the database and sets the run ``validated``.

    Raises:
        ValidationError: validation failed or is incomplete; the run is marked failed.
    """
    import pandas as pd

    from pipelines.errors import ValidationError
    from pipelines.store import repository as repo
    from pipelines.validate import require_validated

    status = ensure_run(ctx)
    try:
        folder = require_validated(ctx.run_dir)
    except ValidationError as exc:
        _fail_run(ctx, str(exc))
        summary = ctx.run_dir / "validate" / "summary.json"
        detail = ""
        if summary.is_file():
            failed = {k: [c.get("message") or c.get("check") for c in v.get("checks", [])
                          if not c.get("ok")]
                      for k, v in json.loads(summary.read_text())["registers"].items()
                      if v.get("status") != "passed"}
            detail = "; ".join(f"{k}: {', '.join(map(str, v)) or 'row conservation'}"
                               for k, v in failed.items())
        raise ValidationError(f"{exc}{' — ' + detail if detail else ''}") from None
    summary = json.loads((folder / "summary.json").read_text())
    quarantine_path = folder / "quarantine.parquet"
    quarantine = (pd.read_parquet(quarantine_path) if quarantine_path.is_file()
                  else pd.DataFrame(columns=list(repo.QUARANTINE_COLUMNS)))
    counts = {name: {k: v.get(k) for k in ("extracted", "passed", "quarantined")}
              for name, v in summary["registers"].items()}
    with engine_for(ctx).begin() as conn:
        n = repo.record_quarantine(conn, ctx.run_id, quarantine) if len(quarantine) else 0
        if status != "published":
            repo.finish_run(conn, ctx.run_id, "validated", {"validated": counts})
    quarantined = sum(int(c.get("quarantined") or 0) for c in counts.values())
    flagged = int((quarantine["severity"] == "warning").sum()) if len(quarantine) else 0
    return {"status": "passed", "quarantined_records": quarantined, "flagged_fields": flagged,
            "quarantine_entries": n, "registers": counts}


def standardise_step(ctx: RunContext) -> dict[str, Any]:
    """Standardise the validated records into ``standardise/records.parquet``, with a
    content hash per record (what the incremental link compares)."""
    from pipelines.link import standardise_run

    return standardise_run(ctx.run_dir)


def _base_run_dir(ctx: RunContext) -> Path | None:
    """The folder of the run whose index is the current one (None on the first run)."""
    from pipelines.mpi.ids import base_run

    with engine_for(ctx).connect() as conn:
        base = base_run(conn, ctx.run_id, ctx.data_dir)
    return ctx.data_dir / "runs" / base if base else None


def link_step(ctx: RunContext) -> dict[str, Any]:
    """Score candidate pairs: only those touching changed records, with the saved model of
    the previous run (incremental), or every pair with a newly trained model (full)."""
    from pipelines.link import link_records

    return link_records(ctx.run_dir, _settings_path(ctx), seed=_seed(ctx),
                        previous_run_dir=None if ctx.full_relink else _base_run_dir(ctx))


def cluster_step(ctx: RunContext) -> dict[str, Any]:
    """Cluster the linked pairs, applying every current steward decision."""
    from pipelines.link import cluster_run
    from pipelines.mpi.decisions import current_decisions

    with engine_for(ctx).connect() as conn:
        decisions = current_decisions(conn)
    return cluster_run(ctx.run_dir, _settings_path(ctx), decisions=decisions)


def assign_ids_step(ctx: RunContext) -> dict[str, Any]:
    """Map clusters to MPI IDs, write events and golden records to ``assign/``."""
    from pipelines.mpi.ids import assign_run
    from pipelines.registers import load_register_configs

    configs = load_register_configs(ctx.config_dir)
    return assign_run(engine_for(ctx), ctx.run_id, ctx.run_dir, configs,
                      config_dir=ctx.config_dir)


def publish_step(ctx: RunContext) -> dict[str, Any]:
    """Replace the current index with this run's, in one transaction."""
    from pipelines.mpi.publish import publish_run

    return publish_run(engine_for(ctx), ctx.run_id, ctx.run_dir)


def _consistency(ctx: RunContext, what: str, evaluation: Any = None) -> dict[str, Any]:
    try:
        from pipelines.consistency import run_consistency
    except ImportError as exc:
        log.warning("%s: pipelines.consistency could not be imported (%s), skipped", what, exc)
        return {"skipped": f"pipelines.consistency is not available: {exc}"}
    result = run_consistency(engine_for(ctx), ctx.run_id, ctx.run_dir, ctx.config_dir,
                             evaluation=evaluation)
    return dict(result or {})


def consistency_step(ctx: RunContext, evaluation: Any = None) -> dict[str, Any]:
    """Cross-register consistency rules over the published index.

    ``evaluation``: the rules already evaluated on the assignment the run published
    (:func:`pipelines.consistency.evaluate_assignment`); then only its rows are written."""
    return _consistency(ctx, "consistency", evaluation)


def _evaluate_assignment(ctx: RunContext) -> Any:
    from pipelines.consistency import evaluate_assignment

    return evaluate_assignment(engine_for(ctx), ctx.run_id, ctx.run_dir, ctx.config_dir)


@contextmanager
def _consistency_beside_publish(ctx: RunContext, assigned: dict[str, Any]
                                ) -> Iterator[Callable[[], Any]]:
    """On a nightly run, evaluate the consistency rules on the run's assignment while it is
    being published: publish mostly waits for the database, the evaluation mostly computes
    (1M persons: about 5 s of the consistency step's 7 s move beside publish). Yields a
    function that gives the evaluation, or None when there is none to use. A first run
    does not: its publish loads the whole country and needs the memory."""
    if assigned.get("index_run") is None:
        yield lambda: None
        return
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(1, thread_name_prefix="consistency")
    future = pool.submit(_evaluate_assignment, ctx)

    def evaluation() -> Any:
        try:
            return future.result()
        except Exception as exc:  # evaluated again after publish, where errors are reported
            log.warning("consistency beside publish failed (%s); evaluating after publish",
                        type(exc).__name__)
            return None

    try:
        yield evaluation
    finally:
        pool.shutdown(wait=True)  # also after a failed publish: nothing outlives the run


def report_step(ctx: RunContext) -> dict[str, Any]:
    """The run's report. Consistency writes it; this step only says where it is."""
    report = ctx.run_dir / "report"
    return {"run_dir": str(ctx.run_dir),
            "report_dir": str(report) if report.is_dir() else None}


@dataclass
class RunSummary:
    """What :func:`run_all` did: each step's result and seconds."""

    run_id: str
    steps: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def _release_memory(arrow: bool = True) -> None:
    """Collect what a finished step left behind; with ``arrow``, give the memory Arrow's
    allocator keeps back to the system, so that the next step's peak does not stack on it.

    A full run needs that for its peak. An incremental run's steps hold far less, and
    taking memory back from the system costs a page fault per page (seconds per GB on a
    virtual machine that returns freed memory to its host): it keeps Arrow's memory for
    the next step. That only pays when Arrow's allocator is told to keep freed memory
    (``MIMALLOC_PURGE_DELAY``, which ``reglink run`` sets for an incremental run:
    pipelines/memory.py): 1M persons, about 5 s less."""
    import gc

    gc.collect()
    # What survives a step is mostly imported modules (Great Expectations alone is hundreds
    # of thousands of objects): frozen, the next collection does not walk them again
    # (2 s over an incremental run at 1M). run_all unfreezes them when it ends.
    gc.freeze()
    if arrow:
        _release_arrow_memory()


def _release_arrow_memory() -> None:
    """Give the memory Arrow's allocator keeps (freed, not yet returned) to the system."""
    import sys

    if "pyarrow" in sys.modules:
        sys.modules["pyarrow"].default_memory_pool().release_unused()


def _extract_all(ctx: RunContext, registers: list[str]) -> dict[str, Any]:
    """Extract every register, two or more at a time when the machine has the cores (the
    registers are independent, as the Airflow DAG's mapped tasks are). Threads suffice:
    parsing and Arrow work release the GIL (measured: 14.6 s → 8.6 s for a
    200,000-person country on 2 cores)."""
    workers = min(len(registers), os.cpu_count() or 1, MAX_EXTRACT_WORKERS)
    if workers < 2:
        return {r: extract_register_step(ctx, r) for r in registers}
    from concurrent.futures import ThreadPoolExecutor

    ensure_run(ctx)  # once, before the threads: they would race to create the run's row
    with ThreadPoolExecutor(workers, thread_name_prefix="extract") as pool:
        futures = {r: pool.submit(extract_register_step, ctx, r) for r in registers}
        return {r: futures[r].result() for r in registers}


def run_all(ctx: RunContext, *, on_step: Callable[[str], None] | None = None) -> RunSummary:
    """The whole nightly run, step by step, in this process (no Airflow).

    Args:
        ctx: the run.
        on_step: called with each step's name before it starts (progress for the CLI).

    Raises:
        ReglinkError: a step failed because of the data or the configuration; the run is
            marked failed in the database, nothing is published.
    """
    summary = RunSummary(ctx.run_id)
    # Whether the run links incrementally: its steps then keep Arrow's freed memory
    # (_release_memory). Known for sure once link has run; until then, from the base run.
    incremental = not ctx.full_relink and _base_run_dir(ctx) is not None

    def step(name: str, func: Callable[[], Any]) -> Any:
        nonlocal incremental
        if on_step:
            on_step(name)
        t = time.perf_counter()
        try:
            result = func()
        except Exception as exc:
            if name not in ("registers", "validation_gate"):  # the gate records its own
                _fail_run(ctx, f"{name}: {exc}" if isinstance(exc, ReglinkError)
                          else f"{name}: {type(exc).__name__} (see the log)")
            raise
        summary.seconds[name] = round(time.perf_counter() - t, 2)
        summary.steps[name] = result
        if name == "link":
            incremental = result.get("mode") == "incremental"
        _release_memory(arrow=not incremental)
        log.info("run %s: %s done (%.1f s)", ctx.run_id, name, summary.seconds[name])
        return result

    import gc

    try:
        registers = step("registers", lambda: configured_registers(ctx))
        step("extract", lambda: _extract_all(ctx, registers))
        step("validate", lambda: _validate(ctx, None, data_docs=ctx.data_docs))
        step("validation_gate", lambda: validation_gate_step(ctx))
        step("standardise", lambda: standardise_step(ctx))
        step("link", lambda: link_step(ctx))
        step("cluster", lambda: cluster_step(ctx))
        assigned = step("assign_ids", lambda: assign_ids_step(ctx))
        with _consistency_beside_publish(ctx, assigned) as evaluation:
            step("publish", lambda: publish_step(ctx))
            step("consistency", lambda: consistency_step(ctx, evaluation()))
        step("report", lambda: report_step(ctx))
    finally:
        gc.unfreeze()  # what _release_memory froze is collectable again after the run
        _release_arrow_memory()  # what an incremental run kept is not kept past it
    _write_json(ctx.run_dir / "run.json", {"run_id": ctx.run_id, "context": ctx.to_dict(),
                                           "steps": summary.steps, "seconds": summary.seconds})
    return summary
