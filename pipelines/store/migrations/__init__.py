"""Schema migrations of the MPI database (Alembic, run from code: no alembic.ini).

``upgrade`` brings a database to the newest revision in one transaction; ``current_revision``
and ``head_revision`` say where it is and where it should be; ``require_head`` is what a
step calls before it writes, so that an old schema is reported instead of half-written.
"""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy.engine import URL, Connection, Engine

from pipelines.store.engine import DatabaseError, make_engine, safe_url

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent
_UPGRADE_LOCK = 0x7265676C  # "regl": the advisory lock key that serialises upgrades


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic config pointing at this folder, optionally bound to an open connection."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("path_separator", "os")
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The newest revision this version of reglink knows."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "no migrations found"  # a packaging error, not a user's
    return head


def current_revision(engine_or_url: Engine | Connection | str | URL) -> str | None:
    """The database's revision, or None when no reglink schema has been created yet."""
    if isinstance(engine_or_url, Connection):
        return MigrationContext.configure(engine_or_url).get_current_revision()
    engine, owned = _engine(engine_or_url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        if owned:
            engine.dispose()


def upgrade(engine_or_url: Engine | str | URL, revision: str = "head") -> tuple[str | None, str]:
    """Migrate the database to ``revision`` (default: the newest) in one transaction.

    Running it on an up-to-date database changes nothing.

    Returns:
        (revision before, revision after).

    Raises:
        DatabaseError: the database cannot be reached, or it is at a revision this version
            of reglink does not know (it was upgraded by a newer reglink).
    """
    engine, owned = _engine(engine_or_url)
    try:
        with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                # Two processes upgrading at once (workers starting together) take turns.
                conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_UPGRADE_LOCK})")
            before = MigrationContext.configure(conn).get_current_revision()
            _check_known(before, engine)
            command.upgrade(alembic_config(conn), revision)
            after = MigrationContext.configure(conn).get_current_revision()
    except CommandError as exc:
        raise DatabaseError(f"cannot upgrade {safe_url(engine.url)}: {exc}") from exc
    finally:
        if owned:
            engine.dispose()
    if before == after:
        log.info("MPI database already at revision %s", after)
    else:
        log.info("MPI database upgraded from %s to %s", before or "(empty)", after)
    return before, after


def require_head(conn: Connection) -> None:
    """Raise :class:`DatabaseError` unless the schema is at the newest revision."""
    current = MigrationContext.configure(conn).get_current_revision()
    head = head_revision()
    if current != head:
        state = "has no reglink schema" if current is None else f"is at revision {current}"
        raise DatabaseError(
            f"the MPI database {safe_url(conn.engine.url)} {state}, this reglink needs {head}; "
            "run `reglink db upgrade` (with the same --database-url) first"
        )


def revision(message: str, url: str | URL) -> None:
    """Write a new migration by comparing ``schema.metadata`` with a database at head.

    For developers: ``python -c "from pipelines.store.migrations import revision;
    revision('add x', 'sqlite:////tmp/dev.sqlite')"``; then read and edit the generated file.
    """
    engine, _ = _engine(url)
    upgrade(engine)
    with engine.begin() as conn:
        command.revision(alembic_config(conn), message=message, autogenerate=True)
    engine.dispose()


def _check_known(revision_id: str | None, engine: Engine) -> None:
    if revision_id is None:
        return
    script = ScriptDirectory.from_config(alembic_config())
    try:
        script.get_revision(revision_id)
    except Exception:  # alembic raises several kinds for an unknown id
        raise DatabaseError(
            f"the MPI database {safe_url(engine.url)} is at revision {revision_id!r}, which this "
            f"version of reglink does not know (its newest is {head_revision()}): it was "
            "upgraded by a newer reglink; use that version"
        ) from None


def _engine(engine_or_url: Engine | str | URL) -> tuple[Engine, bool]:
    if isinstance(engine_or_url, Engine):
        return engine_or_url, False
    if isinstance(engine_or_url, (str, URL)):
        return make_engine(engine_or_url), True
    raise TypeError(f"expected an Engine or a URL, got {type(engine_or_url).__name__}")


__all__ = [
    "MIGRATIONS_DIR",
    "alembic_config",
    "current_revision",
    "head_revision",
    "require_head",
    "revision",
    "upgrade",
]

