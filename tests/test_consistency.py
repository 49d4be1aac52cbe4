"""Cross-register consistency: the rules in config/consistency.yaml, their loader, the step
that writes findings and metrics, and the BI views over them (SQLite and PostgreSQL).

Each case is a small set of records a data steward would recognise, beside one consistent
person who keeps every register present.
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa

from pipelines.cli import main
from pipelines.consistency import (
    ConsistencyError,
    evaluate_rules,
    load_rules,
    run_consistency,
    run_reference_date,
)
from pipelines.errors import ConfigError
from pipelines.store import repository as repo
from pipelines.store import schema
from pipelines.store.engine import make_engine
from pipelines.store.migrations import upgrade

CONFIG = Path(__file__).resolve().parents[1] / "config"
REGISTERS = ["civil", "electoral", "health", "national_id", "pension"]
RULES = load_rules(CONFIG / "consistency.yaml", REGISTERS)
TODAY = date(2026, 11, 27)
COLUMNS = ("register", "record_id", "mpi_id", "record_type", "sex", "birth_date",
           "birth_date_quality", "death_date", "voter_active", "pension_active")


def _quality(birth_date: str | None) -> str:
    if birth_date is None:
        return "missing"
    if len(birth_date) < 10:
        return "partial"
    return "placeholder" if birth_date.endswith("-01-01") else "exact"


def rec(register: str, record_id: str, mpi_id: str = "X", **fields: Any) -> dict[str, Any]:
    row = {c: None for c in COLUMNS}
    row.update(register=register, record_id=record_id, mpi_id=mpi_id, **fields)
    row["birth_date_quality"] = _quality(row["birth_date"])
    return row


def frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    out = pd.DataFrame(rows, columns=list(COLUMNS))
    for column in COLUMNS:
        if column not in ("voter_active", "pension_active"):
            out[column] = out[column].astype("string")
    return out


# One consistent person in every register: born 1950, alive, voting, paid a pension.
BACKGROUND = [
    rec("civil", "C-0", "P0", record_type="birth", sex="M", birth_date="1950-03-04"),
    rec("national_id", "N-0", "P0", sex="M", birth_date="1950-03-04"),
    rec("electoral", "E-0", "P0", sex="M", birth_date="1950-03-04", voter_active=True),
    rec("pension", "PN-0", "P0", sex="M", birth_date="1950-03-04", pension_active=True),
    rec("health", "H-0", "P0", sex="M", birth_date="1950-03-04"),
]

born_1950 = {"sex": "M", "birth_date": "1950-03-04"}
CASES = [
    pytest.param(
        [rec("civil", "C-1", record_type="birth", **born_1950),
         rec("civil", "C-2", record_type="death", death_date="2024-05-10", **born_1950),
         rec("national_id", "N-1", **born_1950),
         rec("pension", "PN-1", pension_active=True, **born_1950)],
        {"dead_but_pension_active": (
            "pension", ["civil:C-2", "pension:PN-1"],
            {"death_date": "2024-05-10", "days_since_death": (TODAY - date(2024, 5, 10)).days},
        )},
        id="man dead in civil since 2024, pension still paid",
    ),
    pytest.param(
        [rec("civil", "C-1", record_type="death", death_date="2024-05-10", **born_1950),
         rec("national_id", "N-1", **born_1950),
         rec("pension", "PN-1", pension_active=False, **born_1950)],
        {"id_without_birth_record": ("national_id", ["national_id:N-1"], {"age": 76})},
        id="pension stopped at death: no pension finding",
    ),
    pytest.param(
        [rec("civil", "C-1", record_type="birth", sex="F", birth_date="2010-06-01"),
         rec("national_id", "N-1", sex="F", birth_date="2010-06-01"),
         rec("electoral", "E-1", sex="F", birth_date="2010-06-01", voter_active=True)],
        {"minor_on_electoral_roll": (
            "electoral", ["electoral:E-1"], {"birth_date": "2010-06-01", "age": 16})},
        id="16-year-old on the electoral roll",
    ),
    pytest.param(
        [rec("civil", "C-1", record_type="birth", sex="F", birth_date="2008-11-26"),
         rec("national_id", "N-1", sex="F", birth_date="2008-11-26"),
         rec("electoral", "E-1", sex="F", birth_date="2008-11-26", voter_active=True)],
        {},
        id="turned 18 yesterday: not a minor",
    ),
    pytest.param(
        [rec("civil", "C-1", record_type="birth", sex="M", birth_date="2009-03-15"),
         rec("national_id", "N-1", sex="M", birth_date="2009-01-01"),
         rec("electoral", "E-1", sex="M", birth_date="2009-01-01", voter_active=True)],
        {"minor_on_electoral_roll": ("electoral", ["electoral:E-1"], {"age": 17})},
        id="placeholder 01.01.2009 on the roll: under 18 on any reading",
    ),
    pytest.param(
        [rec("civil", "C-1", record_type="birth", sex="M", birth_date="2008-06-15"),
         rec("national_id", "N-1", sex="M", birth_date="2008-06-15"),
         rec("electoral", "E-1", sex="M", birth_date="2008", voter_active=True)],
        {},
        id="only the year 2008 on the roll: may be 18, not flagged",
    ),
    pytest.param(
        [rec("civil", "C-1", record_type="birth", **born_1950),
         rec("civil", "C-2", record_type="death", death_date="2025-01-31", **born_1950),
         rec("national_id", "N-1", **born_1950),
         rec("electoral", "E-1", voter_active=True, **born_1950)],
        {"dead_on_electoral_roll": (
            "electoral", ["civil:C-2", "electoral:E-1"], {"death_date": "2025-01-31"})},
        id="deceased voter still on the roll",
    ),
    pytest.param(
        [rec("civil", "C-1", record_type="birth", **born_1950),
         rec("civil", "C-2", record_type="death", death_date="2025-01-31", **born_1950),
         rec("national_id", "N-1", **born_1950),
         rec("electoral", "E-1", voter_active=False, **born_1950)],
        {},
        id="deceased voter struck off the roll",
    ),
    pytest.param(
        [rec("national_id", "N-1", sex="F", birth_date="1985-07-09"),
         rec("health", "H-1", sex="F", birth_date="1985-07-09")],
        {"id_without_birth_record": ("national_id", ["national_id:N-1"], {"age": 41})},
        id="national ID holder with no civil birth record",
    ),
    pytest.param(
        [rec("civil", "C-1", record_type="birth", **born_1950),
         rec("national_id", "N-1", **born_1950),
         rec("electoral", "E-1", voter_active=True, **born_1950),
         rec("electoral", "E-2", voter_active=True, **born_1950)],
        {"twice_on_electoral_roll": (
            "electoral", ["electoral:E-1", "electoral:E-2"], {"records": {"electoral": 2}})},
        id="one person twice on the electoral roll",
    ),
    pytest.param(
        [rec("civil", "C-1", record_type="birth", **born_1950),
         rec("national_id", "N-1", **born_1950),
         rec("electoral", "E-1", voter_active=True, **born_1950),
         rec("electoral", "E-2", voter_active=False, **born_1950)],
        {},
        id="old struck-off roll entry beside the active one",
    ),
    pytest.param(
        [rec("civil", "C-1", record_type="birth", sex="M", birth_date="1960-05-15"),
         rec("national_id", "N-1", sex="M", birth_date="1961-05-15")],
        {"birth_date_conflict": (
            "civil,national_id", ["civil:C-1", "national_id:N-1"],
            {"values": {"civil": ["1960-05-15"], "national_id": ["1961-05-15"]}})},
        id="civil and national ID disagree on the birth year",
    ),
    pytest.param(
        [rec("civil", "C-1", record_type="birth", sex="M", birth_date="1960-05-03"),
         rec("national_id", "N-1", sex="M", birth_date="1960-03-05")],
        {"birth_date_conflict": ("civil,national_id", ["civil:C-1", "national_id:N-1"], {})},
        id="day and month swapped",
    ),
    pytest.param(
        [rec("civil", "C-1", record_type="birth", sex="M", birth_date="1960-05-15"),
         rec("national_id", "N-1", sex="M", birth_date="1960-01-01"),
         rec("pension", "PN-1", sex="M", birth_date="1960", pension_active=True)],
        {},
        id="placeholder 01.01.1960 and year-only 1960 agree with 15.05.1960",
    ),
    pytest.param(
        [rec("civil", "C-1", record_type="birth", sex="M", birth_date="1960-05-15"),
         rec("national_id", "N-1", sex="M", birth_date="1958-01-01")],
        {"birth_date_conflict": ("civil,national_id", ["civil:C-1", "national_id:N-1"], {})},
        id="placeholder 01.01.1958 against 15.05.1960: different year",
    ),
    pytest.param(
        [rec("civil", "C-1", record_type="birth", sex="M", birth_date="1960-05-15"),
         rec("national_id", "N-1", sex=None, birth_date=None)],
        {},
        id="missing birth date and sex are not a conflict",
    ),
    pytest.param(
        [rec("civil", "C-1", record_type="birth", sex="M", birth_date="1990-02-02"),
         rec("national_id", "N-1", sex="M", birth_date="1990-02-02"),
         rec("health", "H-1", sex="F", birth_date="1990-02-02")],
        {"sex_conflict": ("civil,health,national_id",
                          ["civil:C-1", "health:H-1", "national_id:N-1"],
                          {"values": {"civil": ["M"], "health": ["F"], "national_id": ["M"]}})},
        id="health card says female, civil and ID say male",
    ),
    pytest.param(
        [rec("civil", "C-1", record_type="birth", sex="F", birth_date="1986-04-20"),
         rec("health", "H-1", sex="F", birth_date="1986-04-20")],
        {"no_national_id": ("health", ["health:H-1"], {})},
        id="health card holder aged 40 with no ID",
    ),
    pytest.param(
        [rec("civil", "C-1", record_type="birth", sex="F", birth_date="2021-04-20"),
         rec("health", "H-1", sex="F", birth_date="2021-04-20")],
        {},
        id="child of 5 with a health card: too young for an ID",
    ),
    pytest.param(
        [rec("civil", "C-1", record_type="birth", **born_1950),
         rec("health", "H-1", **born_1950),
         rec("pension", "PN-1", pension_active=True, **born_1950)],
        {"no_national_id": ("health,pension", ["health:H-1", "pension:PN-1"], {})},
        id="pensioner with a health card and no ID",
    ),
]


def _record_keys(record_ids: list[dict[str, str]]) -> list[str]:
    return [f"{r['register']}:{r['record_id']}" for r in record_ids]


@pytest.mark.parametrize("records,expected", CASES)
def test_rules_find_what_a_steward_expects(records, expected) -> None:
    findings, _ = evaluate_rules(frame(BACKGROUND + records), RULES, TODAY)
    assert "P0" not in set(findings["mpi_id"]), "the consistent person has no finding"
    found = {row.rule: row for row in findings.itertuples()}
    assert sorted(found) == sorted(expected)
    for rule, (register, record_ids, details) in expected.items():
        row = found[rule]
        assert row.register == register
        assert _record_keys(row.record_ids) == record_ids
        assert {k: row.details.get(k) for k in details} == details


def test_metrics_count_persons_out_of_those_checked() -> None:
    records = BACKGROUND + [
        rec("civil", "C-1", record_type="death", death_date="2024-05-10", **born_1950),
        rec("pension", "PN-1", pension_active=True, **born_1950),
        rec("pension", "PN-9", "Y", pension_active=False, **born_1950),  # stopped: not checked
        rec("health", "H-1", "Z", sex="F", birth_date="1990-01-05"),
    ]
    _, metrics = evaluate_rules(frame(records), RULES, TODAY)
    table = {(m.rule, m.register): (m.count, m.denominator, m.rate)
             for m in metrics.itertuples()}
    # Active pensions: P0 and X; X is dead.
    assert table["dead_but_pension_active", "pension"] == (1, 2, 0.5)
    assert table["dead_but_pension_active", "all"] == (1, 2, 0.5)
    # No ID: X and Y (pension, paid or not) and Z (health), out of P0, X, Y (pension) and
    # P0, Z (health); a person counts once in "all".
    assert table["no_national_id", "pension"] == (2, 3, pytest.approx(2 / 3))
    assert table["no_national_id", "health"] == (1, 2, 0.5)
    assert table["no_national_id", "all"] == (3, 4, 0.75)
    # Every register's row is there for a rule over all registers, even with nothing found.
    assert {r for (rule, r) in table if rule == "sex_conflict"} == {*REGISTERS, "all"}


def test_a_rule_is_skipped_when_the_register_it_looks_in_is_absent() -> None:
    without_id = [r for r in BACKGROUND if r["register"] != "national_id"]
    findings, metrics = evaluate_rules(frame(without_id), RULES, TODAY)
    # Otherwise every health card and pension holder would be reported as having no ID.
    assert "no_national_id" not in set(metrics["rule"])
    assert "no_national_id" not in set(findings["rule"])


def test_findings_do_not_depend_on_the_order_of_the_records() -> None:
    records = frame(BACKGROUND + [r for case in CASES for r in _rename(case.values[0])])
    first, m1 = evaluate_rules(records, RULES, TODAY)
    second, m2 = evaluate_rules(records.iloc[::-1], RULES, TODAY)
    pd.testing.assert_frame_equal(first, second)
    pd.testing.assert_frame_equal(m1, m2)


def _rename(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    tag = uuid.uuid4().hex[:6]
    return [{**r, "mpi_id": f"X-{tag}", "record_id": f"{r['record_id']}-{tag}"}
            for r in records]


def test_records_without_a_person_are_refused() -> None:
    records = frame(BACKGROUND)
    records.loc[0, "mpi_id"] = None
    with pytest.raises(ValueError, match="mpi_id"):
        evaluate_rules(records, RULES, TODAY)


@pytest.mark.parametrize(
    "run_id,started,expected",
    [("20261127T120000Z", None, date(2026, 11, 27)),
     ("nightly-7", datetime(2026, 11, 26, 23, 30, tzinfo=UTC), date(2026, 11, 26))],
    ids=["from the run id", "from the run's start (UTC)"],
)
def test_reference_date_is_fixed_per_run(run_id, started, expected) -> None:
    assert run_reference_date(run_id, started) == expected


# ------------------------------------------------------------------------------- loader

GOOD_RULE = """
rules:
  - name: dead_but_pension_active
    title: Dead, pension paid
    severity: high
    subject: {register: pension, where: {pension_active: true}}
    finding_when:
      exists_in: {register: civil, where: {record_type: death}}
