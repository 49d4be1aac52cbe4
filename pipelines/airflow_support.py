"""What the Airflow DAGs need that is not Airflow: settings, run ids, URLs, small steps.

This module does not import Airflow (DESIGN.md: ``dags -> pipelines``). The DAG files read
Airflow's connections and variables inside their tasks and hand the plain values here:

- :func:`load_airflow_settings`: ``<config>/airflow.yaml`` (schedule, timezone, retries);
  the only file a DAG file reads when Airflow parses it;
- :func:`run_id_for`: the reglink run id of a DAG run (UTC time of its logical date);
- :func:`sqlalchemy_url`: an Airflow connection URI as a SQLAlchemy URL;
- :func:`task_context` / :func:`build_context`: the :class:`~pipelines.steps.RunContext` of a
  task, from explicit values, else ``REGLINK_*`` environment variables, else folders under a
  default root;
- the steps of the republish and reports DAGs that ``pipelines.steps`` does not have:
  :func:`pending_decisions`, :func:`seed_from_published_run`, :func:`mark_run_failed`,
  :func:`write_run_summary`, :func:`refresh_statistics`;
- :func:`run_step`: how a task calls a step (timing, JSON-able result, failures recorded).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator

from pipelines.errors import ConfigError, ReglinkError
from pipelines.steps import RunContext

__all__ = [
    "AIRFLOW_FILE",
    "AirflowSettings",
    "build_context",
    "dag_run_id",
    "load_airflow_settings",
    "mark_run_failed",
    "pending_decisions",
    "published_run_id",
    "refresh_statistics",
    "run_id_for",
    "run_step",
    "seed_from_published_run",
    "source_connection_envs",
    "sqlalchemy_url",
    "task_context",
    "write_run_summary",
    "xcom_safe",
]

log = logging.getLogger(__name__)

AIRFLOW_FILE = "airflow.yaml"
#: Tables the BI views read; :func:`refresh_statistics` analyses them after a publish.
INDEX_TABLES = ("persons", "person_records", "mpi_events", "match_pairs",
                "consistency_findings", "consistency_metrics", "runs")


# ------------------------------------------------------------------------------- settings


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _cron(value: str) -> str:
    fields = value.split()
    if len(fields) != 5:
        raise ValueError(f"{value!r} is not a cron expression of 5 fields "
                         "(minute hour day month weekday), e.g. \"30 1 * * *\"")
    return value


class NightlySettings(_Strict):
    schedule: str = "30 1 * * *"
    timezone: str = "UTC"
    start_date: date = date(2026, 1, 1)

    _check_cron = field_validator("schedule")(_cron)

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{value!r} is not an IANA time zone name, e.g. Asia/Dushanbe "
                             "or UTC") from None
        return value


class RetrySettings(_Strict):
    retries: int = Field(1, ge=0, le=20)
    retry_delay_seconds: float = Field(60, ge=0)
    max_retry_delay_seconds: float | None = Field(None, ge=0)


class RepublishSettings(_Strict):
    poll: str | None = "*/30 * * * *"

    @field_validator("poll")
    @classmethod
    def _poll(cls, value: str | None) -> str | None:
        return None if value is None else _cron(value)


class AirflowSettings(_Strict):
    """``<config>/airflow.yaml``: how Airflow schedules and retries reglink's tasks."""

    nightly: NightlySettings = NightlySettings()
    extract: RetrySettings = RetrySettings(retries=3, retry_delay_seconds=120,
                                           max_retry_delay_seconds=1800)
    tasks: RetrySettings = RetrySettings()
    republish: RepublishSettings = RepublishSettings()


def load_airflow_settings(config_dir: str | Path) -> AirflowSettings:
    """Read ``<config_dir>/airflow.yaml``; the defaults when the file is absent.

    Raises:
        ConfigError: the file is not valid YAML or has an unknown key or a bad value.
    """
    import yaml

    path = Path(config_dir) / AIRFLOW_FILE
    if not path.is_file():
        return AirflowSettings()
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    from pydantic import ValidationError

    try:
        return AirflowSettings.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: "
            f"{e['msg'].removeprefix('Value error, ')}" for e in exc.errors())
        raise ConfigError(f"{path}: {problems}") from None


# ------------------------------------------------------------------------ run ids and URLs


def run_id_for(when: datetime, suffix: str = "") -> str:
    """The run id of a DAG run: its logical date in UTC, e.g. ``20261127T203000Z``.

    Args:
        when: a timezone-aware time (the DAG run's logical date, or when it was due).
        suffix: appended after a ``-``, so that runs of another DAG never take the same id.
    """
    if when.tzinfo is None:
        raise ValueError("run_id_for needs a timezone-aware datetime")
    text = when.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{text}-{suffix}" if suffix else text


