"""The MPI database schema: SQLAlchemy Core tables, keys and indexes.

This module describes the schema the code works against; the migrations in
``pipelines/store/migrations/versions/`` create it (a test checks that both agree). Change a
table here *and* add a migration.

Conventions (docs/database.md has the full reference):

- Every table has a key a rerun can upsert on, so re-running a run or a task of it leaves no
  duplicate rows: a natural primary key (``runs``, ``persons``, ``person_records``,
  ``watermarks``, ``users``, ``consistency_metrics``) or a unique key on the natural identity
  of the row beside a surrogate ``id`` (``match_pairs``, ``quarantine``,
  ``consistency_findings``, ``mpi_events``).
- Golden-record dates are ISO text (``YYYY-MM-DD``, or ``YYYY-MM`` / ``YYYY`` when partial):
  partial dates exist and must survive. Timestamps are timezone-aware and stored in UTC.
- MPI IDs are opaque text; nothing may be derived from them.
- Foreign keys inside the index are ``DEFERRABLE INITIALLY DEFERRED`` so that publish can
  write persons, merges and record links in any order inside its one transaction.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

RUN_STATUSES = ("running", "validated", "published", "failed")
PERSON_STATUSES = ("active", "retired")
PAIR_STATUSES = ("review", "linked", "rejected")
DECISIONS = ("must_link", "cannot_link")
EVENT_TYPES = ("new", "merge", "split", "retire", "update")
ROLES = ("viewer", "steward", "admin")
BIRTH_DATE_QUALITIES = ("exact", "placeholder", "partial", "missing")

#: Golden-record attributes of ``persons`` that carry a source in ``persons.provenance``.
GOLDEN_ATTRIBUTES = (
    "pin",
    "surname",
    "given_name",
    "patronymic",
    "sex",
    "birth_date",
    "birth_date_quality",
    "death_date",
    "region",
    "district",
    "locality",
    "address",
    "phone",
)

#: Views for BI tools, created by the migrations (docs/database.md describes their columns).
VIEW_NAMES = ("v_consistency_trend", "v_consistency_findings", "v_run_summary")


class UTCDateTime(sa.types.TypeDecorator):
    """A timezone-aware timestamp, stored in UTC on every backend.

    PostgreSQL keeps ``timestamptz``; SQLite has no time zones, so the value is converted to
    UTC before it is written and read back as UTC. A naive datetime is refused: it is
    ambiguous, and a nightly run must not depend on the server's local time.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r}: pass a timezone-aware value (UTC)")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


#: JSON documents; JSONB on PostgreSQL so that BI tools can query into them efficiently.
JSONDoc = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")

#: Auto-increment surrogate key: BIGINT identity on PostgreSQL, the rowid on SQLite
#: (only ``INTEGER PRIMARY KEY`` is a rowid alias there).
SurrogateKey = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def utcnow() -> datetime:
    return datetime.now(UTC)


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def _created_at(name: str = "created_at") -> sa.Column:
    return sa.Column(
        name,
        UTCDateTime(),
        nullable=False,
        default=utcnow,
        server_default=sa.func.current_timestamp(),
        comment="when the row was written (UTC)",
    )


def _run_fk(
    name: str = "run_id", nullable: bool = False, comment: str | None = None
) -> sa.Column:
    return sa.Column(
        name, sa.Text(), sa.ForeignKey("runs.run_id"), nullable=nullable, comment=comment
    )


def _mpi_fk(name: str, nullable: bool, comment: str) -> sa.Column:
    return sa.Column(
        name,
        sa.Text(),
        sa.ForeignKey("persons.mpi_id", deferrable=True, initially="DEFERRED"),
        nullable=nullable,
        comment=comment,
    )


runs = sa.Table(
    "runs",
    metadata,
    sa.Column("run_id", sa.Text(), primary_key=True, comment="run id, e.g. 20261127T120000Z"),
    sa.Column("started_at", UTCDateTime(), nullable=False, default=utcnow,
              server_default=sa.func.current_timestamp(),
              comment="when the run was first started (kept on a rerun)"),
    sa.Column("finished_at", UTCDateTime(), comment="when it was published or failed"),
    sa.Column("status", sa.String(16), nullable=False, server_default="running",
              comment="running | validated | published | failed"),
    sa.Column("seed", sa.BigInteger(), nullable=False,
              comment="seed of every random choice of the run (u sampling, EM start)"),
    sa.Column("config_hash", sa.Text(), nullable=False,
              comment="hash of the configuration folder the run used"),
    sa.Column("model_path", sa.Text(), comment="trained model (JSON) of the run"),
    sa.Column("data_docs_path", sa.Text(), comment="Great Expectations Data Docs of the run"),
    sa.Column("counts", JSONDoc, comment="step counts, e.g. {\"extracted\": {...}}"),
    sa.Column("message", sa.Text(), comment="why the run failed, for the operator"),
    sa.CheckConstraint(_in("status", RUN_STATUSES), name="status"),
    sa.Index(None, "status", "started_at"),
    comment="One row per run of the pipeline (nightly or by hand).",
)

