"""The incremental shortcuts of the assign step give what a full computation gives.

An incremental nightly run keeps the ID of every cluster whose records are exactly those of a
previous person, maps only the other clusters by overlap, and recomputes golden records only
for the persons whose records changed. ``assign_run(..., shortcut=False)`` maps every cluster
and recomputes every golden record; both must write the same files. The mapping is also
checked on random partitions, and the lookups that replace hashing on random text; and
the column-wise pieces of publish against what they replace.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from pipelines.keys import key_positions, positions, take, take_increasing
from pipelines.link import _key_order, _key_order_by_file
from pipelines.mpi.decisions import record_decision
from pipelines.mpi.ids import (
    assign_run,
    map_clusters,
    same_as_before,
)
from pipelines.mpi.publish import _explanations, _json_numbers, _watermarks
from pipelines.registers import load_register_configs
from pipelines.steps import (
    RunContext,
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
ASSIGN_FILES = ["person_records", "records_upsert", "records_delete", "persons_upsert",
                "persons_retire", "events", "persons"]


# ------------------------------------------------------------------------- random partitions


def _general(cluster, prev_code, names, anchor, age):
    """The greedy mapping over every cluster (what assign did before the shortcut)."""
    rows = np.flatnonzero(prev_code >= 0)
    return map_clusters(cluster[rows], anchor, names[prev_code[rows]], age)


def _shortcut(cluster, prev_code, prev_size, names, anchor, age):
    """Clusters equal to a previous person keep it; the greedy mapping for the others."""
    same = same_as_before(cluster, prev_code, prev_size)
    mapping = {int(c): names[m] for c, m in enumerate(same) if m >= 0}
    rows = np.flatnonzero((same[cluster] < 0) & (prev_code >= 0))
    mapping.update(map_clusters(cluster[rows], anchor, names[prev_code[rows]], age))
    return mapping


@pytest.mark.parametrize("seed", range(40))
def test_the_shortcut_maps_clusters_as_the_greedy_mapping_does(seed):
    """Random previous persons, then records moved, added and deleted: clusters identical to
    a previous person keep its ID, the others get what the greedy mapping gives them."""
    rng = np.random.default_rng(seed)
    n_prev = int(rng.integers(1, 300))
    prev_person = rng.integers(0, max(1, n_prev // 3), size=n_prev)  # records' previous IDs
    # This run: most records keep their grouping, some move, some are new, some deleted.
    kept = rng.random(n_prev) > rng.uniform(0, 0.3)
    group = prev_person[kept].copy()
    moved = rng.random(group.size) < rng.uniform(0, 0.3)
    group[moved] = rng.integers(0, max(1, n_prev // 3) + 5, size=int(moved.sum()))
    n_new = int(rng.integers(0, 40))
    group = np.concatenate([group, rng.integers(0, max(1, n_prev // 3) + 10, size=n_new)])
    cluster = pd.factorize(group)[0].astype(np.int64)
    prev_code = np.concatenate([prev_person[kept], np.full(n_new, -1)]).astype(np.int64)
    n_ids = int(prev_person.max()) + 1
    prev_size = np.bincount(prev_person, minlength=n_ids)
    names = np.array([f"P{i:04d}" for i in range(n_ids)], dtype=object)
    age = {name: f"r{int(rng.integers(1, 4))}" for name in names}  # ties of age happen
    anchor = np.array([f"k{rng.permutation(10_000)[c]:05d}"
                       for c in range(int(cluster.max()) + 1)], dtype=object)
    assert (_shortcut(cluster, prev_code, prev_size, names, anchor, age)
            == _general(cluster, prev_code, names, anchor, age))


def test_a_cluster_is_the_same_person_only_with_exactly_its_records():
    prev_size = np.array([2, 2, 1])
    # cluster 0: both records of ID 0; cluster 1: one of ID 1's two; cluster 2: ID 2 and a
    # new record; cluster 3: the other record of ID 1.
    cluster = np.array([0, 0, 1, 2, 2, 3])
    prev_code = np.array([0, 0, 1, 2, -1, 1])
    assert same_as_before(cluster, prev_code, prev_size).tolist() == [0, -1, -1, -1]


# ------------------------------------------------------------------------------- lookups


@pytest.mark.parametrize("case", ["sorted", "shuffled", "needles_shuffled", "repeated",
                                  "non_ascii", "nul", "empty"])
def test_positions_are_what_index_in_gives(case):
    rng = np.random.default_rng(3)
    keys = sorted({f"civil\x00{int(k)}" for k in rng.integers(0, 10**6, size=3000)})
    hay, wanted = list(keys), [k for k in keys if rng.random() > 0.1] + ["civil\x00x"]
    wanted = sorted(wanted + [f"health\x00{k}" for k in range(50)])
    if case == "shuffled":
        hay = list(rng.permutation(hay))
    elif case == "needles_shuffled":  # a register file in its source order
        wanted = list(rng.permutation(wanted + wanted[:40]))
    elif case == "repeated":
        hay = sorted(hay + hay[::7])
    elif case == "non_ascii":
        hay = hay + ["civil\x00Ə1"]
        wanted = wanted + ["civil\x00Ə1"]
    elif case == "nul":
        hay, wanted = hay + ["civil\x00"], wanted + ["civil"]
    elif case == "empty":
        hay = []
    hay_arr = pa.array(hay, type=pa.large_string())
    wanted_arr = pa.array(wanted, type=pa.large_string())
    expected = pc.fill_null(pc.index_in(wanted_arr, value_set=hay_arr), -1).to_numpy(
        zero_copy_only=False)
    assert positions(hay_arr, wanted_arr).tolist() == expected.tolist()


@pytest.mark.parametrize("case", ["sorted", "shuffled", "grouped", "register_split",
                                  "register_gone"])
def test_key_positions_are_what_index_in_gives_on_the_joined_keys(case):
    rng = np.random.default_rng(4)
    keys = sorted({(r, f"{int(k):07d}") for r in ("civil", "health", "pension")
                   for k in rng.integers(0, 10**6, size=700)})
    index = [k for k in keys if rng.random() > 0.05]
    records = [k for k in keys if rng.random() > 0.05] + [("voters", "1")]
    if case == "shuffled":
        records = [records[i] for i in rng.permutation(len(records))]
    elif case in ("grouped", "register_split"):
        # Registers one after another, not in name order, each in its source order (the
        # validated files); or one register's rows in two places.
        groups = {r: [k for k in records if k[0] == r] for r in ("pension", "voters", "civil",
                                                                 "health")}
        records = [groups[r][i] for r in groups for i in rng.permutation(len(groups[r]))]
        if case == "register_split":
            records = records[-30:] + records[:-30]
    elif case == "register_gone":
        records = [k for k in records if k[0] != "health"]

    def table(rows):
        return pa.table({"register": pa.array([r for r, _ in rows], pa.large_string()),
                         "record_id": pa.array([i for _, i in rows], pa.large_string())})

    joined = [f"{r}\x00{i}" for r, i in index]
    expected = pc.fill_null(pc.index_in(pa.array([f"{r}\x00{i}" for r, i in records]),
                                        value_set=pa.array(joined)), -1).to_numpy(
        zero_copy_only=False)
    assert key_positions(table(index), table(records)).tolist() == expected.tolist()


def test_rows_are_taken_from_several_chunks_as_a_take_does():
    rng = np.random.default_rng(5)
    text = [f"v{k}" * int(rng.integers(1, 4)) for k in range(1000)]
    table = pa.concat_tables([pa.table({"a": pa.array(text[i:j], pa.large_string()),
                                        "b": pa.array(np.arange(i, j))})
                              for i, j in ((0, 300), (300, 301), (301, 1000))])
    rows = np.sort(rng.choice(1000, size=200, replace=False))
    assert take_increasing(table, rows).equals(table.take(pa.array(rows)))


def test_rows_taken_column_by_column_on_threads_are_a_take():
    rng = np.random.default_rng(6)
    n = 150_000  # above the size at which the columns are shared among threads
    text = pa.array([None if k % 7 == 0 else f"r{k}" for k in range(n)], pa.large_string())
    table = pa.concat_tables([pa.table({"text": text[i:j], "number": pa.array(np.arange(i, j)),
                                        "code": pa.array(np.arange(i, j) % 5).dictionary_encode()})
                              for i, j in ((0, 70_000), (70_000, n))])
    rows = rng.permutation(n)[:120_000]
    assert take(table, rows).equals(table.take(pa.array(rows)))


@pytest.mark.parametrize("case", ["one_register_per_file", "a_file_of_two_registers",
                                  "files_out_of_register_order", "an_empty_file"])
def test_records_sorted_file_by_file_are_sorted_by_key(case):
    rng = np.random.default_rng(8)

    def file(register, n):
        ids = [f"{register[0].upper()}{int(k)}" for k in rng.permutation(10 * n)[:n]]
        return pa.table({"register": pa.array([register] * n, pa.string()),
                         "record_id": pa.array(ids, pa.string())})

    tables = [file("civil", 300), file("electoral", 200), file("pension", 100)]
    if case == "a_file_of_two_registers":
        tables = [pa.concat_tables(tables[:2]), tables[2]]
    elif case == "files_out_of_register_order":
        tables = [tables[1], tables[0], tables[2]]
    elif case == "an_empty_file":
        tables = [tables[0], file("health", 0), tables[2]]
    whole = pa.concat_tables(tables)
    by_file = _key_order_by_file(tables)
    if case in ("a_file_of_two_registers", "files_out_of_register_order"):
        assert by_file is None  # the whole table is sorted instead
    else:
        assert by_file.to_pylist() == _key_order(whole).to_pylist()


# ------------------------------------------------------------------------ the whole step


@pytest.fixture(scope="module")
def nightly(tmp_path_factory) -> dict:
    """A first run of a small country, then a nightly delta with a steward's split and merge,
    clustered but not yet assigned."""
    base = tmp_path_factory.mktemp("incremental")
    country = synthetic_country(base, 700, 23, share=0.05, delta_seed=9)
    source, delta = country["source"], country["delta"]
    data_dir = base / "data"

    def ctx(run_id: str, src: Path) -> RunContext:
        return RunContext(run_id=run_id, config_dir=CONFIG, data_dir=data_dir,
                          source_dir=src, data_docs=False)

    r1 = ctx("r1", source)
    run_all(r1)
    with engine_for(r1).connect() as conn:
        index = pd.read_sql("SELECT register, record_id, mpi_id FROM person_records", conn)
    index = index.sort_values(["register", "record_id"], ignore_index=True)
    sizes = index.groupby("mpi_id").size()
    pair = index[index.mpi_id == sizes[sizes == 2].index[0]]
    singles = index[index.mpi_id.isin(sizes[sizes == 1].index[:2])]
    keys = [tuple(x) for x in pair[["register", "record_id"]].to_numpy()]
    ones = [tuple(x) for x in singles[["register", "record_id"]].to_numpy()]
    with engine_for(r1).begin() as conn:
        record_decision(conn, keys[0], keys[1], "cannot_link", author="s", reason="twins")
        record_decision(conn, ones[0], ones[1], "must_link", author="s", reason="same")
    r2 = ctx("r2", delta)
    for register in configured_registers(r2):
        extract_register_step(r2, register)
    validate_all(r2, None, data_docs=False)
    validation_gate_step(r2)
    standardise_step(r2)
    link_step(r2)
    cluster_step(r2)
    return {"ctx": r2, "configs": load_register_configs(CONFIG)}


def _assign(nightly: dict, out: Path, **kw) -> dict:
    ctx = nightly["ctx"]
    shutil.rmtree(ctx.run_dir / "assign", ignore_errors=True)
    summary = assign_run(engine_for(ctx), ctx.run_id, ctx.run_dir, nightly["configs"],
                         config_dir=CONFIG, **kw)
    shutil.copytree(ctx.run_dir / "assign", out)
    return summary


def _frames(folder: Path) -> dict[str, pd.DataFrame]:
    out = {}
    for name in ASSIGN_FILES:
        frame = pd.read_parquet(folder / f"{name}.parquet").astype(object)
        if name in ("records_upsert", "records_delete"):
            frame = frame.sort_values(["register", "record_id"], ignore_index=True)
        out[name] = frame.where(frame.notna(), None)
    return out


def test_the_incremental_assignment_is_the_full_assignment(nightly, tmp_path):
    """Same IDs, events, golden records and changes with the shortcuts as without them."""
    fast = _assign(nightly, tmp_path / "fast")
    full = _assign(nightly, tmp_path / "full", shortcut=False)
    assert fast["index_source"] == full["index_source"] == "files"
    assert fast["clusters_mapped"] < fast["persons"] / 2
    assert fast["golden_recomputed"] < full["golden_recomputed"] == full["persons"]
    events = fast["events"]
    assert events["split"] and events["merge"] and events["retire"] and events["update"]
    for key in ("persons", "ids_kept", "events", "changes", "records"):
        assert fast[key] == full[key], key
    a, b = _frames(tmp_path / "fast"), _frames(tmp_path / "full")
    for name in ASSIGN_FILES:
        pd.testing.assert_frame_equal(a[name], b[name], obj=name)


def test_the_index_read_from_the_database_gives_the_same_assignment(nightly, tmp_path):
    """Without the previous run's files the index comes from the database: same result."""
    fast = _assign(nightly, tmp_path / "files")
    previous = nightly["ctx"].data_dir / "runs" / "r1" / "assign"
    hidden = previous.with_name("assign.hidden")
    previous.rename(hidden)
    try:
        from_db = _assign(nightly, tmp_path / "database")
    finally:
        hidden.rename(previous)
    assert from_db["index_source"] == "database"
    assert from_db["golden_recomputed"] == from_db["persons"]
    for key in ("persons", "ids_kept", "events", "changes"):
        assert fast[key] == from_db[key], key
    a, b = _frames(tmp_path / "files"), _frames(tmp_path / "database")
    for name in ASSIGN_FILES:
        pd.testing.assert_frame_equal(a[name], b[name], obj=name)


