"""``reglink validate``: data-quality checks of a run's extracts (docs/data-quality.md).

Runs the Great Expectations suites of every register (or those named with ``--register``)
over ``<data-dir>/runs/<run-id>/extract/``, writes ``validate/`` (passed rows, quarantine,
summary, Data Docs) and prints a summary table. A batch-level failure (the circuit breaker)
exits with status 2 and a message naming each register and check.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipelines.errors import ReglinkError
from pipelines.registers import load_register_configs
from pipelines.runs import run_dir
from pipelines.tables import format_table
from pipelines.validate import RegisterValidation, validate_run


def register(subparsers: argparse._SubParsersAction) -> None:
    from pipelines.cli import add_common_options

    parser = subparsers.add_parser(
        "validate",
        help="check a run's extracts; quarantine bad rows, stop the run on a bad batch",
        description=(
            "Validate <data-dir>/runs/<run-id>/extract/<register>.parquet with the register's "
            "Great Expectations suite and write <data-dir>/runs/<run-id>/validate/: the passed "
            "rows, quarantine.parquet, summary.json and data_docs/index.html."
        ),
    )
    add_common_options(parser)
    parser.add_argument(
        "--register", action="append", metavar="NAME",
        help="validate only this register (repeatable; default: every configured register)",
    )
    parser.add_argument("--run-id", default=None, help="run to validate (default: the newest)")
    parser.add_argument("--no-data-docs", action="store_true",
                        help="skip building the Data Docs HTML (faster)")
    parser.set_defaults(func=run)


def summary_table(results: list[RegisterValidation]) -> str:
    """The table printed at the end: one line per register."""
    header = ("register", "extracted", "passed", "quarantined", "flagged", "checks", "seconds")
    rows = []
    for r in results:
        failed = len(r.failures()) + (0 if r.conservation_ok else 1)
        checks = "ok" if failed == 0 else f"{failed} FAILED"
        rows.append((r.register, f"{r.extracted:,}", f"{r.passed:,}", f"{r.quarantined:,}",
                     f"{r.flagged:,}", checks, f"{r.seconds:.1f}"))
    return format_table(header, rows, left=(0, 5))


def run(args: argparse.Namespace) -> int:
    configs = load_register_configs(args.config)
    names = args.register or sorted(configs)
    unknown = [n for n in names if n not in configs]
    if unknown:
        raise ReglinkError(
            f"no register named {', '.join(unknown)} in {Path(args.config) / 'registers'}; "
            f"configured: {', '.join(sorted(configs))}"
        )
    folder = run_dir(args.data_dir, args.run_id)
    result = validate_run(
        args.data_dir, folder.name, configs, config_dir=args.config, registers=names,
        data_docs=not args.no_data_docs, progress=True,
    )
    print(f"run {result.run_id}: validation {result.status}")  # noqa: T201
    print(summary_table(list(result.registers.values())))  # noqa: T201
    print(f"  output: {result.out_dir}/ (quarantine.parquet, summary.json"  # noqa: T201
          + (f", {result.data_docs.relative_to(result.out_dir)})" if result.data_docs else ")"))
    return 0
