"""``match_pairs``: no per-record indexes, and the explanation kept as JSON text.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28

Every run writes its pairs (the review band with an explanation per pair, and the links of
the records it relinked: about 260,000 rows for a 1,000,000-person country). The write cost
an incremental nightly run more than any other statement. Measured with ``COPY`` of one run's
258,612 pairs on PostgreSQL 15 (2 cores):

* 10.1–10.6 s as 0004 left the table;
* 5.9–6.1 s without the indexes ``(register_l, record_id_l)`` and ``(register_r,
  record_id_r)``: no query of reglink reads them (the console looks pairs up by run and
  status, or by ``id``), and a steward's question about one record goes through the
  run: ``(run_id, register_l, record_id_l, …)`` is the unique key's index;
* 4.9–5.1 s with ``explanation`` as ``json`` instead of ``jsonb``: ``json`` is checked and
  stored as written, ``jsonb`` is parsed into its binary form. The explanation is only
  ever read whole (the console's weight waterfall), never searched inside.

The unique key ``(run_id, register_l, record_id_l, register_r, record_id_r)`` and the index
``(run_id, status)`` (the review queue) stay. On SQLite a JSON column is text either way:
only the indexes go.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

INDEXES = (("ix_match_pairs_register_l_record_id_l", ["register_l", "record_id_l"]),
           ("ix_match_pairs_register_r_record_id_r", ["register_r", "record_id_r"]))


def upgrade() -> None:
    for name, _ in INDEXES:
        op.drop_index(name, table_name="match_pairs")
    if op.get_bind().dialect.name == "postgresql":
        op.alter_column("match_pairs", "explanation", type_=sa.JSON(),
                        existing_type=postgresql.JSONB(),
                        postgresql_using="explanation::json")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.alter_column("match_pairs", "explanation", type_=postgresql.JSONB(),
                        existing_type=sa.JSON(), postgresql_using="explanation::jsonb")
    for name, columns in INDEXES:
        op.create_index(name, "match_pairs", columns)
