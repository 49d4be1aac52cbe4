"""Splink 5 (DuckDB) on a prepared records file, configured as a competent Splink user would.

Bench-only: imported only by the child process that ``bench/linkage.py --only splink`` starts,
never by reglink or its tests.

What Splink is given (see bench/README.md):

- FEBRL: the canonical columns (given_name, surname, birth_date as ISO, pin = soc_sec_id),
  plus FEBRL's own postcode and street_number, lowercased and trimmed; the configuration
  follows Splink's own FEBRL3/FEBRL4 examples (NameComparison with term frequencies,
  DateOfBirthComparison, Damerau-Levenshtein on the ID and postcode, exact street number
  with term frequencies).
- synth: reglink's transliterated name keys (``surname_std``, ``given_std``,
  ``patronymic_root``) so that Cyrillic/Latin spellings do not handicap Splink, which has no
  transliteration of its own; ISO birth date, digits-only PIN, sex, district key, and the
  parents' name keys (``father_root``, ``mother_std``) where a register has them.

Training: probability two random records match from deterministic rules, u by random
sampling (seeded), m by EM over two or three blocking rules. Prediction and clustering at the
same match-probability threshold.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import pandas as pd

log = logging.getLogger("bench.splink")


@dataclass
class SplinkPlan:
    """The Splink model for one data set: data as Splink sees it, settings and training."""

    link_type: str
    columns: list[str]
    comparisons: list[Any]
    blocking_rules: list[Any]
    deterministic_rules: list[Any]
    recall: float
    em_rules: list[Any]
    u_max_pairs: float
    # (given, surname) columns joined into ``full_name`` for term frequencies of the full name
    full_name: tuple[str, str] | None = None


def _clean(df: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Light cleaning a Splink user does: lowercase, trim, empty → null."""
    out = pd.DataFrame(index=df.index)
    for col in columns:
        s = df[col]
        if isinstance(s.dtype, pd.StringDtype) or s.dtype == object:
            s = s.astype("string").str.strip().str.lower().replace("", pd.NA)
        out[col] = s
    return out


def febrl_plan(dataset: str) -> SplinkPlan:
    import splink.comparison_library as cl
    from splink import block_on

    comparisons = [
        # Names swapped between the two fields are common in FEBRL: the library's
        # forename/surname comparison has a "columns reversed" level for them.
        cl.ForenameSurnameComparison(
            "given_name", "surname", forename_surname_concat_col_name="full_name"
        ).configure(term_frequency_adjustments=True),
        cl.DateOfBirthComparison(
            "birth_date", input_is_string=True, datetime_format="%Y-%m-%d",
            invalid_dates_as_null=True,
        ),
        cl.DamerauLevenshteinAtThresholds("pin", [1, 2]),
        cl.ExactMatch("street_number").configure(term_frequency_adjustments=True),
        cl.JaroWinklerAtThresholds("address_1", [0.9, 0.7]).configure(
            term_frequency_adjustments=True
        ),
        cl.DamerauLevenshteinAtThresholds("postcode", [1, 2]).configure(
            term_frequency_adjustments=True
        ),
    ]
    blocking = [
        block_on("given_name", "surname"),
        "l.given_name = r.surname and l.surname = r.given_name",
        block_on("birth_date"),
        block_on("pin"),
        block_on("region", "address"),
        block_on("street_number", "locality"),
        block_on("postcode"),
    ]
    deterministic = [
        block_on("pin"),
        block_on("given_name", "surname", "birth_date"),
        "l.given_name = r.surname and l.surname = r.given_name and l.birth_date = r.birth_date",
    ]
    return SplinkPlan(
        link_type="link_only" if dataset == "febrl4" else "dedupe_only",
        columns=["given_name", "surname", "birth_date", "pin", "street_number", "postcode",
                 "region", "address", "locality", "address_1"],
        comparisons=comparisons,
        blocking_rules=blocking,
        deterministic_rules=deterministic,
        recall=0.8 if dataset == "febrl4" else 0.9,
        em_rules=[block_on("birth_date"), block_on("postcode")],
        u_max_pairs=1e7,
        full_name=("given_name", "surname"),
    )


