"""Where the MPI database is and how to connect to it.

``database_url`` resolves the URL (``--database-url``, else ``$REGLINK_DATABASE_URL``, else a
SQLite file in the data folder); ``make_engine`` builds an engine with the settings each
backend needs and, by default, checks that the database can be reached, so that a wrong URL
ends in one clear message that names the host and database but never the password.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine, make_url

from pipelines.errors import ReglinkError

log = logging.getLogger(__name__)

ENV_URL = "REGLINK_DATABASE_URL"
SQLITE_FILENAME = "mpi.sqlite"
#: How long a SQLite writer waits for another one (the nightly publish, the console) to finish.
SQLITE_BUSY_TIMEOUT_MS = 30_000
#: How long to wait for a PostgreSQL server before calling it unreachable.
PG_CONNECT_TIMEOUT_S = 10


class DatabaseError(ReglinkError):
    """The MPI database cannot be reached, or its schema is not the one reglink expects."""


def database_url(data_dir: str | Path, explicit: str | None = None) -> str:
    """The MPI database URL.

    Args:
        data_dir: the data folder (``--data-dir``); the SQLite default lives there.
        explicit: ``--database-url`` when given.

    Returns:
        ``explicit``, else ``$REGLINK_DATABASE_URL``, else
        ``sqlite:///<absolute data_dir>/mpi.sqlite``. ``postgres://`` (the form many hosting
        services hand out) is accepted as ``postgresql+psycopg2://``.
    """
    url = explicit or os.environ.get(ENV_URL)
    if not url:
        return f"sqlite:///{(Path(data_dir) / SQLITE_FILENAME).resolve()}"
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg2://" + url[len(prefix):]
    return url


def safe_url(url: str | URL) -> str:
    """The URL as text with the password replaced by ``***``: safe for logs and messages."""
    try:
        return _parse(url).render_as_string(hide_password=True)
    except DatabaseError:
        return "<unparseable database URL>"


def sqlite_path(url: str | URL) -> Path | None:
    """The file of a SQLite URL; None for another backend or an in-memory database."""
    parsed = _parse(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def make_engine(url: str | URL, *, check: bool = True, echo: bool = False) -> Engine:
    """An engine for the MPI database.

    SQLite: the data folder is created if missing; every connection gets ``foreign_keys=ON``,
    ``journal_mode=WAL`` (the console reads while a run writes), ``busy_timeout`` and
    ``synchronous=NORMAL``; and transactions are real (``BEGIN`` is sent by SQLAlchemy, so
    DDL in a migration rolls back too). PostgreSQL: psycopg2, a connect timeout and
    ``pool_pre_ping`` (a nightly job outlives idle connections).

    Args:
        url: a SQLAlchemy URL, e.g. from :func:`database_url`.
        check: connect once now, so that an unreachable database fails here with a clear
            message rather than in the middle of a step.
        echo: log every SQL statement (debugging).

    Raises:
        DatabaseError: the URL is malformed, names an unknown backend, or (``check``) the
            database cannot be reached. The message never contains the password.
    """
    parsed = _parse(url)
    backend = parsed.get_backend_name()
    kwargs: dict = {"echo": echo}
    if backend == "sqlite":
        path = sqlite_path(parsed)
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise DatabaseError(
                    f"cannot create the folder of the SQLite MPI database {path}: {exc}; "
                    "pass another --data-dir or --database-url"
                ) from exc
    elif backend == "postgresql":
        kwargs["pool_pre_ping"] = True
        if parsed.get_driver_name() == "psycopg2" and "connect_timeout" not in parsed.query:
            kwargs["connect_args"] = {"connect_timeout": PG_CONNECT_TIMEOUT_S}
    try:
        engine = sa.create_engine(parsed, **kwargs)
    except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError, ImportError) as exc:
        raise DatabaseError(
            f"cannot use the database URL {safe_url(parsed)}: {_scrub(exc, parsed)}; "
            "expected e.g. sqlite:////path/mpi.sqlite or "
            "postgresql+psycopg2://user:password@host:5432/dbname"
        ) from exc
    if backend == "sqlite":
        _configure_sqlite(engine)
    if check:
        check_connection(engine)
    return engine


def check_connection(engine: Engine) -> None:
    """Connect once; raise :class:`DatabaseError` naming host and database if that fails."""
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    except sa.exc.DBAPIError as exc:
        url = engine.url
        where = (
            f"SQLite file {url.database}"
            if url.get_backend_name() == "sqlite"
            else f"database {url.database!r} on {url.host or 'localhost'}:{url.port or 5432} "
            f"as user {url.username!r}"
        )
        detail = _scrub(exc.orig if exc.orig is not None else exc, url)
        raise DatabaseError(
            f"cannot connect to the MPI {where} ({safe_url(url)}): {detail} "
            f"(check that the server is running and that --database-url or ${ENV_URL} is right)"
        ) from None  # the chained driver error could carry the DSN


def _parse(url: str | URL) -> URL:
    if isinstance(url, URL):
        return url
    try:
        return make_url(url)
    except (sa.exc.ArgumentError, ValueError):
        # The text may contain a password: say where the URL is wrong, not what it is.
        raise DatabaseError(
            "the database URL cannot be parsed; expected e.g. sqlite:////path/mpi.sqlite or "
            "postgresql+psycopg2://user:password@host:5432/dbname (check --database-url or "
            f"${ENV_URL})"
        ) from None


def _scrub(exc: BaseException, url: URL) -> str:
    """The error's first line, without the password should a driver ever echo it."""
    text = " ".join(" ".join(str(exc).strip().split("\n")[:2]).split())
    if url.password:
        text = text.replace(str(url.password), "***")
    return text


def _configure_sqlite(engine: Engine) -> None:
    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:
        # Let SQLAlchemy send BEGIN itself (below): pysqlite's own transaction handling
        # leaves DDL outside transactions, so a failed migration would be half applied.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn) -> None:
        conn.exec_driver_sql("BEGIN")