def sqlalchemy_url(uri: str) -> str:
    """An Airflow connection URI as a SQLAlchemy URL (PostgreSQL through psycopg2).

    ``postgres://`` and ``postgresql://`` become ``postgresql+psycopg2://``; Airflow's own
    ``__extra__`` query parameter is dropped; anything else is returned unchanged.
    """
    parts = urlsplit(uri)
    scheme = parts.scheme
    if scheme in ("postgres", "postgresql"):
        scheme = "postgresql+psycopg2"
    query = urlencode([(k, v) for k, v in parse_qsl(parts.query) if k != "__extra__"])
    return urlunsplit(parts._replace(scheme=scheme, query=query))


def build_context(
    run_id: str,
    *,
    database_url: str | None = None,
    config_dir: str | Path | None = None,
    data_dir: str | Path | None = None,
    source_dir: str | Path | None = None,
    default_root: str | Path = ".",
    full_relink: bool = False,
    full_extract: bool = False,
    data_docs: bool = True,
) -> RunContext:
    """The run's context from explicit values (Airflow variables, the ``reglink_mpi``
    connection), else ``REGLINK_CONFIG`` / ``REGLINK_DATA_DIR`` / ``REGLINK_SOURCE_DIR`` /
    ``REGLINK_DATABASE_URL``, else ``<default_root>/config`` and ``<default_root>/data``
    (and SQLite in the data folder)."""
    root = Path(default_root)
    config = config_dir or os.environ.get("REGLINK_CONFIG") or root / "config"
    data = data_dir or os.environ.get("REGLINK_DATA_DIR") or root / "data"
    source = source_dir or os.environ.get("REGLINK_SOURCE_DIR") or None
    url = database_url or os.environ.get("REGLINK_DATABASE_URL") or None
    return RunContext(
        run_id=run_id,
        config_dir=Path(config).resolve(),
        data_dir=Path(data).resolve(),
        database_url=url,
        source_dir=Path(source).resolve() if source else None,
        full_relink=full_relink,
        full_extract=full_extract,
        data_docs=data_docs,
    )


#: Airflow variables a task reads (at run time), and the context field each one sets.
VARIABLES = {"reglink_config": "config_dir", "reglink_data_dir": "data_dir",
             "reglink_source_dir": "source_dir"}


def dag_run_id(dag_run: Any, suffix: str = "") -> str:
    """The run id of an Airflow DAG run (duck-typed: ``logical_date``, ``run_after``).

    A run triggered by hand in Airflow 3 may have no logical date: then the time it was
    due (``run_after``) names it.
    """
    when = getattr(dag_run, "logical_date", None) or getattr(dag_run, "run_after", None)
    if when is None:
        raise ValueError("the DAG run has neither a logical date nor a run_after time")
    return run_id_for(when, suffix)


def task_context(
    dag_run: Any,
    *,
    suffix: str = "",
    database_uri: str | None = None,
    variables: Mapping[str, str | None] | None = None,
    params: Mapping[str, Any] | None = None,
    default_root: str | Path = ".",
    run_id: str | None = None,
) -> RunContext:
    """The :class:`RunContext` of an Airflow task, from plain values its DAG file read.

    Args:
        dag_run: the task's DAG run (names the run, see :func:`dag_run_id`).
        suffix: set by a DAG other than the nightly one, so that its run ids differ.
        database_uri: the URI of the ``reglink_mpi`` connection, None when there is none.
        variables: the Airflow variables of :data:`VARIABLES` (None: not set).
        params: the DAG run's params (``full_relink``, ``full_extract``, ``data_docs``).
        default_root: where ``config/`` and ``data/`` are when nothing else says.
        run_id: the reglink run to work on, instead of the DAG run's own.
    """
    values = {field: (variables or {}).get(name) or None for name, field in VARIABLES.items()}
    params = params or {}
    return build_context(
        run_id or dag_run_id(dag_run, suffix),
        database_url=sqlalchemy_url(database_uri) if database_uri else None,
        default_root=default_root,
        full_relink=bool(params.get("full_relink", False)),
        full_extract=bool(params.get("full_extract", False)),
        data_docs=bool(params.get("data_docs", True)),
        **values,
    )


