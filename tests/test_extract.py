"""Reading a register's extract through its configuration into canonical records."""

from __future__ import annotations

import csv
import io
import logging
import textwrap
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.cli import main
from pipelines.errors import ExtractError
from pipelines.extract import extract_register, iter_register, read_register
from pipelines.registers import CANONICAL_COLUMNS, RegisterConfig, load_register_config

CIVIL_YAML = """\
source: {kind: file, path: "civil_*.csv", encoding: cp1251, delimiter: ";"}
columns:
  record_id: CERT_NO
  record_type: {column: TIP, codes: {R: birth, S: death}}
  sex: {column: POL, codes: {"М": M, "Ж": F}}
  birth_date: {column: DATA_ROZHD, format: "%d.%m.%Y"}
  death_date: {compose: {day: D_DAY, month: D_MON, year: D_YEAR}}
  is_deceased: {column: UMER, codes: {"1": true, "0": false}}
  district: RAYON
split:
  - {column: FIO, into: [surname, given_name, patronymic]}
"""
CIVIL_HEADER = ["CERT_NO", "TIP", "FIO", "POL", "DATA_ROZHD", "D_DAY", "D_MON", "D_YEAR", "UMER",
                "RAYON"]


def csv_text(header: list[str], rows: list[list[str]], delimiter: str = ";") -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=delimiter, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def make_register(
    tmp_path: Path,
    yaml_text: str,
    files: dict[str, str | bytes],
    *,
    name: str = "civil",
    encoding: str = "cp1251",
) -> tuple[RegisterConfig, Path]:
    config_path = tmp_path / "config" / "registers" / f"{name}.yaml"
    config_path.parent.mkdir(parents=True, exist_ok=True)
    config_path.write_text(textwrap.dedent(yaml_text), encoding="utf-8")
    source_dir = tmp_path / "source"
    source_dir.mkdir(exist_ok=True)
    for file_name, content in files.items():
        data = content if isinstance(content, bytes) else content.encode(encoding)
        (source_dir / file_name).write_bytes(data)
    return load_register_config(config_path), source_dir


def civil_row(**values: str) -> list[str]:
    row = dict.fromkeys(CIVIL_HEADER, "")
    row.update({"CERT_NO": "C1", "TIP": "R", "FIO": "Каримов Алишер Олимович", "POL": "М",
                "DATA_ROZHD": "15.05.1960", "UMER": "0", "RAYON": "Вахдат"})
    row.update(values)
    return [row[c] for c in CIVIL_HEADER]


def read_civil(tmp_path: Path, rows: list[list[str]], **kwargs) -> pd.DataFrame:
    config, source = make_register(tmp_path, CIVIL_YAML, {"civil_1.csv": csv_text(CIVIL_HEADER,
                                                                                   rows)})
    return read_register(config, source, **kwargs)


def test_cp1251_extract_becomes_canonical_records_with_originals(tmp_path: Path) -> None:
    frame = read_civil(tmp_path, [civil_row(), civil_row(CERT_NO="C2", POL="Ж", UMER="1",
                                                         FIO="NA Зарина Олимовна")])
    first = frame.iloc[0]
    assert first["register"] == "civil"
    assert (first["record_id"], first["source_row"]) == ("C1", 1)
    assert first["source_file"] == "civil_1.csv"
    assert (first["surname"], first["given_name"], first["patronymic"]) == (
        "Каримов", "Алишер", "Олимович")
    assert (first["sex"], first["record_type"], first["district"]) == ("M", "birth", "Вахдат")
    assert first["birth_date"] == "1960-05-15"
    assert bool(first["is_deceased"]) is False
    assert frame.iloc[1]["surname"] == "NA"  # a surname "NA" is a name, not a missing value
    assert frame.iloc[1]["is_deceased"]
    # Originals, untouched, under src.<native column>.
    assert first["src.FIO"] == "Каримов Алишер Олимович"
    assert first["src.POL"] == "М" and first["src.DATA_ROZHD"] == "15.05.1960"