persons = sa.Table(
    "persons",
    metadata,
    sa.Column("mpi_id", sa.Text(), primary_key=True, comment="the person's MPI ID (opaque)"),
    sa.Column("status", sa.String(8), nullable=False, server_default="active",
              comment="active | retired (merged into another person or no records left)"),
    _mpi_fk("merged_into", True, "for a retired ID: the MPI ID that absorbed it"),
    sa.Column("pin", sa.Text(), comment="golden PIN"),
    sa.Column("surname", sa.Text()),
    sa.Column("given_name", sa.Text()),
    sa.Column("patronymic", sa.Text()),
    sa.Column("sex", sa.String(1), comment="M | F | NULL"),
    sa.Column("birth_date", sa.String(10), comment="ISO, possibly partial (YYYY-MM, YYYY)"),
    sa.Column("birth_date_quality", sa.String(12),
              comment="exact | placeholder | partial | missing"),
    sa.Column("death_date", sa.String(10), comment="ISO, possibly partial"),
    sa.Column("region", sa.Text()),
    sa.Column("district", sa.Text()),
    sa.Column("locality", sa.Text()),
    sa.Column("address", sa.Text()),
    sa.Column("phone", sa.Text()),
    # Lookup keys for the console (any script finds any other): see migration 0003.
    sa.Column("surname_key", sa.Text(),
              comment="matching.translit.name_key(surname): lookup in any script"),
    sa.Column("given_key", sa.Text(),
              comment="matching.translit.name_key(given_name): lookup in any script"),
    sa.Column("provenance", JSONDoc, nullable=False, server_default=sa.text("'{}'"),
              comment='source of each golden value: {"surname": {"register": "civil", '
              '"record_id": "B-1"}, ...}'),
    _run_fk("created_run", comment="run that created the MPI ID"),
    _run_fk("updated_run", comment="run that last changed the row"),
    sa.CheckConstraint(_in("status", PERSON_STATUSES), name="status"),
    sa.CheckConstraint(
        "birth_date_quality IS NULL OR " + _in("birth_date_quality", BIRTH_DATE_QUALITIES),
        name="birth_date_quality",
    ),
    sa.CheckConstraint("merged_into IS NULL OR status = 'retired'", name="merged_retired"),
    sa.Index(None, "pin"),
    sa.Index(None, "surname", "given_name", "birth_date"),
    sa.Index(None, "merged_into"),
    sa.Index(None, "surname_key", "given_key", "birth_date"),
    comment="The Master Person Index: one row per MPI ID ever issued, with its golden record.",
)

person_records = sa.Table(
    "person_records",
    metadata,
    sa.Column("register", sa.Text(), primary_key=True, comment="register name, e.g. civil"),
    sa.Column("record_id", sa.Text(), primary_key=True, comment="the record's key in it"),
    _mpi_fk("mpi_id", False, "the person this record belongs to"),
    sa.Column("match_probability", sa.Float(),
              comment="strongest link of this record into its person; NULL when alone"),
    sa.Column("link_basis", sa.String(16),
              comment="why linked: model | steward | single (a person of one record)"),
    _run_fk("linked_run", comment="run that last (re)linked the record"),
    _run_fk("first_seen_run", comment="run in which the record first appeared"),
    sa.Index(None, "mpi_id"),
    comment="Cross-reference: every source record and the MPI ID it is linked to.",
)

_PAIR = ("register_l", "record_id_l", "register_r", "record_id_r")


def _pair_columns() -> list[sa.Column]:
    return [
        sa.Column("register_l", sa.Text(), nullable=False),
        sa.Column("record_id_l", sa.Text(), nullable=False),
        sa.Column("register_r", sa.Text(), nullable=False),
        sa.Column("record_id_r", sa.Text(), nullable=False),
    ]


