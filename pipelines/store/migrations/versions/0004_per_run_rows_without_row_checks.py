"""Per-run bulk rows without a foreign-key check per row.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27

Every run writes its own ``consistency_findings`` (about 235,000 rows for a
1,000,000-person country) and ``match_pairs`` (the review band, about 190,000 rows). Their
foreign keys (``consistency_findings.run_id`` → ``runs``, ``consistency_findings.mpi_id`` →
``persons``, ``match_pairs.run_id`` → ``runs``) are checked by PostgreSQL with one trigger
query per inserted row: measured at 1M on PostgreSQL 15, ``COPY`` of one run's findings took
6.3 s with the keys and 2.0 s without, of its pairs 4.9 s and 3.7 s. That is most of the time
an incremental nightly run spends writing them.

The keys guarded nothing the writer does not already ensure: the rows are computed from the
index the same run published and are written in the transaction that checks the run, runs
are never deleted, and persons are retired, never deleted. The columns, indexes and unique
constraints stay; joins to ``runs`` and ``persons`` work as before.

On SQLite dropping a key rebuilds the table, and the rename at the end of the rebuild fails
while views name the table, so the views are dropped first and created again from their own
text afterwards.
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# (table, constraint, column, referenced table.column)
KEYS = (
    ("consistency_findings", "fk_consistency_findings_run_id_runs", "run_id", "runs.run_id"),
    ("consistency_findings", "fk_consistency_findings_mpi_id_persons", "mpi_id",
     "persons.mpi_id"),
    ("match_pairs", "fk_match_pairs_run_id_runs", "run_id", "runs.run_id"),
)

# SQLite keeps no names for foreign keys: the rebuild needs them named by the convention
# the tables were created with.
_NAMING = {"fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s"}


def _change_keys(change) -> None:
    """Call ``change(batch, table, name, column, target)`` for each key (``batch``: the
    SQLite table rebuild, else None);
    on SQLite inside a table rebuild, with the views put back afterwards."""
    bind = op.get_bind()
    sqlite = bind.dialect.name == "sqlite"
    views = bind.exec_driver_sql(
        "SELECT name, sql FROM sqlite_master WHERE type = 'view' ORDER BY name").all(
    ) if sqlite else []
    for name, _ in views:
        op.execute(f'DROP VIEW "{name}"')
    for table in sorted({k[0] for k in KEYS}):
        mine = [k for k in KEYS if k[0] == table]
        if sqlite:
            with op.batch_alter_table(table, naming_convention=_NAMING) as batch:
                for key in mine:
                    change(batch, *key)
        else:
            for key in mine:
                change(None, *key)
    for _, sql in views:
        op.execute(sql)


def upgrade() -> None:
    def drop(batch, table: str, name: str, column: str, target: str) -> None:
        if batch is None:
            op.drop_constraint(name, table, type_="foreignkey")
        else:
            batch.drop_constraint(name, type_="foreignkey")

    _change_keys(drop)


def downgrade() -> None:
    def add(batch, table: str, name: str, column: str, target: str) -> None:
        referred, key = target.split(".")
        # As 0001 made them: the key to persons is checked at commit.
        deferred = ({"deferrable": True, "initially": "DEFERRED"} if referred == "persons"
                    else {})
        if batch is None:
            op.create_foreign_key(name, table, referred, [column], [key], **deferred)
        else:
            batch.create_foreign_key(name, referred, [column], [key], **deferred)

    _change_keys(add)