def test_columns_are_canonical_then_source_file_then_originals(tmp_path: Path) -> None:
    frame = read_civil(tmp_path, [civil_row()])
    assert list(frame.columns) == [
        *CANONICAL_COLUMNS, "source_file", *(f"src.{c}" for c in CIVIL_HEADER)]
    assert frame["surname"].dtype == pd.StringDtype()
    assert frame["phone"].isna().all()  # a column the register lacks: present, missing
    assert str(frame["is_deceased"].dtype) == "boolean"
    assert frame["voter_active"].isna().all()
    assert frame["source_row"].dtype == "int64"


@pytest.mark.parametrize(
    ("full_name", "surname", "given", "patronymic"),
    [
        ("Каримов Алишер Олимович", "Каримов", "Алишер", "Олимович"),
        ("Каримов Мухаммад Али Олимович", "Каримов", "Мухаммад Али", "Олимович"),
        ("  Каримова   Зарина\tОлимовна ", "Каримова", "Зарина", "Олимовна"),
        ("Каримов Алишер", "Каримов", "Алишер", None),
        ("Каримов", "Каримов", None, None),
        ("Каримов Алишер О.", "Каримов", "Алишер", "О."),
        ("", None, None, None),
    ],
)
def test_full_name_split(tmp_path: Path, full_name: str, surname, given, patronymic) -> None:
    row = read_civil(tmp_path, [civil_row(FIO=full_name)]).iloc[0]
    assert [None if pd.isna(v) else v for v in row[["surname", "given_name", "patronymic"]]] == [
        surname, given, patronymic]
    assert pd.isna(row["src.FIO"]) if full_name == "" else row["src.FIO"] == full_name


def test_two_part_split_keeps_the_rest_together(tmp_path: Path) -> None:
    config, source = make_register(
        tmp_path,
        """\
        source: {kind: file, path: v.csv}
        split: [{column: NAME, into: [surname, given_name]}]
        """,
        {"v.csv": csv_text(["NAME"], [["Karimov Muhammad Ali"], ["Karimov"]], ",")},
        encoding="utf-8",
    )
    frame = read_register(config, source)
    assert frame["given_name"].tolist() == ["Muhammad Ali", pd.NA]


@pytest.mark.parametrize(
    ("native", "iso", "quality"),
    [
        ("15.05.1960", "1960-05-15", "exact"),
        ("1.5.1960", "1960-05-01", "exact"),
        ("01.01.1960", "1960-01-01", "placeholder"),
        ("00.05.1960", "1960-05", "partial"),
        ("00.00.1960", "1960", "partial"),
        ("31.02.1960", None, "missing"),
        ("1960", None, "missing"),
        ("", None, "missing"),
    ],
)
def test_birth_dates(tmp_path: Path, native: str, iso: str | None, quality: str) -> None:
    row = read_civil(tmp_path, [civil_row(DATA_ROZHD=native)]).iloc[0]
    assert (None if pd.isna(row["birth_date"]) else row["birth_date"]) == iso
    assert row["birth_date_quality"] == quality
    if native:
        assert row["src.DATA_ROZHD"] == native  # the original stays for the steward


@pytest.mark.parametrize(
    ("day", "month", "year", "iso"),
    [
        ("15", "5", "1960", "1960-05-15"),
        ("0", "5", "1960", "1960-05"),
        ("", "", "1960", "1960"),
        ("31", "2", "1960", None),
        ("x", "5", "1960", None),
        ("", "", "", None),
    ],
)
def test_composed_death_date(tmp_path: Path, day: str, month: str, year: str, iso) -> None:
    row = read_civil(tmp_path, [civil_row(D_DAY=day, D_MON=month, D_YEAR=year)]).iloc[0]
    assert (None if pd.isna(row["death_date"]) else row["death_date"]) == iso


