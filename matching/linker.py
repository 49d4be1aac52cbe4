"""The facade: block, compare, train, predict and cluster with one object.

    linker = Linker(LinkageSettings.from_yaml("config/linkage.yaml"))
    pairs, cluster_id, report = linker.run(records)

or step by step (``train`` and ``predict`` on the same DataFrame share the blocking and the
comparison vectors, computed once)::

    model = linker.train(records)
    pairs = linker.predict(records)
    cluster_id = linker.cluster(records, pairs)
    model.save("model.json")
    pairs_next = Linker(model.settings).predict(new_records, model=FellegiSunterModel.load(...))

``records`` are standardised records (``matching.standardise``), all registers concatenated;
positions ``0 .. n-1`` are the record indices used in the pairs and the cluster ids.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from matching.blocking import CandidatePairs, block_records
from matching.comparisons import Comparison, RecordColumns, compare_pairs
from matching.errors import MatchingError
from matching.model import FellegiSunterModel, active_comparisons, train_model
from matching.predict import score_pairs
from matching.settings import LinkageSettings

__all__ = ["Linker"]

log = logging.getLogger(__name__)

_DEFAULT = object()


class Linker:
    """Record linkage of standardised person records with one set of settings.

    Args:
        settings: a :class:`LinkageSettings`, a settings dict, or the path of a YAML file.
        seed: overrides the settings' seed (u sampling); recorded in the model.

    Attributes:
        settings: the settings in use.
        model: the last trained (or given) model.
        blocking_report: the report of the last blocking.
        cluster_report: the report of the last clustering.
        timings: seconds per stage of the last calls (``block``, ``compare``, ``train``,
            ``predict``, ``cluster``).
    """

    def __init__(self, settings: LinkageSettings | dict | str | Path, *,
                 seed: int | None = None) -> None:
        if isinstance(settings, str | Path):
            settings = LinkageSettings.from_yaml(settings)
        elif isinstance(settings, dict):
            settings = LinkageSettings.from_dict(settings)
        elif not isinstance(settings, LinkageSettings):
            raise MatchingError(f"settings must be LinkageSettings, a dict or a YAML path, got "
                                f"{type(settings).__name__}")
        if seed is not None and seed != settings.seed:
            settings = settings.with_seed(seed)
        self.settings: LinkageSettings = settings
        self.model: FellegiSunterModel | None = None
        self.blocking_report = None
        self.cluster_report = None
        self.timings: dict[str, float] = {}
        self._cache: dict[str, Any] = {}

    # ---- internals ---------------------------------------------------------------------

    @contextmanager
    def _timed(self, stage: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[stage] = self.timings.get(stage, 0.0) + time.perf_counter() - start

    def _check(self, records: pd.DataFrame) -> None:
        if not isinstance(records, pd.DataFrame):
            raise MatchingError(f"records must be a pandas DataFrame, got "
                                f"{type(records).__name__}")

    def _candidates(self, records: pd.DataFrame, truth: Any = None) -> tuple[RecordColumns,
                                                                            CandidatePairs]:
        c = self._cache
        if c.get("records") is not records or c.get("shape") != records.shape or (
                truth is not None):
            self._cache = c = {"records": records, "shape": records.shape,
                               "cols": RecordColumns(records)}
            with self._timed("block"):
                c["candidates"] = block_records(records, self.settings.blocking_rules,
                                                self.settings.max_block_size, truth=truth)
            self.blocking_report = c["candidates"].report
        return c["cols"], c["candidates"]

    def _gammas(self, records: pd.DataFrame, comparisons: list[Comparison]) -> tuple[
            RecordColumns, CandidatePairs, np.ndarray]:
        cols, cands = self._candidates(records)
        names = tuple(c.name for c in comparisons)
        if self._cache.get("gamma_names") != names:
            with self._timed("compare"):
                self._cache["gammas"] = compare_pairs(comparisons, cols, cands.left, cands.right)
            self._cache["gamma_names"] = names
        return cols, cands, self._cache["gammas"]

    # ---- public API --------------------------------------------------------------------

    def block(self, records: pd.DataFrame, truth: np.ndarray | pd.Series | None = None
              ) -> CandidatePairs:
        """Candidate pairs under the settings' blocking rules (with recall if ``truth``)."""
        self._check(records)
        return self._candidates(records, truth)[1]

    def train(self, records: pd.DataFrame) -> FellegiSunterModel:
        """Estimate the model (u, m, λ, TF tables) on ``records``; also kept as ``.model``."""
        self._check(records)
        comparisons = active_comparisons(self.settings, records)
        if not comparisons:
            raise MatchingError("no comparison can run: none of the comparisons' columns ("
                                + ", ".join(c for s in self.settings.comparisons
                                            for c in s.column_names)
                                + ") is in the records; standardise them first")
        cols, cands, gammas = self._gammas(records, comparisons)
        with self._timed("train"):
            self.model = train_model(records, self.settings, cands, gammas, comparisons, cols)
        return self.model

    def predict(self, records: pd.DataFrame, model: FellegiSunterModel | None = None, *,
                threshold: float | None | object = _DEFAULT, explain: bool = True
                ) -> pd.DataFrame:
        """Score the candidate pairs of ``records``.

        Args:
            records: standardised records.
            model: a trained model (default: the last one trained by this linker).
            threshold: keep pairs with ``match_probability >= threshold``; default the
                model's ``thresholds.retain``; ``None`` keeps every candidate pair.
            explain: add the per-comparison levels and contributions.

        Returns:
            One row per pair: ``left``, ``right`` (record positions, left < right),
            ``match_weight``, ``match_probability``, ``rule``, and ``gamma_<name>``,
            ``w_<name>`` per comparison. ``match_weight == attrs["prior_weight"] +
            sum of w_<name>``.
        """
        self._check(records)
        model = model or self.model
        if model is None:
            raise MatchingError("no model: call train(records) first or pass a saved model "
                                "(FellegiSunterModel.load(path))")
        comparisons = model.comparisons()
        cols, cands, gammas = self._gammas(records, comparisons)
        if threshold is _DEFAULT:
            threshold = model.settings.thresholds.retain
        with self._timed("predict"):
            pairs = score_pairs(model, comparisons, cols, cands.left, cands.right, gammas,
                                threshold=threshold, explain=explain, rule=cands.rule,
                                rule_names=cands.rule_names)
        return pairs

    def pin_key(self, records: pd.DataFrame) -> np.ndarray | None:
        """Code per record of its valid PIN (``-1``: none), per ``pin_column``/``pin_check``."""
        column = self.settings.pin_column
        if not column or column not in records.columns:
            return None
        pins = records[column]
        codes, _ = pd.factorize(pins, use_na_sentinel=True)
        if self.settings.pin_check == "luhn":
            from matching.pin import valid_pin_mask

            codes = np.where(np.asarray(valid_pin_mask(pins), dtype=bool), codes, -1)
        return codes.astype(np.int64)

    def cluster(self, records: pd.DataFrame, pairs: pd.DataFrame, *,
                threshold: float | None = None, must_link: np.ndarray | None = None,
                cannot_link: np.ndarray | None = None) -> np.ndarray:
        """Cluster id per record (int64, ``0 .. k-1``) from the scored pairs.

        Pairs with ``match_probability >= threshold`` (default: the settings' link threshold)
        are links; steward must-link/cannot-link pairs (k×2 record positions) and different
        valid PINs constrain the clusters.
        """
        from matching.clustering import cluster_records

        self._check(records)
        threshold = self.settings.thresholds.link if threshold is None else threshold
        with self._timed("cluster"):
            result = cluster_records(
                len(records), pairs["left"].to_numpy(), pairs["right"].to_numpy(),
                pairs["match_probability"].to_numpy(dtype=np.float64), threshold=threshold,
                must_link=must_link, cannot_link=cannot_link, pin_key=self.pin_key(records))
        self.cluster_report = result.report
        return result.cluster_id

    def run(self, records: pd.DataFrame, *, truth: np.ndarray | pd.Series | None = None,
            must_link: np.ndarray | None = None, cannot_link: np.ndarray | None = None
            ) -> tuple[pd.DataFrame, np.ndarray, dict[str, Any]]:
        """Block, train, predict and cluster; returns (pairs, cluster_id, report)."""
        self.timings = {}
        if truth is not None:
            self.block(records, truth)
        model = self.train(records)
        pairs = self.predict(records, model)
        cluster_id = self.cluster(records, pairs, must_link=must_link, cannot_link=cannot_link)
        th = model.settings.thresholds
        prob = pairs["match_probability"].to_numpy()
        report = {
            "n_records": len(records),
            "blocking": self.blocking_report.to_dict() if self.blocking_report else None,
            "model": {k: v for k, v in model.to_dict().items() if k != "settings"},
            "pairs": {"scored": int(len(self._cache["candidates"])),
                      "retained": int(len(pairs)),
                      "linked": int((prob >= th.link).sum()),
                      "review": int(((prob >= th.review) & (prob < th.link)).sum())},
            "clusters": (self.cluster_report.to_dict() if self.cluster_report is not None
                         and hasattr(self.cluster_report, "to_dict") else None),
            "timings": dict(self.timings),
        }
        for p in report["model"]["comparisons"]:
            p.pop("tf", None)  # the TF tables hold names: kept in the model file only
        return pairs, cluster_id, report

    def clear_cache(self) -> None:
        """Forget the blocking and comparison vectors kept for the last records."""
        self._cache = {}

