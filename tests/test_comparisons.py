"""Comparison levels, table-driven: each row is a pair of records a steward would recognise."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from matching.comparisons import RecordColumns, build_comparison, compare_pairs
from matching.errors import MatchingWarning
from matching.settings import LinkageSettings
from matching.standardise import standardise

SETTINGS = LinkageSettings.from_yaml("config/linkage.yaml")
SPECS = {c.name: c for c in SETTINGS.comparisons}


def level(name: str, a: dict, b: dict, *, std: bool = True) -> str:
    """Label of comparison ``name`` between canonical records ``a`` and ``b``."""
    df = pd.DataFrame([a, b], dtype="string")
    if std:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MatchingWarning)
            df = standardise(df)
    comp = build_comparison(SPECS[name])
    g = comp.compute(RecordColumns(df), np.array([0]), np.array([1]))[0]
    return "null" if g == -1 else comp.labels[g]


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("Каримов", "Karimov", "exact"),          # Cyrillic and Latin spelling
        ("Рахимов", "Rakhimov", "exact"),         # kh/h transliterations
        ("Karimov", "Karimova", "root"),          # husband and wife
        ("Nazarov", "Nazarzoda", "root"),         # -ov changed to -zoda
        ("Karimov", "Kasimov", "jw>=0.88"),       # one letter wrong in the root
        ("Karimov", "Sharipov", "else"),
        ("Karimov", None, "null"),                # missing is neutral
    ],
)
def test_surname_levels(a, b, expected):
    assert level("surname", {"surname": a}, {"surname": b}) == expected


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("Муҳаммад Алӣ", "Muhammadali", "exact"),  # compound name, written apart or joined
        ("Muhammadali", "Muhammad", "part"),       # only the first part in one register
        ("Zarina", "Zarena", "jw>=0.88"),        # one vowel wrong
        ("Zarina", "Karim", "else"),
        (None, "Zarina", "null"),
    ],
)
def test_given_name_levels(a, b, expected):
    assert level("given_name", {"given_name": a}, {"given_name": b}) == expected


def test_given_name_and_surname_swapped():
    a = {"surname": "Olim", "given_name": "Karim"}
    b = {"surname": "Karim", "given_name": "Olim"}
    assert level("given_name", a, b) == "swapped"


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("Olimovich", "Olimzoda", "exact"),        # two forms of the same father's name
        ("Olimovich", "Olim", "exact"),
        ("Olimovich", "O.", "initial"),            # only an initial in one register
        ("Olimovich", "K.", "else"),
        ("Olimovich", "Karimovich", "else"),
        (None, "Olimovich", "null"),
    ],
)
def test_patronymic_levels(a, b, expected):
    assert level("patronymic", {"patronymic": a}, {"patronymic": b}) == expected


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("1990-03-04", "1990-03-04", "exact"),
        ("1990-03-04", "1990-04-03", "day_month_swapped"),
        ("1990-03-04", "1990-03-09", "year_month"),
        ("1990-03-04", "1990-11-20", "year"),
        ("1990-03-04", "1991-03-04", "year+-1"),
        ("1990-03-04", "1975-03-04", "else"),
        # 01.01.YYYY written for an unknown date: its own, weaker level, never "exact"
        ("1990-01-01", "1990-01-01", "placeholder_year"),
        ("1990-01-01", "1990-07-15", "placeholder_year"),
        ("1990", "1990-07-15", "year"),            # partial date: year level at best
        ("1990-07", "1990-07-15", "year_month"),
        (None, "1990-07-15", "null"),
    ],
)
def test_birth_date_levels(a, b, expected):
    assert level("birth_date", {"birth_date": a}, {"birth_date": b}) == expected


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("123456782", "123456782", "exact"),
        ("123456782", "123456882", "one_digit"),
        ("123456782", "123457682", "transposition"),  # adjacent digits swapped
        ("123456782", "987654321", "else"),
        ("123456782", "12345678", "else"),            # a digit dropped: not one digit off
        ("123-456-782", "123456782", "exact"),        # punctuation removed by standardise
        ("123456782", None, "null"),
    ],
)
def test_pin_levels(a, b, expected):
    assert level("pin", {"pin": a}, {"pin": b}) == expected


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [("M", "M", "exact"), ("M", "F", "else"), ("M", None, "null")],
)
def test_sex_levels(a, b, expected):
    assert level("sex", {"sex": a}, {"sex": b}, std=False) == expected


def test_parents_compared_only_where_both_registers_have_them():
    a = {"father_name": "Olim", "mother_name": "Zarina"}
    b = {"father_name": None, "mother_name": "Zarina"}
    assert level("patronymic", a, b) == "null"
    assert level("mother", a, b) == "exact"


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        # a birth record with the father's name, an ID card with the patronymic
        ({"father_name": "Olim"}, {"patronymic": "Olimovich"}, "exact"),
        ({"father_name": "Олим"}, {"patronymic": "Olimzoda"}, "exact"),
        ({"father_name": "Karim"}, {"patronymic": "Olimovich"}, "else"),
        # the patronymic wins where a record has both: one fact, counted once
        ({"patronymic": "Olimovich", "father_name": "Olim"},
         {"patronymic": "Olimovna", "father_name": "Olim"}, "exact"),
        ({"patronymic": "Karimovich", "father_name": "Olim"},
         {"patronymic": "Olimovich"}, "else"),
        ({"father_name": "Olim"}, {"patronymic": "O."}, "initial"),
        ({"father_name": "Karim"}, {"patronymic": "O."}, "else"),
        ({"father_name": "Olim"}, {}, "null"),
    ],
)
def test_fathers_name_stands_in_for_a_missing_patronymic(a, b, expected):
    assert level("patronymic", a, b) == expected


def test_no_separate_father_comparison_counts_the_patronymic_twice():
    columns = [c for spec in SETTINGS.comparisons for c in spec.column_names]
    assert columns.count("father_root") == 1


def test_absent_column_is_null_with_a_warning():
    df = pd.DataFrame({"surname_std": ["karimav", "karimav"]}, dtype="string")
    comps = [build_comparison(SPECS["surname"]), build_comparison(SPECS["pin"])]
    with pytest.warns(MatchingWarning, match="pin_std"):
        g = compare_pairs(comps, RecordColumns(df), np.array([0]), np.array([1]))
    assert g[0].tolist() == [comps[0].labels.index("exact"), -1]


def test_fuzzy_levels_match_a_row_by_row_computation():
    # the vectorised path (distinct value pairs only) must agree with one pair at a time
    rng = np.random.default_rng(3)
    names = ["karim", "kasim", "karin", "rahim", "nazar", "olim", None]
    df = pd.DataFrame({"surname_std": rng.choice(np.array(names, dtype=object), 300)},
                      dtype="string")
    comp = build_comparison(SPECS["surname"])
    left = rng.integers(0, 300, 500)
    right = rng.integers(0, 300, 500)
    vec = comp.compute(RecordColumns(df), left, right)
    one = [comp.compute(RecordColumns(df.iloc[[a, b]].reset_index(drop=True)), np.array([0]),
                        np.array([1]))[0] for a, b in zip(left, right, strict=True)]
    assert vec.tolist() == one