def run_step(
    step: Callable[..., Any],
    ctx: RunContext,
    *args: Any,
    final_try: bool = True,
    fail: Callable[[str], BaseException] | None = None,
) -> Any:
    """Run one step for an Airflow task.

    The result becomes JSON types (an XCom), with ``work_seconds``: the step's own time,
    which Airflow's task duration can be compared with. On failure the run is marked
    failed in ``runs`` once no retry is left.

    Args:
        step: a step of :mod:`pipelines.steps` (or of this module), called as
            ``step(ctx, *args)``.
        final_try: False while Airflow will still retry the task.
        fail: builds the exception raised for a :class:`ReglinkError` (a mistake in the data
            or configuration), e.g. Airflow's ``AirflowFailException`` so that it is not
            retried; None: the ReglinkError itself is raised (and retried).
    """
    name = getattr(step, "__name__", "step").removesuffix("_step")
    started = time.perf_counter()
    try:
        result = step(ctx, *args)
    except ReglinkError as exc:
        log.error("run %s: %s failed: %s", ctx.run_id, name, exc)
        if final_try or fail is not None:
            mark_run_failed(ctx, f"{name}: {exc}")
        if fail is None:
            raise
        raise fail(f"{name}: {exc}") from exc
    except Exception as exc:
        if final_try:
            mark_run_failed(ctx, f"{name}: {type(exc).__name__} (see the task log)")
        raise
    result = xcom_safe(result)
    if isinstance(result, dict):
        result["work_seconds"] = round(time.perf_counter() - started, 3)
    return result


def source_connection_envs(ctx: RunContext, register: str) -> list[str]:
    """Environment variables a register's PostgreSQL source reads its URL from.

    The DAG fills each from the Airflow connection of the same name in lower case
    (``connection_env: PENSION_DB_URL`` → connection ``pension_db_url``). Empty for files.
    """
    from pipelines.registers import load_register_configs

    config = load_register_configs(ctx.config_dir).get(register)
    if config is None or config.source.kind != "postgres":
        return []
    return [config.source.connection_env]


def xcom_safe(value: Any) -> Any:
    """A step's result as plain JSON types (numpy numbers become Python numbers)."""

    def default(obj: Any) -> Any:
        if hasattr(obj, "item"):
            return obj.item()
        if hasattr(obj, "tolist"):
            return obj.tolist()
        return str(obj)

    return json.loads(json.dumps(value, default=default))


# ---------------------------------------------------------------------------- small steps


def mark_run_failed(ctx: RunContext, message: str) -> bool:
    """Record in ``runs`` that the run failed (unless it is already published).

    Returns whether the run's row was changed. Never raises: the task's own error is the
    one the operator needs.
    """
    import sqlalchemy as sa

    from pipelines.steps import engine_for
    from pipelines.store import repository as repo
    from pipelines.store import schema

    try:
        with engine_for(ctx).begin() as conn:
            status = conn.execute(sa.select(schema.runs.c.status).where(
                schema.runs.c.run_id == ctx.run_id)).scalar_one_or_none()
            if status is None or status == "published":
                return False
            repo.finish_run(conn, ctx.run_id, "failed", message=message[:2000])
            return True
    except Exception:  # noqa: BLE001 - the task's error matters more than this one
        log.exception("run %s: could not record the failure", ctx.run_id)
        return False


def published_run_id(ctx: RunContext) -> str | None:
    """The run whose index is published now (None before the first publish)."""
    from pipelines.steps import engine_for
    from pipelines.store import repository as repo

    with engine_for(ctx).connect() as conn:
        return repo.last_published_run(conn)


def pending_decisions(ctx: RunContext) -> dict[str, Any]:
    """Steward decisions made since the current index's run started (not yet applied).

    Returns ``{"published_run", "pending"}``; ``published_run`` is None before the first
    publish (then there is nothing to republish).
    """
    import sqlalchemy as sa

    from pipelines.steps import engine_for
    from pipelines.store import repository as repo
    from pipelines.store import schema

    with engine_for(ctx).connect() as conn:
        last = repo.last_published_run(conn)
        if last is None:
            return {"published_run": None, "pending": 0}
        started = conn.execute(sa.select(schema.runs.c.started_at).where(
            schema.runs.c.run_id == last)).scalar_one()
        t = schema.review_decisions
        # A decision the last run's cluster step already read may count once more: one
        # extra republish changes nothing, a missed decision would wait for the night.
        pending = conn.execute(sa.select(sa.func.count()).select_from(t).where(
            t.c.decided_at >= started)).scalar_one()
    return {"published_run": last, "pending": int(pending)}


