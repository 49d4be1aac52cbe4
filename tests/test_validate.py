"""Validation: quarantine, circuit breaker, row conservation, Data Docs, `reglink validate`.

The corpus of bad extracts is tests/bad_extracts/: one folder per case holding a people.csv,
the register's configuration in tests/bad_extracts/config/, and cases.csv saying what must
happen to each (a clear message with exit status 2, or quarantined rows that add up).
"""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.cli import main
from pipelines.errors import CircuitBreakerError, ConfigError, ValidationError
from pipelines.registers import load_register_config, load_register_configs
from pipelines.validate import (
    QUARANTINE_COLUMNS,
    _write_passed,
    previous_successful_counts,
    require_validated,
    validate_run,
)

CORPUS = Path(__file__).parent / "bad_extracts"
CASES = list(csv.DictReader((CORPUS / "cases.csv").open(encoding="utf-8")))
GOOD_RUN, RUN = "20260101T000000Z", "20260102T000000Z"


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def extract(capsys, data: Path, case: str, run_id: str, config: Path = CORPUS / "config"):
    return cli(capsys, "extract", "--config", str(config), "--data-dir", str(data),
               "--source-dir", str(CORPUS / "cases" / case), "--run-id", run_id)


def validate(capsys, data: Path, run_id: str, config: Path = CORPUS / "config", *extra: str):
    return cli(capsys, "validate", "--config", str(config), "--data-dir", str(data),
               "--run-id", run_id, *extra)


@pytest.mark.parametrize("case", CASES, ids=[c["case"] for c in CASES])
def test_bad_extract_ends_in_a_message_or_quarantined_rows(case, tmp_path, capsys):
    if case["case"] == "shrink_30pct":  # needs a last good run to shrink against
        assert extract(capsys, tmp_path, "good", GOOD_RUN)[0] == 0
        assert validate(capsys, tmp_path, GOOD_RUN, CORPUS / "config", "--no-data-docs")[0] == 0
    code, out, err = extract(capsys, tmp_path, case["case"], RUN)
    if case["step"] == "validate":
        assert code == 0, err
        code, out, err = validate(capsys, tmp_path, RUN, CORPUS / "config", "--no-data-docs")
    assert code == int(case["exit_code"]), err
    assert "Traceback" not in err
    if case["message"]:
        assert case["message"] in err
    folder = tmp_path / "runs" / RUN / "validate"
    if case["step"] == "extract":
        assert not folder.exists()
        return
    summary = json.loads((folder / "summary.json").read_text())
    people = summary["registers"]["people"]
    # Row conservation, recounted from the files.
    quarantine = pd.read_parquet(folder / "quarantine.parquet")
    errors = quarantine[quarantine["severity"] == "error"]
    extracted = pq.read_metadata(tmp_path / "runs" / RUN / "extract" / "people.parquet").num_rows
    assert people["extracted"] == extracted
    assert people["quarantined"] == errors["record_id"].fillna("?").str.cat(
        errors["source_row"].astype(str)).nunique()
    if code == 0:
        passed = pq.read_metadata(folder / "people.parquet").num_rows
        assert (people["passed"], people["quarantined"]) == (int(case["passed"]),
                                                              int(case["quarantined"]))
        assert passed + people["quarantined"] == extracted
        assert people["conservation_ok"] and summary["status"] == "passed"
        assert set(errors["rule"]) == ({case["rules"]} if case["rules"] else set())
    else:
        assert summary["status"] == "failed"
        assert not (folder / "people.parquet").exists()


def test_quarantine_row_says_register_record_rule_column_and_value(tmp_path, capsys):
    extract(capsys, tmp_path, "long_field", RUN)
    validate(capsys, tmp_path, RUN, CORPUS / "config", "--no-data-docs")
    quarantine = pd.read_parquet(tmp_path / "runs" / RUN / "validate" / "quarantine.parquet")
    assert tuple(quarantine.columns) == QUARANTINE_COLUMNS
    row = quarantine.iloc[0]
    assert (row["register"], row["record_id"], row["source_row"], row["source_file"]) == (
        "people", "P0006", 6, "people.csv")
    assert (row["rule"], row["column"], row["severity"]) == ("field_too_long", "surname", "error")
    assert row["value"] == "A" * 1000  # truncated from 10,000


