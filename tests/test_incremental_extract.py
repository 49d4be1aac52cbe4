"""Incremental extraction: only rows changed since the last published run are read.

What a data steward or an operator checks: the register file accepts ``incremental:``;
the second extract reads only the changed rows (from PostgreSQL, filtered in SQL; from a
file, filtered after reading) yet holds the whole register; a run that fails validation
does not move the watermark, so the next run reads the same rows again; and a whole
nightly run with one register served incrementally from PostgreSQL publishes the right
index.
"""

from __future__ import annotations

import csv
import json
import shutil
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from pipelines.cli import main
from pipelines.errors import ConfigError, ExtractError, ValidationError
from pipelines.extract import read_register
from pipelines.incremental_source import extract_for_run, read_manifest, read_watermark
from pipelines.registers import RegisterConfig, load_register_config
from pipelines.store import make_engine, upgrade
from pipelines.store import repository as repo

ROOT = Path(__file__).resolve().parents[1]


def write_config(folder: Path, name: str, text: str) -> Path:
    path = folder / "registers" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def mpi_engine(tmp_path: Path) -> sa.Engine:
    engine = make_engine(f"sqlite:///{tmp_path / 'mpi.sqlite'}")
    upgrade(engine)
    return engine


def publish(engine: sa.Engine, run_id: str, register: str, extract: Path) -> str:
    """What publish does for the watermark: the newest source_updated_at, in its run."""
    value = str(pd.read_parquet(extract)["source_updated_at"].dropna().max())
    with engine.begin() as conn:
        repo.start_run(conn, run_id, seed=1, config_hash="test")
        repo.finish_run(conn, run_id, "published")
        repo.set_watermark(conn, register, value, run_id)
    return value


def extract(config: RegisterConfig, data: Path, run_id: str, engine: sa.Engine,
            source_dir: Path | None = None, **kwargs) -> tuple[pd.DataFrame, dict]:
    out = data / "runs" / run_id / "extract" / f"{config.name}.parquet"
    extract_for_run(config, out, source_dir=source_dir or data, engine=engine, **kwargs)
    return pd.read_parquet(out).set_index("record_id"), read_manifest(out)


# ------------------------------------------------------------------------------- config


def test_watermark_column_becomes_source_updated_at(tmp_path: Path) -> None:
    config = load_register_config(write_config(tmp_path, "pension", """\
        source:
          kind: postgres
          table: pension.recipients
          connection_env: PENSION_DB
          incremental: {watermark_column: changed_at}
        columns: {record_id: id}
        """))
    assert config.incremental.watermark_column == "changed_at"
    assert config.columns["source_updated_at"].column == "changed_at"
    assert config.native_columns()["columns.source_updated_at.column"] == "changed_at"


@pytest.mark.parametrize(
    ("source", "columns", "message"),
    [
        pytest.param("{kind: file, path: a.csv, incremental: {watermark_colum: UPD}}", "",
                     "source.incremental.watermark_colum: unknown key; did you mean "
                     "'watermark_column'?", id="misspelt key"),
        pytest.param("{kind: file, path: a.csv, incremental: {watermark_column: UPD}}",
                     "source_updated_at: CHANGED",
                     "source.incremental.watermark_column: 'UPD' is not the column mapped "
                     "to source_updated_at ('CHANGED')", id="another column mapped"),
        pytest.param("{kind: postgres, table: t, incremental: {watermark_column: upd}}",
                     "source_updated_at: {column: upd, format: '%d.%m.%Y'}",
                     "columns.source_updated_at.format: a PostgreSQL watermark column is "
                     "compared in SQL", id="text timestamps in PostgreSQL"),
        pytest.param("{kind: file, path: a.csv, incremental: UPD}", "",
                     "source.incremental", id="not a mapping"),
    ],
)
def test_a_wrong_incremental_block_is_named(tmp_path: Path, source: str, columns: str,
                                            message: str) -> None:
    text = f"source: {source}\ncolumns: {{record_id: ID{', ' + columns if columns else ''}}}\n"
    with pytest.raises(ConfigError, match="pension.yaml") as error:
        load_register_config(write_config(tmp_path, "pension", text))
    assert message in str(error.value)


