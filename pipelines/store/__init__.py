"""The MPI database: schema, engine, migrations and the small functions the steps use.

SQLAlchemy Core on SQLite (the default: ``<data-dir>/mpi.sqlite``) or PostgreSQL (through
psycopg2, ``--database-url`` / ``$REGLINK_DATABASE_URL``). docs/database.md describes the
tables and views.
"""

from pipelines.store.engine import DatabaseError, database_url, make_engine, safe_url
from pipelines.store.migrations import current_revision, head_revision, upgrade

__all__ = [
    "DatabaseError",
    "current_revision",
    "database_url",
    "head_revision",
    "make_engine",
    "safe_url",
    "upgrade",
]
