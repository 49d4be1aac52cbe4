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
from pipelines.errors import ReglinkError
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


def load_validated(run_dir: Path) -> pd.DataFrame:
    """The validated canonical records of a run, all registers concatenated."""
    validated = require_validated(run_dir)
    files = sorted(p for p in validated.glob("*.parquet") if p.name != "quarantine.parquet")
    if not files:
        raise ReglinkError(f"no validated records in {validated}; run `reglink validate` first")
    frames = []
    for path in files:
        frame = pd.read_parquet(path)
        frames.append(frame[[c for c in RECORD_COLUMNS if c in frame.columns]])
    records = pd.concat(frames, ignore_index=True)
    duplicated = records.duplicated(KEY)
    if duplicated.any():
        first = records.loc[duplicated].iloc[0]
        raise ReglinkError(
            f"register {first['register']}: record_id is not unique "
            f"({int(duplicated.sum())} repeated ids); fix the extract or its record_id mapping"
        )
    return records


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


def standardise_run(run_dir: Path) -> dict[str, Any]:
    """Standardise the validated records of a run into ``standardise/records.parquet``.

    Every record is standardised every run (the given-name vocabulary is learnt from all of
    them, so an old record's standardised form can change when new names arrive; the
    content hash then marks it changed).
    """
    t = time.perf_counter()
    records = standardise(load_validated(run_dir))
    # Keys sort the file so that record positions do not depend on the register file order.
    records = records.sort_values(KEY, kind="stable", ignore_index=True)
    hashed = records.drop(columns=KEY)
    records["content_hash"] = pd.util.hash_pandas_object(hashed, index=False).to_numpy(
        dtype=np.uint64).view(np.int64)
    _atomic_write(records_path(run_dir), lambda p: records.to_parquet(p, index=False))
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
    prev_pos = _positions(records, previous)
    changed = (prev_pos < 0) | (previous["content_hash"].to_numpy(dtype=np.int64)[
        np.maximum(prev_pos, 0)] != records["content_hash"].to_numpy(dtype=np.int64))
    share = float(changed.mean()) if len(changed) else 0.0
    if share > MAX_INCREMENTAL_SHARE:
        return "full", None, (f"{share:.1%} of the records changed (more than "
                              f"{MAX_INCREMENTAL_SHARE:.0%})"), None
    return ("incremental", changed,
            f"{int(changed.sum())} new or changed records ({share:.2%})", now_pos)


def _positions(records: pd.DataFrame, other: pd.DataFrame) -> np.ndarray:
    """Position in ``other`` of each record of ``records`` (by key; -1: not there), hashed
    by Arrow without a Python object per key."""
    def keys(frame: pd.DataFrame) -> pa.Array:
        register, record_id = (pa.array(frame[k]).cast(pa.large_string()) for k in KEY)
        return pc.binary_join_element_wise(register, record_id,
                                           pa.scalar("\x00", pa.large_string()))

    if len(other) == 0:
        return np.full(len(records), -1, dtype=np.int64)
    found = pc.index_in(keys(records), value_set=keys(other))
    return pc.fill_null(found, -1).to_numpy(zero_copy_only=False).astype(np.int64)


def _touching_blocks(records: pd.DataFrame, settings: LinkageSettings,
                     changed: np.ndarray) -> np.ndarray:
    """Mask of the records that share a block key of some rule with a changed record."""
    keep = changed.copy()
    cache: dict[str, tuple[np.ndarray, int]] = {}
    for rule in settings.blocking_rules:
        if any(c not in records.columns for c in rule.all_columns):
            continue
        if rule.swap_with is not None:
            key_a, key_b = swap_rule_keys(records, rule.columns, rule.swap_with, cache)
            wanted = np.union1d(key_a[changed], key_b[changed])
            wanted = wanted[wanted >= 0]
            keep |= _member(key_a, wanted) | _member(key_b, wanted)
        else:
            key = rule_key(records, rule.columns, cache)
            wanted = np.sort(key[changed])
            wanted = wanted[wanted >= 0]
            keep |= _member(key, wanted)
    return keep


