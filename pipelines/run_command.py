"""``reglink run``: the whole nightly run in this process, without Airflow.

extract → validate → (gate) → standardise → link → cluster → assign IDs → publish →
consistency → report, each step as in :mod:`pipelines.steps`. The database is migrated to
the newest schema first (on SQLite nothing needs installing).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from pipelines.extract_command import new_run_id
from pipelines.steps import RunContext, RunSummary, run_all


def register(subparsers: argparse._SubParsersAction) -> None:
    from pipelines.cli import add_common_options

    parser = subparsers.add_parser(
        "run",
        help="the whole nightly run: extract, validate, link, assign IDs, publish",
        description=(
            "Extract every configured register, validate (quarantine, circuit breaker), "
            "standardise, link, cluster (applying steward decisions), map clusters to stable "
            "MPI IDs, build golden records and publish the index in one transaction. Only new "
            "and changed records are validated and linked when a previous run "
            "was published (use --full to redo every record, with a newly trained model)."
        ),
    )
    add_common_options(parser)
    parser.add_argument("--run-id", default=None,
                        help="run id (default: the UTC time, e.g. 20261127T120000Z); "
                        "rerunning a published run changes nothing")
    parser.add_argument("--source-dir", type=Path, default=None,
                        help="folder relative source paths are read from "
                        "(default: $REGLINK_SOURCE_DIR or <data-dir>/source)")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed of every random choice (default: linkage.yaml's)")
    parser.add_argument("--full", action="store_true",
                        help="validate and relink every record, with a newly "
                        "trained model")
    parser.add_argument("--full-extract", action="store_true",
                        help="read incremental registers whole (drops rows deleted at the "
                        "source)")
    parser.add_argument("--no-data-docs", action="store_true",
                        help="skip the Great Expectations Data Docs (faster)")
    parser.set_defaults(func=run)


def context(args: argparse.Namespace, run_id: str | None = None) -> RunContext:
    return RunContext(
        run_id=run_id or args.run_id or new_run_id(),
        config_dir=Path(args.config),
        data_dir=Path(args.data_dir),
        database_url=args.database_url,
        source_dir=args.source_dir,
        seed=args.seed,
        full_relink=bool(args.full),
        full_extract=bool(args.full_extract),
        data_docs=not args.no_data_docs,
    )


def describe(summary: RunSummary, ctx: RunContext) -> str:
    """What was published and where to look, for the operator."""
    from pipelines.store import database_url, safe_url

    steps = summary.steps
    assign = steps.get("assign_ids", {})
    pub = steps.get("publish", {})
    link = steps.get("link", {})
    gate = steps.get("validation_gate", {})
    events = assign.get("events", {})
    kept = assign.get("ids_kept_share")
    lines = [
        f"run {ctx.run_id}: published {assign.get('records', 0):,} records as "
        f"{assign.get('persons', 0):,} persons"
        + (" (already published: nothing changed)" if pub.get("already_published") else ""),
        f"  link: {link.get('mode', '?')} ({link.get('reason', '')}); "
        f"{link.get('pairs', {}).get('linked', 0):,} linked pairs, "
        f"{link.get('pairs', {}).get('review', 0):,} in the review band",
        f"  IDs: {events.get('new', 0):,} new, {events.get('merge', 0):,} merges, "
        f"{events.get('split', 0):,} splits, {events.get('retire', 0):,} retired, "
        f"{events.get('update', 0):,} updated"
        + (f"; {kept:.2%} of the previous IDs kept" if kept is not None else ""),
        f"  quarantined records: {gate.get('quarantined_records', 0):,} (kept out of linking); "
        f"flagged fields: {gate.get('flagged_fields', 0):,}",
        f"  took {sum(summary.seconds.values()):.0f} s ("
        + ", ".join(f"{k} {v:.1f}" for k, v in summary.seconds.items() if v >= 0.05) + ")",
        f"  database: {safe_url(database_url(ctx.data_dir, ctx.database_url))}",
        f"  run folder: {ctx.run_dir}/ (run.json; cluster/crosswalk.csv; link/report.json; "
        "assign/summary.json; validate/)",
        "  look up a person:  reglink person <MPI ID or PIN>;  all links:  reglink export "
        "crosswalk --out crosswalk.csv",
    ]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    ctx = context(args)
    started = time.perf_counter()

    def on_step(name: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f} s] {name}", file=sys.stderr,  # noqa: T201
              flush=True)

    summary = run_all(ctx, on_step=on_step)
    print(describe(summary, ctx))  # noqa: T201
    return 0
