"""Name keys on persons for the console's person lookup in any script.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27

``persons.surname_key`` and ``persons.given_key`` hold ``matching.translit.name_key`` of the
golden surname and given name (lowercase ASCII, one canonical Latin form for every script
and transliteration), so that a steward who types "Каримов" finds "Karimov" and vice versa
through one index, (``surname_key``, ``given_key``, ``birth_date``), instead of a scan of the
index. Publish fills them; rows written before this revision have NULL keys until the next
publish rewrites them.

Columns are added with a plain ``ADD COLUMN`` (nullable, no default), which SQLite supports
without rebuilding the table, so the views over ``persons`` stay as they are.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "persons",
        sa.Column("surname_key", sa.Text(), nullable=True,
                  comment="matching.translit.name_key(surname): lookup in any script"),
    )
    op.add_column(
        "persons",
        sa.Column("given_key", sa.Text(), nullable=True,
                  comment="matching.translit.name_key(given_name): lookup in any script"),
    )
    op.create_index(
        op.f("ix_persons_surname_key_given_key_birth_date"),
        "persons",
        ["surname_key", "given_key", "birth_date"],
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_persons_surname_key_given_key_birth_date"), table_name="persons")
    # Plain DROP COLUMN (SQLite >= 3.35): a batch rebuild would trip over the views.
    op.drop_column("persons", "given_key")
    op.drop_column("persons", "surname_key")
