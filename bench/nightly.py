"""Nightly-run benchmark: a whole country, then a nightly delta, on PostgreSQL (or SQLite).

    .venv/bin/python bench/nightly.py --persons 1000000 --pg

1. synthesise the country (once, kept under --work);
2. run 1: the whole nightly run (extract → validate → link → assign IDs → publish), full;
3. write a nightly delta (--delta share of the records corrected, added or deleted), and
   let run 1's writes reach the disk (a database CHECKPOINT and a sync), as the day between
   two nightly runs does;
4. run 2: the incremental run over the delta, in this process after run 1 (imports and
   caches warm), or with ``--run2-new-process`` as a nightly job runs it: `reglink run` in a
   new process (results in nightly_<persons>_new_process.json); ``--run2-repeats N`` runs
   it N times, each over a fresh copy of run 1's data folder and database (a PostgreSQL
   TEMPLATE copy), and reports every time, as one run's time varies by several seconds;
5. a full relink of run 2's data (train, score, cluster; no publish), and the pairwise F1
   between the incremental and the full crosswalk;
6. ID stability: the share of run 1's MPI IDs still active after run 2;
7. with ``--nights N``: N more nights after run 2, each `reglink run` in a new process over
   a new delta of the night before's data, as nights follow one another (each night's
   seconds, link mode and IDs kept).

Targets (issue 5): run 1 for 1,000,000 persons on PostgreSQL under 10 min with peak memory
under 8 GB; run 2 over a 0.5 % delta under 1 min; ≥ 99.9 % of IDs kept; incremental vs full
pairwise F1 ≥ 0.999. Figures go to bench/results/nightly_<persons>.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipelines.link import cluster_run, link_records, standardise_run  # noqa: E402
from pipelines.mpi.incremental import crosswalk_agreement, make_nightly_delta  # noqa: E402
from pipelines.steps import RunContext, run_all  # noqa: E402

log = logging.getLogger("bench.nightly")


def peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024


class StepPeaks:
    """Peak RSS of the process at the end of each step (ru_maxrss only grows: the step
    whose value jumps is the one that needed the memory)."""

    def __init__(self) -> None:
        self.peaks: dict[str, float] = {}
        self.current: str | None = None

    def __call__(self, name: str) -> None:
        self.close()
        self.current = name

    def close(self) -> dict[str, float]:
        if self.current is not None:
            self.peaks[self.current] = round(peak_gb(), 2)
            self.current = None
        return self.peaks


def _admin_sql(admin_url: str, statement: str) -> None:
    """One statement outside a transaction, on the server's admin connection."""
    import psycopg2

    conn = psycopg2.connect(admin_url)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(statement)
    finally:
        conn.close()


def make_pg_database(admin_url: str) -> str:
    name = f"reglink_bench_{uuid.uuid4().hex[:8]}"
    _admin_sql(admin_url, f'CREATE DATABASE "{name}"')
    return admin_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg2://") + \
        f"/{name}"


def settle(admin_url: str | None) -> None:
    """Let run 1's writes reach the disk before run 2, as the night between two runs does:
    the database checkpoints (else its checkpointer writes run 1's gigabytes during run 2,
    over the several minutes it spreads a checkpoint) and the file system syncs."""
    if admin_url:
        import psycopg2

        try:
            _admin_sql(admin_url, "CHECKPOINT")  # for the whole server
        except psycopg2.Error as exc:  # CHECKPOINT needs a superuser or pg_checkpoint
            log.warning("no CHECKPOINT before run 2 (%s)", type(exc).__name__)
    os.sync()


class Run1Copy:
    """Run 1's data folder and database, kept to run run 2 again over them: the folder is
    copied, the PostgreSQL database copied as a TEMPLATE (which needs nobody connected)."""

    def __init__(self, data: Path, url: str | None, admin_url: str) -> None:
        from pipelines.steps import close_engines

        self.data, self.admin_url = data, admin_url
        self.copy = data.with_name(data.name + "_run1")
        shutil.rmtree(self.copy, ignore_errors=True)
        subprocess.run(["cp", "-a", str(data), str(self.copy)], check=True)
        self.name = url.rsplit("/", 1)[1] if url else None
        if self.name:
            close_engines()
            _admin_sql(admin_url, f'CREATE DATABASE "{self.name}_run1" TEMPLATE "{self.name}"')

    def restore(self) -> None:
        shutil.rmtree(self.data)
        subprocess.run(["cp", "-a", str(self.copy), str(self.data)], check=True)
        if self.name:
            _admin_sql(self.admin_url, f'DROP DATABASE "{self.name}"')
            _admin_sql(self.admin_url,
                       f'CREATE DATABASE "{self.name}" TEMPLATE "{self.name}_run1"')

    def drop(self) -> None:
        shutil.rmtree(self.copy, ignore_errors=True)
        if self.name:
            _admin_sql(self.admin_url, f'DROP DATABASE "{self.name}_run1"')