match_pairs = sa.Table(
    "match_pairs",
    metadata,
    sa.Column("id", SurrogateKey, primary_key=True, autoincrement=True),
    # Per-run bulk rows: no foreign key, whose check per row cost more than the write
    # (migration 0004).
    sa.Column("run_id", sa.Text(), nullable=False, comment="run that scored the pair"),
    *_pair_columns(),
    sa.Column("match_weight", sa.Float(), nullable=False, comment="log2 Bayes factor"),
    sa.Column("match_probability", sa.Float(), nullable=False),
    sa.Column("status", sa.String(12), nullable=False,
              comment="review (in the steward queue) | linked | rejected"),
    # JSON text, not JSONB: written every run, read only whole; no index by record, which
    # no query reads (migration 0005: the write took half the time).
    sa.Column("explanation", sa.JSON(), comment="each field's contribution to the weight"),
    sa.CheckConstraint(_in("status", PAIR_STATUSES), name="status"),
    sa.UniqueConstraint("run_id", *_PAIR),
    sa.Index(None, "run_id", "status"),
    comment="Scored record pairs kept for review and audit: the review band and the links.",
)

review_decisions = sa.Table(
    "review_decisions",
    metadata,
    sa.Column("id", SurrogateKey, primary_key=True, autoincrement=True),
    *_pair_columns(),
    sa.Column("decision", sa.String(12), nullable=False, comment="must_link | cannot_link"),
    sa.Column("author", sa.Text(), nullable=False, comment="username of the steward"),
    sa.Column("reason", sa.Text()),
    sa.Column("decided_at", UTCDateTime(), nullable=False, default=utcnow,
              server_default=sa.func.current_timestamp()),
    _run_fk(nullable=True, comment="run whose review queue held the pair"),
    sa.Column("superseded_by", SurrogateKey, sa.ForeignKey("review_decisions.id"),
              comment="the later decision that replaced this one; NULL = current"),
    sa.CheckConstraint(_in("decision", DECISIONS), name="decision"),
    sa.Index("ix_review_decisions_pair", *_PAIR),
    comment="Steward decisions on record pairs; applied by every later run.",
)

mpi_events = sa.Table(
    "mpi_events",
    metadata,
    sa.Column("id", SurrogateKey, primary_key=True, autoincrement=True),
    _run_fk(comment="run that caused the event"),
    sa.Column("event_type", sa.String(8), nullable=False,
              comment="new | merge | split | retire | update"),
    sa.Column("mpi_id", sa.Text(), nullable=False, comment="the MPI ID the event is about"),
    sa.Column("other_mpi_id", sa.Text(),
              comment="merge: the absorbed ID; split: the new ID; retire: merged into"),
    sa.Column("reason", sa.Text()),
    sa.Column("details", JSONDoc),
    _created_at(),
    sa.CheckConstraint(_in("event_type", EVENT_TYPES), name="event_type"),
    sa.Index(None, "run_id", "event_type"),
    sa.Index(None, "mpi_id"),
    sa.Index(None, "other_mpi_id"),
    comment="History of MPI IDs: created, merged, split, retired, golden record changed.",
)
# One event per (run, type, ID, other ID); other_mpi_id is often NULL, and NULLs never clash
# in a unique key on either backend, hence the expression.
sa.Index(
    "uq_mpi_events_event",
    mpi_events.c.run_id,
    mpi_events.c.event_type,
    mpi_events.c.mpi_id,
    sa.func.coalesce(mpi_events.c.other_mpi_id, sa.literal_column("''")),
    unique=True,
)

quarantine = sa.Table(
    "quarantine",
    metadata,
    sa.Column("id", SurrogateKey, primary_key=True, autoincrement=True),
    _run_fk(),
    sa.Column("register", sa.Text(), nullable=False),
    sa.Column("record_id", sa.Text(), comment="may be missing or duplicated: that is a reason"),
    sa.Column("source_file", sa.Text(), nullable=False, server_default="",
              comment="file (or table) the row came from"),
    sa.Column("source_row", sa.BigInteger(), nullable=False,
              comment="1-based data row in source_file"),
    sa.Column("rule", sa.Text(), nullable=False, comment="the check that failed"),
    sa.Column("column_name", sa.Text(), nullable=False, server_default="",
              comment="canonical column checked; '' for a rule over the whole row"),
    sa.Column("value", sa.Text(), comment="the offending value, as text"),
    sa.Column("severity", sa.String(16), nullable=False, server_default="error"),
    _created_at(),
    # The row's position, not record_id, identifies it: a missing or repeated record_id is
    # itself a reason for quarantine, and two such rows must not collapse into one.
    sa.UniqueConstraint(
        "run_id", "register", "source_file", "source_row", "rule", "column_name"
    ),
    sa.Index(None, "register", "record_id"),
    comment="Rows that failed a row-level check, with the reason; never silently dropped.",
)

