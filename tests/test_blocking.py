"""Blocking: rules OR-ed, pairs deduplicated, oversized blocks dropped and reported."""

from __future__ import annotations

import re
import warnings
from itertools import combinations

import numpy as np
import pandas as pd
import pytest

from matching.blocking import block_records
from matching.errors import MatchingWarning
from matching.settings import BlockingRule

RULES = (
    BlockingRule("surname_year", ("surname_root", "birth_year")),
    BlockingRule("given_year", ("given_std", "birth_year")),
)


def frame(rows: list[tuple]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=["surname_root", "given_std", "birth_year"])
    df[["surname_root", "given_std"]] = df[["surname_root", "given_std"]].astype("string")
    df["birth_year"] = df["birth_year"].astype("Int64")
    return df


def brute_force(df: pd.DataFrame, rules, max_block: int) -> set[tuple[int, int]]:
    out = set()
    for rule in rules:
        keys = df[list(rule.columns)]
        ok = keys.notna().all(axis=1)
        groups = keys[ok].groupby(list(rule.columns)).groups
        for members in groups.values():
            if len(members) <= max_block:
                out.update(combinations(sorted(int(i) for i in members), 2))
    return out


def test_pairs_are_the_union_of_rules_without_duplicates():
    df = frame([
        ("karim", "olim", 1990),    # 0
        ("karim", "olim", 1990),    # 1: same as 0 under both rules -> one pair
        ("karim", "zarina", 1990),  # 2: surname_year with 0 and 1
        ("nazar", "olim", 1990),    # 3: given_year with 0 and 1
        ("karim", None, 1990),      # 4: no given name: only surname_year
        ("karim", "olim", None),    # 5: no year: blocked by no rule
    ])
    c = block_records(df, RULES, max_block_size=100)
    pairs = list(zip(c.left.tolist(), c.right.tolist(), strict=True))
    assert len(pairs) == len(set(pairs))
    assert set(pairs) == {(0, 1), (0, 2), (1, 2), (0, 4), (1, 4), (2, 4), (0, 3), (1, 3)}
    assert all(a < b for a, b in pairs)
    rep = {r.rule: r for r in c.report.rules}
    assert rep["surname_year"].pairs == 6 and rep["surname_year"].new_pairs == 6
    assert rep["given_year"].pairs == 3 and rep["given_year"].new_pairs == 2  # (0,1) seen
    assert c.report.total_pairs == 8


def test_random_data_matches_a_brute_force_union():
    rng = np.random.default_rng(7)
    n = 400
    df = frame(list(zip(
        rng.choice(np.array(["a", "b", "c", "d", None], dtype=object), n),
        rng.choice(np.array(["x", "y", "z", None], dtype=object), n),
        rng.choice(np.array([1990, 1991, None], dtype=object), n), strict=True)))
    c = block_records(df, RULES, max_block_size=30)
    got = set(zip(c.left.tolist(), c.right.tolist(), strict=True))
    assert len(got) == len(c)
    assert got == brute_force(df, RULES, 30)


def test_oversized_block_is_dropped_and_reported_with_its_key():
    # 50 records with the placeholder date of one year and the commonest name
    rows = [("muhammad", "ali", 1980)] * 50 + [("karim", "olim", 1990)] * 2
    df = frame(rows)
    c = block_records(df, RULES[:1], max_block_size=10)
    assert list(zip(c.left.tolist(), c.right.tolist(), strict=True)) == [(50, 51)]
    rep = c.report.rules[0]
    assert rep.oversized_blocks == 1 and rep.oversized_records == 50
    assert rep.oversized_examples == [
        {"key": {"surname_root": "muhammad", "birth_year": 1980}, "size": 50}]


def test_pair_dropped_in_an_oversized_block_is_still_found_by_another_rule():
    rows = [("muhammad", f"g{i}", 1980) for i in range(20)] + [("muhammad", "g0", 1980)]
    c = block_records(frame(rows), RULES, max_block_size=10)
    assert set(zip(c.left.tolist(), c.right.tolist(), strict=True)) == {(0, 20)}
    assert c.report.rules[1].new_pairs == 1


def test_a_huge_placeholder_block_does_not_build_its_pairs():
    # 200 000 records in one block would be 2e10 pairs; capped, it costs nothing
    n = 200_000
    df = frame([("x", "y", 1900)] * 2)
    df = df.iloc[np.zeros(n, dtype=int)].reset_index(drop=True)
    c = block_records(df, RULES, max_block_size=1000)
    assert len(c) == 0
    assert [r.oversized_records for r in c.report.rules] == [n, n]


def test_recall_of_true_pairs_per_rule():
    df = frame([("karim", "olim", 1990), ("karim", "olim", 1991), ("karim", "zarina", 1990),
                ("nazar", "zarina", 1990)])
    truth = np.array([1, 1, 2, 2])
    c = block_records(df, RULES, max_block_size=100, truth=truth)
    rep = c.report
    assert rep.true_pairs == 2
    assert rep.rules[0].cumulative_recall == 0.0      # surname_year finds (0,2): not true
    assert rep.rules[1].cumulative_recall == 0.5      # given_year finds (2,3): true
    assert rep.recall == 0.5


@pytest.mark.parametrize("rows", [[], [("karim", "olim", 1990)]], ids=["empty", "one record"])
def test_empty_input_and_single_record_give_no_pairs(rows):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        c = block_records(frame(rows), RULES, max_block_size=100)
    assert [w.category for w in caught] == ([MatchingWarning] if not rows else [])
    assert len(c) == 0 and c.report.total_pairs == 0