"""


@pytest.mark.parametrize(
    "old,new,message",
    [
        ("severity: high", "severty: high",
         "rules[0].severty: unknown key; did you mean 'severity'"),
        ("severity: high", "severity: critical", "rules[0].severity: Input should be 'high'"),
        ("pension_active: true", "pension_activ: true",
         "rules[0].subject.where.pension_activ: 'pension_activ' is not a canonical column; "
         "did you mean 'pension_active'"),
        ("register: pension", "register: pensoin",
         "rules[0].subject.register: unknown register 'pensoin'; did you mean 'pension'"),
        ("record_type: death}}", "record_type: death}}\n      missing_in: {register: civil}",
         "rules[0].finding_when: give exactly one of"),
        ("pension_active: true", "pension_active: A",
         "pension_active is true/false; expected true or false"),
        ("record_type: death", "record_type: no",
         "record_type is text; got a boolean (YAML reads unquoted yes/no"),
        ("record_type: death", "death_date: {age_below: 18}",
         "an age is computed from birth_date only"),
        ("exists_in: {register: civil, where: {record_type: death}}", "count_at_least: 1",
         "rules[0].finding_when.count_at_least: Input should be greater than or equal to 2"),
        ("name: dead_but_pension_active", "name: Dead pension", "rules[0].name: String should"),
        ("    title: Dead, pension paid\n", "", "rules[0].title: required key is missing"),
        ("severity: high", "severity: [high", "not valid YAML"),
    ],
    ids=["misspelt key", "unknown severity", "unknown column", "unknown register",
         "two finding_when kinds", "text for a true/false column", "unquoted no",
         "age of a death date", "count below 2", "name with spaces", "missing title",
         "broken YAML"],
)
def test_loader_names_the_file_and_the_key(tmp_path, old, new, message) -> None:
    assert old in GOOD_RULE
    path = tmp_path / "consistency.yaml"
    path.write_text(GOOD_RULE.replace(old, new), encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_rules(path, REGISTERS)
    assert str(info.value).startswith(str(path))
    assert message in str(info.value)


def test_loader_refuses_two_rules_of_one_name(tmp_path) -> None:
    path = tmp_path / "consistency.yaml"
    rule = GOOD_RULE.split("rules:\n", 1)[1]
    path.write_text("rules:\n" + rule + rule, encoding="utf-8")
    with pytest.raises(ConfigError, match=r"rules\[1\].name: 'dead_but_pension_active' is "
                                          r"already the name of rules\[0\]"):
        load_rules(path, REGISTERS)


def test_loader_says_where_the_file_should_be(tmp_path) -> None:
    with pytest.raises(ConfigError, match="consistency rules not found; copy config/"):
        load_rules(tmp_path / "consistency.yaml")


def test_shipped_rules_cover_the_issue() -> None:
    assert [r.name for r in RULES] == [
        "dead_but_pension_active", "dead_on_electoral_roll", "minor_on_electoral_roll",
        "id_without_birth_record", "twice_on_electoral_roll", "birth_date_conflict",
        "sex_conflict", "no_national_id",
    ]


# ------------------------------------------------------------------ the step and the views




def _write_run(data_dir: Path, run_id: str, records: pd.DataFrame) -> Path:
    """A run folder whose validation passed, holding ``records`` (without mpi_id)."""
    folder = data_dir / "runs" / run_id
    (folder / "validate").mkdir(parents=True)
    for register, rows in records.drop(columns="mpi_id").groupby("register"):
        rows.to_parquet(folder / "validate" / f"{register}.parquet", index=False)
    (folder / "validate" / "summary.json").write_text(
        json.dumps({"run_id": run_id, "status": "passed", "registers": {}}), encoding="utf-8")
    (folder / "extract").mkdir()
    return folder


def _publish(engine: sa.Engine, run_id: str, records: pd.DataFrame, started: datetime) -> None:
    """Stand-in for the publish step: the run, its persons and record links."""
    with engine.begin() as conn:
        repo.start_run(conn, run_id, seed=1, config_hash="c")
        persons = sorted(set(records["mpi_id"]))
        repo.upsert(conn, schema.persons, [
            {"mpi_id": m, "region": "Sughd", "created_run": run_id, "updated_run": run_id}
            for m in persons
        ])
        conn.execute(sa.delete(schema.person_records))
        repo.bulk_insert(conn, schema.person_records, pd.DataFrame({
            "register": records["register"].astype(object),
            "record_id": records["record_id"].astype(object),
            "mpi_id": records["mpi_id"].astype(object),
            "linked_run": run_id, "first_seen_run": run_id,
        }))
        repo.finish_run(conn, run_id, "published")
        repo.update_run(conn, run_id, started_at=started, finished_at=started + timedelta(hours=1))


def _doc_queries() -> list[str]:
    text = (CONFIG.parent / "docs" / "consistency.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```sql\n(.*?)```", text, flags=re.S)
    statements = [s.strip() for block in blocks for s in block.split(";")]
    return [s for s in statements if s and "$__" not in s]


def _table_rows(engine: sa.Engine, table: sa.Table) -> list[tuple]:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(table).order_by(*table.primary_key.columns)).mappings()
        return sorted(
            tuple(json.dumps(v, sort_keys=True) if isinstance(v, (list, dict)) else v
                  for k, v in row.items() if k not in ("id", "created_at"))
            for row in rows
        )


def test_step_writes_findings_and_metrics_once_and_the_views_chart_them(
    empty_db_url: str, tmp_path
) -> None:
    engine = make_engine(empty_db_url)
    upgrade(engine)
    day1 = datetime(2026, 11, 26, 1, 0, tzinfo=UTC)
    # Night 1: a dead pensioner still paid, and a 16-year-old voter.
    night1 = frame(BACKGROUND + [
        rec("civil", "C-1", "X", record_type="death", death_date="2024-05-10", **born_1950),
        rec("national_id", "N-1", "X", **born_1950),
        rec("civil", "C-9", "X", record_type="birth", **born_1950),
        rec("pension", "PN-1", "X", pension_active=True, **born_1950),
        rec("civil", "C-2", "Y", record_type="birth", sex="F", birth_date="2010-06-01"),
        rec("national_id", "N-2", "Y", sex="F", birth_date="2010-06-01"),
        rec("electoral", "E-2", "Y", sex="F", birth_date="2010-06-01", voter_active=True),
    ])
    r1 = "20261126T010000Z"
    folder1 = _write_run(tmp_path, r1, night1)
    _publish(engine, r1, night1, day1)

    first = run_consistency(engine, r1, folder1, CONFIG)
    findings_once = _table_rows(engine, schema.consistency_findings)
    metrics_once = _table_rows(engine, schema.consistency_metrics)
    again = run_consistency(engine, r1, folder1, CONFIG)
    assert _table_rows(engine, schema.consistency_findings) == findings_once
    assert _table_rows(engine, schema.consistency_metrics) == metrics_once
    assert first["findings"] == again["findings"]
    assert first["reference_date"] == "2026-11-26"
    assert {k: v for k, v in first["findings"].items() if v} == {
        "dead_but_pension_active": 1, "minor_on_electoral_roll": 1}
    with engine.connect() as conn:
        # Since when the dead man is paid, as plain columns a BI tool can sum and chart.
        paid = conn.execute(sa.text(
            "SELECT mpi_id, register, death_date, days_since_death, age, records "
            "FROM v_consistency_findings WHERE rule = 'dead_but_pension_active'"
        )).all()
    assert [tuple(r) for r in paid] == [
        ("X", "pension", "2024-05-10", (date(2026, 11, 26) - date(2024, 5, 10)).days, None, 2)
    ]

    # Night 2: the pension was stopped; the young voter is still on the roll.
    night2 = night1.copy()
    night2.loc[night2["record_id"] == "PN-1", "pension_active"] = False
    r2 = "20261127T010000Z"
    folder2 = _write_run(tmp_path, r2, night2)
    _publish(engine, r2, night2, day1 + timedelta(days=1))
    run_consistency(engine, r2, folder2, CONFIG)

    with engine.connect() as conn:
        trend = conn.execute(sa.text(
            'SELECT run_id, run_date, "count" AS n, denominator, rate FROM v_consistency_trend '
            "WHERE rule = 'dead_but_pension_active' AND register = 'pension' ORDER BY run_date"
        )).all()
        current = conn.execute(sa.text(
            "SELECT run_id, rule, mpi_id, register, region, details, age, records "
            "FROM v_consistency_findings ORDER BY rule, mpi_id"
        )).all()
        summary = conn.execute(sa.text(
            "SELECT run_id, findings FROM v_run_summary ORDER BY run_id")).all()
    # The time series: 1 of 2 active pensions on night 1, none of 1 on night 2.
    assert [(r.run_id, str(r.run_date), r.n, r.denominator, r.rate) for r in trend] == [
        (r1, "2026-11-26", 1, 2, 0.5),
        (r2, "2026-11-27", 0, 1, 0.0),
    ]
    # The current findings are those of the newest run only.
    assert [(r.run_id, r.rule, r.mpi_id, r.register, r.region) for r in current] == [
        (r2, "minor_on_electoral_roll", "Y", "electoral", "Sughd"),
    ]
    details = current[0].details
    details = json.loads(details) if isinstance(details, str) else details
    assert details == {"birth_date": "2010-06-01", "age": 16}
    assert (current[0].age, current[0].records) == (16, 1)
    assert [tuple(r) for r in summary] == [(r1, 2), (r2, 1)]

    # Every example query of docs/consistency.md runs (Grafana's macros aside).
    with engine.connect() as conn:
        results = [conn.execute(sa.text(sql)).all() for sql in _doc_queries()]
    assert len(results) >= 5
    latest = next(r for r in results if r and len(r[0]) == 6)  # figure and change per rule
    row = next(r for r in latest if (r[0], r[1]) == ("minor_on_electoral_roll", "all"))
    assert (str(row[2]), row[3], row[5]) == ("2026-11-27", 1, 0)

    # Night 1 cannot be re-checked against night 2's index.
    with pytest.raises(ConsistencyError, match=f"check run '{r2}' instead"):
        run_consistency(engine, r1, folder1, CONFIG)
    engine.dispose()


def test_step_refuses_a_run_that_was_not_published(tmp_path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'mpi.sqlite'}")
    upgrade(engine)
    records = frame(BACKGROUND)
    folder = _write_run(tmp_path, "20261127T010000Z", records)
    with pytest.raises(ConsistencyError, match="not in the MPI database"):
        run_consistency(engine, folder.name, folder, CONFIG)
    with engine.begin() as conn:
        repo.start_run(conn, folder.name, seed=1, config_hash="c")
    with pytest.raises(ConsistencyError, match="is running, not published"):
        run_consistency(engine, folder.name, folder, CONFIG)
    # Published, but the index holds none of the run's records (another folder's run).
    _publish(engine, folder.name, frame([rec("civil", "OTHER-1", "Q", record_type="birth")]),
             datetime(2026, 11, 27, 1, tzinfo=UTC))
    with pytest.raises(ConsistencyError, match="none of its 5 validated records"):
        run_consistency(engine, folder.name, folder, CONFIG)
    engine.dispose()


def test_cli_prints_each_rule_and_exits_0(tmp_path, capsys: pytest.CaptureFixture) -> None:
    records = frame(BACKGROUND + [
        rec("civil", "C-1", "X", record_type="death", death_date="2024-05-10", **born_1950),
        rec("pension", "PN-1", "X", pension_active=True, **born_1950),
    ])
    folder = _write_run(tmp_path, "20261127T010000Z", records)
    common = ["--config", str(CONFIG), "--data-dir", str(tmp_path)]
    assert main(["db", "upgrade", *common]) == 0
    engine = make_engine(f"sqlite:///{tmp_path / 'mpi.sqlite'}")
    _publish(engine, folder.name, records, datetime(2026, 11, 27, 1, tzinfo=UTC))
    engine.dispose()
    capsys.readouterr()
    assert main(["consistency", *common]) == 0
    out = capsys.readouterr().out
    assert "run 20261127T010000Z: consistency at 2026-11-27" in out
    line = next(x for x in out.splitlines() if x.startswith("dead_but_pension_active"))
    assert line.split() == ["dead_but_pension_active", "1", "2", "50.00%"]


def test_cli_reports_a_bad_rules_file_without_traceback(
    tmp_path, capsys: pytest.CaptureFixture
) -> None:
    config = tmp_path / "config"
    (config / "registers").mkdir(parents=True)
    for name in REGISTERS:
        (config / "registers" / f"{name}.yaml").write_text(
            (CONFIG / "registers" / f"{name}.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    (config / "consistency.yaml").write_text(GOOD_RULE.replace("severity", "severty"),
                                             encoding="utf-8")
    _write_run(tmp_path, "20261127T010000Z", frame(BACKGROUND))
    assert main(["consistency", "--config", str(config), "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "consistency.yaml: rules[0].severty: unknown key" in err
    assert "Traceback" not in err


def test_views_migration_goes_down_and_up_again(empty_db_url: str) -> None:
    from alembic import command

    from pipelines.store.migrations import alembic_config, current_revision

    engine = make_engine(empty_db_url)
    upgrade(engine)

    def columns() -> list[str]:
        with engine.connect() as conn:
            return [c["name"] for c in sa.inspect(conn).get_columns("v_consistency_findings")]

    assert columns()[-4:] == ["death_date", "days_since_death", "age", "records"]
    with engine.begin() as conn:
        command.downgrade(alembic_config(conn), "0001")
    assert current_revision(engine) == "0001"
    assert columns()[-1] == "district"
    upgrade(engine)
    assert columns()[-4:] == ["death_date", "days_since_death", "age", "records"]
    engine.dispose()