def test_unparseable_dates_are_counted_in_a_warning_without_values(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rows = [civil_row(DATA_ROZHD="31.02.1960"), civil_row(DATA_ROZHD="soon"), civil_row()]
    with caplog.at_level(logging.WARNING, logger="pipelines.extract"):
        frame = read_civil(tmp_path, rows)
    assert frame["birth_date"].isna().sum() == 2
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("2 rows with an unparseable birth_date" in w for w in warnings), warnings
    assert not any("soon" in w or "31.02" in w for w in warnings)


@pytest.mark.parametrize(
    ("unknown", "native", "expected"),
    [("missing", "М", "M"), ("missing", "Ж", "F"), ("missing", "?", None), ("keep", "?", "?")],
)
def test_code_lists(tmp_path: Path, unknown: str, native: str, expected: str | None) -> None:
    config, source = make_register(
        tmp_path,
        f"""\
        source: {{kind: file, path: p.csv}}
        columns:
          sex: {{column: POL, codes: {{"М": M, "Ж": F}}, unknown: {unknown}}}
          pension_active: {{column: ST, codes: {{A: true, S: false, X: null}}}}
          voter_active: AKT
        """,
        {"p.csv": csv_text(["POL", "ST", "AKT"], [[native, "A", "Yes"], [native, "X", "0"],
                                                  [native, "Q", "maybe"]], ",")},
        encoding="utf-8",
    )
    frame = read_register(config, source)
    assert (None if pd.isna(frame.loc[0, "sex"]) else frame.loc[0, "sex"]) == expected
    assert frame["pension_active"].tolist() == [True, pd.NA, pd.NA]
    # A status column without codes understands the usual words, in any case.
    assert frame["voter_active"].tolist() == [True, False, pd.NA]


def test_awkward_values_pass_through_unchanged(tmp_path: Path) -> None:
    long_value = "Ш" * 10_000
    awkward = ["=cmd|' /C calc'!A0", "<script>alert(1)</script>", long_value, 'a;b "c"\nd']
    rows = [civil_row(CERT_NO=f"C{i}", RAYON=value) for i, value in enumerate(awkward)]
    config, source = make_register(tmp_path, CIVIL_YAML,
                                   {"civil_1.csv": csv_text(CIVIL_HEADER, rows)})
    frame = read_register(config, source)
    assert frame["district"].tolist() == awkward
    assert frame["src.RAYON"].tolist() == awkward
    out = tmp_path / "civil.parquet"
    extract_register(config, source, out)
    assert pq.read_table(out).column("district").to_pylist() == awkward


def test_several_files_keep_their_own_row_numbers(tmp_path: Path) -> None:
    config, source = make_register(tmp_path, CIVIL_YAML, {
        "civil_2021.csv": csv_text(CIVIL_HEADER, [civil_row(CERT_NO="B1")]),
        "civil_2020.csv": csv_text(CIVIL_HEADER, [civil_row(CERT_NO="A1"),
                                                  civil_row(CERT_NO="A2")]),
    })
    frame = read_register(config, source, chunksize=1)
    assert frame["record_id"].tolist() == ["A1", "A2", "B1"]
    assert frame["source_row"].tolist() == [1, 2, 1]
    assert frame["source_file"].tolist() == ["civil_2020.csv", "civil_2020.csv", "civil_2021.csv"]


def test_chunks_give_the_same_records_as_one_read(tmp_path: Path) -> None:
    rows = [civil_row(CERT_NO=f"C{i}", DATA_ROZHD=f"{i % 28:02d}.0{i % 9 + 1}.1970")
            for i in range(25)]
    config, source = make_register(tmp_path, CIVIL_YAML,
                                   {"civil_1.csv": csv_text(CIVIL_HEADER, rows)})
    whole = read_register(config, source)
    chunks = list(iter_register(config, source, chunksize=4))
    assert [len(c) for c in chunks] == [4, 4, 4, 4, 4, 4, 1]
    pd.testing.assert_frame_equal(pd.concat(chunks, ignore_index=True), whole)
    assert whole["source_row"].tolist() == list(range(1, 26))


def test_missing_native_column_names_config_key_and_columns_there(tmp_path: Path) -> None:
    header = [c for c in CIVIL_HEADER if c != "DATA_ROZHD"] + ["DATA_RZH"]
    config, source = make_register(tmp_path, CIVIL_YAML,
                                   {"civil_1.csv": csv_text(header, [])})
    with pytest.raises(ExtractError) as caught:
        read_register(config, source)
    message = str(caught.value)
    assert str(config.path) in message
    assert "columns.birth_date.column: column 'DATA_ROZHD' is not in" in message
    assert "civil_1.csv" in message and "DATA_RZH" in message


def test_undecodable_bytes_name_file_line_and_encoding(tmp_path: Path) -> None:
    utf8_config = CIVIL_YAML.replace("encoding: cp1251", "encoding: utf-8")
    ascii_row = civil_row(FIO="Ivanov Ivan", POL="M", RAYON="Vahdat")
    content = csv_text(CIVIL_HEADER, [ascii_row, civil_row()])
    config, source = make_register(tmp_path, utf8_config, {"civil_1.csv": content})
    with pytest.raises(ExtractError) as caught:
        read_register(config, source)
    message = str(caught.value)
    assert "civil_1.csv: line 3: cannot be decoded as utf-8" in message
    assert "source.encoding" in message and str(config.path) in message


def test_header_only_file_gives_zero_records(tmp_path: Path) -> None:
    config, source = make_register(tmp_path, CIVIL_YAML,
                                   {"civil_1.csv": csv_text(CIVIL_HEADER, [])})
    frame = read_register(config, source)
    assert len(frame) == 0
    assert list(frame.columns)[: len(CANONICAL_COLUMNS)] == list(CANONICAL_COLUMNS)
    out = tmp_path / "civil.parquet"
    assert extract_register(config, source, out).rows == 0
    assert pq.read_table(out).num_rows == 0


def test_identifiers_are_written_without_a_dictionary_and_repeated_values_with_one(
    tmp_path: Path,
) -> None:
    rows = [civil_row(CERT_NO=f"C{i:05d}", RAYON=("Вахдат", "Рудаки")[i % 2]) for i in range(300)]
    config, source = make_register(tmp_path, CIVIL_YAML,
                                    {"civil_1.csv": csv_text(CIVIL_HEADER, rows)})
    out = tmp_path / "civil.parquet"
    extract_register(config, source, out, chunksize=100)
    meta = pq.ParquetFile(out).metadata
    encodings = {meta.row_group(0).column(i).path_in_schema: meta.row_group(0).column(i).encodings
                 for i in range(meta.num_columns)}
    for plain in ("record_id", "source_row", "src.CERT_NO"):
        assert "RLE_DICTIONARY" not in encodings[plain], plain
    for repeated in ("district", "sex", "src.RAYON"):
        assert "RLE_DICTIONARY" in encodings[repeated], repeated
    assert meta.num_row_groups == 3  # every chunk, whatever the first one decided
    assert pq.read_table(out).column("record_id").to_pylist() == [f"C{i:05d}" for i in range(300)]


def test_zero_byte_file_is_an_error(tmp_path: Path) -> None:
    config, source = make_register(tmp_path, CIVIL_YAML, {"civil_1.csv": b""})
    with pytest.raises(ExtractError, match=r"civil_1\.csv: the file is empty \(0 bytes\)"):
        read_register(config, source)


def test_headerless_csv_uses_column_positions(tmp_path: Path) -> None:
    config, source = make_register(
        tmp_path,
        """\
        source: {kind: file, path: v.txt, header: false, delimiter: "|"}
        columns: {record_id: 1, pin: 3}
        """,
        {"v.txt": "V1|x|0012345678\nV2|y|0099\n"},
        encoding="utf-8",
    )
    frame = read_register(config, source)
    assert frame["record_id"].tolist() == ["V1", "V2"]
    assert frame["pin"].tolist() == ["0012345678", "0099"]  # leading zeros kept: text
    assert "src.2" in frame.columns


def test_parquet_source(tmp_path: Path) -> None:
    table = pa.table({"ID": ["P1", "P2"], "DOB": pa.array([pd.Timestamp("1950-03-04").date(),
                                                          None], pa.date32())})
    source = tmp_path / "source"
    source.mkdir()
    pq.write_table(table, source / "pension.parquet")
    config, _ = make_register(
        tmp_path,
        "source: {kind: file, path: pension.parquet}\ncolumns: {record_id: ID, birth_date: DOB}\n",
        {}, name="pension",
    )
    frame = read_register(config, source)
    assert frame["birth_date"].tolist() == ["1950-03-04", pd.NA]
    assert frame["register"].tolist() == ["pension", "pension"]


def test_reglink_extract_writes_parquet_and_prints_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_register(tmp_path, CIVIL_YAML,
                  {"civil_1.csv": csv_text(CIVIL_HEADER, [civil_row(), civil_row(CERT_NO="C2")])})
    make_register(tmp_path, "source: {kind: file, path: v.csv}\ncolumns: {record_id: ID}\n",
                  {"v.csv": "ID\nV1\n"}, name="voters", encoding="utf-8")
    data_dir = tmp_path / "data"
    status = main(["extract", "--config", str(tmp_path / "config"), "--data-dir", str(data_dir),
                   "--source-dir", str(tmp_path / "source"), "--run-id", "20261127T120000Z"])
    assert status == 0
    out_dir = data_dir / "runs" / "20261127T120000Z" / "extract"
    civil = pq.read_table(out_dir / "civil.parquet").to_pandas()
    assert civil["record_id"].tolist() == ["C1", "C2"]
    assert pq.read_table(out_dir / "voters.parquet").num_rows == 1
    output = capsys.readouterr().out
    assert "register" in output and "rows" in output and "seconds" in output
    assert any(line.split()[:2] == ["civil", "2"] for line in output.splitlines())
    assert str(out_dir / "voters.parquet") in output


def test_reglink_extract_reports_a_users_mistake_without_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_register(tmp_path, CIVIL_YAML, {"civil_1.csv": b""})
    status = main(["extract", "--config", str(tmp_path / "config"), "--data-dir",
                   str(tmp_path / "data"), "--source-dir", str(tmp_path / "source")])
    err = capsys.readouterr().err
    assert status == 2
    assert "reglink extract: error:" in err and "0 bytes" in err
    assert "Traceback" not in err
    assert not list((tmp_path / "data").rglob("*.parquet*"))  # no half-written output


@pytest.mark.postgres
def test_postgres_table_source(
    tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import psycopg2

    plain_url = pg_url.replace("postgresql+psycopg2://", "postgresql://")
    with psycopg2.connect(plain_url) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE pension_src (inn text, fio text, dob date, active boolean)")
        cur.execute(
            "INSERT INTO pension_src VALUES ('001', 'Каримов Алишер Олимович', '1950-03-04', true),"
            " ('002', 'Саидова Зарина', NULL, false)"
        )
    monkeypatch.setenv("PENSION_DB", pg_url)
    config, source = make_register(
        tmp_path,
        """\
        source: {kind: postgres, table: pension_src, connection_env: PENSION_DB}
        columns: {record_id: inn, birth_date: dob, pension_active: active}
        split: [{column: fio, into: [surname, given_name, patronymic]}]
        """,
        {}, name="pension",
    )
    frame = read_register(config, source, chunksize=1).sort_values("record_id")
    assert frame["birth_date"].tolist() == ["1950-03-04", pd.NA]
    assert frame["pension_active"].tolist() == [True, False]
    assert frame["given_name"].tolist() == ["Алишер", "Зарина"]
    assert frame["source_file"].tolist() == ["pension_src", "pension_src"]
