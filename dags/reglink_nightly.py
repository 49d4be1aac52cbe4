"""reglink nightly: extract every register, validate, link, publish the Master Person Index.

One task per step of :mod:`pipelines.steps`; extract and validate are mapped over the
registers configured in ``<config>/registers/`` (read when the run starts, not when this file
is parsed), so each register can be retried on its own::

    list_registers ─► register.extract[i] ─► register.validate[i] ─► validation_gate
      ─► standardise ─► link ─► cluster ─► assign_ids ─► publish ─► consistency ─► report

- The run id is the DAG run's logical date in UTC (``20261127T203000Z``): rerunning a task, or
  the whole DAG run, works on the same run folder and database rows (idempotent steps).
- ``validation_gate`` is the circuit breaker: when a register's batch checks fail the task
  fails at once (no retry) with the reason in its log, and nothing downstream runs, so
  nothing is published.
- Assets: each register's extract (``x-reglink://extract/<register>``, through the alias
  ``reglink_extracts``) and the published index (``x-reglink://mpi/index``), which triggers
  ``reglink_reports``.
- The MPI database is the Airflow connection ``reglink_mpi``; folders come from the Airflow
  variables ``reglink_config``, ``reglink_data_dir``, ``reglink_source_dir`` (else the
  ``REGLINK_*`` environment variables). PostgreSQL sources read the connection named after
  their ``connection_env`` in lower case. See docs/airflow.md.

Parsing this file reads only ``config/airflow.yaml`` (schedule and retries): no connection,
variable or database is touched until a task runs.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import pendulum
from airflow.sdk import (
    Asset,
    AssetAlias,
    BaseHook,
    CronTriggerTimetable,
    Param,
    Variable,
    chain,
    dag,
    get_current_context,
    task,
    task_group,
)
from airflow.sdk.exceptions import AirflowFailException, AirflowNotFoundException

from pipelines import steps
from pipelines.airflow_support import (
    VARIABLES,
    load_airflow_settings,
    run_step,
    source_connection_envs,
    sqlalchemy_url,
    task_context,
)

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = load_airflow_settings(os.environ.get("REGLINK_CONFIG") or ROOT / "config")
MPI_CONNECTION = "reglink_mpi"

EXTRACTS = AssetAlias("reglink_extracts")
INDEX = Asset(name="reglink_mpi_index", uri="x-reglink://mpi/index", group="reglink")


def extract_asset(register: str) -> Asset:
    """The asset of one register's extract."""
    return Asset(name=f"reglink_extract_{register}", uri=f"x-reglink://extract/{register}",
                 group="reglink")


def _connection_uri(conn_id: str) -> str | None:
    try:
        return BaseHook.get_connection(conn_id).get_uri()
    except AirflowNotFoundException:
        return None


def _context() -> tuple[steps.RunContext, dict[str, Any]]:
    """This task's run context, and Airflow's task context."""
    context = get_current_context()
    ctx = task_context(
        context["dag_run"],
        database_uri=_connection_uri(MPI_CONNECTION),
        variables={name: Variable.get(name, default=None) for name in VARIABLES},
        params=context["params"],
        default_root=ROOT,
    )
    return ctx, context


def _final_try(context: dict[str, Any]) -> bool:
    ti = context["ti"]
    return ti.try_number > ti.max_tries


def _step(func, *args: Any) -> dict[str, Any]:
    """Call a step; a mistake in the data or configuration fails the task without retry."""
    ctx, context = _context()
    return run_step(func, ctx, *args, final_try=_final_try(context), fail=AirflowFailException)


RETRY_EXTRACT = {
    "retries": SETTINGS.extract.retries,
    "retry_delay": timedelta(seconds=SETTINGS.extract.retry_delay_seconds),
    "retry_exponential_backoff": 2.0,
    "max_retry_delay": (timedelta(seconds=SETTINGS.extract.max_retry_delay_seconds)
                        if SETTINGS.extract.max_retry_delay_seconds is not None else None),
}