def test_invalid_pin_flags_the_row_but_keeps_it_for_linking(tmp_path, capsys):
    source = tmp_path / "src"
    source.mkdir()
    text = (CORPUS / "cases" / "good" / "people.csv").read_text().splitlines()
    cells = text[1].split(",")
    cells[1] = cells[1][:-1] + str((int(cells[1][-1]) + 1) % 10)  # wrong check digit
    text[1] = ",".join(cells)
    cells = text[2].split(",")
    cells[1] = "12-345"
    text[2] = ",".join(cells)
    (source / "people.csv").write_text("\n".join(text) + "\n")
    cli(capsys, "extract", "--config", str(CORPUS / "config"), "--data-dir", str(tmp_path),
        "--source-dir", str(source), "--run-id", RUN)
    code, out, _ = validate(capsys, tmp_path, RUN, CORPUS / "config", "--no-data-docs")
    assert code == 0
    folder = tmp_path / "runs" / RUN / "validate"
    quarantine = pd.read_parquet(folder / "quarantine.parquet")
    assert sorted(zip(quarantine["rule"], quarantine["severity"], strict=True)) == [
        ("pin_check_digit", "warning"), ("pin_malformed", "warning")]
    assert pq.read_metadata(folder / "people.parquet").num_rows == 10
    assert "flagged" in out and "people" in out  # the summary table


def test_a_register_with_nothing_quarantined_passes_its_extract_unchanged(tmp_path, capsys):
    extract(capsys, tmp_path, "good", RUN)
    code, _, err = validate(capsys, tmp_path, RUN, CORPUS / "config", "--no-data-docs")
    assert code == 0, err
    run = tmp_path / "runs" / RUN
    assert pd.read_parquet(run / "validate" / "quarantine.parquet").empty
    # Every row passed: the passed file is the extract, byte for byte.
    extracted = (run / "extract" / "people.parquet").read_bytes()
    assert (run / "validate" / "people.parquet").read_bytes() == extracted


def test_passed_rows_are_written_again_when_the_extract_changed_on_disk(tmp_path):
    table = pa.table({"record_id": ["a", "b", "c"], "surname": ["X", "Y", "Z"]})
    extract_file, passed = tmp_path / "extract.parquet", tmp_path / "passed.parquet"
    pq.write_table(table, extract_file)
    expected = hashlib.sha256(extract_file.read_bytes()).hexdigest()
    pq.write_table(table.slice(0, 1), extract_file)  # replaced after it was validated
    assert _write_passed(table, np.ones(3, dtype=bool), passed, (extract_file, expected)) == 3
    assert pq.read_table(passed).equals(table)
    assert _write_passed(table, np.array([True, False, True]), passed,
                         (extract_file, expected)) == 2
    assert pq.read_table(passed)["record_id"].to_pylist() == ["a", "c"]


def test_data_docs_escape_markup_and_load_nothing_from_outside(tmp_path, capsys):
    extract(capsys, tmp_path, "html_sql_formula", RUN)
    code, _, err = validate(capsys, tmp_path, RUN)
    assert code == 0, err
    folder = tmp_path / "runs" / RUN / "validate"
    summary = json.loads((folder / "summary.json").read_text())
    index = folder / summary["data_docs"]
    assert index.is_file()
    pages = list((folder / "data_docs").rglob("*.html"))
    assert any("validations" in p.parts for p in pages)
    for page in pages:
        html = page.read_text(encoding="utf-8")
        assert "<script>alert(1)</script>" not in html
        for remote in ('src="http', "href=\"http", "url(http", "@import"):
            if remote == 'href="http':  # plain links are allowed; stylesheets are not
                assert '<link href="http' not in html and 'rel="stylesheet" href="http' not in html
            else:
                assert remote not in html, (page, remote)


