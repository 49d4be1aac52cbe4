"""``reglink db upgrade`` and ``reglink db current``: the MPI database's schema.

``upgrade`` creates or migrates the schema (safe to run again: nothing changes when it is
up to date); ``current`` shows the database's revision and the newest one, and exits 1 when
they differ, so that a deployment script can check before the nightly run.
"""

from __future__ import annotations

import argparse
import logging

from pipelines.store.engine import database_url, make_engine, safe_url, sqlite_path
from pipelines.store.migrations import current_revision, head_revision, upgrade

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    from pipelines.cli import add_common_options

    parser = subparsers.add_parser(
        "db",
        help="create or upgrade the MPI database schema",
        description=(
            "Manage the MPI database schema: SQLite at <data-dir>/mpi.sqlite by default, or "
            "the database of --database-url / $REGLINK_DATABASE_URL (PostgreSQL)."
        ),
    )
    actions = parser.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    up = actions.add_parser(
        "upgrade",
        help="create the schema or migrate it to the newest revision",
        description="Create the MPI schema, or migrate it to the newest revision, in one "
        "transaction. Running it again changes nothing.",
    )
    add_common_options(up)
    up.set_defaults(func=run_upgrade)
    cur = actions.add_parser(
        "current",
        help="show the schema revision (exit 1 when not the newest)",
        description="Show the database's schema revision and the newest one this reglink "
        "knows; exit 1 when they differ.",
    )
    add_common_options(cur)
    cur.set_defaults(func=run_current)


def _quiet_alembic(args: argparse.Namespace) -> None:
    # Alembic announces its context at INFO; our own summary line says what happened.
    if not getattr(args, "verbose", False):
        logging.getLogger("alembic").setLevel(logging.WARNING)


def run_upgrade(args: argparse.Namespace) -> int:
    _quiet_alembic(args)
    url = database_url(args.data_dir, args.database_url)
    engine = make_engine(url)
    try:
        before, after = upgrade(engine)
    finally:
        engine.dispose()
    where = safe_url(url)
    if before == after:
        print(f"{where}: already at revision {after} (newest)")  # noqa: T201
    else:
        print(f"{where}: upgraded from {before or 'empty'} to revision {after}")  # noqa: T201
    return 0


def run_current(args: argparse.Namespace) -> int:
    _quiet_alembic(args)
    url = database_url(args.data_dir, args.database_url)
    where = safe_url(url)
    head = head_revision()
    path = sqlite_path(url)
    if path is not None and not path.exists():
        # Do not create an empty file just to look at it.
        print(f"{where}: no database yet (newest revision: {head}); run `reglink db upgrade`")  # noqa: T201
        return 1
    engine = make_engine(url)
    try:
        current = current_revision(engine)
    finally:
        engine.dispose()
    if current == head:
        print(f"{where}: revision {current} (newest)")  # noqa: T201
        return 0
    state = "no reglink schema" if current is None else f"revision {current}"
    print(f"{where}: {state}; newest is {head}: run `reglink db upgrade`")  # noqa: T201
    return 1