@task
def list_registers() -> list[str]:
    """The registers of ``<config>/registers/``: one extract and one validate task each."""
    ctx, _ = _context()
    return steps.configured_registers(ctx)


@task(outlets=[EXTRACTS], **RETRY_EXTRACT)
def extract(register: str) -> dict[str, Any]:
    """Read one register's source into the run folder (retried with backoff)."""
    ctx, context = _context()
    saved = {}
    for env in source_connection_envs(ctx, register):
        uri = _connection_uri(env.lower())
        if uri:  # else the worker's environment variable of that name is used
            saved[env] = os.environ.get(env)
            os.environ[env] = sqlalchemy_url(uri)
    try:
        # A ReglinkError (a file not there yet, a database that is down) is retried too.
        result = run_step(steps.extract_register_step, ctx, register,
                          final_try=_final_try(context))
    finally:
        for env, value in saved.items():
            if value is None:
                os.environ.pop(env, None)
            else:
                os.environ[env] = value
    context["outlet_events"][EXTRACTS].add(
        extract_asset(register), extra={"run_id": ctx.run_id, "rows": result["rows"]})
    return {"register": register, "rows": result["rows"], "path": result["path"],
            "work_seconds": result["work_seconds"]}


@task
def validate(extracted: dict[str, Any]) -> dict[str, Any]:
    """Validate one register's extract; bad rows go to quarantine, the gate decides."""
    return _step(steps.validate_register_step, extracted["register"])


@task_group
def register(name: str) -> Any:
    """Extract and validate one register."""
    return validate(extract(name))


@task(retries=0)
def validation_gate(validated: list[dict[str, Any]]) -> dict[str, Any]:
    """The circuit breaker: stop the run, publishing nothing, unless every register passed."""
    # ``validated`` only orders the gate after every register; the gate reads the run's
    # validation summary itself.
    return _step(steps.validation_gate_step)


@task
def standardise() -> dict[str, Any]:
    return _step(steps.standardise_step)


@task
def link() -> dict[str, Any]:
    return _step(steps.link_step)


@task
def cluster() -> dict[str, Any]:
    return _step(steps.cluster_step)


@task
def assign_ids() -> dict[str, Any]:
    return _step(steps.assign_ids_step)


@task(outlets=[INDEX])
def publish() -> dict[str, Any]:
    """Replace the published index in one transaction; updates the index asset."""
    result = _step(steps.publish_step)
    get_current_context()["outlet_events"][INDEX].extra = {
        "run_id": result["run_id"], "records": result.get("records"),
        "persons": result.get("persons"), "dag": "reglink_nightly"}
    return result


@task
def consistency() -> dict[str, Any]:
    return _step(steps.consistency_step)


@task
def report() -> dict[str, Any]:
    return _step(steps.report_step)


@dag(
    dag_id="reglink_nightly",
    schedule=CronTriggerTimetable(SETTINGS.nightly.schedule, timezone=SETTINGS.nightly.timezone),
    start_date=pendulum.datetime(SETTINGS.nightly.start_date.year,
                                 SETTINGS.nightly.start_date.month,
                                 SETTINGS.nightly.start_date.day,
                                 tz=SETTINGS.nightly.timezone),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(hours=8),
    default_args={"retries": SETTINGS.tasks.retries,
                  "retry_delay": timedelta(seconds=SETTINGS.tasks.retry_delay_seconds)},
    params={
        "full_relink": Param(False, type="boolean",
                             description="relink every record with a newly trained model"),
        "full_extract": Param(False, type="boolean",
                              description="read incremental registers whole (drops rows "
                              "deleted at the source)"),
    },
    tags=["reglink"],
    doc_md=__doc__,
)
def reglink_nightly() -> None:
    validated = register.expand(name=list_registers())
    chain(validation_gate(validated), standardise(), link(), cluster(), assign_ids(),
          publish(), consistency(), report())


reglink_nightly()
