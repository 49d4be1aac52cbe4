"""The nightly DAG on a whole country under a real Airflow scheduler: wall time, and per task
the step's own work beside Airflow's overhead.

    .venv/bin/python bench/dag_run.py --persons 50000

1. synthesise the country (once, kept under --work);
2. a new PostgreSQL database for the MPI (the ``reglink_mpi`` connection), a new
   AIRFLOW_HOME (metadata on SQLite), ``airflow standalone`` on 127.0.0.1 (LocalExecutor,
   --parallelism task slots);
3. unpause ``reglink_nightly``: the scheduler starts the run of the latest nightly tick
   (catchup is off); wait until it ends;
4. read every task instance from the metadata database and the step's own seconds
   (``work_seconds`` of its XCom): per task, Airflow's overhead = task duration - work, and
   the wait = task start - the end of its last upstream task.

Target (issue 6): the DAG run for 50,000 persons in under 3 minutes. Results go to
bench/results/dag_run_<persons>.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
import uuid
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
log = logging.getLogger("bench.dag_run")


def make_pg_database(admin_url: str) -> str:
    import psycopg2

    name = f"reglink_dagbench_{uuid.uuid4().hex[:8]}"
    conn = psycopg2.connect(admin_url)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    conn.close()
    return admin_url.rsplit("/", 1)[0] + f"/{name}"


def drop_pg_database(url: str) -> None:
    import psycopg2

    base, name = url.rsplit("/", 1)
    conn = psycopg2.connect(base + "/postgres")
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    conn.close()


def wait_healthy(port: int, timeout: float = 120) -> float:
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v2/monitor/health",
                                        timeout=2) as resp:
                if resp.status == 200:
                    return time.perf_counter() - started
        except OSError:
            pass
        time.sleep(1)
    raise TimeoutError(f"airflow standalone not healthy on port {port} after {timeout} s")


def parse_ts(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def collect(db: Path, dag_id: str) -> dict:
    """The DAG run and its task instances, from the metadata database."""
    meta = sqlite3.connect(db)
    run = meta.execute("SELECT run_id, state, start_date, end_date, logical_date FROM dag_run "
                       "WHERE dag_id = ? ORDER BY id DESC LIMIT 1", (dag_id,)).fetchone()
    tis = meta.execute(
        "SELECT task_id, map_index, state, try_number, start_date, end_date, duration, "
        "queued_dttm FROM task_instance WHERE dag_id = ? AND run_id = ?",
        (dag_id, run[0])).fetchall()
    xcoms = {(t, m): json.loads(v) for t, m, v in meta.execute(
        "SELECT task_id, map_index, value FROM xcom WHERE dag_id = ? AND run_id = ? "
        "AND key = 'return_value'", (dag_id, run[0]))}
    meta.close()
    return {"run": run, "tis": tis, "xcoms": xcoms}


UPSTREAM = {  # the nightly graph, by task id (mapped tasks: every map index)
    "register.extract": ["list_registers"], "register.validate": ["register.extract"],
    "validation_gate": ["register.validate"], "standardise": ["validation_gate"],
    "link": ["standardise"], "cluster": ["link"], "assign_ids": ["cluster"],
    "publish": ["assign_ids"], "consistency": ["publish"], "report": ["consistency"],
}


def analyse(data: dict) -> dict:
    run_id, state, start, end, logical = data["run"]
    rows = []
    ends: dict[str, list[datetime]] = {}
    for ti in data["tis"]:
        ends.setdefault(ti[0], []).append(parse_ts(ti[5]))
    for task_id, map_index, ti_state, tries, t0, _t1, duration, _queued in sorted(
            data["tis"], key=lambda r: r[4] or ""):
        xcom = data["xcoms"].get((task_id, map_index))
        work = xcom.get("work_seconds") if isinstance(xcom, dict) else None
        ups = [e for u in UPSTREAM.get(task_id, []) for e in ends.get(u, []) if e]
        if task_id == "register.validate":  # waits for its own register's extract only
            ups = [parse_ts(r[5]) for r in data["tis"]
                   if r[0] == "register.extract" and r[1] == map_index]
        wait = (parse_ts(t0) - max(ups)).total_seconds() if ups and t0 else None
        rows.append({
            "task": task_id + (f"[{map_index}]" if map_index >= 0 else ""),
            "register": xcom.get("register") if isinstance(xcom, dict) else None,
            "state": ti_state, "tries": tries,
            "duration_s": round(duration, 2) if duration is not None else None,
            "work_s": work,
            "overhead_s": (round(duration - work, 2)
                           if duration is not None and work is not None else None),
            "wait_after_upstream_s": round(wait, 2) if wait is not None else None,
        })
    wall = (parse_ts(end) - parse_ts(start)).total_seconds()
    # After the gate the tasks run one after another: Airflow's cost there adds up.
    chain = [r for r in rows if not r["task"].startswith(("register.", "list_registers"))]
    work_total = sum(r["work_s"] or 0 for r in rows)
    overhead = [r["overhead_s"] for r in rows if r["overhead_s"] is not None]
    waits = [r["wait_after_upstream_s"] for r in rows if r["wait_after_upstream_s"] is not None]
    return {
        "dag_run": {"run_id": run_id, "state": state, "logical_date": logical,
                    "wall_seconds": round(wall, 1)},
        "tasks": rows,
        "work_seconds_total": round(work_total, 1),
        "overhead_seconds_per_task": {
            "mean": round(sum(overhead) / len(overhead), 2) if overhead else None,
            "max": max(overhead) if overhead else None},
        "sequential_chain": {
            "tasks": len(chain),
            "work_seconds": round(sum(r["work_s"] or 0 for r in chain), 1),
            "overhead_seconds": round(sum(r["overhead_s"] or 0 for r in chain), 1),
            "wait_seconds": round(sum(r["wait_after_upstream_s"] or 0 for r in chain), 1)},
        "wait_seconds_per_task": {
            "mean": round(sum(waits) / len(waits), 2) if waits else None,
            "max": max(waits) if waits else None},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--persons", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--parallelism", type=int, default=2)
    parser.add_argument("--port", type=int, default=8793 + 7)
    parser.add_argument("--pg-admin", default=os.environ.get(
        "REGLINK_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/reglink-dagbench"))
    parser.add_argument("--timeout", type=float, default=900)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    work = args.work / str(args.persons)
    source = work / "source"
    if not (source / "truth.csv").is_file():
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "pipelines.cli", "synth", "--persons",
                        str(args.persons), "--seed", str(args.seed), "--out", str(source)],
                       check=True, cwd=ROOT)
        log.info("synth: %.0f s", time.perf_counter() - t)
    data_dir, home = work / "data", work / "airflow"
    for folder in (data_dir, home):
        shutil.rmtree(folder, ignore_errors=True)
    home.mkdir(parents=True)
    mpi = make_pg_database(args.pg_admin)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "REGLINK_"))}
    env.update({
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__PARALLELISM": str(args.parallelism),
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(args.port),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL":
            f"http://127.0.0.1:{args.port}/execution/",
        "AIRFLOW_CONN_REGLINK_MPI": mpi,
        "AIRFLOW_VAR_REGLINK_DATA_DIR": str(data_dir),
        "AIRFLOW_VAR_REGLINK_SOURCE_DIR": str(source),
        "REGLINK_CONFIG": str(ROOT / "config"),
        "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
    })
    results: dict = {"persons": args.persons, "cores": os.cpu_count(),
                     "executor": "LocalExecutor (airflow standalone)",
                     "parallelism": args.parallelism, "metadata_db": "sqlite",
                     "mpi_db": "postgresql"}
    proc = subprocess.Popen([str(BIN / "airflow"), "standalone"], env=env, cwd=home,
                            stdout=open(home / "standalone.log", "w"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        results["standalone_healthy_after_s"] = round(wait_healthy(args.port), 1)
        db = home / "airflow.db"
        # The DAG appears once the dag-processor has parsed it.
        deadline = time.time() + 120
        while time.time() < deadline:
            done = subprocess.run([str(BIN / "airflow"), "dags", "unpause", "reglink_nightly"],
                                  env=env, capture_output=True, text=True)
            if done.returncode == 0:
                break
            time.sleep(2)
        else:
            raise TimeoutError("reglink_nightly never appeared: see standalone.log")
        unpaused = time.perf_counter()
        log.info("reglink_nightly unpaused; waiting for its run")
        state = None
        while time.perf_counter() - unpaused < args.timeout:
            time.sleep(3)
            with sqlite3.connect(db) as meta:
                row = meta.execute("SELECT state FROM dag_run WHERE dag_id = "
                                   "'reglink_nightly' ORDER BY id DESC LIMIT 1").fetchone()
            state = row[0] if row else None
            if state in ("success", "failed"):
                break
        results["unpause_to_end_s"] = round(time.perf_counter() - unpaused, 1)
        results.update(analyse(collect(db, "reglink_nightly")))
        log.info("dag run %s in %.0f s (work %.0f s)", state,
                 results["dag_run"]["wall_seconds"], results["work_seconds_total"])
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        drop_pg_database(mpi)
    out = ROOT / "bench" / "results" / f"dag_run_{args.persons}.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    from report import refresh_readme  # bench/ is sys.path[0] when run as a script

    refresh_readme()  # README shows the latest figures
    print(json.dumps({k: v for k, v in results.items() if k != "tasks"}, indent=2))
    for row in results.get("tasks", []):
        print(f"{row['task']:24} {row['register'] or '':12} {row['state']:8} "
              f"dur {row['duration_s']!s:>7}  work {row['work_s']!s:>7}  "
              f"overhead {row['overhead_s']!s:>6}  wait {row['wait_after_upstream_s']!s:>6}")
    return 0 if results.get("dag_run", {}).get("state") == "success" else 1


if __name__ == "__main__":
    sys.exit(main())
