"""The standardise, link and cluster steps of a run, with Parquet hand-offs in the run folder.

Reads the records that passed validation, ``runs/<run_id>/validate/<register>.parquet`` (a
run whose validation failed or never ran is refused), and writes:

- ``standardise/records.parquet``: the validated canonical records (the columns linking and
  the golden record use) with the standardised columns beside them and ``content_hash``, a
  hash of everything else in the row; positions in this file are the record indices of the
  engine for the rest of the run;
- ``link/model.json``: the Fellegi–Sunter model (settings, m, u, λ, TF tables, seed);
  newly trained on a full relink, the previous run's on an incremental run;
- ``link/pairs.parquet``: scored pairs at or above the review threshold, with record
  positions (``left``, ``right``) and keys (register, record_id) on both sides, each
  comparison's level and contribution;
- ``link/report.json``: counts, mode (full or incremental, and why), blocking, timings;
- ``cluster/crosswalk.parquet`` and ``crosswalk.csv``: ``register, record_id, cluster_id``
  per record (plus ``match_probability`` and ``link_basis`` in the Parquet file);
- ``cluster/report.json``: the clustering report and the steward decisions applied.

**Incremental linking.** When a previous published run left its records, pairs and model,
only the records whose ``content_hash`` changed (or that are new) are linked: the blocking
keys are computed over all records, the records sharing a block key with a changed record
are blocked again, and only the candidate pairs touching a changed record are compared and
scored with the saved model. Pairs between unchanged records are taken from the previous
run. With the same model this gives exactly the pairs a full relink would score (blocks
holding a changed record are complete, so oversized-block capping is the same); a full
relink differs only by the newly trained model.

Every file is written to a temporary name and renamed, so a rerun replaces a step's output
whole, and a crash leaves the previous output in place.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from matching import LinkageSettings, Linker, standardise
from matching.blocking import block_records, rule_key, swap_rule_keys
from matching.comparisons import RecordColumns, compare_pairs
from matching.errors import MatchingError
from matching.model import FellegiSunterModel
from matching.predict import score_pairs
from matching.settings import BlockingRule
from pipelines.errors import ReglinkError
from pipelines.keys import key_positions, take
from pipelines.validate import require_validated

log = logging.getLogger(__name__)

# Canonical columns kept for linking and for the golden record; the originals (src.*) stay
# in the extract files.
RECORD_COLUMNS = (
    "register", "record_id", "record_type", "pin", "surname", "given_name", "patronymic", "sex",
    "birth_date", "birth_date_quality", "death_date", "father_name", "mother_name", "region",
    "district", "locality", "address", "phone", "is_deceased", "voter_active",
    "pension_active", "source_updated_at",
)
KEY = ["register", "record_id"]

#: Above this share of changed records an incremental run relinks everything instead.
MAX_INCREMENTAL_SHARE = 0.2


@dataclass
class LinkResult:
    run_dir: Path
    records: int
    pairs_scored: int
    pairs_linked: int
    pairs_review: int
    clusters: int
    seconds: dict[str, float]

    @property
    def out_dir(self) -> Path:
        return self.run_dir / "link"


def _read_validated(run_dir: Path) -> list[pa.Table]:
    """The record columns of each validated file, in file order, as Arrow tables.

    Only RECORD_COLUMNS are read: the src.* originals are most of each file and are not
    kept. ``use_pandas_metadata`` makes this the read pd.read_parquet does.
    """
    validated = require_validated(run_dir)
    files = sorted(p for p in validated.glob("*.parquet") if p.name != "quarantine.parquet")
    if not files:
        raise ReglinkError(f"no validated records in {validated}; run `reglink validate` first")
    tables = []
    for path in files:
        names = set(pq.read_schema(path).names)
        columns = [c for c in RECORD_COLUMNS if c in names]
        tables.append(pq.read_table(path, columns=columns, use_pandas_metadata=True))
    return tables


def _concatenates_in_arrow(tables: list[pa.Table]) -> bool:
    """Whether converting the Arrow concatenation gives the frame pd.concat of the per-file
    frames gives: same columns and types, no pandas metadata (it would rebuild an index or
    dtypes per file) and no dictionaries (Arrow would merge their categories where
    pd.concat falls back to object)."""
    first = tables[0].schema
    return all(
        t.schema.equals(first) and b"pandas" not in (t.schema.metadata or {})
        for t in tables
    ) and not any(pa.types.is_dictionary(f.type) for f in first)


def _concat_frames(tables: list[pa.Table]) -> pd.DataFrame:
    """The records of all files in file order, as the per-file pd.read_parquet + pd.concat
    used to build them (the general path, whatever the files hold)."""
    frames = []
    for table in tables:
        frame = table.to_pandas()
        frames.append(frame[[c for c in RECORD_COLUMNS if c in frame.columns]])
    return pd.concat(frames, ignore_index=True)


def _refuse_duplicate_keys(records: pd.DataFrame) -> None:
    """Raise on a repeated (register, record_id), naming the register of the first repeated
    row in file order."""
    duplicated = records.duplicated(KEY)
    if duplicated.any():
        first = records.loc[duplicated].iloc[0]
        raise ReglinkError(
            f"register {first['register']}: record_id is not unique "
            f"({int(duplicated.sum())} repeated ids); fix the extract or its record_id mapping"
        )


def _same_as_previous(values: pa.ChunkedArray) -> pa.Array:
    """Per position from the second on: equal to the value before it (two nulls are
    equal, as in DataFrame.duplicated)."""
    now, before = values[1:], values[:-1]
    equal = pc.fill_null(pc.equal(now, before), False)
    return pc.or_(equal, pc.and_(pc.is_null(now), pc.is_null(before)))


def _key_order(table: pa.Table) -> pa.Array:
    """Positions that sort ``table`` by key. Arrow sorts strings by UTF-8 bytes, which is
    code point order like pandas, and puts nulls last like sort_values."""
    # Keys in one chunk: a table of many chunks (row groups) is sorted chunk by chunk and
    # then merged, which takes about twice as long.
    keys = pa.table({k: table[k].combine_chunks() for k in KEY})
    return pc.sort_indices(keys, [(k, "ascending") for k in KEY])


def _key_order_by_file(tables: list[pa.Table]) -> pa.Array | None:
    """The positions :func:`_key_order` gives for the files' concatenation, when each file
    holds one register and the files come in register order (validate writes one file per
    register, read in name order): each file's record ids sorted on their own, on worker
    threads (Arrow's sort releases the GIL). None when the files are not like that.
    At 1M persons: 1.1 s -> 0.35 s."""
    registers = []
    for table in tables:
        column = table["register"]
        if table.num_rows == 0:
            continue
        if column.null_count or pc.count_distinct(column).as_py() != 1:
            return None
        registers.append(column[0].as_py())
    if any(a >= b for a, b in zip(registers, registers[1:], strict=False)):
        return None
    with ThreadPoolExecutor(max(1, min(os.cpu_count() or 1, len(tables)))) as pool:
        orders = list(pool.map(lambda t: pc.sort_indices(t["record_id"]).to_numpy(), tables))
    starts = np.cumsum([0] + [t.num_rows for t in tables])[:-1]
    return pa.array(np.concatenate(
        [np.zeros(0, dtype=np.int64)]
        + [order.astype(np.int64) + start for order, start in zip(orders, starts, strict=True)]))


def _has_repeated_key(ordered: pa.Table) -> bool:
    """Whether records sorted by key repeat one: a repeated key sits next to its twin, so
    one comparison of neighbours replaces DataFrame.duplicated's hashing."""
    repeated = pc.and_(*(_same_as_previous(ordered[k]) for k in KEY))
    return bool(pc.any(repeated).as_py())


def _sorted_validated(run_dir: Path) -> pd.DataFrame:
    """The validated records of all registers, sorted by key.

    The sort runs on the Arrow table before pandas sees it: sort_values plus the row
    gather on pandas' string columns cost several times more. A repeated key is found on
    the sorted keys, then reported by the file-order check, so the message names the
    register of the first repeated row in file order.
    """
    tables = _read_validated(run_dir)
    if _concatenates_in_arrow(tables):
        order = _key_order_by_file(tables)
        table = pa.concat_tables(tables)
        del tables
        ordered = take(table, order if order is not None else _key_order(table))
        if _has_repeated_key(ordered):
            _refuse_duplicate_keys(table.select(KEY).to_pandas())
        del table  # the unsorted copy: freed before pandas gets the sorted one
        return ordered.to_pandas()
    records = _concat_frames(tables)
    keys = pa.table({k: records[k] for k in KEY})
    order = _key_order(keys)
    if _has_repeated_key(keys.take(order)):
        _refuse_duplicate_keys(records)
    return records.take(order.to_numpy()).reset_index(drop=True)


def _atomic_write(path: Path, write: Callable[[Path], Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    _atomic_write(path, lambda p: p.write_text(json.dumps(data, indent=2, default=str)))


def records_path(run_dir: Path) -> Path:
    return Path(run_dir) / "standardise" / "records.parquet"


def read_records(run_dir: Path, columns: list[str] | None = None) -> pd.DataFrame:
    path = records_path(run_dir)
    if not path.is_file():
        raise ReglinkError(f"{path} not found: run the standardise step of run "
                           f"{Path(run_dir).name} first")
    return pd.read_parquet(path, columns=columns)


# ------------------------------------------------------------------------------- standardise


# Rows per Parquet row group: pyarrow's default, so the file is laid out as before.
_ROW_GROUP_ROWS = 1024 * 1024
# Record columns that identify a record or a person, distinct on nearly every row.
_RECORD_PLAIN_COLUMNS = {"record_id", "content_hash", "pin", "pin_std", "phone"}


def _content_hash(records: pd.DataFrame) -> np.ndarray:
    """Per row, a hash of every column but the key (compared with the previous run's)."""
    hashed = records.drop(columns=KEY)
    return pd.util.hash_pandas_object(hashed, index=False).to_numpy(
        dtype=np.uint64).view(np.int64)


def _write_records(path: Path, records: pd.DataFrame) -> None:
    """Write ``records`` and their ``content_hash`` as ``to_parquet(index=False)`` did.

    Each row group is hashed while the one before it is written: Parquet encoding runs in
    Arrow without the GIL, so the two overlap (about 2 of 6 s at 1M persons). The hash is
    per row, so hashing a row group at a time gives the same values.
    """
    # The schema and pandas metadata of the whole frame; hashes are set per row group.
    table = pa.Table.from_pandas(records.assign(content_hash=np.int64(0)), preserve_index=False)
    at = table.schema.get_field_index("content_hash")
    # Row-group min/max statistics can prune only on the sorted key columns; computing them
    # for every text column costs about a quarter of the write, and no reader filters on them.
    # Identifiers are written without a dictionary (see _PLAIN_COLUMNS), and LZ4 as the
    # pairs: at 1M persons the write takes 3.0 s instead of 3.6 s, reading back 1.7 s, not 3.5 s.
    dictionary = [c for c in table.column_names if c not in _RECORD_PLAIN_COLUMNS]
    with (pq.ParquetWriter(path, table.schema, write_statistics=KEY, compression="lz4",
                           use_dictionary=dictionary)
          as writer,
          ThreadPoolExecutor(max_workers=1) as pool):
        writes = []
        # At least one (maybe empty) row group, as pq.write_table writes for no rows.
        for start in range(0, max(len(records), 1), _ROW_GROUP_ROWS):
            hashes = _content_hash(records.iloc[start:start + _ROW_GROUP_ROWS])
            group = table.slice(start, _ROW_GROUP_ROWS).set_column(
                at, "content_hash", pa.array(hashes))
            writes.append(pool.submit(writer.write_table, group))
        for write in writes:
            write.result()


def standardise_run(run_dir: Path) -> dict[str, Any]:
    """Standardise the validated records of a run into ``standardise/records.parquet``.

    Every record is standardised every run (the given-name vocabulary is learnt from all of
    them, so an old record's standardised form can change when new names arrive; the
    content hash then marks it changed).
    """
    t = time.perf_counter()
    # Keys sort the file so that record positions do not depend on the register file order.
    # Sorting before standardising gives the same rows: every standardised value depends on
    # its own row only (the name vocabulary is a set, whatever the order).
    records = standardise(_sorted_validated(run_dir))
    _atomic_write(records_path(run_dir), lambda p: _write_records(p, records))
    seconds = round(time.perf_counter() - t, 2)
    log.info("standardise: %d records (%.1f s)", len(records), seconds)
    return {"records": len(records), "path": str(records_path(run_dir)), "seconds": seconds,
            "per_register": records["register"].value_counts().sort_index().to_dict()}


# -------------------------------------------------------------------------------------- link


def _link_columns(run_dir: Path, settings: LinkageSettings) -> list[str]:
    """The columns of the records file that linking reads (not the originals beside them)."""
    wanted = {*KEY, "content_hash"}
    for rule in settings.blocking_rules:
        wanted.update(rule.all_columns)
    for comparison in settings.comparisons:
        wanted.update(comparison.column_names)
    if settings.pin_column:
        wanted.add(settings.pin_column)
    names = pq.read_schema(records_path(run_dir)).names
    return [c for c in names if c in wanted]


def changed_records(records: pd.DataFrame, previous: pd.DataFrame) -> np.ndarray:
    """Mask of records that are new or whose content changed since ``previous``."""
    prev = previous[[*KEY, "content_hash"]].rename(columns={"content_hash": "_prev"})
    merged = records[KEY + ["content_hash"]].merge(prev, on=KEY, how="left")
    return (merged["_prev"].isna() | (merged["_prev"] != merged["content_hash"])).to_numpy()


def _settings_key(settings: LinkageSettings) -> str:
    data = settings.to_dict()
    data.pop("seed", None)
    return json.dumps(data, sort_keys=True, default=str)


def _incremental_plan(run_dir: Path, previous_run_dir: Path | None, settings: LinkageSettings,
                      records: pd.DataFrame
                      ) -> tuple[str, np.ndarray | None, str, np.ndarray | None]:
    """("incremental", changed mask, reason, position now of each previous record (-1:
    gone)) or ("full", None, reason, None)."""
    if previous_run_dir is None:
        return "full", None, "no previous published run", None
    needed = [records_path(previous_run_dir), previous_run_dir / "link" / "model.json",
              previous_run_dir / "link" / "pairs.parquet"]
    missing = [str(p) for p in needed if not p.is_file()]
    if missing:
        return ("full", None, f"previous run {previous_run_dir.name} lacks "
                f"{', '.join(missing)}", None)
    model = FellegiSunterModel.load(previous_run_dir / "link" / "model.json")
    if _settings_key(model.settings) != _settings_key(settings):
        return "full", None, "the linkage settings changed since the saved model", None
    previous = pd.read_parquet(records_path(previous_run_dir), columns=[*KEY, "content_hash"])
    now_pos = _positions(previous, records)
    # Keys are unique on both sides, so the reverse lookup is the inverse permutation
    # (hashing millions of string keys a second time costs about a second at 1M persons).
    prev_pos = np.full(len(records), -1, dtype=np.int64)
    still_here = now_pos >= 0
    prev_pos[now_pos[still_here]] = np.flatnonzero(still_here)
    changed = (prev_pos < 0) | (previous["content_hash"].to_numpy(dtype=np.int64)[
        np.maximum(prev_pos, 0)] != records["content_hash"].to_numpy(dtype=np.int64))
    share = float(changed.mean()) if len(changed) else 0.0
    if share > MAX_INCREMENTAL_SHARE:
        return "full", None, (f"{share:.1%} of the records changed (more than "
                              f"{MAX_INCREMENTAL_SHARE:.0%})"), None
    return ("incremental", changed,
            f"{int(changed.sum())} new or changed records ({share:.2%})", now_pos)


def _positions(records: pd.DataFrame, other: pd.DataFrame) -> np.ndarray:
    """Position in ``other`` of each record of ``records`` (by key; -1: not there).

    Both runs' records are sorted by key, so pipelines.keys finds most positions
    from a sample instead of hashing every key (about a second less at 1M persons); it
    hashes when they are not sorted."""
    def keys(frame: pd.DataFrame) -> pa.Table:
        return pa.table({k: pa.array(frame[k]) for k in KEY})

    return key_positions(keys(other), keys(records))


def _alone(rule: BlockingRule) -> list[str]:
    """The columns of a blocking rule whose values are compared with the same column."""
    return (list(rule.columns) if rule.swap_with is None else
            [a for a, b in zip(rule.columns, rule.swap_with, strict=True) if a == b])


def _touching_blocks(records: pd.DataFrame, settings: LinkageSettings,
                     changed: np.ndarray, cols: RecordColumns) -> np.ndarray:
    """Mask of the records that share a block key of some rule with a changed record.

    A column's blocking codes are its comparison codes (both pd.factorize of the column),
    so they are taken from ``cols``: each column is factorised once for blocking and for
    comparing."""
    keep = changed.copy()
    cache: dict[str, tuple[np.ndarray, int]] = {}
    for rule in settings.blocking_rules:
        if any(c not in records.columns for c in rule.all_columns):
            continue
        for col in _alone(rule):
            if col not in cache:
                cache[col] = (cols.code_array(col).astype(np.int64), cols.n_values(col))
        if rule.swap_with is not None:
            key_a, key_b = swap_rule_keys(records, rule.columns, rule.swap_with, cache)
            wanted = np.union1d(key_a[changed], key_b[changed])
            wanted = wanted[wanted >= 0]
            keep |= _member(key_a, wanted) | _member(key_b, wanted)
        else:
            key = rule_key(records, rule.columns, cache)
            wanted = key[changed]
            wanted = wanted[wanted >= 0]
            keep |= _member(key, wanted)
    return keep


def _member(values: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """``np.isin(values, wanted)`` for millions of ``values`` and a few thousand ``wanted``.

    pandas hashes the few ``wanted`` keys and probes each value once: about 8x faster
    than a binary search of every value (np.isin sorts millions of values each time), and
    the keys are too sparse (mixed-radix) for a lookup table indexed by key."""
    if wanted.size == 0:
        return np.zeros(values.shape, dtype=bool)
    return pd.Series(values, copy=False).isin(wanted).to_numpy()


def _score_changed(records: pd.DataFrame, model: FellegiSunterModel,
                   changed: np.ndarray, explain: bool = True) -> tuple[pd.DataFrame, dict]:
    """Score every candidate pair that touches a changed record, with ``model``."""
    settings = model.settings
    # Column caches over all records: TF frequencies of unseen values then match a full run.
    cols = RecordColumns(records)
    # The columns blocking and comparing both read, factorised on every core at once.
    cols.prefetch([c for rule in settings.blocking_rules for c in _alone(rule)]
                  + [comp.columns["value"] for comp in settings.comparisons
                     if "value" in comp.columns])
    subset = np.flatnonzero(_touching_blocks(records, settings, changed, cols))
    candidates = block_records(records.iloc[subset].reset_index(drop=True),
                               settings.blocking_rules, settings.max_block_size)
    left = subset[candidates.left]
    right = subset[candidates.right]
    touch = changed[left] | changed[right]
    left, right, rule = left[touch], right[touch], candidates.rule[touch]
    comparisons = model.comparisons()
    gammas = compare_pairs(comparisons, cols, left, right)
    pairs = score_pairs(model, comparisons, cols, left, right, gammas,
                        threshold=settings.thresholds.review, explain=explain, rule=rule,
                        rule_names=candidates.rule_names)
    report = {"records_blocked": int(subset.size), "candidate_pairs": int(left.size),
              "blocking": candidates.report.to_dict()}
    return pairs, report


def _pair_order(pairs: pd.DataFrame, rows: np.ndarray | None = None) -> np.ndarray | None:
    """The rows of ``pairs`` to write (``rows``; ``None``: all) sorted by (``left``,
    ``right``), ties kept in their order; ``None`` when that is all rows as they are.

    Carried pairs come sorted and new ones may not. One stable sort of a single int64 key
    (timsort in numpy) merges those sorted runs in about linear time; ``np.lexsort`` sorted
    millions of pairs by ``right`` first, from scratch (2 s at 1M persons)."""
    left = pairs["left"].to_numpy(dtype=np.int64)
    right = pairs["right"].to_numpy(dtype=np.int64)
    if rows is not None:
        left, right = left[rows], right[rows]
    if left.size < 2:
        return rows
    key = left * (int(right.max()) + 1) + right  # record positions: >= 0, < 2**31
    if (key[1:] >= key[:-1]).all():
        return rows
    order = np.argsort(key, kind="stable")
    return order if rows is None else rows[order]


_PAIR_KEYS = ["register_l", "record_id_l", "register_r", "record_id_r"]
# Pair columns with nearly every value distinct, written without a dictionary: Parquet
# would build one per row group until it outgrows its page and then write them plain
# anyway (a sixth of the write time; the file reads back the same).
_PLAIN_COLUMNS = {"left", "right", "match_weight", "match_probability", "record_id_l",
                  "record_id_r"}


def _keyed(pairs: pd.DataFrame, records: pd.DataFrame,
           rows: np.ndarray | None = None) -> pa.Table:
    """``pairs`` (its ``rows`` in that order; ``None``: all) with both records' keys in front
    (registers dictionary-encoded), as Arrow.

    The rows are taken in Arrow, once for all columns (faster than pandas' take), after
    the pandas conversion, so that the schema and its pandas metadata are those of
    ``pairs``."""
    table = pa.Table.from_pandas(pairs, preserve_index=False)
    left = pairs["left"].to_numpy(dtype=np.int64)
    right = pairs["right"].to_numpy(dtype=np.int64)
    if rows is not None:
        table = take(table, rows)
        left, right = left[rows], right[rows]
    left, right = pa.array(left), pa.array(right)
    register = pa.array(records["register"].astype("string")).dictionary_encode()
    record_id = pa.array(records["record_id"].astype("string"))
    for i, (name, column, side) in enumerate([
            ("register_l", register, left), ("record_id_l", record_id, left),
            ("register_r", register, right), ("record_id_r", record_id, right)]):
        table = table.add_column(i, name, column.take(side))
    return table


def _carried_pairs(previous_run_dir: Path, now_pos: np.ndarray,
                   changed: np.ndarray) -> tuple[pd.DataFrame, np.ndarray]:
    """The previous run's pairs renumbered to this run's record positions (``now_pos``: the
    position now of each record of the previous run, -1 when it is gone), and the rows of
    those carried over: the pairs between records that are still here and unchanged.

    The other rows are not dropped here: ``link_records`` takes the carried rows with the
    new pairs, in pair order, as it writes the file (millions of pairs copied once less)."""
    path = previous_run_dir / "link" / "pairs.parquet"
    columns = [c for c in pq.read_schema(path).names if c not in _PAIR_KEYS]
    prev = pd.read_parquet(path, columns=columns)
    lpos = now_pos[prev["left"].to_numpy()]
    rpos = now_pos[prev["right"].to_numpy()]
    ok = (lpos >= 0) & (rpos >= 0)
    ok &= ~(changed[np.maximum(lpos, 0)] | changed[np.maximum(rpos, 0)])
    prev["left"] = np.minimum(lpos, rpos).astype(prev["left"].dtype)
    prev["right"] = np.maximum(lpos, rpos).astype(prev["right"].dtype)
    return prev, np.flatnonzero(ok)


def link_records(run_dir: Path, settings: LinkageSettings | str | Path, *,
                 seed: int | None = None, model_path: Path | None = None,
                 previous_run_dir: Path | None = None) -> dict[str, Any]:
    """Score the candidate pairs of a run's standardised records; writes ``link/``.

    Args:
        run_dir: the run's folder (``<data-dir>/runs/<run_id>``).
        settings: linkage settings or the path of ``linkage.yaml``.
        seed: overrides the settings' seed.
        model_path: score every pair with this saved model instead of training a new one.
        previous_run_dir: the previous published run; when given (and usable), only new and
            changed records are linked, with its saved model (see the module docstring).
    """
    started = time.perf_counter()
    linker = Linker(settings, seed=seed)
    records = read_records(run_dir, columns=_link_columns(run_dir, linker.settings))
    out = Path(run_dir) / "link"
    mode, changed, reason, now_pos = (
        ("full", None, "model given", None) if model_path
        else _incremental_plan(run_dir, previous_run_dir, linker.settings, records))
    log.info("link: %d records, %s (%s)", len(records), mode, reason)
    detail: dict[str, Any] = {}
    rows = None  # the rows of ``pairs`` to write (None: all)
    try:
        if mode == "incremental":
            assert changed is not None and previous_run_dir is not None
            model = FellegiSunterModel.load(previous_run_dir / "link" / "model.json")
            new_pairs, detail = _score_changed(records, model, changed)
            assert now_pos is not None
            previous, carried = _carried_pairs(previous_run_dir, now_pos, changed)
            detail["pairs_carried"] = int(carried.size)
            detail["pairs_rescored"] = int(len(new_pairs))
            detail["model_from_run"] = json.loads(
                (previous_run_dir / "link" / "report.json").read_text()).get(
                    "model_from_run", previous_run_dir.name)
            pairs = new_pairs
            if carried.size:
                pairs = pd.concat([previous, new_pairs.astype(
                    {c: previous[c].dtype for c in previous.columns if c in new_pairs.columns})],
                    ignore_index=True)
                pairs = pairs[[c for c in new_pairs.columns if c in pairs.columns]]
                rows = np.concatenate([carried, np.arange(len(previous), len(pairs))])
            del previous
        else:
            model = (FellegiSunterModel.load(model_path) if model_path is not None
                     else linker.train(records))
            pairs = linker.predict(records, model, threshold=model.settings.thresholds.review)
            detail = {"blocking": linker.blocking_report.to_dict()
                      if linker.blocking_report else None,
                      "candidate_pairs": int(len(linker.block(records))),
                      "model_from_run": Path(run_dir).name}
    except MatchingError as exc:
        raise ReglinkError(f"link step of run {Path(run_dir).name}: {exc}") from exc
    th = model.settings.thresholds
    _atomic_write(out / "model.json", model.save)
    table = _keyed(pairs, records, _pair_order(pairs, rows))
    del pairs
    # No min/max statistics (nothing filters pairs; they cost a sixth of the write), and LZ4,
    # which cluster, publish and the next run read back faster than Snappy.
    _atomic_write(out / "pairs.parquet", lambda p: pq.write_table(
        table, p, use_dictionary=[c for c in table.column_names if c not in _PLAIN_COLUMNS],
        write_statistics=False, compression="lz4"))
    prob = table["match_probability"].to_numpy()
    result = {
        "run_id": Path(run_dir).name,
        "mode": mode,
        "reason": reason,
        "records": int(len(records)),
        "changed_records": int(changed.sum()) if changed is not None else int(len(records)),
        "pairs": {"kept": table.num_rows, "linked": int((prob >= th.link).sum()),
                  "review": int(((prob >= th.review) & (prob < th.link)).sum())},
        "thresholds": {"link": th.link, "review": th.review},
        "seconds": round(time.perf_counter() - started, 2),
        **detail,
    }
    _write_json(out / "report.json", result)
    return {k: v for k, v in result.items() if k != "blocking"}


# ----------------------------------------------------------------------------------- cluster


def decision_positions(decisions: pd.DataFrame, records: pd.DataFrame
                       ) -> tuple[np.ndarray, np.ndarray, int]:
    """Steward decisions as (must_link, cannot_link) k×2 record positions; and how many
    decisions name a record that is not in this run (they wait for it to come back)."""
    empty = np.empty((0, 2), dtype=np.int64)
    if decisions is None or decisions.empty:
        return empty, empty, 0
    position = pd.Series(np.arange(len(records)), index=pd.MultiIndex.from_frame(
        records[KEY].astype(object)))
    left = position.reindex(pd.MultiIndex.from_arrays(
        [decisions["register_l"].astype(object), decisions["record_id_l"].astype(object)],
        names=KEY))
    right = position.reindex(pd.MultiIndex.from_arrays(
        [decisions["register_r"].astype(object), decisions["record_id_r"].astype(object)],
        names=KEY))
    left, right = left.to_numpy(), right.to_numpy()
    ok = ~(np.isnan(left) | np.isnan(right))
    pairs = np.column_stack([left[ok], right[ok]]).astype(np.int64)
    kind = decisions["decision"].to_numpy()[ok]
    must = pairs[kind == "must_link"] if ok.any() else empty
    cannot = pairs[kind == "cannot_link"] if ok.any() else empty
    return must, cannot, int((~ok).sum())


def cluster_run(run_dir: Path, settings: LinkageSettings | str | Path, *,
                decisions: pd.DataFrame | None = None) -> dict[str, Any]:
    """Cluster the linked pairs of a run into persons; writes ``cluster/``.

    Args:
        decisions: current steward decisions (``register_l, record_id_l, register_r,
            record_id_r, decision``), applied as must-link / cannot-link constraints.
    """
    started = time.perf_counter()
    run_dir = Path(run_dir)
    linker = Linker(settings)
    records = read_records(run_dir, columns=[*KEY, "pin_std"])
    pairs_path = run_dir / "link" / "pairs.parquet"
    if not pairs_path.is_file():
        raise ReglinkError(f"{pairs_path} not found: run the link step of run {run_dir.name} "
                           "first")
    pairs = pd.read_parquet(pairs_path, columns=["left", "right", "match_probability"])
    model = FellegiSunterModel.load(run_dir / "link" / "model.json")
    threshold = model.settings.thresholds.link
    must, cannot, waiting = decision_positions(decisions, records)
    try:
        cluster_id = linker.cluster(records, pairs, threshold=threshold, must_link=must,
                                    cannot_link=cannot)
    except MatchingError as exc:
        raise ReglinkError(f"cluster step of run {run_dir.name}: {exc}") from exc

    # The strongest model link of each record inside its cluster, and how it got there.
    left = pairs["left"].to_numpy()
    right = pairs["right"].to_numpy()
    prob = pairs["match_probability"].to_numpy(dtype=np.float64)
    inside = (prob >= threshold) & (cluster_id[left] == cluster_id[right])
    best = np.full(len(records), np.nan)
    for side in (left[inside], right[inside]):
        np.fmax.at(best, side, prob[inside])
    size = np.bincount(cluster_id)[cluster_id] if len(cluster_id) else np.empty(0, np.int64)
    basis = np.where(size == 1, "single", np.where(np.isnan(best), "steward", "model"))
    crosswalk = pd.DataFrame({
        "register": records["register"].astype("string"),
        "record_id": records["record_id"].astype("string"),
        "cluster_id": cluster_id.astype(np.int64),
        "match_probability": best,
        "link_basis": basis,
    })
    out = run_dir / "cluster"
    table = pa.Table.from_pandas(crosswalk, preserve_index=False)
    # The two files are written at once: Arrow encodes both without the GIL. Arrow writes
    # the CSV several times faster than pandas (quoted only where needed).
    with ThreadPoolExecutor(2, thread_name_prefix="crosswalk") as pool:
        writes = [
            pool.submit(_atomic_write, out / "crosswalk.parquet",
                        lambda p: pq.write_table(table, p)),
            pool.submit(_atomic_write, out / "crosswalk.csv", lambda p: pa_csv.write_csv(
                table.select(["register", "record_id", "cluster_id"]), p,
                pa_csv.WriteOptions(quoting_style="needed"))),
        ]
        for write in writes:
            write.result()
    report = linker.cluster_report.to_dict() if linker.cluster_report else {}
    result = {
        "records": int(len(records)),
        "clusters": int(cluster_id.max()) + 1 if len(cluster_id) else 0,
        "must_link": int(len(must)),
        "cannot_link": int(len(cannot)),
        "decisions_waiting": waiting,
        "seconds": round(time.perf_counter() - started, 2),
        "clustering": report,
        "path": str(out / "crosswalk.parquet"),
    }
    _write_json(out / "report.json", result)
    return result


# ------------------------------------------------------------------------- reglink link (all)


def link_run(
    run_dir: Path,
    settings: LinkageSettings | str | Path,
    *,
    seed: int | None = None,
    model_path: Path | None = None,
) -> LinkResult:
    """Standardise, link (full) and cluster one run without the database.

    What ``reglink link`` does: no steward decisions, no MPI IDs (``reglink run`` does
    the whole nightly run). Also writes ``link/crosswalk.csv`` for ``reglink evaluate``.
    """
    started = time.perf_counter()
    run_dir = Path(run_dir)
    std = standardise_run(run_dir)
    linked = link_records(run_dir, settings, seed=seed, model_path=model_path)
    clustered = cluster_run(run_dir, settings)
    shutil.copyfile(run_dir / "cluster" / "crosswalk.csv", run_dir / "link" / "crosswalk.csv")
    return LinkResult(
        run_dir=run_dir,
        records=std["records"],
        pairs_scored=linked["candidate_pairs"],
        pairs_linked=linked["pairs"]["linked"],
        pairs_review=linked["pairs"]["review"],
        clusters=clustered["clusters"],
        seconds={"standardise": std["seconds"], "link": linked["seconds"],
                 "cluster": clustered["seconds"], "total": time.perf_counter() - started},
    )