def seed_from_published_run(ctx: RunContext) -> dict[str, Any]:
    """Start ``ctx``'s run from the current index's extract and validation, to re-cluster
    and republish it (with the steward decisions made since) without reading the sources.

    Copies ``extract/`` and ``validate/`` (files only, not Data Docs) of the last published
    run into this run's folder, replacing what was there, and records the run.

    Raises:
        ReglinkError: nothing is published yet, or the published run's folder is gone.
    """
    from pipelines.steps import engine_for, ensure_run
    from pipelines.store import repository as repo

    with engine_for(ctx).connect() as conn:
        base = repo.last_published_run(conn)
    if base is None:
        raise ReglinkError("nothing is published yet: run the nightly DAG (or `reglink run`) "
                           "before republishing")
    if base == ctx.run_id:
        return {"base_run": base, "copied": 0, "already_published": True}
    source = ctx.data_dir / "runs" / base
    copied = 0
    for part in ("extract", "validate"):
        if not (source / part).is_dir():
            raise ReglinkError(f"{source / part} not found: the published run's folder is "
                               "needed to republish; run the nightly DAG instead")
        target = ctx.run_dir / part
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        for path in sorted((source / part).iterdir()):
            if path.is_file() and not path.name.startswith("."):
                shutil.copy2(path, target / path.name)
                copied += 1
    _rename_run(ctx.run_dir / "validate", base, ctx.run_id)
    ensure_run(ctx)
    log.info("run %s: starts from the extract of published run %s (%d files)", ctx.run_id,
             base, copied)
    return {"base_run": base, "copied": copied}


def _rename_run(validate_dir: Path, old: str, new: str) -> None:
    """Make the copied validation files say they belong to the new run."""
    import pandas as pd

    summary = validate_dir / "summary.json"
    if summary.is_file():
        data = json.loads(summary.read_text(encoding="utf-8"))
        if data.get("run_id") == old:
            data["run_id"] = new
            summary.write_text(json.dumps(data, indent=2, ensure_ascii=False),
                               encoding="utf-8")
    quarantine = validate_dir / "quarantine.parquet"
    if quarantine.is_file():
        frame = pd.read_parquet(quarantine)
        if "run_id" in frame.columns:
            frame["run_id"] = new
            frame.to_parquet(quarantine, index=False)


def _published_counts(ctx: RunContext, run_id: str) -> dict[str, Any]:
    import sqlalchemy as sa

    from pipelines.steps import engine_for
    from pipelines.store import schema

    with engine_for(ctx).connect() as conn:
        row = conn.execute(sa.select(schema.runs.c.status, schema.runs.c.counts,
                                     schema.runs.c.finished_at)
                           .where(schema.runs.c.run_id == run_id)).one_or_none()
    if row is None:
        raise ReglinkError(f"run {run_id!r} is not in the MPI database")
    return {"status": row.status, "counts": row.counts or {},
            "finished_at": row.finished_at.isoformat() if row.finished_at else None}


def write_run_summary(ctx: RunContext) -> dict[str, Any]:
    """Write ``<data-dir>/reports/<run_id>.json`` and ``latest.json``: what the run
    published and its consistency figures, for dashboards that read files.

    Raises:
        ReglinkError: the run is not in the database or was not published.
    """
    info = _published_counts(ctx, ctx.run_id)
    if info["status"] != "published":
        raise ReglinkError(f"run {ctx.run_id} is {info['status']}, not published: no report")
    counts = info["counts"]
    published = counts.get("published", {})
    summary = {
        "run_id": ctx.run_id,
        "published_at": published.get("published_at") or info["finished_at"],
        "records": published.get("records"),
        "persons": published.get("persons"),
        "events": published.get("events"),
        "registers": published.get("registers"),
        "consistency": counts.get("consistency"),
        "run_dir": str(ctx.run_dir),
    }
    folder = ctx.data_dir / "reports"
    folder.mkdir(parents=True, exist_ok=True)
    text = json.dumps(summary, indent=2, ensure_ascii=False, default=str)
    for name in (f"{ctx.run_id}.json", "latest.json"):
        tmp = folder / f".{name}.tmp"
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, folder / name)
    return {"run_id": ctx.run_id, "path": str(folder / f"{ctx.run_id}.json"),
            "records": summary["records"], "persons": summary["persons"]}


def refresh_statistics(ctx: RunContext) -> dict[str, Any]:
    """``ANALYZE`` the index tables, so BI queries over the views plan on fresh statistics."""
    import sqlalchemy as sa

    from pipelines.steps import engine_for

    engine = engine_for(ctx)
    existing = set(sa.inspect(engine).get_table_names())
    tables = [t for t in INDEX_TABLES if t in existing]
    with engine.begin() as conn:
        for table in tables:
            conn.execute(sa.text(f"ANALYZE {table}"))
    return {"dialect": engine.dialect.name, "analyzed": tables}