def test_failed_validation_withdraws_the_runs_passed_files(tmp_path, capsys):
    extract(capsys, tmp_path, "good", RUN)
    assert validate(capsys, tmp_path, RUN, CORPUS / "config", "--no-data-docs")[0] == 0
    folder = tmp_path / "runs" / RUN
    assert require_validated(folder) == folder / "validate"
    # The same run re-extracted from a header-only export: validation fails, nothing is left.
    extract(capsys, tmp_path, "header_only", RUN)
    code, _, err = validate(capsys, tmp_path, RUN, CORPUS / "config", "--no-data-docs")
    assert code == 2 and "circuit breaker" in err and "register people" in err
    assert not (folder / "validate" / "people.parquet").exists()
    with pytest.raises(ValidationError, match="validation is failed"):
        require_validated(folder)


def test_null_rate_jump_stops_the_run(tmp_path, capsys):
    extract(capsys, tmp_path, "good", GOOD_RUN)
    validate(capsys, tmp_path, GOOD_RUN, CORPUS / "config", "--no-data-docs")
    source = tmp_path / "src"
    source.mkdir()
    frame = pd.read_csv(CORPUS / "cases" / "good" / "people.csv", dtype=str)
    frame["address"] = ""
    frame.to_csv(source / "people.csv", index=False)
    cli(capsys, "extract", "--config", str(CORPUS / "config"), "--data-dir", str(tmp_path),
        "--source-dir", str(source), "--run-id", RUN)
    code, _, err = validate(capsys, tmp_path, RUN, CORPUS / "config", "--no-data-docs")
    assert code == 2
    assert "register people: null_rate_increase:address" in err
    assert "100% of rows against 0% in run " + GOOD_RUN in err


def _config_with(tmp_path: Path, quality: str) -> Path:
    config = tmp_path / "config"
    (config / "registers").mkdir(parents=True)
    text = (CORPUS / "config" / "registers" / "people.yaml").read_text()
    text = text[: text.index("quality:")] + quality
    (config / "registers" / "people.yaml").write_text(text)
    return config


@pytest.mark.parametrize(
    ("quality", "case", "message"),
    [
        ("quality: {max_quarantined: 0.1}\n", "garbage_dates",
         "register people: quarantined_share: 2 of 10 rows quarantined (20.0%; at most 10%"),
        ("quality: {required_columns: [pin]}\n", "good", None),
    ],
    ids=["too many quarantined", "required column present"],
)
def test_quality_thresholds_from_config(tmp_path, capsys, quality, case, message):
    config = _config_with(tmp_path, quality)
    extract(capsys, tmp_path, case, RUN, config)
    code, _, err = validate(capsys, tmp_path, RUN, config, "--no-data-docs")
    assert code == (2 if message else 0), err
    if message:
        assert message in err


@pytest.mark.parametrize(
    ("quality", "error"),
    [
        ("quality: {max_shrinkage: 0.3}\n", "quality.max_shrinkage: unknown key; did you mean "
         "'max_shrink'?"),
        ("quality: {max_shrink: 1.5}\n", "quality.max_shrink: Input should be less than or "
         "equal to 1"),
        ("quality: {required_columns: [phone]}\n", "quality.required_columns: phone is not "
         "mapped"),
    ],
)
def test_quality_config_mistakes_are_named(tmp_path, quality, error):
    config = _config_with(tmp_path, quality)
    with pytest.raises(ConfigError, match=error.replace("(", r"\(").replace("?", r"\?")):
        load_register_config(config / "registers" / "people.yaml")


def test_defaults_when_quality_is_left_out():
    quality = load_register_configs("config")["civil"].quality
    assert (quality.max_shrink, quality.max_null_rate_increase, quality.suite) == (0.2, 0.2, None)


def test_a_users_suite_is_data(tmp_path, capsys):
    """A steward adds a rule by editing JSON in <config>/expectations/, no code."""
    config = _config_with(tmp_path, "quality: {max_quarantined: 0.5}\n")
    (config / "expectations").mkdir()
    suite = {"name": "people", "meta": {}, "expectations": [{
        "type": "expect_column_values_to_match_regex",
        "kwargs": {"column": "address", "regex": "^kuch\\. Rudaki [1-5]$"},
        "meta": {"rule": "address_outside_area", "level": "row", "action": "quarantine"},
    }]}
    (config / "expectations" / "people.json").write_text(json.dumps(suite))
    extract(capsys, tmp_path, "good", RUN, config)
    code, _, err = validate(capsys, tmp_path, RUN, config, "--no-data-docs")
    assert code == 0, err
    quarantine = pd.read_parquet(tmp_path / "runs" / RUN / "validate" / "quarantine.parquet")
    assert list(quarantine["rule"]) == ["address_outside_area"] * 5
    suite["expectations"][0]["meta"]["action"] = "drop"
    (config / "expectations" / "people.json").write_text(json.dumps(suite))
    code, _, err = validate(capsys, tmp_path, RUN, config, "--no-data-docs")
    assert code == 2 and "expectations[0].meta.action: 'drop'; expected quarantine or flag" in err


