"""Alembic environment of the MPI database, run programmatically (no alembic.ini).

``pipelines.store.migrations.upgrade`` (and ``revision``, for developers) hands over an open
connection in ``config.attributes["connection"]``, so the whole upgrade runs in the caller's
transaction: on PostgreSQL and (with the engine's explicit BEGIN) on SQLite a failed upgrade
leaves the database as it was.
"""

from __future__ import annotations

from alembic import context

from pipelines.store.schema import metadata

config = context.config


def _run(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        # SQLite cannot ALTER most things: later migrations go through batch mode there.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    from pipelines.store.engine import make_engine

    engine = make_engine(config.get_main_option("sqlalchemy.url"))
    with engine.begin() as conn:
        _run(conn)
    engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported; connect to the database")
run_migrations_online()
