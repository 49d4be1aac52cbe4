"""``reglink consistency``: check a published run against the cross-register rules.

Reads ``<config>/consistency.yaml`` (docs/consistency.md), the run's validated records and
the published index, and replaces the run's consistency findings and metrics in the MPI
database. Safe to run again: the run's rows are replaced, not added to.
"""

from __future__ import annotations

import argparse

from pipelines.runs import run_dir
from pipelines.tables import format_table


def register(subparsers: argparse._SubParsersAction) -> None:
    from pipelines.cli import add_common_options

    parser = subparsers.add_parser(
        "consistency",
        help="check the published index against the cross-register consistency rules",
        description=(
            "Check a published run against <config>/consistency.yaml (a person dead in the "
            "civil registry but paid a pension, a minor on the electoral roll, conflicting "
            "birth dates, ...) and write its findings and metrics to the MPI database, "
            "replacing those of an earlier check of the same run."
        ),
    )
    add_common_options(parser)
    parser.add_argument("--run-id", default=None, help="run to check (default: the newest)")
    parser.set_defaults(func=run)


def summary_table(summary: dict, metrics: list[tuple[str, int, int | None]]) -> str:
    """One line per rule: findings, persons checked and the rate."""
    header = ("rule", "findings", "checked", "rate")
    rows = [
        (rule, f"{count:,}", f"{denominator:,}" if denominator is not None else "-",
         f"{count / denominator:.2%}" if denominator else "-")
        for rule, count, denominator in metrics
    ]
    rows += [(rule, "skipped", "-", "-") for rule in summary.get("skipped", [])]
    return format_table(header, rows)


def run(args: argparse.Namespace) -> int:
    import sqlalchemy as sa

    from pipelines.consistency import ALL_REGISTERS, run_consistency
    from pipelines.store import schema
    from pipelines.store.engine import database_url, make_engine

    folder = run_dir(args.data_dir, args.run_id)
    engine = make_engine(database_url(args.data_dir, args.database_url))
    try:
        summary = run_consistency(engine, folder.name, folder, args.config)
        metrics = schema.consistency_metrics
        with engine.connect() as conn:
            rows = conn.execute(
                sa.select(metrics.c.rule, metrics.c["count"], metrics.c.denominator)
                .where(metrics.c.run_id == folder.name, metrics.c.register == ALL_REGISTERS)
            ).all()
    finally:
        engine.dispose()
    order = {name: i for i, name in enumerate(summary["findings"])}
    rows = sorted(rows, key=lambda r: order.get(r.rule, len(order)))
    print(f"run {folder.name}: consistency at {summary['reference_date']}, "  # noqa: T201
          f"{summary['records']:,} records")
    print(summary_table(summary, [tuple(r) for r in rows]))  # noqa: T201
    if summary["unlinked"]:
        print(f"  {summary['unlinked']:,} validated record(s) are not in the published "  # noqa: T201
              "index and were left out")
    return 0
