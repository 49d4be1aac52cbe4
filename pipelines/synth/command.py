"""``reglink synth``: write a synthetic country's register extracts and their truth."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pipelines.errors import ReglinkError

log = logging.getLogger(__name__)


class SynthError(ReglinkError):
    """Bad arguments to ``reglink synth``."""


def register(subparsers: argparse._SubParsersAction) -> None:
    from pipelines.cli import add_common_options

    parser = subparsers.add_parser(
        "synth",
        help="generate a synthetic country: five register extracts and truth.csv",
        description=(
            "Generate persons in households over a century and write the civil, national_id, "
            "electoral, pension and health extracts in their native layouts, with injected "
            "errors, plus truth.csv (register, record_id, person_id). Same seed, same bytes."
        ),
    )
    parser.add_argument("--persons", type=int, required=True, help="number of persons")
    parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    parser.add_argument("--out", type=Path, required=True, help="output folder (source folder)")
    parser.add_argument(
        "--error-rate",
        type=float,
        default=0.05,
        help="overall rate scaling every error kind; 0 gives clean registers (default 0.05)",
    )
    add_common_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pipelines.synth.generate import MAX_PERSONS, generate

    if not 0 < args.persons <= MAX_PERSONS:
        raise SynthError(
            f"--persons must be between 1 and {MAX_PERSONS}, got {args.persons}; "
            "pass a positive number of persons"
        )
    if not 0.0 <= args.error_rate <= 1.0:
        raise SynthError(
            f"--error-rate must be between 0 and 1, got {args.error_rate}; "
            "0.05 is a realistic level, 0 gives clean registers"
        )
    if args.seed < 0:
        raise SynthError(f"--seed must be 0 or positive, got {args.seed}")
    if args.out.exists() and not args.out.is_dir():
        raise SynthError(f"--out {args.out} is a file; give a folder for the extracts")
    summary = generate(args.persons, args.seed, args.out, args.error_rate)
    for name, rows in summary.rows.items():
        print(f"{name:12s} {rows:>11,d} rows")  # noqa: T201
    print(f"wrote {args.out}/ (truth.csv holds the true person of every record)")  # noqa: T201
    return 0
