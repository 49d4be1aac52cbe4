"""Initial schema of the MPI database: every table, key and index, and the BI views.

Revision ID: 0001
Revises:
Create Date: 2026-11-27

Written out in full (not built from ``pipelines.store.schema``) so that this revision keeps
meaning what it meant when later revisions change the schema. Types are spelled so that one
script serves SQLite and PostgreSQL: timestamps are ``timestamptz`` on PostgreSQL (UTC text
on SQLite), JSON is ``jsonb`` on PostgreSQL.
"""

# ruff: noqa: E501  (long column comments; they become COMMENT ON COLUMN for BI tools)

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TIMESTAMP = sa.DateTime(timezone=True)
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
NOW = sa.func.current_timestamp()

VIEWS = ("v_consistency_trend", "v_consistency_findings", "v_run_summary")


def upgrade() -> None:
    _create_tables()
    _create_views()


def _create_tables() -> None:
    op.create_table(
        "audit_log",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("at", TIMESTAMP, server_default=NOW, nullable=False),
        sa.Column("username", sa.Text(), nullable=True, comment="who acted"),
        sa.Column(
            "action", sa.Text(), nullable=False, comment="e.g. login, decide_pair, view_person"
        ),
        sa.Column(
            "target", sa.Text(), nullable=True, comment="what it was done to, e.g. an MPI ID"
        ),
        sa.Column("details", JSON, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_log")),
        comment="What console users did, append-only.",
    )
    op.create_index(op.f("ix_audit_log_at"), "audit_log", ["at"])
    op.create_index(op.f("ix_audit_log_username_at"), "audit_log", ["username", "at"])

    op.create_table(
        "runs",
        sa.Column("run_id", sa.Text(), nullable=False, comment="run id, e.g. 20261127T120000Z"),
        sa.Column(
            "started_at",
            TIMESTAMP,
            server_default=NOW,
            nullable=False,
            comment="when the run was first started (kept on a rerun)",
        ),
        sa.Column(
            "finished_at", TIMESTAMP, nullable=True, comment="when it was published or failed"
        ),
        sa.Column(
            "status",
            sa.String(length=16),
            server_default="running",
            nullable=False,
            comment="running | validated | published | failed",
        ),
        sa.Column(
            "seed",
            sa.BigInteger(),
            nullable=False,
            comment="seed of every random choice of the run (u sampling, EM start)",
        ),
        sa.Column(
            "config_hash",
            sa.Text(),
            nullable=False,
            comment="hash of the configuration folder the run used",
        ),
        sa.Column(
            "model_path", sa.Text(), nullable=True, comment="trained model (JSON) of the run"
        ),
        sa.Column(
            "data_docs_path",
            sa.Text(),
            nullable=True,
            comment="Great Expectations Data Docs of the run",
        ),
        sa.Column("counts", JSON, nullable=True, comment='step counts, e.g. {"extracted": {...}}'),
        sa.Column(
            "message", sa.Text(), nullable=True, comment="why the run failed, for the operator"
        ),
        sa.CheckConstraint(
            "status IN ('running', 'validated', 'published', 'failed')", name=op.f("ck_runs_status")
        ),
        sa.PrimaryKeyConstraint("run_id", name=op.f("pk_runs")),
        comment="One row per run of the pipeline (nightly or by hand).",
    )
    op.create_index(op.f("ix_runs_status_started_at"), "runs", ["status", "started_at"])

    op.create_table(
        "users",
        sa.Column("username", sa.Text(), nullable=False),
        sa.Column("password_hash", sa.Text(), nullable=False, comment="never the password"),
        sa.Column("role", sa.String(length=8), nullable=False, comment="viewer | steward | admin"),
        sa.Column(
            "created_at",
            TIMESTAMP,
            server_default=NOW,
            nullable=False,
            comment="when the row was written (UTC)",
        ),
        sa.Column("active", sa.Boolean(), server_default=sa.true(), nullable=False),
        sa.CheckConstraint("role IN ('viewer', 'steward', 'admin')", name=op.f("ck_users_role")),
        sa.PrimaryKeyConstraint("username", name=op.f("pk_users")),
        comment="Console accounts.",
    )
    op.create_table(
        "consistency_metrics",
        sa.Column("run_id", sa.Text(), nullable=False),
        sa.Column("rule", sa.Text(), nullable=False),
        sa.Column(
            "register",
            sa.Text(),
            nullable=False,
            comment="register the figure is about; 'all' for whole-index figures",
        ),
        sa.Column("count", sa.BigInteger(), nullable=False, comment="findings"),
        sa.Column(
            "denominator", sa.BigInteger(), nullable=True, comment="persons or records checked"
        ),
        sa.Column("rate", sa.Float(), nullable=True, comment="count / denominator"),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.run_id"], name=op.f("fk_consistency_metrics_run_id_runs")
        ),
        sa.PrimaryKeyConstraint("run_id", "rule", "register", name=op.f("pk_consistency_metrics")),
        comment="Consistency figures per run, rule and register: the dashboard's time series.",
    )
    op.create_table(
        "match_pairs",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("run_id", sa.Text(), nullable=False, comment="run that scored the pair"),
        sa.Column("register_l", sa.Text(), nullable=False),
        sa.Column("record_id_l", sa.Text(), nullable=False),
        sa.Column("register_r", sa.Text(), nullable=False),
        sa.Column("record_id_r", sa.Text(), nullable=False),
        sa.Column("match_weight", sa.Float(), nullable=False, comment="log2 Bayes factor"),
        sa.Column("match_probability", sa.Float(), nullable=False),
        sa.Column(
            "status",
            sa.String(length=12),
            nullable=False,
            comment="review (in the steward queue) | linked | rejected",
        ),
        sa.Column(
            "explanation", JSON, nullable=True, comment="each field's contribution to the weight"
        ),
        sa.CheckConstraint(
            "status IN ('review', 'linked', 'rejected')", name=op.f("ck_match_pairs_status")
        ),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.run_id"], name=op.f("fk_match_pairs_run_id_runs")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_match_pairs")),
        sa.UniqueConstraint(
            "run_id",
            "register_l",
            "record_id_l",
            "register_r",
            "record_id_r",
            name=op.f("uq_match_pairs_run_id"),
        ),
        comment="Scored record pairs kept for review and audit: the review band and the links.",
    )
    op.create_index(
        op.f("ix_match_pairs_register_l_record_id_l"), "match_pairs", ["register_l", "record_id_l"]
    )
    op.create_index(
        op.f("ix_match_pairs_register_r_record_id_r"), "match_pairs", ["register_r", "record_id_r"]
    )
    op.create_index(op.f("ix_match_pairs_run_id_status"), "match_pairs", ["run_id", "status"])

    op.create_table(
        "mpi_events",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("run_id", sa.Text(), nullable=False, comment="run that caused the event"),
        sa.Column(
            "event_type",
            sa.String(length=8),
            nullable=False,
            comment="new | merge | split | retire | update",
        ),
        sa.Column("mpi_id", sa.Text(), nullable=False, comment="the MPI ID the event is about"),
        sa.Column(
            "other_mpi_id",
            sa.Text(),
            nullable=True,
            comment="merge: the absorbed ID; split: the new ID; retire: merged into",
        ),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("details", JSON, nullable=True),
        sa.Column(
            "created_at",
            TIMESTAMP,
            server_default=NOW,
            nullable=False,
            comment="when the row was written (UTC)",
        ),
        sa.CheckConstraint(
            "event_type IN ('new', 'merge', 'split', 'retire', 'update')",
            name=op.f("ck_mpi_events_event_type"),
        ),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.run_id"], name=op.f("fk_mpi_events_run_id_runs")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_mpi_events")),
        comment="History of MPI IDs: created, merged, split, retired, golden record changed.",
    )
    op.create_index(op.f("ix_mpi_events_mpi_id"), "mpi_events", ["mpi_id"])
    op.create_index(op.f("ix_mpi_events_other_mpi_id"), "mpi_events", ["other_mpi_id"])
    op.create_index(op.f("ix_mpi_events_run_id_event_type"), "mpi_events", ["run_id", "event_type"])
    op.create_index(
        "uq_mpi_events_event",
        "mpi_events",
        ["run_id", "event_type", "mpi_id", sa.text("coalesce(other_mpi_id, '')")],
        unique=True,
    )

    op.create_table(
        "persons",
        sa.Column("mpi_id", sa.Text(), nullable=False, comment="the person's MPI ID (opaque)"),
        sa.Column(
            "status",
            sa.String(length=8),
            server_default="active",
            nullable=False,
            comment="active | retired (merged into another person or no records left)",
        ),
        sa.Column(
            "merged_into",
            sa.Text(),
            nullable=True,
            comment="for a retired ID: the MPI ID that absorbed it",
        ),
        sa.Column("pin", sa.Text(), nullable=True, comment="golden PIN"),
        sa.Column("surname", sa.Text(), nullable=True),
        sa.Column("given_name", sa.Text(), nullable=True),
        sa.Column("patronymic", sa.Text(), nullable=True),
        sa.Column("sex", sa.String(length=1), nullable=True, comment="M | F | NULL"),
        sa.Column(
            "birth_date",
            sa.String(length=10),
            nullable=True,
            comment="ISO, possibly partial (YYYY-MM, YYYY)",
        ),
        sa.Column(
            "birth_date_quality",
            sa.String(length=12),
            nullable=True,
            comment="exact | placeholder | partial | missing",
        ),
        sa.Column(
            "death_date", sa.String(length=10), nullable=True, comment="ISO, possibly partial"
        ),
        sa.Column("region", sa.Text(), nullable=True),
        sa.Column("district", sa.Text(), nullable=True),
        sa.Column("locality", sa.Text(), nullable=True),
        sa.Column("address", sa.Text(), nullable=True),
        sa.Column("phone", sa.Text(), nullable=True),
        sa.Column(
            "provenance",
            JSON,
            server_default=sa.text("'{}'"),
            nullable=False,
            comment='source of each golden value: {"surname": {"register": "civil", "record_id": "B-1"}, ...}',
        ),
        sa.Column("created_run", sa.Text(), nullable=False, comment="run that created the MPI ID"),
        sa.Column(
            "updated_run", sa.Text(), nullable=False, comment="run that last changed the row"
        ),
        sa.CheckConstraint(
            "birth_date_quality IS NULL OR birth_date_quality IN ('exact', 'placeholder', 'partial', 'missing')",
            name=op.f("ck_persons_birth_date_quality"),
        ),
        sa.CheckConstraint(
            "merged_into IS NULL OR status = 'retired'", name=op.f("ck_persons_merged_retired")
        ),
        sa.CheckConstraint("status IN ('active', 'retired')", name=op.f("ck_persons_status")),
        sa.ForeignKeyConstraint(
            ["created_run"], ["runs.run_id"], name=op.f("fk_persons_created_run_runs")
        ),
        sa.ForeignKeyConstraint(
            ["merged_into"],
            ["persons.mpi_id"],
            name=op.f("fk_persons_merged_into_persons"),
            initially="DEFERRED",
            deferrable=True,
        ),
        sa.ForeignKeyConstraint(
            ["updated_run"], ["runs.run_id"], name=op.f("fk_persons_updated_run_runs")
        ),
        sa.PrimaryKeyConstraint("mpi_id", name=op.f("pk_persons")),
        comment="The Master Person Index: one row per MPI ID ever issued, with its golden record.",
    )
    op.create_index(op.f("ix_persons_merged_into"), "persons", ["merged_into"])
    op.create_index(op.f("ix_persons_pin"), "persons", ["pin"])
    op.create_index(
        op.f("ix_persons_surname_given_name_birth_date"),
        "persons",
        ["surname", "given_name", "birth_date"],
    )

    op.create_table(
        "quarantine",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("run_id", sa.Text(), nullable=False),
        sa.Column("register", sa.Text(), nullable=False),
        sa.Column(
            "record_id",
            sa.Text(),
            nullable=True,
            comment="may be missing or duplicated: that is a reason",
        ),
        sa.Column(
            "source_file",
            sa.Text(),
            server_default="",
            nullable=False,
            comment="file (or table) the row came from",
        ),
        sa.Column(
            "source_row", sa.BigInteger(), nullable=False, comment="1-based data row in source_file"
        ),
        sa.Column("rule", sa.Text(), nullable=False, comment="the check that failed"),
        sa.Column(
            "column_name",
            sa.Text(),
            server_default="",
            nullable=False,
            comment="canonical column checked; '' for a rule over the whole row",
        ),
        sa.Column("value", sa.Text(), nullable=True, comment="the offending value, as text"),
        sa.Column("severity", sa.String(length=16), server_default="error", nullable=False),
        sa.Column(
            "created_at",
            TIMESTAMP,
            server_default=NOW,
            nullable=False,
            comment="when the row was written (UTC)",
        ),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.run_id"], name=op.f("fk_quarantine_run_id_runs")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_quarantine")),
        sa.UniqueConstraint(
            "run_id",
            "register",
            "source_file",
            "source_row",
            "rule",
            "column_name",
            name=op.f("uq_quarantine_run_id"),
        ),
        comment="Rows that failed a row-level check, with the reason; never silently dropped.",
    )
    op.create_index(
        op.f("ix_quarantine_register_record_id"), "quarantine", ["register", "record_id"]
    )

    op.create_table(
        "review_decisions",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("register_l", sa.Text(), nullable=False),
        sa.Column("record_id_l", sa.Text(), nullable=False),
        sa.Column("register_r", sa.Text(), nullable=False),
        sa.Column("record_id_r", sa.Text(), nullable=False),
        sa.Column(
            "decision", sa.String(length=12), nullable=False, comment="must_link | cannot_link"
        ),
        sa.Column("author", sa.Text(), nullable=False, comment="username of the steward"),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("decided_at", TIMESTAMP, server_default=NOW, nullable=False),
        sa.Column(
            "run_id", sa.Text(), nullable=True, comment="run whose review queue held the pair"
        ),
        sa.Column(
            "superseded_by",
            ID,
            nullable=True,
            comment="the later decision that replaced this one; NULL = current",
        ),
        sa.CheckConstraint(
            "decision IN ('must_link', 'cannot_link')", name=op.f("ck_review_decisions_decision")
        ),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.run_id"], name=op.f("fk_review_decisions_run_id_runs")
        ),
        sa.ForeignKeyConstraint(
            ["superseded_by"],
            ["review_decisions.id"],
            name=op.f("fk_review_decisions_superseded_by_review_decisions"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_review_decisions")),
        comment="Steward decisions on record pairs; applied by every later run.",
    )
    op.create_index(
        "ix_review_decisions_pair",
        "review_decisions",
        ["register_l", "record_id_l", "register_r", "record_id_r"],
    )

    op.create_table(
        "watermarks",
        sa.Column("register", sa.Text(), nullable=False),
        sa.Column(
            "value",
            sa.Text(),
            nullable=False,
            comment="highest source_updated_at (or change key) published, as text",
        ),
        sa.Column("run_id", sa.Text(), nullable=True, comment="run that set it"),
        sa.Column("updated_at", TIMESTAMP, server_default=NOW, nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.run_id"], name=op.f("fk_watermarks_run_id_runs")
        ),
        sa.PrimaryKeyConstraint("register", name=op.f("pk_watermarks")),
        comment="Incremental extraction: where each register's next extract starts.",
    )
    op.create_table(
        "consistency_findings",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("run_id", sa.Text(), nullable=False),
        sa.Column("rule", sa.Text(), nullable=False, comment="e.g. dead_but_pension_active"),
        sa.Column("mpi_id", sa.Text(), nullable=False, comment="the person the finding is about"),
        sa.Column(
            "register", sa.Text(), nullable=True, comment="the register where a steward should act"
        ),
        sa.Column(
            "record_ids",
            JSON,
            nullable=True,
            comment='records involved: [{"register", "record_id"}]',
        ),
        sa.Column("details", JSON, nullable=True),
        sa.Column(
            "created_at",
            TIMESTAMP,
            server_default=NOW,
            nullable=False,
            comment="when the row was written (UTC)",
        ),
        sa.ForeignKeyConstraint(
            ["mpi_id"],
            ["persons.mpi_id"],
            name=op.f("fk_consistency_findings_mpi_id_persons"),
            initially="DEFERRED",
            deferrable=True,
        ),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.run_id"], name=op.f("fk_consistency_findings_run_id_runs")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_consistency_findings")),
        sa.UniqueConstraint(
            "run_id", "rule", "mpi_id", name=op.f("uq_consistency_findings_run_id")
        ),
        comment="Cross-register inconsistencies, one per person and rule, per run.",
    )
    op.create_index(op.f("ix_consistency_findings_mpi_id"), "consistency_findings", ["mpi_id"])

    op.create_table(
        "person_records",
        sa.Column("register", sa.Text(), nullable=False, comment="register name, e.g. civil"),
        sa.Column("record_id", sa.Text(), nullable=False, comment="the record's key in it"),
        sa.Column("mpi_id", sa.Text(), nullable=False, comment="the person this record belongs to"),
        sa.Column(
            "match_probability",
            sa.Float(),
            nullable=True,
            comment="strongest link of this record into its person; NULL when alone",
        ),
        sa.Column(
            "link_basis",
            sa.String(length=16),
            nullable=True,
            comment="why linked: model | steward | single (a person of one record)",
        ),
        sa.Column(
            "linked_run", sa.Text(), nullable=False, comment="run that last (re)linked the record"
        ),
        sa.Column(
            "first_seen_run",
            sa.Text(),
            nullable=False,
            comment="run in which the record first appeared",
        ),
        sa.ForeignKeyConstraint(
            ["first_seen_run"], ["runs.run_id"], name=op.f("fk_person_records_first_seen_run_runs")
        ),
        sa.ForeignKeyConstraint(
            ["linked_run"], ["runs.run_id"], name=op.f("fk_person_records_linked_run_runs")
        ),
        sa.ForeignKeyConstraint(
            ["mpi_id"],
            ["persons.mpi_id"],
            name=op.f("fk_person_records_mpi_id_persons"),
            initially="DEFERRED",
            deferrable=True,
        ),
        sa.PrimaryKeyConstraint("register", "record_id", name=op.f("pk_person_records")),
        comment="Cross-reference: every source record and the MPI ID it is linked to.",
    )
    op.create_index(op.f("ix_person_records_mpi_id"), "person_records", ["mpi_id"])


