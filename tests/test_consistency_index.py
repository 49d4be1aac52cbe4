"""The consistency step on a real nightly run: it reads the published index from the run's
own ``assign/person_records.parquet`` when that file matches the database, else from
``person_records``, and writes the findings' JSON as text by COPY on PostgreSQL. Whichever
way, the rows are those of a plain computation: the validated records joined to the
database's index by pandas and checked by :func:`evaluate_rules` (SQLite and PostgreSQL).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from pipelines import consistency
from pipelines.consistency import (
    evaluate_assignment,
    evaluate_rules,
    load_rules,
    run_consistency,
)
from pipelines.steps import RunContext, close_engines, engine_for, run_all
from pipelines.store import schema
from pipelines.store.engine import make_engine
from pipelines.store.migrations import upgrade
from tests.conftest import new_pg_database, synthetic_country
from tests.test_consistency import BACKGROUND, _publish, _write_run, born_1950, frame, rec

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "config"


@pytest.fixture(scope="module")
def country(tmp_path_factory) -> dict[str, Path]:
    """A synthetic country of 200 persons and the same country one night later."""
    return synthetic_country(tmp_path_factory.mktemp("country"), 200, 21, share=0.05,
                             delta_seed=22)


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql",
                                                               marks=pytest.mark.postgres)])
def nightly(request, country, tmp_path_factory) -> Iterator[RunContext]:
    """Run 1 over the country, run 2 over the nightly delta, both published."""
    data_dir = tmp_path_factory.mktemp(f"consistency_{request.param}")
    with ExitStack() as stack:
        url = None
        if request.param == "postgresql":
            url = stack.enter_context(new_pg_database(request.getfixturevalue("pg_url"),
                                                      "reglink_test_cons"))
        stack.callback(close_engines)

        def ctx(run_id: str, source: Path) -> RunContext:
            return RunContext(run_id=run_id, config_dir=CONFIG, data_dir=data_dir,
                              database_url=url, source_dir=source, data_docs=False)

        first = run_all(ctx("20261126T010000Z", country["source"]))
        # A first run's consistency is evaluated after publish, a nightly run's beside it.
        assert first.steps["consistency"]["evaluated_before_publish"] is None
        second = ctx("20261127T010000Z", country["delta"])
        summary = run_all(second)
        assert summary.steps["assign_ids"]["index_source"] == "files"
        assert summary.steps["consistency"]["evaluated_before_publish"] is not None
        yield second


def _stored(engine: sa.Engine, run_id: str) -> tuple[list[tuple], list[tuple]]:
    """The run's findings and metrics, JSON as sorted text (ids and times left out)."""
    f, m = schema.consistency_findings, schema.consistency_metrics
    with engine.connect() as conn:
        findings = conn.execute(
            sa.select(f.c.rule, f.c.mpi_id, f.c.register, f.c.record_ids, f.c.details)
            .where(f.c.run_id == run_id)).all()
        metrics = conn.execute(
            sa.select(m.c.rule, m.c.register, m.c["count"], m.c.denominator, m.c.rate)
            .where(m.c.run_id == run_id)).all()
    return _canonical(findings), sorted(tuple(r) for r in metrics)


def _canonical(rows) -> list[tuple]:
    def text(value):
        value = json.loads(value) if isinstance(value, str) else value
        return json.dumps(value, sort_keys=True, ensure_ascii=False)

    return sorted((r[0], r[1], r[2], text(r[3]), text(r[4])) for r in rows)