def test_partial_dates_compare_by_their_widest_reading(tmp_path, capsys):
    rows = [  # (id, birth, death, born after death?)
        ("P1", "03.05.1960", "00.00.1960", False),
        ("P2", "00.00.1961", "31.12.1960", True),
        ("P3", "00.05.1960", "15.05.1960", False),
        ("P4", "16.05.1960", "15.05.1960", True),
        ("P5", "15.05.1960", "15.05.1960", False),
    ]
    source = tmp_path / "src"
    source.mkdir()
    lines = ["id,pin,surname,given_name,sex,birth,death,address"]
    lines += [f"{i},,Karimov,Alisher,M,{b},{d}," for i, b, d, _ in rows]
    lines += [f"X{n},,Saidov,Firuz,M,01.02.1970,," for n in range(10)]
    (source / "people.csv").write_text("\n".join(lines) + "\n")
    cli(capsys, "extract", "--config", str(CORPUS / "config"), "--data-dir", str(tmp_path),
        "--source-dir", str(source), "--run-id", RUN)
    validate(capsys, tmp_path, RUN, CORPUS / "config", "--no-data-docs")
    quarantine = pd.read_parquet(tmp_path / "runs" / RUN / "validate" / "quarantine.parquet")
    flagged = set(quarantine.loc[quarantine["rule"] == "birth_after_death", "record_id"])
    assert flagged == {i for i, _, _, after in rows if after}


def test_previous_successful_counts_skips_failed_and_later_runs(tmp_path):
    def write(run_id: str, status: str, extracted: int) -> None:
        folder = tmp_path / "runs" / run_id / "validate"
        folder.mkdir(parents=True)
        entry = {"status": status, "extracted": extracted, "null_rates": {"pin": 0.1}}
        (folder / "summary.json").write_text(
            json.dumps({"status": status, "registers": {"civil": entry}}))

    write("20260101T000000Z", "passed", 100)
    write("20260102T000000Z", "failed", 50)
    write("20260104T000000Z", "passed", 300)
    previous = previous_successful_counts(tmp_path, "civil", "20260103T000000Z")
    assert previous is not None
    assert (previous.run_id, previous.extracted) == ("20260101T000000Z", 100)
    assert previous_successful_counts(tmp_path, "civil", "20260101T000000Z") is None
    assert previous_successful_counts(tmp_path, "pension", "20260109T000000Z") is None


def test_a_missing_extract_trips_the_breaker(tmp_path):
    configs = load_register_configs(CORPUS / "config")
    (tmp_path / "runs" / RUN / "extract").mkdir(parents=True)
    with pytest.raises(CircuitBreakerError, match="register people: extract_present"):
        validate_run(tmp_path, RUN, configs, config_dir=CORPUS / "config", data_docs=False)


def test_repository_suites_load_and_validate_synthetic_registers(tmp_path, capsys):
    source = tmp_path / "source"
    assert main(["synth", "--persons", "300", "--seed", "3", "--out", str(source)]) == 0
    assert main(["extract", "--data-dir", str(tmp_path), "--source-dir", str(source),
                 "--run-id", RUN]) == 0
    capsys.readouterr()
    code, out, err = cli(capsys, "validate", "--data-dir", str(tmp_path), "--no-data-docs")
    assert code == 0, err
    summary = json.loads((tmp_path / "runs" / RUN / "validate" / "summary.json").read_text())
    assert summary["status"] == "passed"
    assert set(summary["registers"]) == {"civil", "electoral", "health", "national_id",
                                         "pension"}
    for entry in summary["registers"].values():
        assert entry["extracted"] == entry["passed"] + entry["quarantined"]
    shutil.rmtree(source)