consistency_findings = sa.Table(
    "consistency_findings",
    metadata,
    sa.Column("id", SurrogateKey, primary_key=True, autoincrement=True),
    # Per-run bulk rows: no foreign keys, whose check per row cost more than the write
    # (migration 0004).
    sa.Column("run_id", sa.Text(), nullable=False),
    sa.Column("rule", sa.Text(), nullable=False, comment="e.g. dead_but_pension_active"),
    sa.Column("mpi_id", sa.Text(), nullable=False, comment="the person the finding is about"),
    sa.Column("register", sa.Text(), comment="the register where a steward should act"),
    sa.Column("record_ids", JSONDoc, comment='records involved: [{"register", "record_id"}]'),
    sa.Column("details", JSONDoc),
    _created_at(),
    sa.UniqueConstraint("run_id", "rule", "mpi_id"),
    sa.Index(None, "mpi_id"),
    comment="Cross-register inconsistencies, one per person and rule, per run.",
)

consistency_metrics = sa.Table(
    "consistency_metrics",
    metadata,
    _run_fk(),
    sa.Column("rule", sa.Text(), nullable=False),
    sa.Column("register", sa.Text(), nullable=False,
              comment="register the figure is about; 'all' for whole-index figures"),
    sa.Column("count", sa.BigInteger(), nullable=False, comment="findings"),
    sa.Column("denominator", sa.BigInteger(), comment="persons or records checked"),
    sa.Column("rate", sa.Float(), comment="count / denominator"),
    sa.PrimaryKeyConstraint("run_id", "rule", "register"),
    comment="Consistency figures per run, rule and register: the dashboard's time series.",
)

watermarks = sa.Table(
    "watermarks",
    metadata,
    sa.Column("register", sa.Text(), primary_key=True),
    sa.Column("value", sa.Text(), nullable=False,
              comment="highest source_updated_at (or change key) published, as text"),
    _run_fk(nullable=True, comment="run that set it"),
    sa.Column("updated_at", UTCDateTime(), nullable=False, default=utcnow, onupdate=utcnow,
              server_default=sa.func.current_timestamp()),
    comment="Incremental extraction: where each register's next extract starts.",
)

users = sa.Table(
    "users",
    metadata,
    sa.Column("username", sa.Text(), primary_key=True),
    sa.Column("password_hash", sa.Text(), nullable=False, comment="never the password"),
    sa.Column("role", sa.String(8), nullable=False, comment="viewer | steward | admin"),
    _created_at(),
    sa.Column("active", sa.Boolean(), nullable=False, server_default=sa.true()),
    sa.CheckConstraint(_in("role", ROLES), name="role"),
    comment="Console accounts.",
)

audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column("id", SurrogateKey, primary_key=True, autoincrement=True),
    sa.Column("at", UTCDateTime(), nullable=False, default=utcnow,
              server_default=sa.func.current_timestamp()),
    # No foreign key: failed logins of unknown usernames are logged too.
    sa.Column("username", sa.Text(), comment="who acted"),
    sa.Column("action", sa.Text(), nullable=False, comment="e.g. login, decide_pair, view_person"),
    sa.Column("target", sa.Text(), comment="what it was done to, e.g. an MPI ID"),
    sa.Column("details", JSONDoc),
    sa.Index(None, "at"),
    sa.Index(None, "username", "at"),
    comment="What console users did, append-only.",
)

__all__ = [
    "BIRTH_DATE_QUALITIES",
    "DECISIONS",
    "EVENT_TYPES",
    "GOLDEN_ATTRIBUTES",
    "PAIR_STATUSES",
    "PERSON_STATUSES",
    "ROLES",
    "RUN_STATUSES",
    "UTCDateTime",
    "VIEW_NAMES",
    "audit_log",
    "consistency_findings",
    "consistency_metrics",
    "match_pairs",
    "metadata",
    "mpi_events",
    "person_records",
    "persons",
    "quarantine",
    "review_decisions",
    "runs",
    "users",
    "watermarks",
]
