"""The MPI database: migrations, repository functions and ``reglink db`` on SQLite and PostgreSQL.

Every test that touches a database runs twice: on a SQLite file and on a fresh PostgreSQL
database (created from the session's ``pg_url`` server and dropped afterwards).
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone

import pandas as pd
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from pipelines.cli import main
from pipelines.store import repository as repo
from pipelines.store import schema
from pipelines.store.engine import DatabaseError, database_url, make_engine
from pipelines.store.migrations import current_revision, head_revision, require_head, upgrade

log = logging.getLogger(__name__)




@pytest.fixture
def engine(empty_db_url: str) -> Iterator[sa.Engine]:
    """An engine on a database upgraded to the newest revision."""
    eng = make_engine(empty_db_url)
    upgrade(eng)
    yield eng
    eng.dispose()


def _start(conn: sa.Connection, run_id: str = "20261127T010000Z") -> str:
    repo.start_run(conn, run_id, seed=42, config_hash="cfg-1")
    return run_id


# ---------------------------------------------------------------------------- migrations


def test_upgrade_from_empty_creates_every_table_and_view(empty_db_url: str) -> None:
    eng = make_engine(empty_db_url)
    assert current_revision(eng) is None
    before, after = upgrade(eng)
    assert (before, after) == (None, head_revision())
    with eng.connect() as conn:
        inspector = sa.inspect(conn)
        assert set(inspector.get_table_names()) == set(schema.metadata.tables) | {
            "alembic_version"
        }
        assert set(inspector.get_view_names()) == set(schema.VIEW_NAMES)
        # The migration and schema.py describe the same tables, columns, keys and indexes.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # expression index not comparable on SQLite
            diff = compare_metadata(
                MigrationContext.configure(conn, opts={"compare_type": True}), schema.metadata
            )
        assert diff == []
        require_head(conn)
    eng.dispose()


def test_upgrade_to_0004_keeps_findings_pairs_and_views(empty_db_url: str) -> None:
    """0004 drops the per-row foreign keys of findings and pairs (on SQLite by rebuilding
    the tables): the rows, the views over them and the unique keys stay."""
    eng = make_engine(empty_db_url)
    upgrade(eng, "0003")
    with eng.begin() as conn:
        run_id = _start(conn)
        persons, _ = _index_rows(run_id, 1, 2)
        repo.bulk_insert(conn, schema.persons, persons)
        mpi_id = persons["mpi_id"].iloc[0]
        conn.exec_driver_sql(
            "INSERT INTO consistency_findings (run_id, rule, mpi_id, register, record_ids, "
            f"details) VALUES ('{run_id}', 'sex_conflict', '{mpi_id}', 'civil', "
            "'[{\"register\": \"civil\", \"record_id\": \"1\"}]', '{}')")
        conn.exec_driver_sql(
            "INSERT INTO match_pairs (run_id, register_l, record_id_l, register_r, "
            f"record_id_r, match_weight, match_probability, status) VALUES ('{run_id}', "
            "'civil', '1', 'health', '2', 9.5, 0.99, 'review')")
        conn.exec_driver_sql(
            "INSERT INTO consistency_metrics (run_id, rule, register, count) VALUES "
            f"('{run_id}', 'sex_conflict', 'all', 1)")
        repo.finish_run(conn, run_id, "published", {})
    upgrade(eng)
    with eng.connect() as conn:
        inspector = sa.inspect(conn)
        assert inspector.get_foreign_keys("consistency_findings") == []
        assert inspector.get_foreign_keys("match_pairs") == []
        assert set(inspector.get_view_names()) == set(schema.VIEW_NAMES)
        assert conn.exec_driver_sql(
            "SELECT rule, records FROM v_consistency_findings").all() == [("sex_conflict", 1)]
        assert conn.exec_driver_sql("SELECT count(*) FROM match_pairs").scalar() == 1
    with pytest.raises(sa.exc.IntegrityError), eng.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO consistency_findings (run_id, rule, mpi_id) VALUES "
            f"('{run_id}', 'sex_conflict', '{mpi_id}')")
    eng.dispose()


def test_upgrade_to_0005_keeps_pairs_and_their_explanations(empty_db_url: str) -> None:
    """0005 drops the per-record indexes of ``match_pairs`` and keeps explanations as JSON
    text on PostgreSQL: the pairs, their explanations and the run's unique key stay; a
    downgrade brings the indexes back."""
    from alembic import command

    from pipelines.store.migrations import alembic_config

    explanation = {"surname": {"level": 3, "weight": 3.5}, "pin": {"level": -1, "weight": 0.0}}
    eng = make_engine(empty_db_url)
    upgrade(eng, "0004")
    with eng.begin() as conn:
        run_id = _start(conn)
        conn.execute(sa.insert(schema.match_pairs), [{
            "run_id": run_id, "register_l": "civil", "record_id_l": "1",
            "register_r": "health", "record_id_r": "2", "match_weight": 3.5,
            "match_probability": 0.9, "status": "review", "explanation": explanation}])

    def indexes() -> set[str]:
        with eng.connect() as conn:
            return {i["name"] for i in sa.inspect(conn).get_indexes("match_pairs")}

    by_record = {"ix_match_pairs_register_l_record_id_l", "ix_match_pairs_register_r_record_id_r"}
    assert by_record <= indexes()
    upgrade(eng)
    assert not by_record & indexes()
    assert "ix_match_pairs_run_id_status" in indexes()
    with eng.connect() as conn:
        assert conn.execute(sa.select(schema.match_pairs.c.explanation)).scalar_one() == \
            explanation
        if conn.dialect.name == "postgresql":
            assert conn.exec_driver_sql(
                "SELECT data_type FROM information_schema.columns WHERE table_name = "
                "'match_pairs' AND column_name = 'explanation'").scalar_one() == "json"
    with pytest.raises(sa.exc.IntegrityError), eng.begin() as conn:  # the unique key stays
        conn.execute(sa.insert(schema.match_pairs), [{
            "run_id": run_id, "register_l": "civil", "record_id_l": "1",
            "register_r": "health", "record_id_r": "2", "match_weight": 1.0,
            "match_probability": 0.5, "status": "review"}])
    with eng.begin() as conn:
        command.downgrade(alembic_config(conn), "0004")
    assert by_record <= indexes()
    with eng.connect() as conn:
        value = conn.exec_driver_sql("SELECT explanation FROM match_pairs").scalar_one()
        assert (json.loads(value) if isinstance(value, str) else value) == explanation
    eng.dispose()


def test_upgrade_twice_changes_nothing(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        _start(conn)
    assert upgrade(engine) == (head_revision(), head_revision())
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(schema.runs)).scalar() == 1


def test_require_head_refuses_a_database_without_schema(empty_db_url: str) -> None:
    eng = make_engine(empty_db_url)
    with eng.connect() as conn, pytest.raises(DatabaseError, match="reglink db upgrade"):
        require_head(conn)
    eng.dispose()


# ---------------------------------------------------------------------------------- runs


def test_run_lifecycle_keeps_counts_of_each_step(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        run_id = _start(conn)
        repo.finish_run(conn, run_id, "validated", {"extracted": {"civil": 10}})
        repo.finish_run(conn, run_id, "published", {"persons": 7})
        assert repo.last_published_run(conn) == run_id
    with engine.connect() as conn:
        row = conn.execute(sa.select(schema.runs)).one()
    assert row.status == "published"
    assert row.counts == {"extracted": {"civil": 10}, "persons": 7}
    assert row.seed == 42
    assert row.finished_at.tzinfo is not None and row.finished_at >= row.started_at


def test_restarting_a_failed_run_keeps_its_start_time(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        run_id = _start(conn)
        repo.finish_run(conn, run_id, "failed", message="extract shrank by 40%")
    with engine.connect() as conn:
        first_start = conn.execute(sa.select(schema.runs.c.started_at)).scalar_one()
    with engine.begin() as conn:
        repo.start_run(conn, run_id, seed=42, config_hash="cfg-2")
    with engine.connect() as conn:
        row = conn.execute(sa.select(schema.runs)).one()
    assert (row.status, row.config_hash, row.message, row.finished_at) == (
        "running",
        "cfg-2",
        None,
        None,
    )
    assert row.started_at == first_start


def test_finish_run_of_unknown_run_is_refused(engine: sa.Engine) -> None:
    with engine.begin() as conn, pytest.raises(ValueError, match="start_run"):
        repo.finish_run(conn, "no-such-run", "published")


# ---------------------------------------------------------------------------- quarantine


def _quarantine_frame(run_id: str) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "run_id": [run_id] * 4,
            "register": ["civil", "civil", "pension", "pension"],
            "record_id": ["B-1", "B-1", pd.NA, "P-9"],
            "source_row": [3, 4, 17, 18],
            "source_file": ["civil_2026.csv", "civil_2026.csv", "pension.csv", pd.NA],
            # a repeated record_id, a missing one, a whole-row rule without column
            "rule": ["duplicate_record_id", "duplicate_record_id", "missing_record_id",
                     "birth_after_death"],
            "column": ["record_id", "record_id", "record_id", pd.NA],
            "value": ["B-1", "B-1", pd.NA, 1987],
            "severity": ["error", "error", "error", pd.NA],
        }
    )


def test_record_quarantine_twice_keeps_one_copy_of_each_row(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        run_id = _start(conn)
        frame = _quarantine_frame(run_id)
        assert repo.record_quarantine(conn, run_id, frame) == 4
    with engine.begin() as conn:
        repo.record_quarantine(conn, run_id, frame)
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(schema.quarantine).order_by(schema.quarantine.c.source_row)
        ).all()
    # Both rows sharing record_id B-1 are kept: each is a distinct source row.
    assert [(r.register, r.record_id, r.source_row) for r in rows] == [
        ("civil", "B-1", 3),
        ("civil", "B-1", 4),
        ("pension", None, 17),
        ("pension", "P-9", 18),
    ]
    whole_row = rows[3]
    assert (whole_row.column_name, whole_row.source_file, whole_row.value) == ("", "", "1987")
    assert whole_row.severity == "error"
    assert whole_row.created_at.tzinfo is not None


def test_record_quarantine_again_updates_the_reason(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        run_id = _start(conn)
        frame = _quarantine_frame(run_id)
        repo.record_quarantine(conn, run_id, frame)
        repo.record_quarantine(conn, run_id, frame.assign(severity="warning").iloc[:1])
    with engine.connect() as conn:
        severities = conn.execute(
            sa.select(schema.quarantine.c.severity).order_by(schema.quarantine.c.source_row)
        ).scalars().all()
    assert severities == ["warning", "error", "error", "error"]


def test_record_quarantine_refuses_rows_of_another_run(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        run_id = _start(conn)
        with pytest.raises(ValueError, match="other runs"):
            repo.record_quarantine(conn, run_id, _quarantine_frame("another-run"))


# ---------------------------------------------------------------------------- watermarks


def test_watermark_get_and_set(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        run_id = _start(conn)
        assert repo.get_watermark(conn, "pension") is None
        repo.set_watermark(conn, "pension", "2026-11-26T23:59:59", run_id=run_id)
        repo.set_watermark(conn, "civil", "2026-11-20T00:00:00")
    with engine.begin() as conn:
        repo.set_watermark(conn, "pension", "2026-11-27T23:59:59", run_id=run_id)
    with engine.connect() as conn:
        assert repo.get_watermark(conn, "pension") == "2026-11-27T23:59:59"
        assert repo.get_watermark(conn, "civil") == "2026-11-20T00:00:00"
        assert conn.execute(sa.select(sa.func.count()).select_from(schema.watermarks)).scalar() == 2


# -------------------------------------------------------------------------- bulk helpers

AWKWARD_TEXT = [
    ("cyrillic", "Каримов Алишер Олимович"),
    ("tab", "Karimov\tAlisher"),
    ("newline", "kv. 5\nul. Rudaki"),
    ("backslash", "C:\\exports\\civil"),
    ("looks like COPY null", "\\N"),
    ("empty string is not missing", ""),
    ("missing", None),
]


@pytest.mark.parametrize("case,text", AWKWARD_TEXT, ids=[c for c, _ in AWKWARD_TEXT])
def test_bulk_upsert_round_trips_text_json_and_times(
    engine: sa.Engine, case: str, text: str | None
) -> None:
    when = datetime(2026, 11, 27, 9, 30, tzinfo=timezone(timedelta(hours=5)))  # Dushanbe
    with engine.begin() as conn:
        run_id = _start(conn)
        frame = pd.DataFrame(
            {
                "mpi_id": ["M1"],
                "surname": pd.array([text], dtype="string"),
                "birth_date": ["1987-03"],  # partial dates stay as written
                "provenance": [{"surname": {"register": "civil", "record_id": text}}],
                "created_run": [run_id],
                "updated_run": [run_id],
            }
        )
        repo.upsert(conn, schema.persons, frame)
        repo.bulk_insert(
            conn,
            schema.audit_log,
            [{"at": when, "username": "steward1", "action": "note", "details": {"t": text}}],
        )
    with engine.connect() as conn:
        person = conn.execute(sa.select(schema.persons)).one()
        entry = conn.execute(sa.select(schema.audit_log)).one()
    assert person.surname == text
    assert person.birth_date == "1987-03"
    assert person.provenance == {"surname": {"register": "civil", "record_id": text}}
    assert entry.details == {"t": text}
    assert entry.at == when and entry.at.tzinfo is not None


def test_upsert_updates_given_columns_and_keeps_the_rest(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        run_id = _start(conn)
        base = {"created_run": run_id, "updated_run": run_id}
        repo.upsert(conn, "persons", [{"mpi_id": "M1", "surname": "Karimov", "pin": "1", **base}])
        repo.upsert(conn, "persons", [{"mpi_id": "M1", "surname": "Karimova", **base}])
    with engine.connect() as conn:
        row = conn.execute(sa.select(schema.persons)).one()
    assert (row.surname, row.pin) == ("Karimova", "1")


def test_upsert_refuses_a_key_that_is_not_unique(engine: sa.Engine) -> None:
    with engine.begin() as conn, pytest.raises(ValueError, match="not its primary key"):
        repo.upsert(conn, schema.persons, [{"mpi_id": "M1", "pin": "1"}], key=["pin"])


def test_replace_run_rows_twice_gives_the_same_rows(engine: sa.Engine) -> None:
    metrics = pd.DataFrame(
        {
            "rule": ["dead_but_pension_active", "minor_on_roll"],
            "register": ["pension", "electoral"],
            "count": [12, 3],
            "denominator": [1000, 800],
            "rate": [0.012, 0.00375],
        }
    )
    for _ in range(2):
        with engine.begin() as conn:
            run_id = _start(conn)
            repo.replace_run_rows(conn, schema.consistency_metrics, run_id, metrics)
    with engine.connect() as conn:
        counts = conn.execute(
            sa.select(schema.consistency_metrics.c["count"]).order_by("rule")
        ).scalars().all()
    assert counts == [12, 3]


def _index_rows(run_id: str, n_persons: int, n_records: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    persons = pd.DataFrame(
        {
            "mpi_id": [f"M{i:08d}" for i in range(n_persons)],
            "created_run": run_id,
            "updated_run": run_id,
        }
    )
    records = pd.DataFrame(
        {
            "register": ["civil", "pension"] * (n_records // 2),
            "record_id": [f"R{i:09d}" for i in range(n_records)],
            "mpi_id": [f"M{i % n_persons:08d}" for i in range(n_records)],
            "match_probability": [0.5 + (i % 50) / 100 for i in range(n_records)],
            "link_basis": "model",
            "linked_run": run_id,
            "first_seen_run": run_id,
        }
    )
    return persons, records


def test_publish_is_one_transaction(engine: sa.Engine) -> None:
    """A crash while replacing the index leaves the previously published one intact."""
    with engine.begin() as conn:
        run_id = _start(conn)
        persons, records = _index_rows(run_id, 10, 20)
        repo.bulk_insert(conn, schema.persons, persons)
        repo.bulk_insert(conn, schema.person_records, records)
    with pytest.raises(RuntimeError), engine.begin() as conn:
        conn.execute(sa.delete(schema.person_records))
        repo.bulk_insert(conn, schema.person_records, records.iloc[:5])
        raise RuntimeError("publish crashed")
    with engine.connect() as conn:
        assert conn.execute(
            sa.select(sa.func.count()).select_from(schema.person_records)
        ).scalar() == 20


def test_a_record_cannot_point_at_an_unknown_person(engine: sa.Engine) -> None:
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
        run_id = _start(conn)
        _, records = _index_rows(run_id, 1, 2)
        repo.bulk_insert(conn, schema.person_records, records.assign(mpi_id="M-NOBODY"))


@pytest.mark.slow
def test_bulk_insert_200k_person_records(engine: sa.Engine) -> None:
    """Measured, not asserted: the time shows in the log (pytest -o log_cli=true)."""
    n = 200_000
    with engine.begin() as conn:
        run_id = _start(conn)
        persons, records = _index_rows(run_id, n // 2, n)
        repo.bulk_insert(conn, schema.persons, persons)
        started = time.perf_counter()
        repo.bulk_insert(conn, schema.person_records, records)
        inserted = time.perf_counter() - started
    committed = time.perf_counter() - started  # deferred foreign keys are checked at commit
    started = time.perf_counter()
    with engine.begin() as conn:
        repo.upsert(conn, schema.person_records, records.assign(link_basis="steward"))
    upserted = time.perf_counter() - started
    log.info(
        "%s: bulk_insert %d person_records %.2f s (%.2f s with commit); upsert %.2f s",
        engine.dialect.name, n, inserted, committed, upserted,
    )
    with engine.connect() as conn:
        total, stewards = conn.execute(
            sa.select(
                sa.func.count(),
                sa.func.sum(sa.case((schema.person_records.c.link_basis == "steward", 1), else_=0)),
            )
        ).one()
    assert (total, stewards) == (n, n)


# --------------------------------------------------------------------------------- views


def test_bi_views_show_published_runs_and_current_findings(engine: sa.Engine) -> None:
    day1 = datetime(2026, 11, 26, 23, 30, tzinfo=UTC)
    with engine.begin() as conn:
        for run_id, status, started in [
            ("R1", "published", day1),
            ("R2", "published", day1 + timedelta(days=1)),
            ("R3", "failed", day1 + timedelta(days=2)),
        ]:
            repo.start_run(conn, run_id, seed=1, config_hash="c")
            repo.finish_run(conn, run_id, status)
            repo.update_run(
                conn, run_id, started_at=started, finished_at=started + timedelta(hours=2)
            )
        repo.bulk_insert(
            conn,
            schema.persons,
            [{"mpi_id": m, "region": "Sughd", "created_run": "R1", "updated_run": "R1"}
             for m in ("M1", "M2")],
        )
        for run_id, n in (("R1", 2), ("R2", 1), ("R3", 2)):
            findings = [
                {"rule": "dead_but_pension_active", "mpi_id": m, "register": "pension",
                 "record_ids": [{"register": "pension", "record_id": "P-" + m}]}
                for m in ("M1", "M2")[:n]
            ]
            repo.replace_run_rows(conn, schema.consistency_findings, run_id, findings)
            repo.replace_run_rows(
                conn,
                schema.consistency_metrics,
                run_id,
                [{"rule": "dead_but_pension_active", "register": "pension", "count": n,
                  "denominator": 100, "rate": n / 100}],
            )
        repo.bulk_insert(
            conn, schema.mpi_events,
            [{"run_id": "R2", "event_type": "new", "mpi_id": "M2"},
             {"run_id": "R2", "event_type": "merge", "mpi_id": "M1", "other_mpi_id": "M2"}],
        )
        repo.record_quarantine(conn, "R2", _quarantine_frame("R2"))
    with engine.connect() as conn:
        trend = conn.execute(
            sa.text('SELECT run_id, run_date, rule, register, "count" AS n, rate '
                    "FROM v_consistency_trend ORDER BY run_id")
        ).all()
        current = conn.execute(
            sa.text("SELECT run_id, mpi_id, rule, region FROM v_consistency_findings")
        ).all()
        summary = {
            r.run_id: r
            for r in conn.execute(sa.text("SELECT * FROM v_run_summary")).mappings().all()
        }
    # The failed run R3 is not part of the trend; dates are UTC dates of the start.
    assert [(r.run_id, str(r.run_date), r.n) for r in trend] == [
        ("R1", "2026-11-26", 2),
        ("R2", "2026-11-27", 1),
    ]
    assert [tuple(r) for r in current] == [("R2", "M1", "dead_but_pension_active", "Sughd")]
    r2 = summary["R2"]
    assert (r2["quarantined_rows"], r2["quarantine_reasons"]) == (4, 4)
    assert (r2["new_ids"], r2["merges"], r2["findings"]) == (1, 1, 1)
    assert summary["R3"]["status"] == "failed"
    assert float(r2["duration_seconds"]) == pytest.approx(7200)


# ------------------------------------------------------------------------ engine and CLI


@pytest.mark.parametrize(
    "explicit,env,expected",
    [
        ("postgresql://mpi@db/mpi", "sqlite:////x.sqlite", "postgresql+psycopg2://mpi@db/mpi"),
        (None, "postgres://mpi@db/mpi", "postgresql+psycopg2://mpi@db/mpi"),
        (None, None, "sqlite:///{data}/mpi.sqlite"),
    ],
    ids=["--database-url wins", "environment, hosting-style postgres://", "SQLite default"],
)
def test_database_url_resolution(
    explicit, env, expected, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if env is None:
        monkeypatch.delenv("REGLINK_DATABASE_URL", raising=False)
    else:
        monkeypatch.setenv("REGLINK_DATABASE_URL", env)
    assert database_url(tmp_path, explicit) == expected.format(data=tmp_path.resolve())


def test_sqlite_connections_enforce_keys_and_use_wal(tmp_path) -> None:
    eng = make_engine(f"sqlite:///{tmp_path / 'new' / 'mpi.sqlite'}")  # folder is created
    with eng.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() > 0
    eng.dispose()


def test_naive_timestamps_are_refused(engine: sa.Engine) -> None:
    with engine.begin() as conn, pytest.raises(sa.exc.StatementError, match="timezone"):
        repo.set_watermark(conn, "civil", "x")
        conn.execute(sa.update(schema.watermarks).values(updated_at=datetime(2026, 1, 1)))


def test_cli_db_upgrade_and_current(empty_db_url: str, capsys: pytest.CaptureFixture) -> None:
    assert main(["db", "current", "--database-url", empty_db_url]) == 1
    assert "reglink db upgrade" in capsys.readouterr().out
    assert main(["db", "upgrade", "--database-url", empty_db_url]) == 0
    assert f"to revision {head_revision()}" in capsys.readouterr().out
    assert main(["db", "upgrade", "--database-url", empty_db_url]) == 0
    assert "already at revision" in capsys.readouterr().out
    assert main(["db", "current", "--database-url", empty_db_url]) == 0
    assert f"revision {head_revision()} (newest)" in capsys.readouterr().out


def test_cli_db_upgrade_in_the_data_folder_by_default(
    tmp_path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.delenv("REGLINK_DATABASE_URL", raising=False)
    data = tmp_path / "data"
    assert main(["db", "current", "--data-dir", str(data)]) == 1
    assert not (data / "mpi.sqlite").exists()  # looking does not create it
    assert main(["db", "upgrade", "--data-dir", str(data)]) == 0
    assert (data / "mpi.sqlite").is_file()
    assert str((data / "mpi.sqlite").resolve()) in capsys.readouterr().out


def test_unreachable_postgresql_exits_2_without_the_password(
    capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture
) -> None:
    url = "postgresql://reglink:S3cret-pw@127.0.0.1:1/mpi_prod"  # nothing listens on port 1
    assert main(["db", "upgrade", "--database-url", url]) == 2
    err = capsys.readouterr().err
    assert "127.0.0.1:1" in err and "mpi_prod" in err and "reglink db: error:" in err
    assert "S3cret-pw" not in err + caplog.text
    assert "Traceback" not in err


def test_malformed_url_is_a_clear_error_without_the_text(capsys: pytest.CaptureFixture) -> None:
    url = "postgresql://reglink:S3cret-pw@db.example:notaport/mpi"
    assert main(["db", "upgrade", "--database-url", url]) == 2
    err = capsys.readouterr().err
    assert "database URL cannot be parsed" in err and "S3cret-pw" not in err


def test_a_failure_after_publish_keeps_the_run_published(empty_db_url):
    """Consistency failing after publish must not hide the published index from the views."""
    engine = make_engine(empty_db_url)
    upgrade(engine)
    with engine.begin() as conn:
        repo.start_run(conn, "r1", 42, "cfg")
        repo.finish_run(conn, "r1", "published")
        repo.finish_run(conn, "r1", "failed", message="consistency: rules file broken")
        row = conn.execute(sa.select(schema.runs.c.status, schema.runs.c.message)
                           .where(schema.runs.c.run_id == "r1")).one()
    assert row.status == "published"
    assert row.message == "consistency: rules file broken"
