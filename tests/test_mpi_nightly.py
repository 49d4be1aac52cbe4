"""The nightly run and the MPI on a small country, on SQLite and on PostgreSQL.

One scenario per backend, run once (module fixture) and checked by the tests below:

1. run r1 (first run), then r1 again: the rerun changes nothing;
2. run r2 over a nightly delta (names corrected, records added and deleted): IDs kept,
   events written, the incremental link agrees with a full relink;
3. a steward splits one person (cannot-link) and merges two (must-link); run r3 applies it;
4. run r4 relinks everything with a newly trained model: the decisions still hold;
5. run r5 is killed (SIGKILL) in the middle of its publish transaction: the index is r4's;
   publishing r5 again then works.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from pipelines.cli import main
from pipelines.link import cluster_run, link_records, standardise_run
from pipelines.mpi.decisions import record_decision
from pipelines.mpi.incremental import crosswalk_agreement
from pipelines.steps import (
    RunContext,
    assign_ids_step,
    cluster_step,
    configured_registers,
    engine_for,
    extract_register_step,
    link_step,
    run_all,
    standardise_step,
    validation_gate_step,
)
from pipelines.steps import _validate as validate_all
from pipelines.store import schema
from tests.conftest import synthetic_country

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "config"


@pytest.fixture(scope="module")
def country(tmp_path_factory) -> dict[str, Path]:
    """A synthetic country of 1,500 persons and the same country one night later."""
    return synthetic_country(tmp_path_factory.mktemp("country"), 1_500, 11, share=0.02,
                             delta_seed=5)


def snapshot(ctx: RunContext) -> dict:
    """What a reader of the index sees: every row of the index tables, hashed."""
    engine = engine_for(ctx)
    out = {}
    queries = {
        "person_records": "SELECT register, record_id, mpi_id, link_basis, linked_run, "
                          "first_seen_run FROM person_records ORDER BY register, record_id",
        "persons": "SELECT mpi_id, status, merged_into, pin, surname, birth_date, "
                   "created_run, updated_run FROM persons ORDER BY mpi_id",
        "events": "SELECT run_id, event_type, mpi_id, other_mpi_id FROM mpi_events "
                  "ORDER BY run_id, event_type, mpi_id, other_mpi_id",
        "pairs": "SELECT run_id, register_l, record_id_l, register_r, record_id_r, status "
                 "FROM match_pairs ORDER BY 1, 2, 3, 4, 5",
        "published": "SELECT run_id FROM runs WHERE status = 'published' ORDER BY run_id",
    }
    with engine.connect() as conn:
        for name, sql in queries.items():
            rows = conn.execute(sa.text(sql)).all()
            out[name] = (len(rows), hashlib.sha256(repr(rows).encode()).hexdigest())
    return out


def index(ctx: RunContext) -> pd.DataFrame:
    with engine_for(ctx).connect() as conn:
        rows = conn.execute(sa.text("SELECT register, record_id, mpi_id FROM person_records")
                            ).all()
    return pd.DataFrame(rows, columns=["register", "record_id", "mpi_id"])


def events(ctx: RunContext, run_id: str) -> pd.DataFrame:
    with engine_for(ctx).connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT event_type, mpi_id, other_mpi_id, details FROM mpi_events "
            "WHERE run_id = :r"), {"r": run_id}).all()
    frame = pd.DataFrame(rows, columns=["event_type", "mpi_id", "other_mpi_id", "details"])
    frame["details"] = frame["details"].map(
        lambda d: json.loads(d) if isinstance(d, str) else d)
    return frame


def _pg_database(pg_url: str) -> str:
    import psycopg2

    admin = pg_url.replace("postgresql+psycopg2://", "postgresql://").rsplit("/", 1)[0]
    name = f"reglink_test_mpi_{uuid.uuid4().hex[:10]}"
    conn = psycopg2.connect(admin + "/postgres")
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    conn.close()
    return pg_url.rsplit("/", 1)[0] + f"/{name}"


def _drop_pg_database(url: str) -> None:
    import psycopg2

    from pipelines.steps import _ENGINES

    for key in [k for k in _ENGINES if k.endswith(url.rsplit("/", 1)[1])]:
        _ENGINES.pop(key).dispose()
    base, name = url.replace("postgresql+psycopg2://", "postgresql://").rsplit("/", 1)
    conn = psycopg2.connect(base + "/postgres")
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    conn.close()


def _publish_in_subprocess_and_kill(ctx: RunContext) -> str:
    """Start publishing ``ctx`` in another process, SIGKILL it inside the transaction."""
    code = (
        "import logging, sys\n"
        "logging.basicConfig(level=logging.WARNING, stream=sys.stderr)\n"
        "from pipelines.steps import RunContext, publish_step\n"
        f"publish_step(RunContext.from_dict({ctx.to_dict()!r}))\n"
    )
    env = {**os.environ, "REGLINK_PUBLISH_PAUSE": "120"}
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env,
                            stderr=subprocess.PIPE, text=True)
    seen = []
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            seen.append(line)
            if "pausing" in line:
                break
        else:
            pytest.fail("publish never reached its pause:\n" + "".join(seen))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    return "".join(seen)


def _scenario(country, data_dir: Path, url: str | None) -> dict:
    res: dict = {}

    def ctx(run_id: str, source: Path, **kw) -> RunContext:
        return RunContext(run_id=run_id, config_dir=CONFIG, data_dir=data_dir,
                          database_url=url, source_dir=source, data_docs=False, **kw)

    # 1. first run, and the same run again
    r1 = ctx("r1", country["source"])
    res["r1"] = run_all(r1)
    res["snap_r1"] = snapshot(r1)
    res["index_r1"] = index(r1)
    res["r1_again"] = run_all(r1)
    res["snap_r1_again"] = snapshot(r1)

    # 2. the nightly delta, incrementally
    r2 = ctx("r2", country["delta"])
    res["r2"] = run_all(r2)
    res["index_r2"] = index(r2)
    res["events_r2"] = events(r2, "r2")

    # 3. steward decisions: split a person of two records, merge two persons of one record
    # Chosen by record keys, not by MPI ID: the IDs are random per data folder, and the
    # scenario must be the same on every machine and backend.
    idx = res["index_r2"].sort_values(["register", "record_id"], ignore_index=True)
    sizes = idx.groupby("mpi_id").size()
    pairs = idx[idx.mpi_id.map(sizes) == 2]
    pair_person = pairs.mpi_id.iloc[0]
    a, b = [tuple(x) for x in pairs[pairs.mpi_id == pair_person][["register", "record_id"]]
            .to_numpy()]
    singles = list(idx[idx.mpi_id.map(sizes) == 1].mpi_id.iloc[:2])
    c, d = [tuple(idx[idx.mpi_id == m][["register", "record_id"]].to_numpy()[0])
            for m in singles]
    with engine_for(r2).begin() as conn:
        record_decision(conn, a, b, "cannot_link", author="steward1", reason="twins")
        record_decision(conn, c, d, "must_link", author="steward1", reason="same passport")
    res["split"] = {"mpi_id": pair_person, "records": (a, b)}
    res["merge"] = {"mpi_ids": singles, "records": (c, d)}
    r3 = ctx("r3", country["delta"])
    res["r3"] = run_all(r3)
    res["index_r3"] = index(r3)
    res["events_r3"] = events(r3, "r3")

    # 4. full relink with a newly trained model: decisions still hold
    r4 = ctx("r4", country["delta"], full_relink=True)
    res["r4"] = run_all(r4)
    res["index_r4"] = index(r4)
    res["snap_r4"] = snapshot(r4)

    # 5. crash in the middle of publishing r5 (back to the first extract)
    r5 = ctx("r5", country["source"])
    for register in configured_registers(r5):
        extract_register_step(r5, register)
    validate_all(r5, None, data_docs=False)
    validation_gate_step(r5)
    standardise_step(r5)
    link_step(r5)
    cluster_step(r5)
    res["assign_r5"] = assign_ids_step(r5)
    res["crash_log"] = _publish_in_subprocess_and_kill(r5)
    res["snap_after_crash"] = snapshot(r5)
    res["r5_after_crash"] = run_all(r5)
    res["snap_r5"] = snapshot(r5)
    return res


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def scenario(request, country, tmp_path_factory) -> dict:
    data_dir = tmp_path_factory.mktemp(f"mpi_{request.param}")
    url = None
    if request.param == "postgresql":
        url = _pg_database(request.getfixturevalue("pg_url"))
    try:
        result = _scenario(country, data_dir, url)
        result["backend"] = request.param
        result["url"] = url
        result["data_dir"] = data_dir
        yield result
    finally:
        if url:
            _drop_pg_database(url)


def test_rerunning_a_published_run_changes_nothing(scenario):
    assert scenario["snap_r1_again"] == scenario["snap_r1"]
    assert scenario["r1_again"].steps["publish"].get("already_published") is True


def test_first_run_gives_every_person_a_new_opaque_id(scenario):
    ids = scenario["index_r1"]["mpi_id"]
    assert ids.str.fullmatch(r"P[0-9A-HJKMNP-TV-Z]{12}").all()
    events = scenario["r1"].steps["assign_ids"]["events"]
    assert events["new"] == ids.nunique() and events["merge"] == events["split"] == 0


def test_a_nightly_delta_keeps_ids_and_writes_the_events(scenario):
    r1, r2 = scenario["index_r1"], scenario["index_r2"]
    both = r1.merge(r2, on=["register", "record_id"], suffixes=("_1", "_2"))
    # Records present on both nights keep their ID unless their person was split or merged.
    moved = both[both.mpi_id_1 != both.mpi_id_2]
    assert len(moved) <= 0.01 * len(both), moved
    assign = scenario["r2"].steps["assign_ids"]
    assert assign["ids_kept_share"] >= 0.99
    assert scenario["r2"].steps["link"]["mode"] == "incremental"
    ev = scenario["events_r2"]
    assert (ev.event_type == "update").sum() > 0
    assert ev.groupby("event_type").size().to_dict() == {
        k: v for k, v in assign["events"].items() if v}
    # deleted records left the index
    assert len(r2) == assign["records"]


def test_incremental_run_agrees_with_a_full_relink(scenario, tmp_path):
    if scenario["backend"] != "sqlite":
        pytest.skip("the linkage does not depend on the database; checked once")
    run = scenario["data_dir"] / "runs" / "r2"
    full = tmp_path / "runs" / "r2"
    full.mkdir(parents=True)
    (full / "validate").symlink_to(run / "validate")
    standardise_run(full)
    link_records(full, CONFIG / "linkage.yaml")
    cluster_run(full, CONFIG / "linkage.yaml")
    agreement = crosswalk_agreement(pd.read_parquet(full / "cluster" / "crosswalk.parquet"),
                                    pd.read_parquet(run / "cluster" / "crosswalk.parquet"))
    assert agreement["pairwise_f1"] >= 0.999, agreement


def test_a_cannot_link_decision_splits_the_person(scenario):
    old = scenario["split"]["mpi_id"]
    a, b = scenario["split"]["records"]
    idx = scenario["index_r3"].set_index(["register", "record_id"])["mpi_id"]
    ids = {idx[a], idx[b]}
    assert len(ids) == 2 and old in ids  # one part keeps the ID, the other gets a new one
    other = (ids - {old}).pop()
    ev = scenario["events_r3"]
    if other in set(scenario["index_r2"].mpi_id):
        # The record that left joined a person it was kept from only by its link to the
        # other record (a PIN conflict cut that link before): both persons are updated.
        updates = ev[ev.event_type == "update"].set_index("mpi_id")["details"]
        assert updates[old]["records_removed"] >= 1
        assert updates[other]["records_added"] >= 1
    else:
        assert ((ev.event_type == "split") & (ev.mpi_id == old)
                & (ev.other_mpi_id == other)).any()


def test_a_must_link_decision_merges_two_persons(scenario):
    c, d = scenario["merge"]["records"]
    first, second = scenario["merge"]["mpi_ids"]
    idx = scenario["index_r3"].set_index(["register", "record_id"])["mpi_id"]
    survivor = idx[c]
    assert idx[d] == survivor and survivor in (first, second)
    retired = second if survivor == first else first
    ev = scenario["events_r3"]
    assert ((ev.event_type == "merge") & (ev.mpi_id == survivor)
            & (ev.other_mpi_id == retired)).any()
    assert ((ev.event_type == "retire") & (ev.mpi_id == retired)
            & (ev.other_mpi_id == survivor)).any()


def test_decisions_survive_a_full_relink_with_a_new_model(scenario):
    assert scenario["r4"].steps["link"]["mode"] == "full"
    idx3 = scenario["index_r3"].set_index(["register", "record_id"])["mpi_id"]
    idx4 = scenario["index_r4"].set_index(["register", "record_id"])["mpi_id"]
    a, b = scenario["split"]["records"]
    c, d = scenario["merge"]["records"]
    assert idx4[a] != idx4[b]
    assert idx4[c] == idx4[d]
    for rec in (a, b, c, d):
        assert idx4[rec] == idx3[rec]


def test_a_crash_during_publish_leaves_the_previous_index(scenario):
    assert "pausing" in scenario["crash_log"]
    assert scenario["snap_after_crash"] == scenario["snap_r4"]
    assert scenario["r5_after_crash"].steps["publish"].get("already_published") is not True
    assert scenario["snap_r5"]["published"][0] == scenario["snap_r4"]["published"][0] + 1
    assert scenario["snap_r5"]["person_records"] != scenario["snap_r4"]["person_records"]


def test_person_lookup_follows_a_merge_and_shows_the_history(scenario, capsys):
    if scenario["backend"] != "sqlite":
        pytest.skip("the commands are the same on both backends; checked once")
    c, _ = scenario["merge"]["records"]
    survivor = scenario["index_r3"].set_index(["register", "record_id"])["mpi_id"][c]
    retired = [m for m in scenario["merge"]["mpi_ids"] if m != survivor][0]
    common = ["--data-dir", str(scenario["data_dir"])]
    assert main(["person", retired, *common]) == 0
    out = capsys.readouterr().out
    assert f"{retired} was merged into {survivor}" in out
    assert f"merge {survivor} {retired}" in out and "golden record:" in out
    assert main(["person", "PNOSUCHPERSON", *common]) == 2
    assert "no person with MPI ID or PIN" in capsys.readouterr().err


def test_a_decision_from_the_command_line_needs_author_and_reason(scenario, capsys):
    if scenario["backend"] != "sqlite":
        pytest.skip("checked once")
    common = ["--data-dir", str(scenario["data_dir"])]
    (ra, ia), (rb, ib) = scenario["split"]["records"]
    with pytest.raises(SystemExit):
        main(["decide", f"{ra}:{ia}", f"{rb}:{ib}", "--must-link", *common])
    capsys.readouterr()
    assert main(["decide", f"{ra}:{ia}", f"{rb}:{ib}", "--must-link", "--author", "s2",
                 "--reason", "checked the paper file", *common]) == 0
    assert "must-link" in capsys.readouterr().out
    assert main(["decide", "civil", f"{rb}:{ib}", "--cannot-link", "--author", "s2",
                 "--reason", "x", *common]) == 2
    assert "REGISTER:RECORD_ID" in capsys.readouterr().err


def test_an_incremental_run_reads_the_index_from_files_and_redoes_only_changed_persons(
        scenario):
    """The nightly run reads the published index from the previous run's files and
    recomputes golden records only for the persons whose records changed; the result is
    what recomputing every person gives, and the files match the published database."""
    from pipelines.mpi.golden import golden_records, load_rules
    from pipelines.registers import load_register_configs

    assign = scenario["r2"].steps["assign_ids"]
    assert assign["index_source"] == "files"
    assert 0 < assign["golden_recomputed"] < assign["persons"] / 2
    run = scenario["data_dir"] / "runs" / "r2"
    records = pd.read_parquet(run / "standardise" / "records.parquet")
    ids = scenario["index_r2"].set_index(["register", "record_id"])["mpi_id"]
    mpi = ids.reindex(pd.MultiIndex.from_frame(records[["register", "record_id"]])).to_numpy()
    trust = {n: dict(c.trust) for n, c in load_register_configs(CONFIG).items()}
    full = golden_records(records, mpi, trust, load_rules(CONFIG), provenance_as_json=True)
    cols = ["mpi_id", "pin", "surname", "given_name", "birth_date", "address", "provenance"]
    saved = pd.read_parquet(run / "assign" / "persons.parquet")
    pd.testing.assert_frame_equal(saved[cols].astype(object).fillna("-"),
                                  full[cols].astype(object).fillna("-"))

    # The last published run (r5) left files equal to the database's active persons.
    last = pd.read_parquet(scenario["data_dir"] / "runs" / "r5" / "assign" / "persons.parquet")
    ctx = RunContext(run_id="r5", config_dir=CONFIG, data_dir=scenario["data_dir"],
                     database_url=scenario["url"])
    with engine_for(ctx).connect() as conn:
        rows = conn.execute(sa.select(schema.persons.c.mpi_id, schema.persons.c.surname,
                                      schema.persons.c.provenance)
                            .where(schema.persons.c.status == "active")
                            .order_by(schema.persons.c.mpi_id)).all()
    assert [r[0] for r in rows] == last["mpi_id"].tolist()
    assert [r[1] for r in rows] == last["surname"].astype(object).where(
        last["surname"].notna(), None).tolist()
    assert [r[2] for r in rows] == [json.loads(p) for p in last["provenance"]]


def test_a_first_publish_on_postgresql_keeps_every_key_and_index(scenario):
    """The first publish bulk-loads the empty index without its foreign keys and secondary
    indexes; they are all back afterwards, and still enforced."""
    if scenario["backend"] != "postgresql":
        pytest.skip("the bulk load is PostgreSQL's")
    tables = [schema.persons, schema.person_records, schema.mpi_events, schema.match_pairs]
    expected_fk = {fk.name for t in tables for fk in t.foreign_key_constraints}
    expected_ix = {ix.name for t in tables for ix in t.indexes}
    ctx = RunContext(run_id="r5", config_dir=CONFIG, data_dir=scenario["data_dir"],
                     database_url=scenario["url"])
    with engine_for(ctx).connect() as conn:
        names = [t.name for t in tables]
        fks = set(conn.exec_driver_sql(
            "SELECT conname FROM pg_constraint c JOIN pg_class t ON t.oid = c.conrelid "
            "WHERE c.contype = 'f' AND t.relname = ANY(%(t)s)", {"t": names}).scalars())
        ixs = set(conn.exec_driver_sql(
            "SELECT indexname FROM pg_indexes WHERE tablename = ANY(%(t)s)",
            {"t": names}).scalars())
    assert expected_fk <= fks
    assert expected_ix <= ixs
    with pytest.raises(sa.exc.IntegrityError):
        with engine_for(ctx).begin() as conn:
            conn.execute(sa.text(
                "INSERT INTO person_records (register, record_id, mpi_id, linked_run, "
                "first_seen_run) VALUES ('civil', 'X-1', 'PNOSUCHPERSON', 'r1', 'r1')"))
