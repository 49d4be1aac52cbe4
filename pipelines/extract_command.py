"""``reglink extract``: read each register's extract into canonical Parquet files.

Writes ``<data-dir>/runs/<run_id>/extract/<register>.parquet`` for every register in
``<config>/registers/`` (or those named with ``--register``) and prints a summary table.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
from datetime import UTC, datetime
from pathlib import Path

from pipelines.errors import ReglinkError
from pipelines.extract import DEFAULT_CHUNKSIZE, ExtractResult, extract_register
from pipelines.registers import load_register_configs
from pipelines.tables import format_table

log = logging.getLogger(__name__)

_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def new_run_id(now: datetime | None = None) -> str:
    """A run id from the UTC time, e.g. ``20261127T120000Z``."""
    return (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")


def default_source_dir(data_dir: Path) -> Path:
    """``$REGLINK_SOURCE_DIR``, else ``<data-dir>/source``."""
    env = os.environ.get("REGLINK_SOURCE_DIR")
    return Path(env) if env else Path(data_dir) / "source"


def register(subparsers: argparse._SubParsersAction) -> None:
    from pipelines.cli import add_common_options

    parser = subparsers.add_parser(
        "extract",
        help="read register extracts into canonical Parquet files",
        description=(
            "Read each register's extract as its config/registers/<register>.yaml says and "
            "write <data-dir>/runs/<run-id>/extract/<register>.parquet."
        ),
    )
    add_common_options(parser)
    parser.add_argument(
        "--register",
        action="append",
        metavar="NAME",
        help="extract only this register (repeatable; default: every configured register)",
    )
    parser.add_argument(
        "--source-dir",
        type=Path,
        default=None,
        help="folder that relative source paths are read from "
        "(default: $REGLINK_SOURCE_DIR or <data-dir>/source)",
    )
    parser.add_argument(
        "--run-id",
        default=None,
        help="run partition to write (default: the UTC time, e.g. 20261127T120000Z)",
    )
    parser.add_argument(
        "--chunksize",
        type=int,
        default=DEFAULT_CHUNKSIZE,
        help=f"rows read at a time; bounds memory (default: {DEFAULT_CHUNKSIZE})",
    )
    parser.set_defaults(func=run)


def _summary(results: list[ExtractResult]) -> str:
    header = ("register", "rows", "columns", "seconds", "output")
    rows = [
        (r.register, f"{r.rows:,}", str(r.columns), f"{r.seconds:.1f}", str(r.path))
        for r in results
    ]
    return format_table(header, rows, left=(0, 4))


def run(args: argparse.Namespace) -> int:
    configs = load_register_configs(args.config)
    names = args.register or sorted(configs)
    unknown = [n for n in names if n not in configs]
    if unknown:
        raise ReglinkError(
            f"no register named {', '.join(unknown)} in {Path(args.config) / 'registers'}; "
            f"configured: {', '.join(sorted(configs))}"
        )
    if args.chunksize < 1:
        raise ReglinkError(f"--chunksize must be at least 1, got {args.chunksize}")
    run_id = args.run_id or new_run_id()
    if not _RUN_ID.match(run_id):
        raise ReglinkError(
            f"--run-id {run_id!r}: use letters, digits, '.', '_' and '-' only "
            "(it names a folder)"
        )
    source_dir = args.source_dir or default_source_dir(args.data_dir)
    out_dir = Path(args.data_dir) / "runs" / run_id / "extract"
    log.info("extract run %s: %d register(s) from %s", run_id, len(names), source_dir)
    results = []
    for name in dict.fromkeys(names):
        results.append(
            extract_register(
                configs[name],
                source_dir,
                out_dir / f"{name}.parquet",
                chunksize=args.chunksize,
                progress=True,
            )
        )
    print(f"run {run_id}: extracted {len(results)} register(s)")  # noqa: T201
    print(_summary(results))  # noqa: T201
    return 0
