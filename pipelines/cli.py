"""The ``reglink`` command line.

Each command lives in its own module, which exposes ``register(subparsers)`` adding its
parser and setting ``func`` to a callable taking the parsed arguments and returning an
exit status.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from pathlib import Path

from pipelines import __version__
from pipelines.errors import ReglinkError

# Modules that contribute commands, in the order --help lists them.
COMMAND_MODULES = (
    "pipelines.synth.command",
    "pipelines.extract_command",
    "pipelines.validate_command",
    "pipelines.link_command",
    "pipelines.evaluate_command",
    "pipelines.run_command",
    "pipelines.mpi_commands",
    "pipelines.demo",
    "pipelines.db_command",
    "pipelines.consistency_command",
    "pipelines.web_command",
)

log = logging.getLogger("reglink")


def add_common_options(parser: argparse.ArgumentParser) -> None:
    """Options every command takes (DESIGN.md): config folder, data folder, database URL."""
    parser.add_argument(
        "--config",
        type=Path,
        default=Path(os.environ.get("REGLINK_CONFIG", "config")),
        help="configuration folder (default: $REGLINK_CONFIG or ./config)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("REGLINK_DATA_DIR", "data")),
        help="folder for run partitions and the SQLite MPI (default: $REGLINK_DATA_DIR or ./data)",
    )
    parser.add_argument(
        "--database-url",
        default=os.environ.get("REGLINK_DATABASE_URL"),
        help="MPI database URL (default: $REGLINK_DATABASE_URL, else SQLite in the data folder)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reglink",
        description="Link national person registers into one Master Person Index.",
    )
    parser.add_argument("--version", action="version", version=f"reglink {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    parser.set_defaults(available_commands=tuple(subparsers.choices))
    return parser


def available_commands() -> list[str]:
    """Names of the commands this installation has."""
    return list(build_parser().get_default("available_commands"))


def _before_loading_arrow(argv: list[str]) -> None:
    """What must be decided before the command modules load pyarrow: for ``reglink run``,
    how long Arrow's allocator keeps freed memory (:mod:`pipelines.memory`)."""
    words = [a for a in argv if not a.startswith("-")]
    if not words or words[0] != "run" or {"-h", "--help"} & set(argv):
        return
    pre = argparse.ArgumentParser(add_help=False)
    add_common_options(pre)  # the same defaults as the command's own parser
    pre.add_argument("--full", action="store_true")
    known, _ = pre.parse_known_args(argv)
    from pipelines.memory import keep_freed_memory_for_incremental_run

    keep_freed_memory_for_incremental_run(data_dir=known.data_dir,
                                          database_url=known.database_url, full=known.full)


def main(argv: list[str] | None = None) -> int:
    _before_loading_arrow(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except ReglinkError as exc:
        print(f"reglink {args.command}: error: {exc}", file=sys.stderr)  # noqa: T201
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)  # noqa: T201
        return 130


if __name__ == "__main__":
    sys.exit(main())