def test_files_that_are_not_the_published_assignment_are_not_used(nightly, tmp_path):
    """Publish records the mark of the assignment it published; other files are ignored."""
    summary_path = nightly["ctx"].data_dir / "runs" / "r1" / "assign" / "summary.json"
    saved = summary_path.read_text()
    summary_path.write_text(json.dumps({**json.loads(saved), "assignment": "elsewhere"}))
    try:
        summary = _assign(nightly, tmp_path / "other")
    finally:
        summary_path.write_text(saved)
    assert summary["index_source"] == "database"


# ------------------------------------------------------------------------------- publish


def test_weights_are_written_as_repr_writes_them():
    values = np.array([1.0, np.nan, -0.0, 0.0, 1e-5, 2.5, 1e20, -3.1234, 0.0, -0.0, 9.904])
    assert _json_numbers(values).tolist() == [
        "null" if v != v else repr(v) for v in values.tolist()]


def test_an_explanation_is_each_comparison_with_its_level_and_weight():
    table = pa.table({"gamma_surname": pa.array([2, -1], pa.int8()),
                      "w_surname": pa.array([3.25, 0.0], pa.float32()),
                      "gamma_pin": pa.array([0, 1], pa.int8()),
                      "w_pin": pa.array([-0.0001, 7.5], pa.float32())})
    got = [json.loads(text) for text in _explanations(table, ["surname", "pin"])]
    assert got == [{"surname": {"level": 2, "weight": 3.25}, "pin": {"level": 0, "weight": -0.0}},
                   {"surname": {"level": -1, "weight": 0.0}, "pin": {"level": 1, "weight": 7.5}}]