def test_rule_on_an_absent_column_is_skipped_with_a_warning():
    df = frame([("karim", "olim", 1990), ("karim", "olim", 1990)])
    rules = (BlockingRule("pin", ("pin_std",)), *RULES)
    with pytest.warns(MatchingWarning, match="pin_std"):
        c = block_records(df, rules, max_block_size=100)
    assert len(c) == 1
    assert c.report.rules[0].skipped


# ---- swapped rules: one record's columns against the other's -----------------------------

SWAP = BlockingRule("given_is_surname", ("given_std", "birth_year"),
                    swap_with=("surname_root", "birth_year"))


def brute_force_swap(df: pd.DataFrame, rule: BlockingRule, max_block: int
                     ) -> set[tuple[int, int]]:
    a_cols, b_cols = list(rule.columns), list(rule.swap_with)
    ka = [tuple(r) if pd.notna(list(r)).all() else None for r in df[a_cols].itertuples(
        index=False)]
    kb = [tuple(r) if pd.notna(list(r)).all() else None for r in df[b_cols].itertuples(
        index=False)]
    size: dict[tuple, int] = {}
    for k in ka + kb:
        if k is not None:
            size[k] = size.get(k, 0) + 1
    out = set()
    for i, x in enumerate(ka):
        for j, y in enumerate(kb):
            if i != j and x is not None and x == y and size[x] <= max_block:
                out.add((min(i, j), max(i, j)))
    return out


def test_swapped_names_are_compared_in_either_direction():
    df = frame([
        ("karim", "olim", 1990),    # 0
        ("olim", "karim", 1990),    # 1: names swapped with 0 -> one pair, not two
        ("olim", "zarina", 1990),   # 2: given of 0 is the surname of 2 -> (0, 2)
        ("olim", "karim", 1991),    # 3: other year: no pair
        ("nazar", "nazar", 1990),   # 4: given == surname: never paired with itself
        ("nazar", None, 1990),      # 5: no given name, but its surname is 4's given name
    ])
    c = block_records(df, (SWAP,), max_block_size=100)
    got = list(zip(c.left.tolist(), c.right.tolist(), strict=True))
    assert sorted(got) == [(0, 1), (0, 2), (4, 5)]
    assert c.agree_on_rule(SWAP.name).all()


def test_swapped_rule_matches_a_brute_force_join_and_dedups_against_earlier_rules():
    rng = np.random.default_rng(11)
    n = 300
    names = np.array(["a", "b", "c", "d", "e", None], dtype=object)
    df = frame(list(zip(rng.choice(names, n), rng.choice(names, n),
                        rng.choice(np.array([1990, 1991, None], dtype=object), n),
                        strict=True)))
    c = block_records(df, (SWAP,), max_block_size=40)
    got = set(zip(c.left.tolist(), c.right.tolist(), strict=True))
    assert len(got) == len(c)
    assert got == brute_force_swap(df, SWAP, 40)
    both = block_records(df, (*RULES, SWAP), max_block_size=40)
    union = brute_force(df, RULES, 40) | brute_force_swap(df, SWAP, 40)
    assert set(zip(both.left.tolist(), both.right.tolist(), strict=True)) == union
    assert len(both) == len(union)  # a pair found by an earlier rule is not repeated
    assert both.report.rules[2].swap_with == ["surname_root", "birth_year"]


def test_oversized_swapped_block_is_reported_with_the_key_of_its_first_side():
    # eight Alis (surname) born 1980 and one record whose given name is Ali: a block of 9
    rows = [("ali", f"g{i}", 1980) for i in range(8)] + [("g0", "ali", 1980)]
    c = block_records(frame(rows), (SWAP,), max_block_size=5)
    rep = c.report.rules[0]
    assert rep.oversized_blocks == 1 and rep.oversized_records == 9
    assert rep.oversized_examples == [{"key": {"given_std": "ali", "birth_year": 1980},
                                       "size": 9}]
    # record 8's surname g0 is record 0's given name: a block of two, kept
    assert list(zip(c.left.tolist(), c.right.tolist(), strict=True)) == [(0, 8)]


@pytest.mark.parametrize(
    ("rule", "problem"),
    [
        ({"columns": ["given_std", "birth_year"], "swap_with": ["surname_std"]},
         "blocking_rules[0].swap_with: expected a list of 2 column name(s)"),
        ({"columns": ["given_std"], "swap_with": ["given_std"]},
         "blocking_rules[0].swap_with: same columns as columns"),
        ({"columns": ["given_std"], "swap": ["surname_std"]},
         "blocking_rules[0].swap: unknown key"),
    ],
)
def test_swapped_rule_settings_are_checked(rule, problem):
    from matching.errors import MatchingError
    from matching.settings import LinkageSettings

    data = {"blocking_rules": [rule],
            "comparisons": [{"name": "given", "kind": "string", "column": "given_std"}]}
    with pytest.raises(MatchingError, match=re.escape(problem)):
        LinkageSettings.from_dict(data)


def test_swapped_rule_round_trips_and_is_named_after_both_sides():
    from matching.settings import LinkageSettings

    data = {"blocking_rules": [{"columns": ["given_std", "birth_year"],
                                "swap_with": ["surname_std", "birth_year"]}],
            "comparisons": [{"name": "given", "kind": "string", "column": "given_std"}]}
    s = LinkageSettings.from_dict(data)
    assert s.blocking_rules[0].name == "given_std+birth_year~surname_std+birth_year"
    assert LinkageSettings.from_dict(s.to_dict()) == s
