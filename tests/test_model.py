"""The Fellegi–Sunter model: EM recovers m, training is seeded, a saved model scores alike."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from matching.errors import MatchingError
from matching.linker import Linker
from matching.model import FellegiSunterModel, _em, _patterns

SETTINGS = {
    "seed": 7,
    "blocking_rules": [
        {"name": "surname_year", "columns": ["surname_std", "birth_year"]},
        {"name": "given_year", "columns": ["given_std", "birth_year"]},
    ],
    "comparisons": [
        {"name": "surname", "kind": "name", "column": "surname_std", "thresholds": [0.88],
         "tf_adjustment": True},
        {"name": "given", "kind": "string", "column": "given_std", "thresholds": [0.88]},
        {"name": "birth_date", "kind": "date",
         "columns": {"year": "birth_year", "month": "birth_month", "day": "birth_day"}},
        {"name": "district", "kind": "exact", "column": "district_std"},
    ],
    "training": {"u_sample_pairs": 200_000, "blocking_rules": ["surname_year", "given_year"]},
    "thresholds": {"link": 0.9, "review": 0.5, "retain": None},
}

SYLLABLES = ["ka", "ri", "mo", "na", "za", "ro", "fi", "lo", "sha", "du", "be", "gu"]


def population(n_persons: int = 3000, seed: int = 1, typo: float = 0.2) -> pd.DataFrame:
    """Persons with one duplicate each; the duplicate's surname has a typo with rate ``typo``."""
    rng = np.random.default_rng(seed)

    def names(k: int) -> np.ndarray:
        out = {"".join(rng.choice(SYLLABLES, 3)) for _ in range(k * 3)}
        return np.array(sorted(out)[:k], dtype=object)

    surnames, given, districts = names(400), names(150), names(30)
    p = 1.0 / np.arange(1, 401)
    df = pd.DataFrame({
        "person_id": np.arange(n_persons),
        "surname_std": rng.choice(surnames, n_persons, p=p / p.sum()),
        "given_std": rng.choice(given, n_persons),
        "birth_year": rng.integers(1950, 2000, n_persons),
        "birth_month": rng.integers(1, 13, n_persons),
        "birth_day": rng.integers(1, 29, n_persons),
        "district_std": rng.choice(districts, n_persons),
    })
    dup = df.copy()
    bad = rng.random(n_persons) < typo
    dup.loc[bad, "surname_std"] = [s[:-1] + "x" for s in dup.loc[bad, "surname_std"]]
    moved = rng.random(n_persons) < 0.3
    dup.loc[moved, "district_std"] = rng.choice(districts, int(moved.sum()))
    out = pd.concat([df, dup], ignore_index=True).sample(frac=1, random_state=seed)
    out = out.reset_index(drop=True)
    for c in ("surname_std", "given_std", "district_std"):
        out[c] = out[c].astype("string")
    for c in ("birth_year", "birth_month", "birth_day"):
        out[c] = out[c].astype("Int64")
    return out


def test_em_recovers_known_m_with_u_fixed():
    rng = np.random.default_rng(0)
    m_true = [np.array([0.05, 0.15, 0.8]), np.array([0.1, 0.9]), np.array([0.02, 0.08, 0.9])]
    u_true = [np.array([0.9, 0.08, 0.02]), np.array([0.7, 0.3]), np.array([0.95, 0.04, 0.01])]
    n, lam = 200_000, 0.15
    is_match = rng.random(n) < lam
    gammas = np.empty((n, 3), dtype=np.int8)
    for k in range(3):
        gammas[:, k] = np.where(is_match, rng.choice(m_true[k].size, n, p=m_true[k]),
                                rng.choice(u_true[k].size, n, p=u_true[k]))
    gammas[rng.random(n) < 0.1, 2] = -1  # missing values are left out, not counted
    pats, counts, _ = _patterns(gammas, [3, 2, 3])
    m0 = [np.full(s, 1.0 / s) + np.arange(s) * 0.1 for s in (3, 2, 3)]
    m0 = [x / x.sum() for x in m0]
    m, lam_hat, _, converged = _em(pats, counts, u_true, m0, np.ones(3, bool), 500, 1e-7)
    assert converged
    assert lam_hat == pytest.approx(lam, abs=0.01)
    for k in range(3):
        np.testing.assert_allclose(m[k], m_true[k], atol=0.02)