def test_watermarks_are_the_newest_update_of_each_register(tmp_path):
    (tmp_path / "standardise").mkdir()
    records = pd.DataFrame({
        "register": ["a", "a", "b", None, "c", "b", "d"],
        "source_updated_at": ["2024-01-02", "2024-03-01", None, "2025", None,
                              "2023-12-31T10:00", "2024-05-05"]})
    records.to_parquet(tmp_path / "standardise" / "records.parquet", index=False)
    assert _watermarks(tmp_path) == {"a": "2024-03-01", "b": "2023-12-31T10:00",
                                     "d": "2024-05-05"}


def test_files_of_a_run_published_without_a_mark_need_its_published_counts(nightly, tmp_path):
    """A run published before marks were recorded: its files are used when they have the
    row counts it published."""
    ctx = nightly["ctx"]
    runs = schema.runs
    with engine_for(ctx).connect() as conn:
        saved = conn.execute(sa.select(runs.c.counts).where(runs.c.run_id == "r1")).scalar_one()

    def publish_counts(**published) -> None:
        with engine_for(ctx).begin() as conn:
            conn.execute(sa.update(runs).where(runs.c.run_id == "r1").values(
                counts={**saved, "published": published}))

    n_records = saved["published"]["records"]
    n_persons = saved["published"]["persons"]
    try:
        publish_counts(records=n_records, persons=n_persons)
        assert _assign(nightly, tmp_path / "counted")["index_source"] == "files"
        publish_counts(records=n_records + 1, persons=n_persons)
        assert _assign(nightly, tmp_path / "miscounted")["index_source"] == "database"
    finally:
        with engine_for(ctx).begin() as conn:
            conn.execute(sa.update(runs).where(runs.c.run_id == "r1").values(counts=saved))


