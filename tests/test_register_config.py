"""Loading config/registers/<register>.yaml: what a data steward sees when a file is wrong."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from pipelines.errors import ConfigError
from pipelines.registers import (
    FileSource,
    PostgresSource,
    load_register_config,
    load_register_configs,
)

GOOD = """\
description: Civil registry
source:
  kind: file
  path: "civil_*.csv"
  encoding: cp1251
  delimiter: ";"
columns:
  record_id: CERT_NO
  record_type: {column: ZAPIS_TIP, codes: {R: birth, S: death}}
  sex: {column: POL, codes: {"М": M, "Ж": F}, unknown: missing}
  birth_date: {column: DATA_ROZHD, format: "%d.%m.%Y"}
  death_date: {compose: {day: D_DAY, month: D_MON, year: D_YEAR}}
  is_deceased: {column: UMER, codes: {"1": true, "0": false}}
split:
  - column: FIO
    into: [surname, given_name, patronymic]
trust:
  birth_date: 1
"""


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / "registers" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def test_good_file_loads_into_typed_objects(tmp_path: Path) -> None:
    config = load_register_config(write(tmp_path, "civil", GOOD))
    assert config.name == "civil"
    assert isinstance(config.source, FileSource)
    assert (config.source.encoding, config.source.delimiter) == ("cp1251", ";")
    assert config.columns["record_id"].column == "CERT_NO"  # shorthand
    assert config.columns["sex"].codes == {"М": "M", "Ж": "F"}
    assert config.columns["death_date"].compose.month == "D_MON"
    assert config.split[0].into == ["surname", "given_name", "patronymic"]
    assert config.native_columns()["columns.death_date.compose.year"] == "D_YEAR"


def test_postgres_source_loads(tmp_path: Path) -> None:
    config = load_register_config(
        write(tmp_path, "pension", """\
            source: {kind: postgres, table: pension.recipients}
            columns: {pin: INN}
        """)
    )
    assert isinstance(config.source, PostgresSource)
    assert config.source.connection_env == "REGLINK_SOURCE_URL"


def test_numeric_codes_and_positional_columns_are_text(tmp_path: Path) -> None:
    config = load_register_config(
        write(tmp_path, "voters", """\
            source: {kind: file, path: v.csv, header: false}
            columns:
              sex: {column: 3, codes: {1: M, 2: F}}
        """)
    )
    assert config.columns["sex"].column == "3"
    assert config.columns["sex"].codes == {"1": "M", "2": "F"}


def test_load_register_configs_reads_every_yaml(tmp_path: Path) -> None:
    write(tmp_path, "civil", GOOD)
    write(tmp_path, "voters", "source: {kind: file, path: v.csv}\n")
    assert sorted(load_register_configs(tmp_path)) == ["civil", "voters"]


def test_load_register_configs_reports_every_bad_file_at_once(tmp_path: Path) -> None:
    write(tmp_path, "civil", GOOD.replace("delimiter", "delimeter"))
    write(tmp_path, "voters", "source: {kind: file, path: v.csv}\ncolumns: {brith_date: X}\n")
    with pytest.raises(ConfigError) as caught:
        load_register_configs(tmp_path)
    message = str(caught.value)
    assert "civil.yaml: source.delimeter: unknown key; did you mean 'delimiter'?" in message
    assert "voters.yaml: columns.brith_date: unknown canonical column" in message


def test_empty_config_folder_says_where_it_looked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"registers: no register configuration"):
        load_register_configs(tmp_path)


# Each case: what the steward wrote -> the key path and words the message must contain.
BAD_CASES = [
    pytest.param(
        GOOD.replace("description:", "descripton:"),
        "descripton", "unknown key; did you mean 'description'", id="unknown-top-level-key",
    ),
    pytest.param(
        GOOD.replace("delimiter", "delimeter"),
        "source.delimeter", "unknown key; did you mean 'delimiter'", id="unknown-source-key",
    ),
    pytest.param(
        GOOD.replace("unknown: missing", "unknwn: missing"),
        "columns.sex.unknwn", "unknown key", id="unknown-nested-key",
    ),
    pytest.param(
        GOOD.replace("  birth_date: {", "  brith_date: {"),
        "columns.brith_date", "unknown canonical column; expected one of record_id",
        id="unknown-canonical-column",
    ),
    pytest.param(
        GOOD.replace('"%d.%m.%Y"', '"%d.%q"'),
        "columns.birth_date.format", "%q is not a strptime directive", id="bad-directive",
    ),
    pytest.param(
        GOOD.replace('"%d.%m.%Y"', '"%d.%m"'),
        "columns.birth_date.format", "has no year", id="format-without-year",
    ),
    pytest.param(
        GOOD.replace('codes: {"М": M, "Ж": F}', "codes: [M, F]"),
        "columns.sex.codes", "expected a mapping of native code", id="codes-not-a-mapping",
    ),
    pytest.param(
        GOOD.replace('codes: {"1": true, "0": false}', "codes: {yes: true, no: false}"),
        "columns.is_deceased.codes", "quote the native code", id="yaml-boolean-code",
    ),
    pytest.param(
        GOOD.replace('codes: {"1": true, "0": false}', 'codes: {"1": dead}'),
        "columns.is_deceased.codes.1", "expected true, false or null", id="status-not-boolean",
    ),
    pytest.param(
        GOOD.replace('{"М": M, "Ж": F}', '{"М": male}'),
        "columns.sex.codes.М", "expected M, F or null", id="sex-code-not-M-F",
    ),
    pytest.param(
        GOOD.replace("format: \"%d.%m.%Y\"", "codes: {X: Y}"),
        "columns.birth_date.codes", "a date column cannot have codes", id="codes-on-date",
    ),
    pytest.param(
        GOOD.replace("record_id: CERT_NO", "record_id: {format: '%Y'}"),
        "columns.record_id", "exactly one of `column:` or `compose:`", id="no-column",
    ),
    pytest.param(
        GOOD.replace("kind: file", "kind: ftp"),
        "source.kind", "'ftp' is not a source kind; expected file or postgres",
        id="unknown-source-kind",
    ),
    pytest.param(
        GOOD.replace("encoding: cp1251", "encoding: cp-1252x"),
        "source.encoding", "unknown encoding", id="unknown-encoding",
    ),
    pytest.param(
        GOOD.replace("into: [surname, given_name, patronymic]", "into: [surname, givenname]"),
        "split[0].into[1]", "unknown canonical column", id="split-into-unknown",
    ),
    pytest.param(
        GOOD.replace("record_id: CERT_NO", "record_id: CERT_NO\n  surname: FAM"),
        "split[0].into", "surname is also mapped under columns.surname", id="split-and-column",
    ),
    pytest.param(
        GOOD.replace("birth_date: 1", "birth_date: 0"),
        "trust.birth_date", "greater than or equal to 1", id="trust-rank-zero",
    ),
    pytest.param(
        GOOD.replace("  record_id: CERT_NO", "  record_id: CERT_NO\n  record_id: X"),
        "line 9", "appears twice", id="duplicate-key",
    ),
    pytest.param(
        GOOD.replace("columns:", "columns: ["), "line", "not valid YAML", id="yaml-syntax",
    ),
]


@pytest.mark.parametrize(("text", "key", "words"), BAD_CASES)
def test_bad_file_names_file_and_key(tmp_path: Path, text: str, key: str, words: str) -> None:
    path = write(tmp_path, "civil", text)
    with pytest.raises(ConfigError) as caught:
        load_register_config(path)
    message = str(caught.value)
    assert f"{path}: {key}" in message, message
    assert words in message, message


def test_every_problem_of_a_file_is_reported_at_once(tmp_path: Path) -> None:
    text = GOOD.replace("delimiter", "delimeter").replace("  birth_date: {", "  brith_date: {")
    with pytest.raises(ConfigError) as caught:
        load_register_config(write(tmp_path, "civil", text))
    message = str(caught.value)
    assert "2 problems" in message
    assert "source.delimeter" in message and "columns.brith_date" in message


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"civil\.yaml: register configuration file not found"):
        load_register_config(tmp_path / "civil.yaml")


@pytest.mark.parametrize(
    ("path", "key_words"),
    [
        pytest.param("nothing_*.csv", "source.path: no file matches", id="glob-matches-nothing"),
        pytest.param("absent.csv", "source.path: no file matches", id="file-absent"),
        pytest.param(
            "${REGLINK_TEST_UNSET_VAR}/civil.csv",
            "source.path: environment variable ${REGLINK_TEST_UNSET_VAR} is not set",
            id="missing-env-var",
        ),
    ],
)
def test_source_path_problems_name_file_and_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, path: str, key_words: str
) -> None:
    monkeypatch.delenv("REGLINK_TEST_UNSET_VAR", raising=False)
    config_path = write(tmp_path, "civil", f"source: {{kind: file, path: '{path}'}}\n")
    config = load_register_config(config_path)
    with pytest.raises(ConfigError) as caught:
        config.resolve_files(tmp_path)
    assert f"{config_path}: {key_words}" in str(caught.value)


def test_env_var_in_path_is_expanded_and_glob_sorted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    exports = tmp_path / "exports"
    exports.mkdir()
    for name in ("civil_2021.csv", "civil_2020.csv", "other.csv"):
        (exports / name).write_text("A\n1\n")
    monkeypatch.setenv("CIVIL_EXPORTS", str(exports))
    config = load_register_config(
        write(tmp_path, "civil", "source: {kind: file, path: '${CIVIL_EXPORTS}/civil_*.csv'}\n")
    )
    files = config.resolve_files(tmp_path / "elsewhere")
    assert [f.name for f in files] == ["civil_2020.csv", "civil_2021.csv"]
