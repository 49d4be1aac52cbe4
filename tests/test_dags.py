"""The Airflow DAGs of dags/: they import cleanly, parse without touching anything, have the
task graph we expect, and run end to end with ``dag.test()``.

Airflow reads its configuration when it is first imported, so everything Airflow runs in a
child process with its own ``AIRFLOW_HOME`` (a temporary folder, metadata on SQLite): the
other tests of this session cannot have configured it first, and this file cannot configure
it for them. The MPI database of the full run is a real PostgreSQL database.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml

ROOT = Path(__file__).resolve().parents[1]
DAGS = ROOT / "dags"
CONFIG = ROOT / "config"


def airflow_env(home: Path, **extra: str) -> dict[str, str]:
    """Environment of a child process running Airflow in ``home``."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AIRFLOW", "REGLINK_"))}
    env.update({
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "PATH": f"{Path(sys.executable).parent}:{env.get('PATH', '')}",
    })
    env.update(extra)
    return env


def run_child(code: str, env: dict[str, str], timeout: int = 300) -> dict:
    """Run ``code`` in a fresh interpreter; it writes its findings as JSON to $RESULT."""
    result = Path(env["AIRFLOW_HOME"]) / "result.json"
    script = Path(env["AIRFLOW_HOME"]) / "child.py"
    script.write_text(textwrap.dedent(code))
    proc = subprocess.run([sys.executable, str(script)], env={**env, "RESULT": str(result)},
                          cwd=env["AIRFLOW_HOME"], capture_output=True, text=True,
                          timeout=timeout)
    (Path(env["AIRFLOW_HOME"]) / "child.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0 or not result.is_file():
        pytest.fail(f"child exited {proc.returncode}:\n{proc.stderr[-6000:]}")
    return json.loads(result.read_text())


# ---------------------------------------------------------------- import, parse, graph

PARSE = """
import json, os, socket

# Anything that would reach a database, a connection or a variable while the DAG files
# are parsed is recorded (and refused).
touched = []

def refuse(what):
    def stop(*args, **kwargs):
        touched.append(what)
        raise RuntimeError(f"{what} at parse time")
    return stop

socket.socket.connect = refuse("socket.connect")
import sqlalchemy.engine
sqlalchemy.engine.Engine.connect = refuse("Engine.connect")
from airflow.sdk import BaseHook, Variable
BaseHook.get_connection = classmethod(refuse("BaseHook.get_connection"))
Variable.get = staticmethod(refuse("Variable.get"))

from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
dags = {}
for dag_id, dag in bag.dags.items():
    dags[dag_id] = {
        "file": os.path.basename(dag.fileloc),
        "edges": sorted([u, t.task_id] for t in dag.tasks for u in t.upstream_task_ids),
        "tasks": sorted(dag.task_ids),
        "mapped": sorted(t.task_id for t in dag.tasks if getattr(t, "is_mapped", False)
                         or t.get_closest_mapped_task_group() is not None),
        "catchup": dag.catchup,
        "timetable": type(dag.timetable).__name__,
        "timezone": str(dag.timezone),
        "start_tz": str(dag.start_date.tzinfo) if dag.start_date else None,
        "retries": {t.task_id: t.retries for t in dag.tasks},
        "backoff": {t.task_id: float(t.retry_exponential_backoff or 0) for t in dag.tasks},
        "outlets": {t.task_id: [getattr(o, "uri", None) or getattr(o, "name", None)
                                for o in t.outlets] for t in dag.tasks if t.outlets},
        "schedule_assets": sorted(
            a.uri for a in dag.timetable.asset_condition.objects)
            if getattr(dag.timetable, "asset_condition", None) is not None else [],
    }
json.dump({"import_errors": {k: str(v) for k, v in bag.import_errors.items()},
           "touched": touched, "dags": dags,
           "metadata_db_created": os.path.exists(os.environ["AIRFLOW_HOME"] + "/airflow.db")},
          open(os.environ["RESULT"], "w"))
"""


@pytest.fixture(scope="module")
def parsed(tmp_path_factory) -> dict:
    home = tmp_path_factory.mktemp("airflow_parse")
    return run_child(PARSE, airflow_env(home))


def test_every_dag_file_imports_without_errors(parsed):
    assert parsed["import_errors"] == {}
    files = sorted(p.name for p in DAGS.glob("*.py"))
    assert sorted({d["file"] for d in parsed["dags"].values()}) == files


def test_parsing_touches_no_connection_variable_or_metadata_db(parsed):
    assert parsed["touched"] == []
    assert parsed["metadata_db_created"] is False


STEPS = ["validation_gate", "standardise", "link", "cluster", "assign_ids", "publish",
         "consistency", "report"]


def chain_edges(names: list[str]) -> list[list[str]]:
    return [[a, b] for a, b in zip(names, names[1:], strict=False)]


@pytest.mark.parametrize(
    ("dag_id", "edges"),
    [
        ("reglink_nightly",
         [["list_registers", "register.extract"], ["register.extract", "register.validate"],
          ["register.validate", "validation_gate"], *chain_edges(STEPS)]),
        ("reglink_republish",
         [["check_decisions", "prepare"], ["prepare", "validation_gate"],
          *chain_edges(STEPS)]),
        ("reglink_reports",
         [["published_run", "refresh_bi_statistics"], ["published_run", "run_summary"]]),
    ],
)
def test_task_graph(parsed, dag_id, edges):
    assert sorted(parsed["dags"][dag_id]["edges"]) == sorted(edges)


def test_nightly_schedule_retries_and_assets(parsed):
    nightly = parsed["dags"]["reglink_nightly"]
    settings = yaml.safe_load((CONFIG / "airflow.yaml").read_text())
    assert nightly["timetable"] == "CronTriggerTimetable"
    assert nightly["timezone"] == settings["nightly"]["timezone"]
    assert nightly["start_tz"] is not None  # timezone-aware (Airflow keeps it in UTC)
    assert nightly["catchup"] is False
    # One extract and one validate per register, each retried on its own.
    assert nightly["mapped"] == ["register.extract", "register.validate"]
    assert nightly["retries"]["register.extract"] == settings["extract"]["retries"]
    assert nightly["backoff"]["register.extract"] > 1
    # The circuit breaker is never retried: the data will not change.
    assert nightly["retries"]["validation_gate"] == 0
    assert nightly["outlets"] == {"register.extract": ["reglink_extracts"],
                                  "publish": ["x-reglink://mpi/index"]}


def test_republish_and_reports_are_triggered_by_assets(parsed):
    republish = parsed["dags"]["reglink_republish"]
    assert republish["timetable"] == "AssetOrTimeSchedule"
    assert republish["schedule_assets"] == ["x-reglink://mpi/decisions"]
    assert republish["outlets"] == {"publish": ["x-reglink://mpi/index"]}
    assert parsed["dags"]["reglink_reports"]["schedule_assets"] == ["x-reglink://mpi/index"]


# --------------------------------------------------------------------- dag.test() runs

NIGHT_1 = "2026-03-01T20:30:00+00:00"  # 01:30 in Dushanbe
REPUBLISH = "2026-03-02T08:00:00+00:00"
NIGHT_2 = "2026-03-02T20:30:00+00:00"  # civil.csv arrives empty
NIGHT_3 = "2026-03-03T20:30:00+00:00"  # civil.csv arrives with a tenth of its rows

RUNS = """
import json, os, sqlite3, sys
from datetime import datetime

from airflow.utils import db
db.initdb()
from airflow.dag_processing.dagbag import DagBag

bag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
assert not bag.import_errors, bag.import_errors
plan = json.loads(os.environ["PLAN"])
meta = sqlite3.connect(os.environ["AIRFLOW_HOME"] + "/airflow.db")
out = {}

def steward_splits_a_person():
    import sqlalchemy as sa
    from pipelines.mpi.decisions import record_decision
    engine = sa.create_engine(os.environ["MPI_URL"])
    with engine.begin() as conn:
        mpi_id = conn.execute(sa.text(
            "SELECT mpi_id FROM person_records GROUP BY mpi_id HAVING count(*) = 2 "
            "ORDER BY mpi_id LIMIT 1")).scalar_one()
        a, b = conn.execute(sa.text(
            "SELECT register, record_id FROM person_records WHERE mpi_id = :m "
            "ORDER BY register, record_id"), {"m": mpi_id}).all()
        record_decision(conn, tuple(a), tuple(b), "cannot_link", author="steward1",
                        reason="twins")
    engine.dispose()
    return {"mpi_id": mpi_id, "records": [list(a), list(b)]}

for step in plan:
    if step.get("decide"):
        out["decision"] = steward_splits_a_person()
    os.environ["REGLINK_SOURCE_DIR"] = step["source"]
    dr = bag.dags[step["dag"]].test(logical_date=datetime.fromisoformat(step["when"]))
    tis = meta.execute(
        "SELECT task_id, map_index, state, try_number FROM task_instance "
        "WHERE dag_id = ? AND run_id = ?", (step["dag"], dr.run_id)).fetchall()
    xcoms = meta.execute(
        "SELECT task_id, map_index, value FROM xcom WHERE dag_id = ? AND run_id = ? "
        "AND key = 'return_value'", (step["dag"], dr.run_id)).fetchall()
    out[step["name"]] = {
        "state": str(dr.state),
        "tasks": {f"{t}[{m}]" if m >= 0 else t: {"state": s, "tries": n}
                  for t, m, s, n in tis},
        "xcoms": {f"{t}[{m}]" if m >= 0 else t: json.loads(v) for t, m, v in xcoms},
    }
out["asset_events"] = [
    [uri, json.loads(extra or "{}")] for uri, extra in meta.execute(
        "SELECT a.uri, e.extra FROM asset_event e JOIN asset a ON a.id = e.asset_id "
        "ORDER BY e.id")]
json.dump(out, open(os.environ["RESULT"], "w"), default=str)
"""


def _create_database(pg_url: str) -> str:
    import psycopg2

    base = pg_url.replace("postgresql+psycopg2://", "postgresql://").rsplit("/", 1)[0]
    name = f"reglink_test_dag_{uuid.uuid4().hex[:10]}"
    conn = psycopg2.connect(base + "/postgres")
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    conn.close()
    return f"{base}/{name}"


def _drop_database(url: str) -> None:
    import psycopg2

    base, name = url.rsplit("/", 1)
    conn = psycopg2.connect(base + "/postgres")
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    conn.close()


@pytest.fixture(scope="module")
def dag_runs(tmp_path_factory, pg_url):
    """A small country through the DAGs: a good night, a steward's republish, the reports,
    then a night whose civil extract is empty and one whose civil extract shrank."""
    from pipelines.cli import main

    base = tmp_path_factory.mktemp("airflow_runs")
    source = base / "source"
    assert main(["synth", "--persons", "1000", "--seed", "11", "--out", str(source)]) == 0
    empty = base / "source_empty"
    shutil.copytree(source, empty)
    (empty / "civil.csv").write_bytes(b"")
    shrunk = base / "source_shrunk"
    shutil.copytree(source, shrunk)
    lines = (source / "civil.csv").read_bytes().splitlines(keepends=True)
    (shrunk / "civil.csv").write_bytes(b"".join(lines[: 1 + len(lines) // 10]))

    # The repository's configuration, with a short retry so the empty extract fails fast.
    config = base / "config"
    shutil.copytree(CONFIG, config)
    settings = yaml.safe_load((config / "airflow.yaml").read_text())
    settings["extract"].update(retries=1, retry_delay_seconds=1, max_retry_delay_seconds=2)
    (config / "airflow.yaml").write_text(yaml.safe_dump(settings))

    mpi = _create_database(pg_url)
    plan = [
        {"name": "night_1", "dag": "reglink_nightly", "when": NIGHT_1, "source": str(source)},
        {"name": "republish", "dag": "reglink_republish", "when": REPUBLISH,
         "source": str(source), "decide": True},
        {"name": "reports", "dag": "reglink_reports", "when": REPUBLISH,
         "source": str(source)},
        {"name": "night_2", "dag": "reglink_nightly", "when": NIGHT_2, "source": str(empty)},
        {"name": "night_3", "dag": "reglink_nightly", "when": NIGHT_3, "source": str(shrunk)},
    ]
    home = base / "airflow"
    home.mkdir()
    env = airflow_env(
        home,
        AIRFLOW_CONN_REGLINK_MPI=mpi,  # postgresql://...: an Airflow connection URI
        AIRFLOW_VAR_REGLINK_DATA_DIR=str(base / "data"),
        AIRFLOW_VAR_REGLINK_CONFIG=str(config),
        REGLINK_CONFIG=str(config),  # read at parse time (airflow.yaml)
        MPI_URL=mpi.replace("postgresql://", "postgresql+psycopg2://"),
        PLAN=json.dumps(plan),
        PYTHONPATH=str(ROOT),
    )
    try:
        result = run_child(RUNS, env, timeout=600)
        engine = sa.create_engine(env["MPI_URL"])
        with engine.connect() as conn:
            result["runs"] = {r.run_id: {"status": r.status, "message": r.message,
                                         "counts": r.counts}
                              for r in conn.execute(sa.text(
                                  "SELECT run_id, status, message, counts FROM runs"))}
            result["person_records"] = {
                (r.register, r.record_id): r.mpi_id for r in conn.execute(sa.text(
                    "SELECT register, record_id, mpi_id FROM person_records"))}
            result["persons"] = conn.execute(sa.text(
                "SELECT count(*) FROM persons WHERE status = 'active'")).scalar_one()
        engine.dispose()
        result["data_dir"] = base / "data"
        yield result
    finally:
        _drop_database(mpi)




@pytest.mark.postgres
@pytest.mark.slow
def test_nightly_run_publishes_the_index(dag_runs):
    night = dag_runs["night_1"]
    assert night["state"] == "success"
    assert {k: v["state"] for k, v in night["tasks"].items()} == {
        k: "success" for k in night["tasks"]}
    # One extract and one validate per configured register.
    registers = sorted(p.stem for p in (CONFIG / "registers").glob("*.yaml"))
    assert sorted(x["register"] for k, x in night["xcoms"].items()
                  if k.startswith("register.extract[")) == registers
    # The run is named after the logical date (UTC) and published in PostgreSQL.
    run = dag_runs["runs"]["20260301T203000Z"]
    assert run["status"] == "published"
    published = run["counts"]["published"]
    passed = sum(r["passed"] for r in published["registers"].values())
    assert published["records"] == passed > 3000
    assert (dag_runs["data_dir"] / "runs" / "20260301T203000Z" / "assign").is_dir()


@pytest.mark.postgres
@pytest.mark.slow
def test_xcoms_carry_paths_and_counts_only(dag_runs):
    for name in ("night_1", "republish", "reports"):
        for key, value in dag_runs[name]["xcoms"].items():
            assert len(json.dumps(value)) < 4000, key
    extract = dag_runs["night_1"]["xcoms"]["register.extract[0]"]
    assert set(extract) == {"register", "rows", "path", "work_seconds"}
    assert extract["path"].endswith(f"{extract['register']}.parquet")


@pytest.mark.postgres
@pytest.mark.slow
def test_assets_are_updated(dag_runs):
    events = dag_runs["asset_events"]
    registers = sorted(p.stem for p in (CONFIG / "registers").glob("*.yaml"))
    extracted = sorted(uri.rsplit("/", 1)[1] for uri, extra in events
                       if uri.startswith("x-reglink://extract/")
                       and extra.get("run_id") == "20260301T203000Z")
    assert extracted == registers
    index = [extra["run_id"] for uri, extra in events if uri == "x-reglink://mpi/index"]
    assert index == ["20260301T203000Z", "20260302T080000Z-republish"]


@pytest.mark.postgres
@pytest.mark.slow
def test_republish_applies_the_stewards_decision(dag_runs):
    assert dag_runs["republish"]["state"] == "success"
    assert dag_runs["runs"]["20260302T080000Z-republish"]["status"] == "published"
    a, b = (tuple(r) for r in dag_runs["decision"]["records"])
    index = dag_runs["person_records"]
    assert index[a] != index[b], "the cannot-link decision split the person"


@pytest.mark.postgres
@pytest.mark.slow
def test_reports_follow_the_published_index(dag_runs):
    assert dag_runs["reports"]["state"] == "success"
    latest = json.loads((dag_runs["data_dir"] / "reports" / "latest.json").read_text())
    assert latest["run_id"] == "20260302T080000Z-republish"
    assert latest["records"] == len(dag_runs["person_records"])


@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.parametrize(
    ("night", "run_id", "failed_task", "tries", "reason"),
    [
        # An empty export: extract fails (after its retry), the other registers go on.
        ("night_2", "20260302T203000Z", "register.extract", 2, "civil.csv"),
        # A civil extract with a tenth of its rows: the circuit breaker stops the run.
        ("night_3", "20260303T203000Z", "validation_gate", 1, "civil: 152 rows against"),
    ],
)
def test_a_bad_night_fails_and_publishes_nothing(dag_runs, night, run_id, failed_task,
                                                 tries, reason):
    result = dag_runs[night]
    assert result["state"] == "failed"
    failed = {k: v for k, v in result["tasks"].items() if v["state"] == "failed"}
    assert [k.split("[")[0] for k in failed] == [failed_task]
    assert next(iter(failed.values()))["tries"] == tries
    assert result["tasks"]["publish"]["state"] == "upstream_failed"
    run = dag_runs["runs"][run_id]
    assert run["status"] == "failed"
    assert reason in run["message"]
    # The index is still the one the republish published.
    assert dag_runs["runs"]["20260302T080000Z-republish"]["status"] == "published"
    published = dag_runs["runs"]["20260302T080000Z-republish"]["counts"]["published"]
    assert len(dag_runs["person_records"]) == published["records"]
