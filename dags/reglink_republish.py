"""reglink republish: re-cluster and republish the index when steward decisions arrive.

A data steward's must-link / cannot-link decision (console or ``reglink decide``) is applied
by every later run; this DAG applies it the same day instead of the next night. It starts a
new run from the extract of the published run (the sources are not read again)::

    check_decisions ─► prepare ─► validation_gate ─► standardise ─► link ─► cluster
      ─► assign_ids ─► publish ─► consistency ─► report

When it runs: every ``republish.poll`` of ``config/airflow.yaml`` (then only when a decision
was made since the index was published; otherwise every task is skipped), whenever the asset
``x-reglink://mpi/decisions`` is updated (e.g. ``POST /api/v2/assets/events`` from the console
or a script), and on demand (a manual run always republishes). The run id is the DAG run's
time in UTC with ``-republish`` appended. ``publish`` updates the index asset
(``x-reglink://mpi/index``), which triggers ``reglink_reports``.

Parsing this file reads only ``config/airflow.yaml``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pendulum
from airflow.sdk import (
    Asset,
    AssetOrTimeSchedule,
    BaseHook,
    CronTriggerTimetable,
    Variable,
    chain,
    dag,
    get_current_context,
    task,
)
from airflow.sdk.exceptions import AirflowFailException, AirflowNotFoundException

from pipelines import steps
from pipelines.airflow_support import (
    VARIABLES,
    load_airflow_settings,
    pending_decisions,
    run_step,
    seed_from_published_run,
    task_context,
)

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = load_airflow_settings(os.environ.get("REGLINK_CONFIG") or ROOT / "config")
MPI_CONNECTION = "reglink_mpi"
RUN_SUFFIX = "republish"

DECISIONS = Asset(name="reglink_steward_decisions", uri="x-reglink://mpi/decisions",
                  group="reglink")
INDEX = Asset(name="reglink_mpi_index", uri="x-reglink://mpi/index", group="reglink")


def _connection_uri(conn_id: str) -> str | None:
    try:
        return BaseHook.get_connection(conn_id).get_uri()
    except AirflowNotFoundException:
        return None


def _context() -> tuple[steps.RunContext, dict[str, Any]]:
    context = get_current_context()
    ctx = task_context(
        context["dag_run"],
        suffix=RUN_SUFFIX,
        database_uri=_connection_uri(MPI_CONNECTION),
        variables={name: Variable.get(name, default=None) for name in VARIABLES},
        default_root=ROOT,
    )
    return ctx, context


def _step(func: Callable[..., Any]) -> dict[str, Any]:
    ctx, context = _context()
    ti = context["ti"]
    return run_step(func, ctx, final_try=ti.try_number > ti.max_tries,
                    fail=AirflowFailException)


def _step_task(func: Callable[..., Any], **kwargs: Any):
    """A task that runs one step of the run (task id: the step's name)."""

    @task(task_id=func.__name__.removesuffix("_step"), **kwargs)
    def run_one() -> dict[str, Any]:
        return _step(func)

    run_one.__doc__ = func.__doc__
    return run_one


@task.short_circuit
def check_decisions() -> bool:
    """Go on when a decision is pending, or when the run was started by hand."""
    ctx, context = _context()
    found = pending_decisions(ctx)
    manual = str(context["dag_run"].run_type).lower().endswith("manual")
    if found["published_run"] is None:
        log.info("nothing is published yet: nothing to republish")
        return False
    log.info("%d decision(s) since run %s was published%s", found["pending"],
             found["published_run"], "; started by hand" if manual else "")
    return manual or found["pending"] > 0


@task
def prepare() -> dict[str, Any]:
    """Start a run from the published run's extract and validation."""
    return _step(seed_from_published_run)


@task(outlets=[INDEX])
def publish() -> dict[str, Any]:
    """Replace the published index in one transaction; updates the index asset."""
    result = _step(steps.publish_step)
    get_current_context()["outlet_events"][INDEX].extra = {
        "run_id": result["run_id"], "records": result.get("records"),
        "persons": result.get("persons"), "dag": "reglink_republish"}
    return result


def _schedule():
    if SETTINGS.republish.poll is None:
        return [DECISIONS]
    return AssetOrTimeSchedule(
        timetable=CronTriggerTimetable(SETTINGS.republish.poll,
                                       timezone=SETTINGS.nightly.timezone),
        assets=[DECISIONS],
    )


@dag(
    dag_id="reglink_republish",
    schedule=_schedule(),
    start_date=pendulum.datetime(SETTINGS.nightly.start_date.year,
                                 SETTINGS.nightly.start_date.month,
                                 SETTINGS.nightly.start_date.day,
                                 tz=SETTINGS.nightly.timezone),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(hours=4),
    default_args={"retries": SETTINGS.tasks.retries,
                  "retry_delay": timedelta(seconds=SETTINGS.tasks.retry_delay_seconds)},
    tags=["reglink"],
    doc_md=__doc__,
)
def reglink_republish() -> None:
    chain(
        check_decisions(),
        prepare(),
        _step_task(steps.validation_gate_step, retries=0)(),
        _step_task(steps.standardise_step)(),
        _step_task(steps.link_step)(),
        _step_task(steps.cluster_step)(),
        _step_task(steps.assign_ids_step)(),
        publish(),
        _step_task(steps.consistency_step)(),
        _step_task(steps.report_step)(),
    )


reglink_republish()
