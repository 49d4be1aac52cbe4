"""Consistency findings view: typed columns for what dashboards chart.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27

``v_consistency_findings`` keeps every column it had and adds, read out of the findings'
JSON so that a BI tool can chart them without JSON functions:

- ``death_date``, ``days_since_death``: when the civil registry says the person died and
  how long ago that was at the run's reference date (dead but paid a pension, dead on the
  electoral roll: "since when");
- ``age``: the person's age at the reference date where the rule shows it (a minor on the
  electoral roll, an ID holder with no birth record);
- ``records``: how many source records are behind the finding.

Tables do not change, so ``schema.py`` needs nothing. On PostgreSQL the view and its new
columns get comments, which Metabase and Superset show beside them.
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def _run_date(dialect: str) -> str:
    if dialect == "postgresql":
        return "CAST(timezone('UTC', r.started_at) AS DATE)"
    return "date(r.started_at)"


def _current_run() -> str:
    # The newest published run that has consistency figures, so the view does not go empty
    # while a new run is being published (as in 0001).
    return """
        SELECT r2.run_id FROM runs r2
        WHERE r2.status = 'published'
          AND EXISTS (SELECT 1 FROM consistency_metrics m WHERE m.run_id = r2.run_id)
        ORDER BY r2.started_at DESC, r2.run_id DESC
        LIMIT 1
    """


def _findings_view(dialect: str) -> str:
    if dialect == "postgresql":
        death_date = "f.details ->> 'death_date'"
        days = "CAST(f.details ->> 'days_since_death' AS INTEGER)"
        age = "CAST(f.details ->> 'age' AS INTEGER)"
        records = "jsonb_array_length(f.record_ids)"
    else:
        death_date = "json_extract(f.details, '$.death_date')"
        days = "CAST(json_extract(f.details, '$.days_since_death') AS INTEGER)"
        age = "CAST(json_extract(f.details, '$.age') AS INTEGER)"
        records = "json_array_length(f.record_ids)"
    return f"""
        SELECT f.run_id, {_run_date(dialect)} AS run_date, f.rule, f.mpi_id, f.register,
               f.record_ids, f.details, p.status AS person_status, p.region, p.district,
               {death_date} AS death_date,
               {days} AS days_since_death,
               {age} AS age,
               {records} AS records
        FROM consistency_findings f
        JOIN runs r ON r.run_id = f.run_id
        JOIN persons p ON p.mpi_id = f.mpi_id
        WHERE f.run_id = ({_current_run()})
    """


def _findings_view_0001(dialect: str) -> str:
    return f"""
        SELECT f.run_id, {_run_date(dialect)} AS run_date, f.rule, f.mpi_id, f.register,
               f.record_ids, f.details, p.status AS person_status, p.region, p.district
        FROM consistency_findings f
        JOIN runs r ON r.run_id = f.run_id
        JOIN persons p ON p.mpi_id = f.mpi_id
        WHERE f.run_id = ({_current_run()})
    """


COMMENTS = {
    None: "Current consistency findings: those of the newest published run with consistency "
    "figures; one row per rule and person (docs/consistency.md).",
    "death_date": "death date in the civil registry, where the rule shows it",
    "days_since_death": "days from the death to the run's reference date",
    "age": "age in whole years at the run's reference date, where the rule shows it",
    "records": "number of source records behind the finding",
}


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    # PostgreSQL's CREATE OR REPLACE VIEW can add columns only at the end, and SQLite has no
    # OR REPLACE: drop and create works on both, inside the migration's transaction.
    op.execute("DROP VIEW IF EXISTS v_consistency_findings")
    op.execute(f"CREATE VIEW v_consistency_findings AS {_findings_view(dialect)}")
    if dialect == "postgresql":
        for column, text in COMMENTS.items():
            target = "VIEW v_consistency_findings" if column is None else (
                f"COLUMN v_consistency_findings.{column}"
            )
            literal = text.replace("'", "''")
            op.execute(f"COMMENT ON {target} IS '{literal}'")


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    op.execute("DROP VIEW IF EXISTS v_consistency_findings")
    op.execute(f"CREATE VIEW v_consistency_findings AS {_findings_view_0001(dialect)}")
