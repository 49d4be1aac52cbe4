"""The facade end to end on small registers, and the bad input the issue lists."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from matching import LinkageSettings, Linker, MatchingError, MatchingWarning, standardise

BASE = LinkageSettings.from_yaml("config/linkage.yaml").to_dict()
BASE["training"]["u_sample_pairs"] = 100_000

SURNAMES = ["Karimov", "Rahimov", "Nazarov", "Sharipov", "Qodirov", "Saidov", "Aliev",
            "Davlatov", "Safarov", "Yusufov", "Hasanov", "Mirzoev", "Ismoilov", "Boboev"]
GIVEN_M = ["Olim", "Karim", "Firuz", "Davron", "Rustam", "Jamshed", "Bahrom", "Muhammad Ali"]
GIVEN_F = ["Zarina", "Nigora", "Malika", "Shahnoza", "Gulnora", "Farzona", "Madina"]
FATHERS = ["Olim", "Karim", "Saidali", "Nurullo", "Hamid", "Rajab", "Sharif", "Umed"]
DISTRICTS = ["Vahdat", "Rudaki", "Hisor", "Kulob", "Khujand"]
CYR = str.maketrans({"K": "К", "a": "а", "r": "р", "i": "и", "m": "м", "o": "о", "v": "в",
                     "R": "Р", "h": "х", "N": "Н", "z": "з", "S": "С", "d": "д"})


def luhn(body: str) -> str:
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch)
        total += (d * 2 - 9 if d * 2 > 9 else d * 2) if i % 2 == 0 else d
    return body + str((10 - total % 10) % 10)


def registers(n_persons: int = 300, seed: int = 5) -> tuple[pd.DataFrame, np.ndarray]:
    """Canonical records of a civil and a health register, some persons in both."""
    rng = np.random.default_rng(seed)
    rows, truth = [], []
    for p in range(n_persons):
        male = rng.random() < 0.5
        surname = str(rng.choice(SURNAMES)) + ("" if male else "a")
        person = {
            "surname": surname,
            "given_name": str(rng.choice(GIVEN_M if male else GIVEN_F)),
            "patronymic": str(rng.choice(FATHERS)) + ("ovich" if male else "ovna"),
            "sex": "M" if male else "F",
            "birth_date": f"{rng.integers(1950, 2005)}-{rng.integers(1, 13):02d}-"
                          f"{rng.integers(1, 29):02d}",
            "pin": luhn(f"{rng.integers(0, 10**8):08d}"),
            "district": str(rng.choice(DISTRICTS)),
        }
        rows.append({"register": "civil", **person})
        truth.append(p)
        if rng.random() < 0.6:  # also in the health register, written differently
            dup = dict(person, register="health")
            if rng.random() < 0.4:
                dup["surname"] = dup["surname"].translate(CYR)
            if rng.random() < 0.3:
                dup["pin"] = None
            if rng.random() < 0.2:
                dup["patronymic"] = dup["patronymic"][0] + "."
            if rng.random() < 0.1:
                y, m, d = dup["birth_date"].split("-")
                dup["birth_date"] = f"{y}-{d}-{m}" if int(d) <= 12 else f"{y}-01-01"
            rows.append(dup)
            truth.append(p)
    df = pd.DataFrame(rows, dtype="string")
    df.insert(1, "record_id", [f"{r}-{i}" for i, r in enumerate(df["register"])])
    return df, np.array(truth)


def std(df: pd.DataFrame) -> pd.DataFrame:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MatchingWarning)
        return standardise(df)


def pairwise_f1(cluster_id: np.ndarray, truth: np.ndarray) -> float:
    s = pd.DataFrame({"c": cluster_id, "t": truth})
    pairs = lambda g: int((g * (g - 1) // 2).sum())  # noqa: E731
    pred, true = pairs(s.groupby("c").size()), pairs(s.groupby("t").size())
    tp = pairs(s.groupby(["c", "t"]).size())
    return 2 * tp / (pred + true) if pred + true else 1.0


@pytest.fixture(scope="module")
def linked():
    canonical, truth = registers()
    records = std(canonical)
    linker = Linker(BASE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MatchingWarning)
        pairs, cluster_id, report = linker.run(records, truth=truth)
    return records, truth, linker, pairs, cluster_id, report


def test_run_links_the_same_persons_across_registers(linked):
    records, truth, linker, pairs, cluster_id, report = linked
    assert cluster_id.shape == (len(records),)
    assert pairwise_f1(cluster_id, truth) >= 0.97
    assert report["blocking"]["recall"] >= 0.97
    assert report["pairs"]["linked"] > 0
    assert set(linker.timings) >= {"block", "compare", "train", "predict", "cluster"}


def test_explanation_adds_up_to_the_match_weight(linked):
    _, _, _, pairs, _, _ = linked
    w = pairs.filter(like="w_").to_numpy(dtype=np.float64).sum(axis=1)
    np.testing.assert_allclose(w + pairs.attrs["prior_weight"], pairs["match_weight"],
                               atol=1e-3)
    # every comparison of the settings explains each pair, with a readable level
    for name in ("surname", "given_name", "patronymic", "birth_date", "pin"):
        assert f"w_{name}" in pairs and f"gamma_{name}" in pairs
        assert pairs[f"gamma_{name}"].dtype == np.int8


def test_pairs_are_ordered_and_probabilities_in_range(linked):
    _, _, _, pairs, _, _ = linked
    assert (pairs["left"] < pairs["right"]).all()
    assert pairs["match_probability"].between(0, 1).all()
    assert not pairs.duplicated(["left", "right"]).any()


def test_rerun_gives_the_same_result(linked):
    records, truth, _, pairs, cluster_id, _ = linked
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MatchingWarning)
        pairs2, cluster_id2, _ = Linker(BASE).run(records.copy())
    pd.testing.assert_frame_equal(pairs, pairs2)
    np.testing.assert_array_equal(cluster_id, cluster_id2)


def test_field_absent_from_the_registers_warns_and_still_links(linked):
    records, truth, _, _, _, _ = linked
    without = records.drop(columns=["district_std", "patronymic_root"])
    with pytest.warns(MatchingWarning, match="district_std"):
        _, cluster_id, _ = Linker(BASE).run(without)
    assert pairwise_f1(cluster_id, truth) >= 0.95


def test_registers_with_no_overlap_link_nobody_across(linked):
    canonical, _ = registers(200, seed=11)
    civil = canonical[canonical["register"] == "civil"].head(100)
    other, _ = registers(200, seed=12)
    health = other[other["register"] == "civil"].head(100).assign(register="health")
    records = std(pd.concat([civil, health], ignore_index=True))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MatchingWarning)
        _, cluster_id, _ = Linker(BASE).run(records)
    reg = records["register"].to_numpy()
    mixed = pd.Series(reg).groupby(cluster_id).nunique()
    assert (mixed <= 1).mean() >= 0.99  # at most a chance look-alike


def test_single_record_warns_and_is_its_own_cluster():
    records = std(registers(1)[0].head(1))
    with pytest.warns(MatchingWarning):
        pairs, cluster_id, _ = Linker(BASE).run(records)
    assert len(pairs) == 0 and cluster_id.tolist() == [0]


def test_all_values_identical_does_not_explode(linked):
    records, _, _, _, _, _ = linked
    same = records.iloc[np.zeros(1500, dtype=int)].reset_index(drop=True)
    with pytest.warns(MatchingWarning):
        pairs, cluster_id, report = Linker(BASE).run(same)
    over = [r for r in report["blocking"]["rules"] if r["oversized_blocks"]]
    assert over and over[0]["oversized_examples"][0]["size"] == 1500
    assert len(pairs) == 0  # every block capped: nothing compared
    assert cluster_id.size == 1500


def test_no_records_at_all():
    records = std(registers(3)[0]).head(0)
    with pytest.warns(MatchingWarning):
        pairs, cluster_id, _ = Linker(BASE).run(records)
    assert len(pairs) == 0 and cluster_id.size == 0


def test_predict_before_train_says_what_to_do():
    with pytest.raises(MatchingError, match="train"):
        Linker(BASE).predict(std(registers(3)[0]))


def test_settings_problems_are_reported_together_with_their_keys():
    bad = dict(BASE, max_block_size=1, thresholds={"link": 0.4, "review": 0.6, "retian": 0})
    bad["comparisons"] = [*BASE["comparisons"], {"name": "x", "kind": "fuzzy", "column": "a"}]
    with pytest.raises(MatchingError) as err:
        LinkageSettings.from_dict(bad, source="linkage.yaml")
    message = str(err.value)
    for key in ("max_block_size", "thresholds.retian", "thresholds.review",
                f"comparisons[{len(BASE['comparisons'])}] (x).kind"):
        assert key in message
    assert message.startswith("linkage.yaml: 4 problem(s)")


def test_settings_round_trip_through_a_dict():
    s = LinkageSettings.from_dict(BASE)
    assert LinkageSettings.from_dict(s.to_dict()) == s