def _view_sql(dialect: str) -> dict[str, str]:
    """The views' SQL; only the date arithmetic differs between the backends."""
    if dialect == "postgresql":
        run_date = "CAST(timezone('UTC', r.started_at) AS DATE)"
        duration = "EXTRACT(EPOCH FROM (r.finished_at - r.started_at))"
    else:
        run_date = "date(r.started_at)"
        duration = "(julianday(r.finished_at) - julianday(r.started_at)) * 86400.0"
    return {
        # One row per published run, rule and register: the consistency time series.
        "v_consistency_trend": f"""
            SELECT m.run_id, {run_date} AS run_date, r.started_at, m.rule, m.register,
                   m."count", m.denominator, m.rate
            FROM consistency_metrics m
            JOIN runs r ON r.run_id = m.run_id
            WHERE r.status = 'published'
        """,
        # The current findings: those of the newest published run that has consistency
        # figures (a run being published right now does not empty the view).
        "v_consistency_findings": f"""
            SELECT f.run_id, {run_date} AS run_date, f.rule, f.mpi_id, f.register,
                   f.record_ids, f.details, p.status AS person_status, p.region, p.district
            FROM consistency_findings f
            JOIN runs r ON r.run_id = f.run_id
            JOIN persons p ON p.mpi_id = f.mpi_id
            WHERE f.run_id = (
                SELECT r2.run_id FROM runs r2
                WHERE r2.status = 'published'
                  AND EXISTS (SELECT 1 FROM consistency_metrics m WHERE m.run_id = r2.run_id)
                ORDER BY r2.started_at DESC, r2.run_id DESC
                LIMIT 1
            )
        """,
        # One row per run with what it did, counted from the tables themselves.
        "v_run_summary": f"""
            SELECT r.run_id, {run_date} AS run_date, r.started_at, r.finished_at,
                   {duration} AS duration_seconds, r.status, r.seed, r.config_hash,
                   COALESCE(qr.n, 0) AS quarantined_rows,
                   COALESCE(qa.n, 0) AS quarantine_reasons,
                   COALESCE(mp.review_pairs, 0) AS review_pairs,
                   COALESCE(mp.linked_pairs, 0) AS linked_pairs,
                   COALESCE(mp.rejected_pairs, 0) AS rejected_pairs,
                   COALESCE(ev.new_ids, 0) AS new_ids,
                   COALESCE(ev.merges, 0) AS merges,
                   COALESCE(ev.splits, 0) AS splits,
                   COALESCE(ev.retired_ids, 0) AS retired_ids,
                   COALESCE(ev.updated_ids, 0) AS updated_ids,
                   COALESCE(cf.n, 0) AS findings,
                   r.message
            FROM runs r
            LEFT JOIN (
                SELECT run_id, COUNT(*) AS n
                FROM (SELECT DISTINCT run_id, register, source_file, source_row
                      FROM quarantine) rows_
                GROUP BY run_id
            ) qr ON qr.run_id = r.run_id
            LEFT JOIN (
                SELECT run_id, COUNT(*) AS n FROM quarantine GROUP BY run_id
            ) qa ON qa.run_id = r.run_id
            LEFT JOIN (
                SELECT run_id,
                       SUM(CASE WHEN status = 'review' THEN 1 ELSE 0 END) AS review_pairs,
                       SUM(CASE WHEN status = 'linked' THEN 1 ELSE 0 END) AS linked_pairs,
                       SUM(CASE WHEN status = 'rejected' THEN 1 ELSE 0 END) AS rejected_pairs
                FROM match_pairs GROUP BY run_id
            ) mp ON mp.run_id = r.run_id
            LEFT JOIN (
                SELECT run_id,
                       SUM(CASE WHEN event_type = 'new' THEN 1 ELSE 0 END) AS new_ids,
                       SUM(CASE WHEN event_type = 'merge' THEN 1 ELSE 0 END) AS merges,
                       SUM(CASE WHEN event_type = 'split' THEN 1 ELSE 0 END) AS splits,
                       SUM(CASE WHEN event_type = 'retire' THEN 1 ELSE 0 END) AS retired_ids,
                       SUM(CASE WHEN event_type = 'update' THEN 1 ELSE 0 END) AS updated_ids
                FROM mpi_events GROUP BY run_id
            ) ev ON ev.run_id = r.run_id
            LEFT JOIN (
                SELECT run_id, COUNT(*) AS n FROM consistency_findings GROUP BY run_id
            ) cf ON cf.run_id = r.run_id
        """,
    }


def _create_views() -> None:
    for name, sql in _view_sql(op.get_bind().dialect.name).items():
        op.execute(f"CREATE VIEW {name} AS {sql}")


def downgrade() -> None:
    for name in VIEWS:
        op.execute(f"DROP VIEW IF EXISTS {name}")
    for table in (
        "person_records",
        "consistency_findings",
        "watermarks",
        "review_decisions",
        "quarantine",
        "persons",
        "mpi_events",
        "match_pairs",
        "consistency_metrics",
        "users",
        "runs",
        "audit_log",
    ):
        op.drop_table(table)  # drops the table's indexes with it