def test_persons_read_and_written_in_small_batches_are_the_same(nightly, tmp_path,
                                                                  monkeypatch):
    """The previous persons' provenance is read a batch at a time and ``persons.parquet``
    written so: batches of a few persons give the same files, from files or database."""
    import pipelines.mpi.ids as ids

    whole = _assign(nightly, tmp_path / "whole")
    monkeypatch.setattr(ids, "PROVENANCE_BATCH", 37)
    batched = _assign(nightly, tmp_path / "batched")
    previous = nightly["ctx"].data_dir / "runs" / "r1" / "assign"
    previous.rename(previous.with_name("assign.hidden"))
    try:
        from_db = _assign(nightly, tmp_path / "batched_db")
    finally:
        previous.with_name("assign.hidden").rename(previous)
    # The previous files in row groups of a few rows each, as such batches write them.
    saved = {name: (previous / f"{name}.parquet").read_bytes()
             for name in ("persons", "person_records")}
    try:
        for name in saved:
            table = pq.read_table(previous / f"{name}.parquet")
            pq.write_table(table, previous / f"{name}.tmp", row_group_size=41)
            (previous / f"{name}.tmp").replace(previous / f"{name}.parquet")
        grouped = _assign(nightly, tmp_path / "grouped")
    finally:
        for name, data in saved.items():
            (previous / f"{name}.parquet").write_bytes(data)
    assert batched["index_source"] == grouped["index_source"] == "files"
    assert from_db["index_source"] == "database"
    a = _frames(tmp_path / "whole")
    for folder in ("batched", "batched_db", "grouped"):
        b = _frames(tmp_path / folder)
        for name in ASSIGN_FILES:
            pd.testing.assert_frame_equal(a[name], b[name], obj=f"{folder} {name}")
    assert whole["events"] == batched["events"] == from_db["events"]


