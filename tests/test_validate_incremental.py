"""Incremental validation gives exactly what a full validation gives (pipelines/validate.py).

A small synthetic country is extracted and validated (run 1), changed overnight
(make_nightly_delta, plus a few rows edited so that every kind of verdict changes) and
extracted again (run 2). Run 2 is then validated twice from the same files: once reusing
run 1's verdicts, once checking every row. The passed files, quarantine.parquet and the
summary (counts, rules, checks, null rates) must be the same.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import pipelines.validate as validate_module
from pipelines.cli import main
from pipelines.registers import load_register_configs
from pipelines.validate import validate_run
from tests.conftest import synthetic_country

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "config"
CORPUS = Path(__file__).parent / "bad_extracts"
R1, R2 = "20260101T000000Z", "20260301T000000Z"  # run 2's later date un-quarantines rows
# Fields that say how the rows were checked, not what was found.
HOW = {"mode", "mode_reason", "rows_checked", "reused_from", "seconds"}


def extract(data: Path, source: Path, run_id: str, config: Path = CONFIG) -> None:
    assert main(["extract", "--config", str(config), "--data-dir", str(data),
                 "--source-dir", str(source), "--run-id", run_id]) == 0


def edit(path: Path, column: str, row: int, value) -> None:
    """Set one cell of an extract, keeping its schema (the file is replaced, not changed)."""
    table = pq.read_table(path)
    values = table[column].to_pylist()
    values[row] = value
    index = table.schema.get_field_index(column)
    table = table.set_column(index, table.schema.field(index),
                             pa.array(values, type=table.schema.field(index).type))
    path.unlink()
    pq.write_table(table, path)


def validate(data: Path, run_id: str, previous: str | None, config: Path = CONFIG):
    configs = load_register_configs(config)
    base = data / "runs" / previous if previous else None
    try:
        return validate_run(data, run_id, configs, config_dir=config, data_docs=False,
                            previous_run_dir=base)
    except validate_module.CircuitBreakerError:
        return None


def outputs(data: Path, run_id: str) -> tuple[dict, dict[str, bytes]]:
    """The summary without timings and mode, and every output file's bytes."""
    folder = data / "runs" / run_id / "validate"
    summary = json.loads((folder / "summary.json").read_text())
    entries = {name: {k: v for k, v in entry.items() if k not in HOW}
               for name, entry in summary["registers"].items()}
    files = {p.name: p.read_bytes() for p in sorted(folder.glob("*.parquet"))}
    return {"status": summary["status"], "registers": entries}, files


def assert_same_as_full(tmp: Path, data: Path, run_id: str, previous: str,
                        config: Path = CONFIG) -> dict:
    """Validate ``run_id`` incrementally in ``data`` and in full in a copy; compare."""
    full = tmp / "full"
    shutil.copytree(data, full)
    validate(full, run_id, None, config)
    validate(data, run_id, previous, config)
    summary, files = outputs(data, run_id)
    full_summary, full_files = outputs(full, run_id)
    assert summary == full_summary
    assert files.keys() == full_files.keys()
    for name in files:
        assert files[name] == full_files[name], name
    return json.loads((data / "runs" / run_id / "validate" / "summary.json").read_text())


@pytest.fixture(scope="module")
def country(tmp_path_factory) -> dict[str, Path]:
    """A synthetic country of 1,500 persons and the same country one night later."""
    return synthetic_country(tmp_path_factory.mktemp("country"), 1_500, 11, share=0.02,
                             delta_seed=5)


def test_incremental_validation_equals_a_full_one(country, tmp_path):
    data = tmp_path / "data"
    extract(data, country["source"], R1)
    assert validate(data, R1, None).status == "passed"
    extract(data, country["delta"], R2)
    runs = data / "runs"
    before = pq.read_table(runs / R1 / "extract" / "national_id.parquet")
    now = runs / R2 / "extract"
    ids = pq.read_table(now / "national_id.parquet")["record_id"].to_pylist()
    unchanged = ids.index(before["record_id"][5].as_py())
    # A record takes the key of a row that did not change: both are quarantined now.
    edit(now / "national_id.parquet", "record_id", len(ids) - 1, ids[unchanged])
    # A PIN typed wrong (flag), a name with a digit (quarantine), a record without its key.
    pin = pq.read_table(now / "national_id.parquet")["pin"][10].as_py()
    edit(now / "national_id.parquet", "pin", 10, pin[:-1] + str((int(pin[-1]) + 1) % 10))
    edit(now / "civil.parquet", "surname", 3, "Kar1mov")
    edit(now / "health.parquet", "record_id", 7, None)

    summary = assert_same_as_full(tmp_path, data, R2, R1)
    entries = summary["registers"]
    assert {e["mode"] for e in entries.values()} == {"incremental"}
    assert all(e["rows_checked"] < e["extracted"] / 5 for e in entries.values())
    assert "incremental" in summary["data_docs_scope"]
    quarantine = pq.read_table(runs / R2 / "validate" / "quarantine.parquet").to_pandas()
    duplicates = quarantine[quarantine["rule"] == "record_id_duplicate"]
    assert list(duplicates["record_id"]) == [ids[unchanged]] * 2
    assert {"name_not_letters", "record_id_missing", "pin_check_digit"} <= set(
        quarantine["rule"])
    assert set(quarantine["run_id"]) == {R2}
    # Run 1 quarantined births after its date that run 2's later date accepts.
    q1 = pq.read_table(runs / R1 / "validate" / "quarantine.parquet").to_pandas()
    future = q1["rule"] == "birth_date_in_future"
    assert future.any()
    assert (quarantine["rule"] == "birth_date_in_future").sum() < future.sum()