@pytest.fixture(scope="module")
def trained():
    records = population()
    linker = Linker(SETTINGS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = linker.train(records)
    return records, linker, model


def test_training_recovers_the_simulated_typo_rate(trained):
    _, _, model = trained
    surname = model.parameters[0]
    # 20% of duplicates have a surname typo; EM learns m(exact) from the given_year session
    assert surname.m[surname.labels.index("exact")] == pytest.approx(0.8, abs=0.05)
    district = model.parameters[3]
    # 30% moved to a random district (1 in 30 lands in the same one)
    assert district.m[district.labels.index("exact")] == pytest.approx(0.71, abs=0.05)
    # one duplicate per person among 6000 records
    assert model.training["expected_matches"] == pytest.approx(3000, rel=0.1)


def test_training_is_deterministic_with_a_seed(trained):
    records, _, model = trained
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = Linker(SETTINGS).train(records.copy())
    assert again.to_dict()["comparisons"] == model.to_dict()["comparisons"]
    assert again.lambda_ == model.lambda_


def test_saved_model_scores_new_records_identically(trained, tmp_path):
    records, linker, model = trained
    path = tmp_path / "model.json"
    model.save(path)
    loaded = FellegiSunterModel.load(path)
    new = population(500, seed=9)
    a = Linker(SETTINGS).predict(new, model=model)
    b = Linker(loaded.settings).predict(new, model=loaded)
    pd.testing.assert_frame_equal(a, b)
    assert len(a) > 0


def test_common_surname_counts_less_than_a_rare_one(trained):
    records, linker, model = trained
    pairs = linker.predict(records, threshold=None)
    exact = pairs[pairs["gamma_surname"] == model.parameters[0].labels.index("exact")]
    freq = records["surname_std"].value_counts()
    surname = pd.Series(records["surname_std"].to_numpy()[exact["left"].to_numpy()])
    by_freq = surname.map(freq)
    w_common = exact["w_surname"].to_numpy()[by_freq.to_numpy().argmax()]
    w_rare = exact["w_surname"].to_numpy()[by_freq.to_numpy().argmin()]
    assert by_freq.max() > 10 * by_freq.min()
    assert w_rare > w_common + 3


def test_missing_value_contributes_nothing(trained):
    records, _, model = trained
    records = records.copy()
    records.loc[records.index[:200], "district_std"] = pd.NA
    pairs = Linker(SETTINGS).predict(records, model=model, threshold=None)
    null = pairs["gamma_district"] == -1
    assert null.any()
    assert (pairs.loc[null, "w_district"] == 0).all()


def test_loading_a_file_that_is_not_a_model_says_so(tmp_path):
    path = tmp_path / "model.json"
    path.write_text('{"hello": 1}', encoding="utf-8")
    with pytest.raises(MatchingError, match="model"):
        FellegiSunterModel.load(path)


# ---- smoothing of m and the u sample ------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "counts", "u"),
    [
        # sex: 50,000 matches in training, none with a different sex (a clean batch)
        ("sex never differs in training", [0, 50_000], [0.5, 0.5]),
        # patronymic: a disagreement seen twice among 50,000 matches
        ("patronymic rarely differs", [2, 1_000, 48_998], [0.97, 0.02, 0.01]),
        # birth date: same year only, never among matches
        ("birth date same year only", [0, 30, 0, 49_970], [0.98, 0.017, 0.0027, 0.0003]),
    ],
)
def test_no_level_counts_less_than_the_floor(case, counts, u):
    from matching.model import smooth_m

    m = smooth_m(np.array(counts, float), np.array(u), prior_pairs=1.0,
                 min_log2_bayes_factor=-10.0)
    bits = np.log2(m / np.array(u))
    assert m.sum() == pytest.approx(1.0)
    assert bits.min() >= -10.01, case
    # well-observed levels keep their share
    big = np.argmax(counts)
    assert m[big] == pytest.approx(counts[big] / sum(counts), rel=0.01)


def test_a_disagreement_unseen_in_training_weighs_at_most_the_floor(trained):
    records, _, _ = trained
    records = records.copy()
    # every duplicate keeps its district: "else" never occurs among the training matches
    first = records.groupby("person_id")["district_std"].transform("first")
    records["district_std"] = first
    settings = dict(SETTINGS, training=dict(SETTINGS["training"], min_log2_bayes_factor=-8))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = Linker(settings).train(records)
    district = model.parameters[3]
    assert district.log2_bayes_factors()[1 + district.labels.index("else")] >= -8.01
    assert model.settings.training.min_log2_bayes_factor == -8


@pytest.mark.parametrize(
    ("n", "per_record", "expected"),
    [
        (40, 100, 40 * 39 // 2),    # a handful of records: every pair
        (3000, 100, 300_000),       # small data: a multiple of the records
        (3000, 1000, 1_000_000),    # the configured maximum
    ],
)
def test_u_sample_size_follows_the_data(n, per_record, expected):
    records = population(n // 2, seed=3)
    settings = dict(SETTINGS, training=dict(SETTINGS["training"], u_sample_pairs=1_000_000,
                                           u_pairs_per_record=per_record))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = Linker(settings).train(records)
        b = Linker(settings).train(records)
    assert a.training["u_sample_pairs"] == expected
    assert a.to_dict()["comparisons"] == b.to_dict()["comparisons"]  # same seed, same u