def test_an_incremental_run_keeps_arrows_memory_until_it_ends(tmp_path, monkeypatch):
    """Memory given back to the system costs a page fault per page when taken again: a full
    run gives Arrow's freed memory back after every step (its peak matters), an incremental
    run only once, when it ends."""
    import pipelines.steps as steps

    country = synthetic_country(tmp_path, 200, 5, share=0.05, delta_seed=3)
    current = {"step": None}
    released: list[str | None] = []
    real = steps._release_arrow_memory

    def spy() -> None:
        released.append(current["step"])
        real()

    monkeypatch.setattr(steps, "_release_arrow_memory", spy)

    def run(run_id: str, source: Path) -> tuple[steps.RunSummary, list[str | None]]:
        released.clear()
        ctx = RunContext(run_id=run_id, config_dir=CONFIG, data_dir=tmp_path / "data",
                         source_dir=source, data_docs=False)
        summary = run_all(ctx, on_step=lambda name: current.update(step=name))
        return summary, list(released)

    first, after_first = run("r1", country["source"])
    assert first.steps["link"]["mode"] == "full"
    assert after_first == [*first.seconds, "report"]  # after every step, and as it ends
    second, after_second = run("r2", country["delta"])
    assert second.steps["link"]["mode"] == "incremental"
    assert after_second == ["report"]  # once: as the run ends