def _plain_computation(engine: sa.Engine, run_dir: Path, run_id: str
                       ) -> tuple[list[tuple], list[tuple]]:
    """The findings and metrics computed the plain way: every validated record joined to the
    database's person_records by pandas, checked by evaluate_rules."""
    rules = load_rules(CONFIG / "consistency.yaml")
    with engine.connect() as conn:
        links = pd.DataFrame(conn.execute(sa.text(
            "SELECT register, record_id, mpi_id FROM person_records")).all(),
            columns=["register", "record_id", "mpi_id"])
    files = sorted(p for p in (run_dir / "validate").glob("*.parquet")
                   if p.name != "quarantine.parquet")
    records = pd.concat([pd.read_parquet(p) for p in files], ignore_index=True)
    records = records.merge(links, on=["register", "record_id"], how="inner",
                            validate="1:1")
    reference = consistency.run_reference_date(run_id)
    findings, metrics = evaluate_rules(records, rules, reference)
    rows = _canonical(findings[["rule", "mpi_id", "register", "record_ids", "details"]]
                      .itertuples(index=False, name=None))
    return rows, sorted(tuple(r) for r in metrics.itertuples(index=False, name=None))


def test_the_findings_are_the_same_from_the_index_files_and_from_the_database(
    nightly: RunContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = engine_for(nightly)
    from_files = run_consistency(engine, nightly.run_id, nightly.run_dir, CONFIG)
    assert from_files["index_source"] == "files"
    assert sum(from_files["findings"].values()) > 0
    stored_from_files = _stored(engine, nightly.run_id)

    monkeypatch.setattr(consistency, "_links_from_files", lambda *args: None)
    from_database = run_consistency(engine, nightly.run_id, nightly.run_dir, CONFIG)
    assert from_database["index_source"] == "database"
    assert _stored(engine, nightly.run_id) == stored_from_files

    def same(summary: dict) -> dict:
        return {k: v for k, v in summary.items() if k not in ("seconds", "index_source")}

    assert same(from_files) == same(from_database)
    assert stored_from_files == _plain_computation(engine, nightly.run_dir, nightly.run_id)


def test_the_findings_evaluated_before_publish_are_those_evaluated_after_it(
    nightly: RunContext,
) -> None:
    engine = engine_for(nightly)
    after = run_consistency(engine, nightly.run_id, nightly.run_dir, CONFIG)
    assert after["evaluated_before_publish"] is None
    expected = _stored(engine, nightly.run_id)

    evaluation = evaluate_assignment(engine, nightly.run_id, nightly.run_dir, CONFIG)
    assert evaluation is not None
    before = run_consistency(engine, nightly.run_id, nightly.run_dir, CONFIG,
                             evaluation=evaluation)
    assert before["evaluated_before_publish"] is not None
    assert _stored(engine, nightly.run_id) == expected

    def same(summary: dict) -> dict:
        return {k: v for k, v in summary.items()
                if k not in ("seconds", "evaluated_before_publish")}

    assert same(before) == same(after)

    # The evaluation of an assignment that is not the published one is not written.
    evaluation.assignment = "another assignment"
    evaluation.findings = evaluation.findings.iloc[0:0]
    other = run_consistency(engine, nightly.run_id, nightly.run_dir, CONFIG,
                            evaluation=evaluation)
    assert other["evaluated_before_publish"] is None
    assert _stored(engine, nightly.run_id) == expected


def test_the_index_files_are_not_used_when_they_do_not_match_the_database(
    nightly: RunContext, tmp_path: Path
) -> None:
    engine = engine_for(nightly)
    index_file = nightly.run_dir / "assign" / "person_records.parquet"
    summary_file = nightly.run_dir / "assign" / "summary.json"
    saved = tmp_path / "saved"
    saved.mkdir()
    shutil.copy2(index_file, saved / index_file.name)
    shutil.copy2(summary_file, saved / summary_file.name)
    expected = _stored(engine, nightly.run_id)
    try:
        # A record less than the published index holds (the file of another assignment).
        table = pq.read_table(saved / index_file.name)
        pq.write_table(table.slice(1), index_file)
        result = run_consistency(engine, nightly.run_id, nightly.run_dir, CONFIG)
        assert result["index_source"] == "database"
        assert _stored(engine, nightly.run_id) == expected

        # An assignment over the run's own index (a rerun not necessarily published yet).
        shutil.copy2(saved / index_file.name, index_file)
        summary = json.loads(summary_file.read_text())
        summary_file.write_text(json.dumps({**summary, "index_run": nightly.run_id}))
        result = run_consistency(engine, nightly.run_id, nightly.run_dir, CONFIG)
        assert result["index_source"] == "database"
        assert _stored(engine, nightly.run_id) == expected
    finally:
        shutil.copy2(saved / index_file.name, index_file)
        shutil.copy2(saved / summary_file.name, summary_file)
    assert run_consistency(engine, nightly.run_id, nightly.run_dir,
                           CONFIG)["index_source"] == "files"


# ------------------------------------------------------ the JSON text, written by COPY or not

ODD = [
    rec("civil", 'C-"1"', "X", record_type="death", death_date="2024-05-10", **born_1950),
    rec("civil", "C\\2\t,", "X", record_type="birth", **born_1950),
    rec("pension", "ПН-1\n", "X", pension_active=True, **born_1950),
    rec("national_id", "N-1", "X", sex='M"', birth_date="1950-03-04"),
    rec("electoral", "E 1", "Y", voter_active=True, sex="F", birth_date="2011-02-03"),
    rec("electoral", "E 2", "Y", voter_active=True, sex="F", birth_date="2011-02-03"),
]


def test_odd_record_ids_and_values_are_stored_as_evaluate_rules_gives_them(
    empty_db_url: str, tmp_path: Path
) -> None:
    engine = make_engine(empty_db_url)
    upgrade(engine)
    records = frame(BACKGROUND + ODD)
    run_id = "20261127T010000Z"
    folder = _write_run(tmp_path, run_id, records)
    _publish(engine, run_id, records, datetime(2026, 11, 27, 1, tzinfo=UTC))
    summary = run_consistency(engine, run_id, folder, CONFIG)
    assert summary["index_source"] == "database"
    findings, metrics = evaluate_rules(records, load_rules(CONFIG / "consistency.yaml"),
                                       consistency.run_reference_date(run_id))
    assert {"dead_but_pension_active", "sex_conflict", "twice_on_electoral_roll",
            "minor_on_electoral_roll"} <= set(findings["rule"])
    expected = _canonical(findings[["rule", "mpi_id", "register", "record_ids", "details"]]
                          .itertuples(index=False, name=None))
    stored, stored_metrics = _stored(engine, run_id)
    assert stored == expected
    assert stored_metrics == sorted(tuple(r) for r in metrics.itertuples(index=False,
                                                                          name=None))
    # The details keep their order: a date, then the time since it.
    paid = findings.loc[findings["rule"] == "dead_but_pension_active", "details"].iloc[0]
    assert list(paid) == ["death_date", "days_since_death"]
    engine.dispose()


def test_a_failed_copy_leaves_the_previous_findings(
    empty_db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On PostgreSQL the findings are copied by a second thread: an error there rolls the
    whole step back and reaches the caller."""
    if not empty_db_url.startswith("postgresql"):
        pytest.skip("the findings are copied by a second thread on PostgreSQL only")
    engine = make_engine(empty_db_url)
    upgrade(engine)
    records = frame(BACKGROUND + ODD)
    run_id = "20261127T010000Z"
    folder = _write_run(tmp_path, run_id, records)
    _publish(engine, run_id, records, datetime(2026, 11, 27, 1, tzinfo=UTC))
    run_consistency(engine, run_id, folder, CONFIG)
    before = _stored(engine, run_id)
    copy, calls = consistency._copy_findings, []

    def failing_copy(*args) -> None:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("the database went away")
        copy(*args)

    monkeypatch.setattr(consistency, "_copy_findings", failing_copy)
    with pytest.raises(RuntimeError, match="went away"):
        run_consistency(engine, run_id, folder, CONFIG)
    assert len(calls) >= 2
    assert _stored(engine, run_id) == before
    engine.dispose()