def synth_plan(n_records: int) -> SplinkPlan:
    import splink.comparison_library as cl
    from splink import block_on

    comparisons = [
        cl.NameComparison("surname_std").configure(term_frequency_adjustments=True),
        cl.NameComparison("given_std").configure(term_frequency_adjustments=True),
        cl.JaroWinklerAtThresholds("patronymic_root", [0.9]).configure(
            term_frequency_adjustments=True
        ),
        # term frequencies on the birth date: placeholder dates (01.01.YYYY) are frequent
        cl.DateOfBirthComparison(
            "birth_date", input_is_string=True, datetime_format="%Y-%m-%d",
            invalid_dates_as_null=True,
        ).configure(term_frequency_adjustments=True),
        cl.DamerauLevenshteinAtThresholds("pin_std", [1]),
        cl.ExactMatch("sex"),
        cl.ExactMatch("district_std").configure(term_frequency_adjustments=True),
        cl.JaroWinklerAtThresholds("father_root", [0.9]),
        cl.JaroWinklerAtThresholds("mother_std", [0.9]),
    ]
    blocking = [
        block_on("pin_std"),
        block_on("surname_std", "given_std", "birth_year"),
        block_on("given_std", "birth_date"),
        block_on("surname_std", "birth_date"),
        block_on("patronymic_root", "birth_date", "district_std"),
    ]
    deterministic = [
        block_on("pin_std", "birth_date"),
        block_on("surname_std", "given_std", "patronymic_root", "birth_date"),
    ]
    return SplinkPlan(
        link_type="dedupe_only",
        columns=["surname_std", "given_std", "patronymic_root", "birth_date", "birth_year",
                 "pin_std", "sex", "district_std", "father_root", "mother_std"],
        comparisons=comparisons,
        blocking_rules=blocking,
        deterministic_rules=deterministic,
        recall=0.7,
        em_rules=[block_on("birth_date"), block_on("pin_std"),
                  block_on("surname_std", "given_std")],
        u_max_pairs=max(1e7, min(1e8, n_records * 20.0)),
    )


def run_splink(
    records: pd.DataFrame, dataset: str, *, seed: int, threshold: float
) -> dict[str, Any]:
    """Train, predict and cluster with Splink; time each stage.

    Args:
        records: the prepared records (``register``, ``record_id`` and the plan's columns).
        dataset: ``febrl3``, ``febrl4`` or ``synth``.
        seed: seed of u sampling.
        threshold: match probability at which pairs are predicted and clustered.

    Returns:
        ``clusters`` (register, record_id, cluster_id), ``seconds`` per stage, ``n_pairs``
        and the settings used.
    """
    import splink
    from splink import DuckDBAPI, Linker, SettingsCreator

    plan = febrl_plan(dataset) if dataset.startswith("febrl") else synth_plan(len(records))
    if "address_1" in plan.columns:
        records = records.assign(address_1=records["src.address_1"])
    data = _clean(records, [c for c in plan.columns if c != "birth_year"])
    if "birth_year" in plan.columns:
        data["birth_year"] = records["birth_date"].astype("string").str.slice(0, 4)
    if plan.full_name:
        given, surname = plan.full_name
        data["full_name"] = data[given] + " " + data[surname]  # missing if either is
    data.insert(0, "unique_id", records["register"] + "|" + records["record_id"])
    data.insert(1, "register", records["register"])

    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    db_api = DuckDBAPI()
    if plan.link_type == "link_only":
        tables = [
            db_api.register(part.reset_index(drop=True), dataset_display_name=f"in_{name}")
            for name, part in data.groupby("register", sort=True)
        ]
    else:
        tables = [db_api.register(data, dataset_display_name="in_records")]
    seconds["load"] = time.perf_counter() - t0

    settings = SettingsCreator(
        link_type=plan.link_type,
        unique_id_column_name="unique_id",
        comparisons=plan.comparisons,
        blocking_rules_to_generate_predictions=plan.blocking_rules,
        retain_matching_columns=False,
        retain_intermediate_calculation_columns=False,
    )
    t0 = time.perf_counter()
    linker = Linker(tables if len(tables) > 1 else tables[0], settings, log_level=logging.WARNING)
    linker.training.estimate_probability_two_random_records_match(
        plan.deterministic_rules, recall=plan.recall
    )
    linker.training.estimate_u_using_random_sampling(max_pairs=plan.u_max_pairs, seed=seed)
    for rule in plan.em_rules:
        linker.training.estimate_parameters_using_expectation_maximisation(
            rule, estimate_without_term_frequencies=True
        )
    seconds["train"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    predictions = linker.inference.predict(threshold_match_probability=threshold)
    n_pairs = int(predictions.as_duckdbpyrelation().count("*").fetchall()[0][0])
    seconds["predict"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    clustered = linker.clustering.cluster_pairwise_predictions_at_threshold(
        predictions, threshold_match_probability=threshold
    )
    clusters = clustered.as_duckdbpyrelation().select("unique_id, cluster_id").df()
    seconds["cluster"] = time.perf_counter() - t0

    key = clusters["unique_id"].str.split("|", n=1, expand=True)
    out = pd.DataFrame({
        "register": key[0].astype("string"),
        "record_id": key[1].astype("string"),
        "cluster_id": clusters["cluster_id"].astype("string"),
    })
    return {
        "clusters": out,
        "seconds": seconds,
        "n_pairs": n_pairs,
        "version": splink.__version__,
        "settings": {
            "link_type": plan.link_type,
            "threshold_match_probability": threshold,
            "probability_two_random_records_match":
                linker._settings_obj._probability_two_random_records_match,
            "u_max_pairs": plan.u_max_pairs,
            "blocking_rules": [_rule_sql(r) for r in plan.blocking_rules],
            "em_rules": [_rule_sql(r) for r in plan.em_rules],
            "comparisons": [c.get_comparison("duckdb").output_column_name
                            for c in plan.comparisons],
        },
    }


def _rule_sql(rule: Any) -> str:
    if isinstance(rule, str):
        return rule
    return rule.get_blocking_rule("duckdb").blocking_rule_sql