def later_nights(args: argparse.Namespace, config: Path, data: Path, url: str | None,
                 source: Path) -> list[dict]:
    """Nights 3, 4, ... after run 2: each a new delta of the night before's source and a new
    `reglink run` process, as a nightly job runs them one after the other."""
    from pipelines.steps import close_engines

    close_engines()  # the runs below are other processes; this one's pool is not needed
    nights = []
    for night in range(3, 3 + args.nights):
        delta = source.with_name(f"source_night{night}")
        shutil.rmtree(delta, ignore_errors=True)
        changes = make_nightly_delta(source, delta, config, share=args.delta,
                                     seed=args.seed + night)
        settle(args.pg_admin if url else None)
        run_id = f"202601{night:02d}T000000Z"
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "pipelines.cli", "run", "--config", str(config),
                        "--data-dir", str(data), "--run-id", run_id, "--source-dir",
                        str(delta), "--no-data-docs"]
                       + (["--database-url", url] if url else []), check=True, cwd=ROOT)
        seconds = round(time.perf_counter() - t, 1)
        done = json.loads((data / "runs" / run_id / "run.json").read_text())
        nights.append({"night": night, "run_id": run_id, "delta": changes,
                       "seconds": seconds, "steps_seconds": done["seconds"],
                       "link_mode": done["steps"]["link"]["mode"],
                       "changed_records": done["steps"]["link"]["changed_records"],
                       "ids_kept_share": done["steps"]["assign_ids"]["ids_kept_share"]})
        log.info("night %d: %.1f s, link %s, IDs kept %.4f %%", night, seconds,
                 nights[-1]["link_mode"], 100 * nights[-1]["ids_kept_share"])
        shutil.rmtree(source.with_name(f"source_night{night - 1}"), ignore_errors=True)
        source = delta
    return nights


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--persons", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--delta", type=float, default=0.005)
    parser.add_argument("--pg", action="store_true", help="use a new PostgreSQL database")
    parser.add_argument("--pg-admin", default=os.environ.get(
        "REGLINK_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/reglink-nightly"))
    parser.add_argument("--skip-full-compare", action="store_true")
    parser.add_argument("--run2-new-process", action="store_true",
                        help="run 2 as a nightly job runs it: `reglink run` in a new process "
                        "(imports and caches cold); by default it runs in this process, "
                        "after run 1")
    parser.add_argument("--nights", type=int, default=0,
                        help="after everything else, run this many more nights, each over a "
                        "new delta of the night before (as nightly runs follow one another)")
    parser.add_argument("--run2-repeats", type=int, default=1,
                        help="run 2 this many times (with --run2-new-process), each over a "
                        "fresh copy of run 1's data folder and database")
    args = parser.parse_args()
    if args.run2_repeats < 1 or (args.run2_repeats > 1 and not args.run2_new_process):
        parser.error("--run2-repeats N needs N >= 1, and --run2-new-process when N > 1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    config = ROOT / "config"
    work = args.work / str(args.persons)
    source = work / "source"
    if not (source / "truth.csv").is_file():
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "pipelines.cli", "synth", "--persons",
                        str(args.persons), "--seed", str(args.seed), "--out", str(source)],
                       check=True, cwd=ROOT)
        log.info("synth: %.0f s", time.perf_counter() - t)
    data = work / "data"
    shutil.rmtree(data, ignore_errors=True)
    url = make_pg_database(args.pg_admin) if args.pg else None
    results: dict = {"persons": args.persons, "database": "postgresql" if url else "sqlite",
                     "delta_share": args.delta, "cores": os.cpu_count()}

    ctx1 = RunContext(run_id="20260101T000000Z", config_dir=config, data_dir=data,
                      database_url=url, source_dir=source, data_docs=False)
    t = time.perf_counter()
    peaks = StepPeaks()
    s1 = run_all(ctx1, on_step=peaks)
    results["run1_seconds"] = round(time.perf_counter() - t, 1)
    results["run1_steps_seconds"] = s1.seconds
    results["run1_peak_rss_gb_after_step"] = peaks.close()
    results["run1_assign_timings"] = s1.steps["assign_ids"].get("timings")
    results["run1_peak_rss_gb"] = round(peak_gb(), 2)
    results["records"] = s1.steps["assign_ids"]["records"]
    results["run1_persons"] = s1.steps["assign_ids"]["persons"]
    log.info("run 1: %.0f s, peak %.2f GB", results["run1_seconds"], results["run1_peak_rss_gb"])

    delta_source = work / "source_delta"
    shutil.rmtree(delta_source, ignore_errors=True)
    results["delta"] = make_nightly_delta(source, delta_source, config, share=args.delta,
                                          seed=args.seed + 1)
    ctx2 = RunContext(run_id="20260102T000000Z", config_dir=config, data_dir=data,
                      database_url=url, source_dir=delta_source, data_docs=False)
    settle(args.pg_admin if url else None)
    if not args.run2_new_process:
        results["run2_process"] = "same"
        t = time.perf_counter()
        peaks = StepPeaks()
        s2 = run_all(ctx2, on_step=peaks)
        results["run2_seconds"] = round(time.perf_counter() - t, 1)
        results["run2_peak_rss_gb_after_step"] = peaks.close()
    else:
        # As a nightly job runs: a new process, which imports everything (Great
        # Expectations alone takes seconds) and starts with empty caches.
        results["run2_process"] = "new"
        command = [sys.executable, "-m", "pipelines.cli", "run", "--config", str(config),
                   "--data-dir", str(data), "--run-id", ctx2.run_id, "--source-dir",
                   str(delta_source), "--no-data-docs"]
        run1 = Run1Copy(data, url, args.pg_admin) if args.run2_repeats > 1 else None
        times, steps, first = [], [], None
        for repeat in range(args.run2_repeats):
            if run1 is not None and repeat:
                run1.restore()
                settle(args.pg_admin if url else None)
            t = time.perf_counter()
            subprocess.run(command + (["--database-url", url] if url else []), check=True,
                           cwd=ROOT)
            times.append(round(time.perf_counter() - t, 1))
            done = json.loads((ctx2.run_dir / "run.json").read_text())
            steps.append(done["seconds"])
            first = first or done
            log.info("run 2 (%d of %d): %.1f s", repeat + 1, args.run2_repeats, times[-1])
        if run1 is not None:
            run1.drop()
            results["run2_seconds_each"] = times
            results["run2_steps_seconds_each"] = steps
            results["run2_seconds_median"] = float(pd.Series(times).median())
        results["run2_seconds"] = times[0]
        s2 = SimpleNamespace(steps=first["steps"], seconds=first["seconds"])
    results["run2_steps_seconds"] = s2.seconds
    link_steps = ("standardise", "link", "cluster", "assign_ids", "publish")
    results["run2_link_to_publish_seconds"] = round(sum(s2.seconds[k] for k in link_steps), 1)
    results["run2_link"] = {k: v for k, v in s2.steps["link"].items() if k != "blocking"}
    results["run2_assign"] = s2.steps["assign_ids"]
    results["ids_kept_share"] = s2.steps["assign_ids"]["ids_kept_share"]

    t = time.perf_counter()
    s3 = run_all(ctx2)
    results["rerun2_seconds"] = round(time.perf_counter() - t, 1)
    results["rerun2_publish"] = s3.steps["publish"]

    if not args.skip_full_compare:
        full = work / "full" / "runs" / ctx2.run_id
        shutil.rmtree(full.parent.parent, ignore_errors=True)
        full.mkdir(parents=True)
        os.symlink(ctx2.run_dir / "validate", full / "validate")
        t = time.perf_counter()
        standardise_run(full)
        link_records(full, config / "linkage.yaml")
        cluster_run(full, config / "linkage.yaml")
        results["full_relink_link_seconds"] = round(time.perf_counter() - t, 1)
        inc = pd.read_parquet(ctx2.run_dir / "cluster" / "crosswalk.parquet")
        ref = pd.read_parquet(full / "cluster" / "crosswalk.parquet")
        results["incremental_vs_full"] = crosswalk_agreement(ref, inc)
    truth = pd.read_csv(delta_source / "truth.csv", dtype=str)
    from matching.evaluation import evaluate_clusters

    pred = pd.read_csv(ctx2.run_dir / "cluster" / "crosswalk.csv", dtype=str)
    ev = evaluate_clusters(truth, pred)
    results["run2_vs_truth"] = {"pairwise_f1": ev.pairwise.f1,
                                "pairwise_precision": ev.pairwise.precision,
                                "pairwise_recall": ev.pairwise.recall}
    if args.nights:
        results["later_nights"] = later_nights(args, config, data, url, delta_source)
    results["peak_rss_gb"] = round(peak_gb(), 2)
    suffix = "_new_process" if args.run2_new_process else ""
    out = ROOT / "bench" / "results" / f"nightly_{args.persons}{suffix}.json"
    out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    from report import refresh_readme  # bench/ is sys.path[0] when run as a script

    refresh_readme()  # README shows the latest figures
    print(json.dumps(results, indent=2, default=str))  # noqa: T201
    return 0


if __name__ == "__main__":
    sys.exit(main())