# --------------------------------------------------------------------------------- files

HEADER = ["ID", "FAMILIYA", "UPDATED"]


def write_csv(path: Path, rows: list[list[str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle, delimiter=";").writerows([HEADER, *rows])


FILE_REGISTER = """\
    source:
      kind: file
      path: health.csv
      delimiter: ";"
      incremental: {watermark_column: UPDATED}
    columns:
      record_id: ID
      surname: FAMILIYA
      source_updated_at: {column: UPDATED, format: "%d.%m.%Y %H:%M"}
    """


@pytest.mark.parametrize(
    ("updated", "read"),
    [
        pytest.param("01.01.2026 11:59", False, id="before the watermark"),
        pytest.param("01.01.2026 12:00", False, id="at the watermark"),
        pytest.param("01.01.2026 12:01", True, id="after the watermark"),
        pytest.param("", True, id="no change time: cannot be shown unchanged"),
    ],
)
def test_a_file_row_is_read_when_newer_than_the_watermark(tmp_path: Path, updated: str,
                                                          read: bool) -> None:
    config = load_register_config(write_config(tmp_path, "health", FILE_REGISTER))
    write_csv(tmp_path / "health.csv", [["H1", "KARIMOV", updated]])
    frame = read_register(config, tmp_path, since="2026-01-01T12:00:00")
    assert frame["record_id"].tolist() == (["H1"] if read else [])


def test_file_timestamps_that_do_not_sort_stop_the_extract(tmp_path: Path) -> None:
    text = FILE_REGISTER.replace('{column: UPDATED, format: "%d.%m.%Y %H:%M"}', "UPDATED")
    config = load_register_config(write_config(tmp_path, "health", text))
    write_csv(tmp_path / "health.csv", [["H1", "KARIMOV", "02.01.2026 10:00"]])
    with pytest.raises(ExtractError, match=r"not an ISO timestamp.*source_updated_at\.format"):
        read_register(config, tmp_path, since="2026-01-01T12:00:00")


def test_file_source_second_extract_merges_changed_rows(tmp_path: Path) -> None:
    config = load_register_config(write_config(tmp_path, "health", FILE_REGISTER))
    engine = mpi_engine(tmp_path)
    source = tmp_path / "health.csv"
    write_csv(source, [["H1", "KARIMOV", "01.01.2026 10:00"],
                       ["H2", "SAIDOVA", "01.01.2026 11:00"],
                       ["H3", "NAZAROV", "01.01.2026 12:00"]])
    first, manifest = extract(config, tmp_path, "r1", engine)
    assert (manifest["mode"], manifest["rows"]) == ("full", 3)
    assert publish(engine, "r1", "health", tmp_path / "runs/r1/extract/health.parquet") == (
        "2026-01-01T12:00:00")

    write_csv(source, [["H1", "KARIMOV", "01.01.2026 10:00"],
                       ["H2", "SAIDZODA", "02.01.2026 09:00"],   # corrected surname
                       ["H3", "NAZAROV", "01.01.2026 12:00"],
                       ["H4", "RAHIMOVA", "02.01.2026 09:30"]])  # a new patient card
    second, manifest = extract(config, tmp_path, "r2", engine)
    assert manifest["mode"] == "incremental"
    assert manifest["since"] == "2026-01-01T12:00:00"
    assert (manifest["rows"], manifest["replaced"], manifest["carried"], manifest["total"]) == (
        2, 1, 2, 4)
    assert second["surname"].sort_index().to_dict() == {
        "H1": "KARIMOV", "H2": "SAIDZODA", "H3": "NAZAROV", "H4": "RAHIMOVA"}
    # Untouched rows are carried as they were read, originals included.
    assert second.loc["H1"].equals(first.loc["H1"])


def test_a_changed_mapping_makes_the_next_extract_full(tmp_path: Path) -> None:
    path = write_config(tmp_path, "health", FILE_REGISTER)
    engine = mpi_engine(tmp_path)
    write_csv(tmp_path / "health.csv", [["H1", "KARIMOV", "01.01.2026 10:00"]])
    extract(load_register_config(path), tmp_path, "r1", engine)
    publish(engine, "r1", "health", tmp_path / "runs/r1/extract/health.parquet")
    path.write_text(path.read_text().replace("surname: FAMILIYA", "given_name: FAMILIYA"))
    frame, manifest = extract(load_register_config(path), tmp_path, "r2", engine)
    assert manifest["mode"] == "full"
    assert "mapping changed" in manifest["reason"]
    assert frame.loc["H1", "given_name"] == "KARIMOV"


# ---------------------------------------------------------------------------- PostgreSQL

PG_REGISTER = """\
    source:
      kind: postgres
      {what}
      connection_env: PENSION_TEST_DB
      incremental: {{watermark_column: updated_at}}
    columns:
      record_id: pens_no
      surname: familiya
      pension_active: {{column: status, codes: {{A: true, S: false}}}}
    """


def _pg(pg_url: str):
    import psycopg2

    conn = psycopg2.connect(pg_url.replace("postgresql+psycopg2://", "postgresql://"))
    conn.autocommit = True
    return conn


@pytest.mark.postgres
@pytest.mark.parametrize(
    "what",
    [
        pytest.param("table: {table}", id="table"),
        # A query with a literal % and a trailing ';' is wrapped in a parameterised filter.
        pytest.param('query: "SELECT * FROM {table} WHERE familiya LIKE \'%\' ORDER BY '
                     'pens_no;"', id="query"),
    ],
)
def test_postgres_second_extract_reads_only_changed_rows(
    tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch, what: str
) -> None:
    table = f"pension_{tmp_path.name[-12:].replace('-', '_').lower()}"
    table = "".join(c for c in table if c.isalnum() or c == "_")
    with _pg(pg_url) as conn, conn.cursor() as cur:
        cur.execute(f"CREATE TABLE {table} (pens_no text PRIMARY KEY, familiya text, "
                    "status text, updated_at timestamp)")
        cur.execute(f"INSERT INTO {table} VALUES "
                    "('P1', 'KARIMOV', 'A', '2026-01-01 10:00'),"
                    "('P2', 'SAIDOVA', 'A', '2026-01-01 11:00'),"
                    "('P3', 'NAZAROV', 'A', '2026-01-01 12:00:00.250')")
    monkeypatch.setenv("PENSION_TEST_DB", pg_url)
    text = PG_REGISTER.format(what=what.format(table=table))
    config = load_register_config(write_config(tmp_path, "pension", text))
    engine = mpi_engine(tmp_path)

    first, manifest = extract(config, tmp_path, "r1", engine)
    assert (manifest["mode"], manifest["total"]) == ("full", 3)
    assert publish(engine, "r1", "pension", tmp_path / "runs/r1/extract/pension.parquet") == (
        "2026-01-01T12:00:00.250000")

    with _pg(pg_url) as conn, conn.cursor() as cur:
        cur.execute(f"UPDATE {table} SET status = 'S', updated_at = '2026-01-02 08:00' "
                    "WHERE pens_no = 'P2'")
        cur.execute(f"INSERT INTO {table} VALUES ('P4', 'RAHIMOVA', 'A', NULL)")
        cur.execute(f"DELETE FROM {table} WHERE pens_no = 'P1'")
    second, manifest = extract(config, tmp_path, "r2", engine)
    assert manifest["mode"] == "incremental"
    # Read from the source: the changed row and the row without a change time only.
    assert (manifest["rows"], manifest["carried"], manifest["total"]) == (2, 2, 4)
    assert second["pension_active"].sort_index().to_dict() == {
        "P1": True, "P2": False, "P3": True, "P4": True}
    assert second.loc["P3"].equals(first.loc["P3"])

    # A deletion is only seen by a full extract.
    full, manifest = extract(config, tmp_path, "r3", engine, full_extract=True)
    assert manifest["mode"] == "full"
    assert sorted(full.index) == ["P2", "P3", "P4"]


# ------------------------------------------------------------------ a whole nightly run


PENSION_FROM_POSTGRES = """\
    description: Pension register, served incrementally from PostgreSQL (test)
    source:
      kind: postgres
      table: pension_nightly
      connection_env: PENSION_NIGHTLY_DB
      incremental: {watermark_column: updated_at}
    """

CHANGED = 3  # pension rows updated at the source before the second night


def _index(ctx) -> pd.DataFrame:
    from pipelines.steps import engine_for

    with engine_for(ctx).connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT register, record_id, mpi_id, linked_run FROM person_records")).all()
    return pd.DataFrame(rows, columns=["register", "record_id", "mpi_id", "linked_run"])


def _watermark(ctx) -> str | None:
    from pipelines.steps import engine_for

    wm = read_watermark(engine_for(ctx), "pension")
    return wm.value if wm else None


@pytest.fixture(scope="module")
def nightly(tmp_path_factory, pg_url: str) -> dict:
    """Night 1 published; night 2 fails validation; night 3 publishes the same changes."""
    from pipelines.steps import RunContext, run_all

    base = tmp_path_factory.mktemp("nightly")
    source = base / "source"
    assert main(["synth", "--persons", "800", "--seed", "3", "--out", str(source)]) == 0
    config = base / "config"
    shutil.copytree(ROOT / "config", config)
    pension = (config / "registers" / "pension.yaml").read_text()
    head, rest = pension.split("source:", 1)
    rest = rest[rest.index("columns:"):]
    (config / "registers" / "pension.yaml").write_text(
        textwrap.dedent(PENSION_FROM_POSTGRES) + rest)

    header = (source / "pension.csv").read_text().splitlines()[0].split(";")
    columns = ", ".join(f'"{c}" text' for c in header)
    with _pg(pg_url) as conn, conn.cursor() as cur:
        cur.execute("DROP TABLE IF EXISTS pension_nightly")
        cur.execute(f"CREATE TABLE pension_nightly ({columns})")
        with (source / "pension.csv").open(encoding="utf-8") as handle:
            cur.copy_expert("COPY pension_nightly FROM STDIN WITH (FORMAT csv, DELIMITER ';', "
                            "HEADER true)", handle)
        cur.execute("ALTER TABLE pension_nightly ADD COLUMN updated_at timestamp NOT NULL "
                    "DEFAULT '2026-01-01 00:00'")
    (source / "pension.csv").unlink()  # the register now lives in the database only

    out: dict = {"base": base}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PENSION_NIGHTLY_DB", pg_url)

        def context(run_id: str) -> RunContext:
            return RunContext(run_id=run_id, config_dir=config, data_dir=base / "data",
                              source_dir=source, data_docs=False)

        r1 = context("20260101T000000Z")
        run_all(r1)
        out["index1"] = _index(r1)
        out["records1"] = pd.read_parquet(r1.run_dir / "standardise" / "records.parquet")
        out["watermark1"] = _watermark(r1)

        # At the source: three pensions stop, one is granted to a person already known.
        with _pg(pg_url) as conn, conn.cursor() as cur:
            cur.execute('SELECT "PENS_NO" FROM pension_nightly WHERE "STATUS" = \'A\' '
                        'ORDER BY "PENS_NO" LIMIT %s', (CHANGED,))
            out["changed"] = sorted(r[0] for r in cur.fetchall())
            cur.execute('UPDATE pension_nightly SET "STATUS" = \'S\', updated_at = '
                        '\'2026-01-02 03:04:05\' WHERE "PENS_NO" = ANY(%s)', (out["changed"],))
            cur.execute('SELECT "PENS_NO" FROM pension_nightly WHERE "STATUS" = \'S\' AND '
                        'updated_at < \'2026-01-02\' ORDER BY "PENS_NO" LIMIT 1')
            out["twin_of"] = cur.fetchone()[0]
            cur.execute('INSERT INTO pension_nightly SELECT \'PN-NEW000001\', "PIN", '
                        '"FAMILIYA", "ISM", "NASAB", "JINS", "DR_DEN", "DR_MES", "DR_GOD", '
                        '"NOGIRONI", "SANAI_TAYINOT", \'A\', "VILOYAT", "NOHIYA", '
                        '\'2026-01-02 03:04:05\' FROM pension_nightly WHERE "PENS_NO" = %s',
                        (out["twin_of"],))

        # Night 2: the civil registry export is cut short; the circuit breaker stops the run.
        civil = source / "civil.csv"
        saved = civil.read_bytes()
        lines = saved.splitlines(keepends=True)  # cp1251: cut bytes, not text
        civil.write_bytes(b"".join(lines[: len(lines) // 2]))
        r2 = context("20260102T000000Z")
        with pytest.raises(ValidationError, match=r"failed: civil\).*50% fewer"):
            run_all(r2)
        out["r2_manifest"] = read_manifest(r2.run_dir / "extract" / "pension.parquet")
        out["watermark2"] = _watermark(r2)
        civil.write_bytes(saved)

        r3 = context("20260103T000000Z")
        out["r3_summary"] = run_all(r3)
        out["r3_manifest"] = read_manifest(r3.run_dir / "extract" / "pension.parquet")
        out["index3"] = _index(r3)
        out["watermark3"] = _watermark(r3)
        out["records3"] = pd.read_parquet(r3.run_dir / "standardise" / "records.parquet")
        out["link3"] = json.loads((r3.run_dir / "link" / "report.json").read_text())
        out["runs"] = (r1.run_id, r2.run_id, r3.run_id)
    return out


@pytest.mark.postgres
def test_a_failed_run_does_not_move_the_watermark(nightly: dict) -> None:
    assert nightly["watermark1"] == "2026-01-01T00:00:00"
    assert nightly["watermark2"] == nightly["watermark1"]
    assert nightly["r2_manifest"]["mode"] == "incremental"
    assert nightly["r2_manifest"]["rows"] == CHANGED + 1


@pytest.mark.postgres
def test_the_next_run_reads_the_same_changes_again_and_publishes(nightly: dict) -> None:
    r2, r3 = nightly["r2_manifest"], nightly["r3_manifest"]
    assert (r3["mode"], r3["since"], r3["rows"]) == ("incremental", r2["since"], r2["rows"])
    assert r3["base_run"] == nightly["runs"][0]
    assert nightly["watermark3"] == "2026-01-02T03:04:05"


@pytest.mark.postgres
def test_the_published_index_holds_changed_new_and_untouched_records(nightly: dict) -> None:
    r1 = nightly["runs"][0]
    before = nightly["index1"].query("register == 'pension'").set_index("record_id")
    after = nightly["index3"].query("register == 'pension'").set_index("record_id")
    assert set(after.index) == set(before.index) | {"PN-NEW000001"}
    assert len(nightly["index3"]) == len(nightly["index1"]) + 1
    changed = nightly["changed"]
    # Night 3 linked only what changed; the changed records stay with the same persons.
    assert nightly["link3"]["mode"] == "incremental"
    assert (after.loc[changed, "mpi_id"] == before.loc[changed, "mpi_id"]).all()
    # The new pension record joins the person of the record it was copied from.
    assert after.loc["PN-NEW000001", "mpi_id"] == after.loc[nightly["twin_of"], "mpi_id"]
    untouched = before.index.difference(changed)
    assert (after.loc[untouched, "mpi_id"] == before.loc[untouched, "mpi_id"]).all()
    assert (after.loc[untouched, "linked_run"] == r1).all()
    records = nightly["records3"].query("register == 'pension'").set_index("record_id")
    assert not records.loc[changed, "pension_active"].any()
    # Carried records reach linking exactly as in night 1: only the changed ones differ.
    old = nightly["records1"].query("register == 'pension'").set_index("record_id")
    differs = records.loc[old.index, "content_hash"] != old["content_hash"]
    assert sorted(old.index[differs]) == changed


@pytest.mark.postgres
def test_the_run_summary_says_the_extract_was_incremental(nightly: dict) -> None:
    steps = nightly["r3_summary"].steps
    manifest = nightly["r3_manifest"]
    assert steps["extract"]["pension"]["rows"] == manifest["total"]
    assert manifest["total"] == manifest["carried"] + manifest["rows"]
    assert json.dumps(manifest)  # small and JSON-able
