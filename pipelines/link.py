"""The link step of a run: standardise the extracts, train or load a model, score, cluster.

Reads the records that passed validation, ``runs/<run_id>/validate/<register>.parquet``
(a run whose validation failed or never ran is refused), and writes ``runs/<run_id>/link/``:

- ``model.json``: the trained Fellegi–Sunter model (settings, m, u, λ, TF tables, seed);
- ``pairs.parquet``: scored candidate pairs at or above the review threshold, keyed by
  (register, record_id) on both sides, with each comparison's level and contribution;
- ``crosswalk.csv``: ``register,record_id,cluster_id`` for every linked record;
- ``report.json``: counts, blocking report, model summary, clustering report, timings.

Every file is written to a temporary name and renamed, so a rerun replaces a run's link
output whole, and a crash leaves the previous output in place.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from matching import LinkageSettings, Linker, standardise
from matching.errors import MatchingError
from matching.model import FellegiSunterModel
from pipelines.errors import ReglinkError
from pipelines.validate import require_validated

log = logging.getLogger(__name__)

# Canonical columns the engine may use; the originals (src.*) stay in the extract files.
_LINK_COLUMNS = (
    "register", "record_id", "pin", "surname", "given_name", "patronymic", "sex",
    "birth_date", "birth_date_quality", "father_name", "mother_name", "region", "district",
    "locality",
)


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
    """The validated canonical records of a run, all registers concatenated.

    Positions in the returned frame are the record indices used by the engine.
    """
    validated = require_validated(run_dir)
    files = sorted(p for p in validated.glob("*.parquet") if p.name != "quarantine.parquet")
    if not files:
        raise ReglinkError(f"no validated records in {validated}; run `reglink validate` first")
    frames = []
    for path in files:
        frame = pd.read_parquet(path, columns=None)
        frames.append(frame[[c for c in _LINK_COLUMNS if c in frame.columns]])
    records = pd.concat(frames, ignore_index=True)
    duplicated = records.duplicated(["register", "record_id"])
    if duplicated.any():
        first = records.loc[duplicated].iloc[0]
        raise ReglinkError(
            f"register {first['register']}: record_id is not unique "
            f"({int(duplicated.sum())} repeated ids); fix the extract or its record_id mapping"
        )
    return records


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def link_run(
    run_dir: Path,
    settings: LinkageSettings | str | Path,
    *,
    seed: int | None = None,
    model_path: Path | None = None,
) -> LinkResult:
    """Link the extracts of one run; see the module docstring for what is written.

    Args:
        run_dir: the run's folder (``<data-dir>/runs/<run_id>``).
        settings: linkage settings or the path of ``linkage.yaml``.
        seed: overrides the settings' seed.
        model_path: score with this saved model instead of training a new one.
    """
    started = time.perf_counter()
    timings: dict[str, float] = {}
    records = load_validated(run_dir)
    log.info("link: %d records from %d registers", len(records), records["register"].nunique())

    t = time.perf_counter()
    records = standardise(records)
    timings["standardise"] = time.perf_counter() - t

    try:
        linker = Linker(settings, seed=seed)
        if model_path is not None:
            model = FellegiSunterModel.load(model_path)
        else:
            model = linker.train(records)
        pairs = linker.predict(records, model)
        cluster_id = linker.cluster(records, pairs)
    except MatchingError as exc:
        raise ReglinkError(f"link step of run {run_dir.name}: {exc}") from exc
    timings.update(linker.timings)

    out = run_dir / "link"
    out.mkdir(parents=True, exist_ok=True)
    th = model.settings.thresholds
    _atomic_write(out / "model.json", model.save)

    review_pairs = pairs[pairs["match_probability"] >= th.review].reset_index(drop=True)
    keyed = review_pairs.drop(columns=["left", "right"])
    left = review_pairs["left"].to_numpy()
    right = review_pairs["right"].to_numpy()
    keyed.insert(0, "register_l", records["register"].to_numpy()[left])
    keyed.insert(1, "record_id_l", records["record_id"].to_numpy()[left])
    keyed.insert(2, "register_r", records["register"].to_numpy()[right])
    keyed.insert(3, "record_id_r", records["record_id"].to_numpy()[right])
    _atomic_write(out / "pairs.parquet", lambda p: keyed.to_parquet(p, index=False))

    crosswalk = pd.DataFrame({
        "register": records["register"].astype("string"),
        "record_id": records["record_id"].astype("string"),
        "cluster_id": cluster_id.astype(np.int64),
    })
    _atomic_write(out / "crosswalk.csv", lambda p: crosswalk.to_csv(p, index=False))

    prob = pairs["match_probability"].to_numpy()
    result = LinkResult(
        run_dir=run_dir,
        records=len(records),
        pairs_scored=int(len(pairs)),
        pairs_linked=int((prob >= th.link).sum()),
        pairs_review=int(((prob >= th.review) & (prob < th.link)).sum()),
        clusters=int(len(np.unique(cluster_id))) if len(cluster_id) else 0,
        seconds={**timings, "total": time.perf_counter() - started},
    )
    report: dict[str, Any] = {
        "run_id": run_dir.name,
        "records": result.records,
        "records_per_register": records["register"].value_counts().sort_index().to_dict(),
        "pairs": {"scored": result.pairs_scored, "linked": result.pairs_linked,
                  "review": result.pairs_review},
        "clusters": result.clusters,
        "thresholds": {"link": th.link, "review": th.review},
        "blocking": linker.blocking_report.to_dict() if linker.blocking_report else None,
        "clustering": linker.cluster_report.to_dict() if linker.cluster_report else None,
        "timings_s": {k: round(v, 3) for k, v in result.seconds.items()},
    }
    _atomic_write(out / "report.json",
                  lambda p: p.write_text(json.dumps(report, indent=2, default=str)))
    return result
