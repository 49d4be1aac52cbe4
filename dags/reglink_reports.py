"""reglink reports: downstream work whenever the published index changes.

Scheduled on the index asset ``x-reglink://mpi/index``, which ``publish`` of
``reglink_nightly`` and of ``reglink_republish`` update (the event carries the run id)::

    published_run ─► run_summary
                  └► refresh_bi_statistics

- ``run_summary`` writes ``<data-dir>/reports/<run_id>.json`` and ``latest.json``: what the
  run published and its consistency figures, for dashboards that read files;
- ``refresh_bi_statistics`` runs ``ANALYZE`` on the index tables, so BI tools querying the views
  of the MPI database plan on fresh statistics. Add a site's own BI refresh after it.

Triggered by hand, it reports on the run whose index is published now. Parsing this file
reads nothing.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pendulum
from airflow.sdk import Asset, BaseHook, Variable, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException, AirflowNotFoundException

from pipelines.airflow_support import (
    VARIABLES,
    published_run_id,
    refresh_statistics,
    run_step,
    task_context,
    write_run_summary,
)

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
MPI_CONNECTION = "reglink_mpi"
INDEX = Asset(name="reglink_mpi_index", uri="x-reglink://mpi/index", group="reglink")


def _connection_uri(conn_id: str) -> str | None:
    try:
        return BaseHook.get_connection(conn_id).get_uri()
    except AirflowNotFoundException:
        return None


def _context(run_id: str | None = None):
    context = get_current_context()
    ctx = task_context(
        context["dag_run"],
        suffix="reports",
        database_uri=_connection_uri(MPI_CONNECTION),
        variables={name: Variable.get(name, default=None) for name in VARIABLES},
        default_root=ROOT,
        run_id=run_id,
    )
    return ctx, context


@task
def published_run() -> str:
    """The run that updated the index (from the asset event), else the published one."""
    ctx, context = _context()
    events = context["triggering_asset_events"]
    for event in reversed(list(events[INDEX]) if INDEX in events else []):
        run_id = (event.extra or {}).get("run_id")
        if run_id:
            log.info("index updated by run %s", run_id)
            return str(run_id)
    run_id = published_run_id(ctx)
    if run_id is None:
        raise AirflowFailException("nothing is published yet: no report to make")
    return run_id


@task
def run_summary(reglink_run: str) -> dict[str, Any]:
    ctx, _ = _context(reglink_run)
    return run_step(write_run_summary, ctx, fail=AirflowFailException)


@task
def refresh_bi_statistics(reglink_run: str) -> dict[str, Any]:
    ctx, _ = _context(reglink_run)
    return run_step(refresh_statistics, ctx, fail=AirflowFailException)


@dag(
    dag_id="reglink_reports",
    schedule=[INDEX],
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["reglink"],
    doc_md=__doc__,
)
def reglink_reports() -> None:
    # Not ``run_id``: Airflow reserves that name in a task's arguments.
    reglink_run = published_run()
    run_summary(reglink_run)
    refresh_bi_statistics(reglink_run)


reglink_reports()