def _member(values: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """``np.isin(values, wanted)`` for a sorted ``wanted``, by binary search (np.isin sorts
    millions of values each time)."""
    if wanted.size == 0:
        return np.zeros(values.shape, dtype=bool)
    at = np.minimum(np.searchsorted(wanted, values), wanted.size - 1)
    return wanted[at] == values


def _score_changed(records: pd.DataFrame, model: FellegiSunterModel,
                   changed: np.ndarray, explain: bool = True) -> tuple[pd.DataFrame, dict]:
    """Score every candidate pair that touches a changed record, with ``model``."""
    settings = model.settings
    subset = np.flatnonzero(_touching_blocks(records, settings, changed))
    candidates = block_records(records.iloc[subset].reset_index(drop=True),
                               settings.blocking_rules, settings.max_block_size)
    left = subset[candidates.left]
    right = subset[candidates.right]
    touch = changed[left] | changed[right]
    left, right, rule = left[touch], right[touch], candidates.rule[touch]
    # Column caches over all records: TF frequencies of unseen values then match a full run.
    cols = RecordColumns(records)
    comparisons = model.comparisons()
    gammas = compare_pairs(comparisons, cols, left, right)
    pairs = score_pairs(model, comparisons, cols, left, right, gammas,
                        threshold=settings.thresholds.review, explain=explain, rule=rule,
                        rule_names=candidates.rule_names)
    report = {"records_blocked": int(subset.size), "candidate_pairs": int(left.size),
              "blocking": candidates.report.to_dict()}
    return pairs, report


_PAIR_KEYS = ["register_l", "record_id_l", "register_r", "record_id_r"]


def _keyed(pairs: pd.DataFrame, records: pd.DataFrame) -> pa.Table:
    """``pairs`` with both records' keys in front (registers dictionary-encoded), as Arrow."""
    left = pa.array(pairs["left"].to_numpy(dtype=np.int64))
    right = pa.array(pairs["right"].to_numpy(dtype=np.int64))
    register = pa.array(records["register"].astype("string")).dictionary_encode()
    record_id = pa.array(records["record_id"].astype("string"))
    table = pa.Table.from_pandas(pairs, preserve_index=False)
    for i, (name, column, side) in enumerate([
            ("register_l", register, left), ("record_id_l", record_id, left),
            ("register_r", register, right), ("record_id_r", record_id, right)]):
        table = table.add_column(i, name, column.take(side))
    return table


def _carried_pairs(previous_run_dir: Path, now_pos: np.ndarray,
                   changed: np.ndarray) -> pd.DataFrame:
    """The previous run's pairs between records that are still here and unchanged,
    renumbered to this run's record positions (``now_pos``: the position now of each record
    of the previous run, -1 when it is gone)."""
    path = previous_run_dir / "link" / "pairs.parquet"
    columns = [c for c in pq.read_schema(path).names if c not in _PAIR_KEYS]
    prev = pd.read_parquet(path, columns=columns)
    lpos = now_pos[prev["left"].to_numpy()]
    rpos = now_pos[prev["right"].to_numpy()]
    ok = (lpos >= 0) & (rpos >= 0)
    ok &= ~(changed[np.maximum(lpos, 0)] | changed[np.maximum(rpos, 0)])
    carried = prev.loc[ok].reset_index(drop=True)
    del prev
    lo, hi = np.minimum(lpos[ok], rpos[ok]), np.maximum(lpos[ok], rpos[ok])
    carried["left"] = lo.astype(carried["left"].dtype)
    carried["right"] = hi.astype(carried["right"].dtype)
    return carried


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
    try:
        if mode == "incremental":
            assert changed is not None and previous_run_dir is not None
            model = FellegiSunterModel.load(previous_run_dir / "link" / "model.json")
            new_pairs, detail = _score_changed(records, model, changed)
            assert now_pos is not None
            carried = _carried_pairs(previous_run_dir, now_pos, changed)
            detail["pairs_carried"] = int(len(carried))
            detail["pairs_rescored"] = int(len(new_pairs))
            detail["model_from_run"] = json.loads(
                (previous_run_dir / "link" / "report.json").read_text()).get(
                    "model_from_run", previous_run_dir.name)
            pairs = pd.concat([carried, new_pairs.astype(
                {c: carried[c].dtype for c in carried.columns if c in new_pairs.columns})],
                ignore_index=True) if len(carried) else new_pairs
            pairs = pairs[[c for c in new_pairs.columns if c in pairs.columns]]
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
    order = np.lexsort((pairs["right"].to_numpy(), pairs["left"].to_numpy()))
    if not (order[1:] > order[:-1]).all():  # carried pairs come sorted; new ones may not
        pairs = pairs.take(order).reset_index(drop=True)
    th = model.settings.thresholds
    _atomic_write(out / "model.json", model.save)
    _atomic_write(out / "pairs.parquet", lambda p: pq.write_table(_keyed(pairs, records), p))
    prob = pairs["match_probability"].to_numpy()
    result = {
        "run_id": Path(run_dir).name,
        "mode": mode,
        "reason": reason,
        "records": int(len(records)),
        "changed_records": int(changed.sum()) if changed is not None else int(len(records)),
        "pairs": {"kept": int(len(pairs)), "linked": int((prob >= th.link).sum()),
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
    _atomic_write(out / "crosswalk.parquet", lambda p: crosswalk.to_parquet(p, index=False))
    # Arrow writes the CSV several times faster than pandas (quoted only where needed).
    _atomic_write(out / "crosswalk.csv", lambda p: pa_csv.write_csv(
        pa.Table.from_pandas(crosswalk[["register", "record_id", "cluster_id"]],
                             preserve_index=False), p,
        pa_csv.WriteOptions(quoting_style="needed")))
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