def _people(tmp_path: Path, wrong_check_digit: bool) -> Path:
    source = tmp_path / "src"
    source.mkdir(exist_ok=True)
    text = (CORPUS / "cases" / "good" / "people.csv").read_text().splitlines()
    if wrong_check_digit:
        cells = text[3].split(",")
        cells[1] = cells[1][:-1] + str((int(cells[1][-1]) + 1) % 10)
        text[3] = ",".join(cells)
    (source / "people.csv").write_text("\n".join(text) + "\n")
    return source


def test_nothing_changed_keeps_every_verdict_without_great_expectations(tmp_path, monkeypatch):
    config = CORPUS / "config"
    data = tmp_path / "data"
    source = _people(tmp_path, wrong_check_digit=True)
    extract(data, source, R1, config)
    validate(data, R1, None, config)
    extract(data, source, R2, config)
    full = tmp_path / "full"
    shutil.copytree(data, full)
    validate(full, R2, None, config)

    def no_gx(*args, **kwargs):
        raise AssertionError("Great Expectations was set up although no row needed it")

    monkeypatch.setattr(validate_module, "_Gx", no_gx)
    result = validate(data, R2, R1, config)
    people = result.registers["people"]
    assert (people.mode, people.rows_checked, people.flagged) == ("incremental", 0, 1)
    assert outputs(data, R2) == outputs(full, R2)  # the flag kept, with this run's id


@pytest.mark.parametrize("change", ["earlier_run", "suite", "base_extract", "no_base"])
def test_verdicts_are_not_reused_when_they_may_not_hold(change, tmp_path):
    config = tmp_path / "config"
    shutil.copytree(CORPUS / "config", config)
    data = tmp_path / "data"
    source = _people(tmp_path, wrong_check_digit=False)
    extract(data, source, R1, config)
    validate(data, R1, None, config)
    run_id, previous = R2, R1
    if change == "earlier_run":  # the reference date goes back: born "in the future" may flip
        run_id = "20251201T000000Z"
    elif change == "suite":
        suite = json.loads((ROOT / "expectations" / "canonical.json").read_text())
        suite["expectations"] = suite["expectations"][:-1]
        (config / "expectations").mkdir()
        (config / "expectations" / "canonical.json").write_text(json.dumps(suite))
    elif change == "base_extract":  # run 1's extract is not the one its summary describes
        edit(data / "runs" / R1 / "extract" / "people.parquet", "surname", 0, "Karimova")
    elif change == "no_base":
        previous = None
    extract(data, source, run_id, config)
    summary = assert_same_as_full(tmp_path, data, run_id, previous, config)
    people = summary["registers"]["people"]
    assert people["mode"] == "full"
    assert people["rows_checked"] == people["extracted"]
    expected = {"earlier_run": "reference date", "suite": "the suite",
                "base_extract": "not the one it validated", "no_base": "no earlier run"}
    assert expected[change] in people["mode_reason"]


def test_a_suite_rule_that_reads_more_than_the_row_means_a_full_validation(tmp_path):
    config = tmp_path / "config"
    shutil.copytree(CORPUS / "config", config)
    suite = {"name": "people", "expectations": [{
        "type": "expect_column_values_to_be_between",
        "kwargs": {"column": "check.birth_year", "min_value": 1900, "mostly": 0.5},
        "meta": {"rule": "born_before_1900", "level": "row", "action": "flag"},
    }]}
    (config / "expectations").mkdir()
    (config / "expectations" / "people.json").write_text(json.dumps(suite))
    data = tmp_path / "data"
    source = _people(tmp_path, wrong_check_digit=False)
    extract(data, source, R1, config)
    validate(data, R1, None, config)
    extract(data, source, R2, config)
    summary = assert_same_as_full(tmp_path, data, R2, R1, config)
    people = summary["registers"]["people"]
    assert people["mode"] == "full" and "mostly" in people["mode_reason"]


def test_data_docs_of_an_incremental_run_show_the_rows_checked(tmp_path):
    config = CORPUS / "config"
    data = tmp_path / "data"
    source = _people(tmp_path, wrong_check_digit=False)
    extract(data, source, R1, config)
    validate(data, R1, None, config)
    text = (source / "people.csv").read_text().replace("Karimov,", "Kar1mov,")
    (source / "people.csv").write_text(text)
    extract(data, source, R2, config)
    configs = load_register_configs(config)
    result = validate_run(data, R2, configs, config_dir=config,
                          previous_run_dir=data / "runs" / R1)
    assert (result.registers["people"].mode, result.registers["people"].rows_checked) == (
        "incremental", 1)
    assert result.data_docs is not None and result.data_docs.is_file()
    summary = json.loads((data / "runs" / R2 / "validate" / "summary.json").read_text())
    assert summary["data_docs_scope"].startswith("incremental for people: the row-level")
