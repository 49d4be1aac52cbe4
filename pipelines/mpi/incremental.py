"""Incremental runs: how they are made, and how closely they agree with a full relink.

The incremental link itself is in :func:`pipelines.link.link_records` (only records whose
content hash changed are blocked and scored, with the previous run's saved model; pairs
between unchanged records are carried over). This module measures it:
:func:`crosswalk_agreement` gives the pairwise precision, recall and F1 of one crosswalk
against another (an incremental run's against a full relink of the same data), and
:func:`make_nightly_delta` writes a copy of a source folder with a night's worth of changes
(corrected names, new records, deleted records) for tests and benchmarks.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from matching.evaluation import evaluate_clusters
from pipelines.registers import RegisterConfig, load_register_configs

log = logging.getLogger(__name__)


def crosswalk_agreement(reference: pd.DataFrame, other: pd.DataFrame,
                        column: str = "cluster_id") -> dict[str, Any]:
    """Pairwise and B-cubed agreement of ``other``'s clusters with ``reference``'s.

    Both frames have ``register``, ``record_id`` and ``column`` (a cluster or MPI ID).
    """
    truth = reference[["register", "record_id", column]].rename(columns={column: "person_id"})
    pred = other[["register", "record_id", column]].rename(columns={column: "cluster_id"})
    result = evaluate_clusters(truth.astype(str), pred.astype(str))
    pw = result.pairwise
    return {"pairwise_precision": pw.precision, "pairwise_recall": pw.recall,
            "pairwise_f1": pw.f1, "bcubed_f1": result.bcubed.f1,
            "records": result.n_records, "reference_pairs": pw.true_pairs,
            "other_pairs": pw.predicted_pairs}


def _native(config: RegisterConfig, canonical: str) -> str | None:
    spec = config.columns.get(canonical)
    if spec is not None and getattr(spec, "column", None):
        return str(spec.column)
    for split in config.split:
        if canonical in split.into:
            return str(split.column)
    return None


def _read(config: RegisterConfig, path: Path) -> pd.DataFrame:
    if config.source.file_format == "parquet":
        return pd.read_parquet(path).astype("string")
    return pd.read_csv(path, dtype=str, keep_default_na=False, encoding=config.source.encoding,
                       sep=config.source.delimiter)


def _write(config: RegisterConfig, frame: pd.DataFrame, path: Path) -> None:
    if config.source.file_format == "parquet":
        frame.to_parquet(path, index=False)
    else:
        frame.to_csv(path, index=False, encoding=config.source.encoding,
                     sep=config.source.delimiter)


def _typo(value: str, rng: np.random.Generator) -> str:
    """Swap two neighbouring letters inside the last word: a typo made or corrected."""
    if len(value) < 4:
        return value
    i = int(rng.integers(1, len(value) - 2))
    return value[:i] + value[i + 1] + value[i] + value[i + 2:]


def make_nightly_delta(source_dir: Path, out_dir: Path, config_dir: Path, *,
                       share: float = 0.005, seed: int = 1) -> dict[str, int]:
    """Copy a synthetic source folder with ``share`` of its records changed overnight.

    Of the changed records, 40 % have a name corrected (two letters swapped), 40 % get a
    new record of the same person in the same register (a new card, a re-registration) and
    20 % are deleted. ``truth.csv`` is updated to match. Returns the counts.
    """
    rng = np.random.default_rng(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    truth = pd.read_csv(source_dir / "truth.csv", dtype=str, keep_default_na=False)
    truth_drop: list[pd.DataFrame] = []
    truth_add: list[pd.DataFrame] = []
    counts = {"corrected": 0, "added": 0, "deleted": 0}
    for name, config in sorted(load_register_configs(config_dir).items()):
        path = Path(config.source.path)
        src = source_dir / path
        frame = _read(config, src)
        rid = _native(config, "record_id")
        n_change = int(round(len(frame) * share))
        picked = rng.choice(len(frame), size=n_change, replace=False)
        kinds = rng.choice(3, size=n_change, p=[0.4, 0.4, 0.2])
        name_col = _native(config, "given_name") or _native(config, "surname")
        fix = picked[kinds == 0]
        if name_col is not None and fix.size:
            col = frame.columns.get_loc(name_col)
            frame.iloc[fix, col] = [_typo(str(v), rng) for v in frame.iloc[fix, col]]
            counts["corrected"] += int(fix.size)
        add = picked[kinds == 1]
        new_rows = frame.iloc[add].copy()
        new_ids = [f"{v}-N{seed}{k}" for k, v in enumerate(new_rows[rid])]
        person = truth[truth["register"] == name].set_index("record_id")["person_id"]
        truth_add.append(pd.DataFrame({"register": name, "record_id": new_ids,
                                       "person_id": person.reindex(new_rows[rid]).to_numpy()}))
        new_rows[rid] = new_ids
        counts["added"] += len(new_rows)
        gone = picked[kinds == 2]
        truth_drop.append(pd.DataFrame({"register": name,
                                        "record_id": frame.iloc[gone][rid].to_numpy()}))
        counts["deleted"] += int(gone.size)
        frame = pd.concat([frame.drop(frame.index[gone]), new_rows], ignore_index=True)
        _write(config, frame, out_dir / path)
    drop = pd.concat(truth_drop, ignore_index=True)
    keep = ~pd.MultiIndex.from_frame(truth[["register", "record_id"]]).isin(
        pd.MultiIndex.from_frame(drop))
    truth = pd.concat([truth[keep], *truth_add], ignore_index=True)
    truth.to_csv(out_dir / "truth.csv", index=False)
    log.info("nightly delta: %s", counts)
    return counts
