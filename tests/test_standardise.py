"""Standardised columns: surname roots, patronymics, compound names, dates, the DataFrame step."""

from __future__ import annotations

import warnings

import pandas as pd
import pytest

from matching.errors import MatchingWarning
from matching.standardise import (
    STANDARDISED_COLUMNS,
    NameParts,
    birth_date_parts,
    birth_date_quality,
    given_first,
    patronymic_initial,
    patronymic_root,
    phonetic_key,
    place_key,
    split_compound_given,
    standardise,
    surname_root,
)
from matching.translit import name_key


def root_of(surname: str) -> str | None:
    return surname_root(name_key(surname))


# --- surname roots ------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("forms", "root"),
    [
        pytest.param(["Karimov", "Karimova", "Karimzoda", "Karimzod", "Каримов", "Каримова",
                      "Каримзода", "Karimi", "Karimiyon", "Karim-zoda", "Karimzade"], "karim",
                     id="Karimov family: Russian, Tajik, Persian forms"),
        pytest.param(["Rahimov", "Rakhimov", "Rahimova", "Раҳимзода", "Rahimzoda"], "rahim",
                     id="Rahimov/Rakhimov"),
        pytest.param(["Juraev", "Jurayeva", "Джураева", "Jurazoda", "Ҷӯразода"], "jura",
                     id="Juraev: -ev/-yeva after a vowel"),
        pytest.param(["Aliev", "Aliyeva", "Алиев", "Alizoda"], "ali", id="Aliev/Alizoda"),
        pytest.param(["Abdulloev", "Abdullaev", "Abdullozoda", "Абдуллоева"], "abdula",
                     id="Abdulloev/Abdullozoda"),
        pytest.param(["Hojiev", "Hoji", "Ходжиев"], "haji", id="Hoji: short root keeps its -i"),
        pytest.param(["Nazarov", "Nazarova", "Nazar"], "nazar", id="bare root as surname"),
        pytest.param(["Nuriddinov", "Nuriddin"], "nuridin", id="-in is not a suffix (Nuriddin)"),
    ],
)
def test_surname_forms_share_a_root(forms: list[str], root: str) -> None:
    assert {f: root_of(f) for f in forms} == {f: root for f in forms}


@pytest.mark.parametrize(
    ("surname", "root"),
    [
        pytest.param("Ali", "ali", id="Ali: -i not stripped from a 3-letter name"),
        pytest.param("Lev", "lev", id="Lev: too short to lose -ev"),
        pytest.param("Amin", "amin", id="Amin: -in kept"),
    ],
)
def test_short_surnames_are_not_cut(surname: str, root: str) -> None:
    assert root_of(surname) == root


@pytest.mark.parametrize(
    ("a", "b"),
    [
        pytest.param("Karimov", "Rahimov", id="Karimov vs Rahimov"),
        pytest.param("Karimov", "Kurbanov", id="Karimov vs Kurbanov"),
        pytest.param("Saidov", "Sadikov", id="Saidov vs Sadikov"),
    ],
)
def test_different_families_keep_different_roots(a: str, b: str) -> None:
    assert root_of(a) != root_of(b)


def test_surname_root_of_missing_is_missing() -> None:
    assert surname_root(None) is None
    assert surname_root("") is None


# --- patronymics --------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("patronymic", "root", "initial"),
    [
        pytest.param("Olimovich", "alim", "a", id="Olimovich"),
        pytest.param("Olimovna", "alim", "a", id="Olimovna (woman)"),
        pytest.param("Olimzoda", "alim", "a", id="Olimzoda"),
        pytest.param("Olimzod", "alim", "a", id="Olimzod"),
        pytest.param("Olim", "alim", "a", id="bare Olim"),
        pytest.param("Олимович", "alim", "a", id="Олимович"),
        pytest.param("Олимовна", "alim", "a", id="Олимовна"),
        pytest.param("Alimovich", "alim", "a", id="Russified Alimovich"),
        pytest.param("Olim oʻgʻli", "alim", "a", id="Uzbek oʻgʻli"),
        pytest.param("Olim qizi", "alim", "a", id="Uzbek qizi"),
        pytest.param("Абдуллоевич", "abdula", "a", id="Абдуллоевич: vowel-final father"),
        pytest.param("Hojievna", "haji", "h", id="Hojievna"),
        pytest.param("Sergeevich", "serge", "s", id="Sergeevich"),
        pytest.param("Khamidovich", "hamid", "h", id="Khamidovich"),
        pytest.param("Юсуфовна", "yusuf", "y", id="Юсуфовна"),
        pytest.param("O.", None, "a", id="initial O."),
        pytest.param("О", None, "a", id="Cyrillic initial О"),
        pytest.param("Kh.", None, "h", id="initial Kh."),
        pytest.param("Ю.", None, "y", id="initial Ю."),
        pytest.param("", None, None, id="empty"),
        pytest.param("  ", None, None, id="whitespace"),
        pytest.param(None, None, None, id="None"),
    ],
)
def test_patronymic_root_and_initial(
    patronymic: str | None, root: str | None, initial: str | None
) -> None:
    assert (patronymic_root(patronymic), patronymic_initial(patronymic)) == (root, initial)


@pytest.mark.parametrize(
    ("father", "patronymic"),
    [
        pytest.param("Olim", "Olimovich", id="Olim → Olimovich"),
        pytest.param("Олим", "Olimzoda", id="Олим → Olimzoda"),
        pytest.param("Sergey", "Sergeevich", id="Sergey → Sergeevich (й dropped)"),
        pytest.param("Nurbay", "Nurbaevna", id="Nurbay → Nurbaevna"),
        pytest.param("Abdullo", "Abdulloevich", id="Abdullo → Abdulloevich"),
    ],
)
def test_father_name_meets_the_patronymic(father: str, patronymic: str) -> None:
    assert patronymic_root(father) == patronymic_root(patronymic)


# --- compound given names -----------------------------------------------------------------------

@pytest.mark.parametrize(
    ("given", "first"),
    [
        pytest.param("Muhammad Ali", "muhamad", id="two words"),
        pytest.param("Muhammad-Ali", "muhamad", id="hyphenated"),
        pytest.param("Muhammadali", "muhamad", id="joined"),
        pytest.param("Мухаммадали", "muhamad", id="joined, Cyrillic"),
        pytest.param("Muhammadjon", "muhamad", id="Muhammadjon (d+j folded)"),
        pytest.param("Mohammed", "muhamad", id="Mohammed: alias"),
        pytest.param("Abdurahmon", "abdu", id="Abdurahmon"),
        pytest.param("Abdu Rahmon", "abdu", id="Abdu Rahmon"),
        pytest.param("Abdulkarim", "abdu", id="Abdulkarim"),
        pytest.param("Abdulaziz", "abdu", id="Abdulaziz = Abdul + Aziz"),
        pytest.param("Abdullo", "abdula", id="Abdullo is a name, not Abdu + llo"),
        pytest.param("Abdullojon", "abdula", id="Abdullojon"),
        pytest.param("Nurali", "nur", id="Nur + Ali"),
        pytest.param("Alisher", "alisher", id="Alisher stays whole"),
        pytest.param("Gulnora", "gulnara", id="Gulnora stays whole unless Nora is known"),
        pytest.param("Aziza", "aziza", id="Aziza: not Aziz"),
        pytest.param(None, None, id="None"),
    ],
)
def test_given_first(given: str | None, first: str | None) -> None:
    assert given_first(given) == first


def test_learned_vocabulary_splits_more() -> None:
    parts = NameParts.learn(["Gul Bahor", "Nora", "Ali Sher"])
    assert split_compound_given("gulbahar", parts) == ("gul", "bahar")
    assert split_compound_given(name_key("Gulnora"), parts) == ("gul", "nara")
    assert split_compound_given(name_key("Alisher"), parts) == ("ali", "sher")
    assert split_compound_given(name_key("Alisher")) == ("alisher",)


def test_split_keeps_a_short_rest_whole() -> None:
    assert split_compound_given(name_key("Nurik")) == ("nurik",)
    assert split_compound_given(None) == ()


# --- phonetic key -------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        pytest.param("Yusupov", "Yusufov", True, id="Yusupov ~ Yusufov"),
        pytest.param("Sharipov", "Sharifov", True, id="Sharipov ~ Sharifov"),
        pytest.param("Tohirov", "Toirov", True, id="h dropped: Tohirov ~ Toirov"),
        pytest.param("Karimov", "Rahimov", False, id="Karimov vs Rahimov"),
        pytest.param("Aziz", "Aziza", True, id="vowels dropped: Aziz ~ Aziza"),
    ],
)
def test_phonetic_key(a: str, b: str, same: bool) -> None:
    pa, pb = phonetic_key(name_key(a)), phonetic_key(name_key(b))
    assert pa and pb
    assert (pa == pb) is same


# --- birth dates --------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("iso", "parts", "quality"),
    [
        pytest.param("1985-03-12", (1985, 3, 12), "exact", id="exact date"),
        pytest.param("1985-01-01", (1985, 1, 1), "placeholder", id="01.01 placeholder"),
        pytest.param("1985-01-02", (1985, 1, 2), "exact", id="2 January is exact"),
        pytest.param("1985-07-01", (1985, 7, 1), "exact", id="1 July is exact"),
        pytest.param("1985-03", (1985, 3, None), "partial", id="year and month"),
        pytest.param("1960", (1960, None, None), "partial", id="year only"),
        pytest.param("", (None, None, None), "missing", id="empty"),
        pytest.param(None, (None, None, None), "missing", id="None"),
        pytest.param("12.03.1985", (None, None, None), "missing", id="not ISO"),
        pytest.param("1985-13-01", (None, None, None), "missing", id="month 13"),
    ],
)
def test_birth_date_parts_and_quality(iso: str | None, parts: tuple, quality: str) -> None:
    assert birth_date_parts(iso) == parts
    assert birth_date_quality(iso) == quality


# --- districts ----------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "district",
    ["р-н Рудаки", "Rudaki district", "ноҳияи Рӯдакӣ", "Рудаки", "RUDAKI"],
)
def test_district_key_drops_administrative_words(district: str) -> None:
    assert place_key(district) == "rudaki"


# --- the DataFrame step -------------------------------------------------------------------------

def _records() -> pd.DataFrame:
    rows = [
        # register, record_id, pin, surname, given, patronymic, birth_date, quality, father,
        # mother, district
        ("civil", "c1", "0101-2345 67", "Ҷӯраев", "Муҳаммадалӣ", "Олимович", "1985-03-12",
         None, "Олим", "Зарина", "р-н Рудаки"),
        ("passport", "p1", "0101234567", "Dzhuraev", "Muhammad Ali", "O.", "1985-03-12",
         "exact", None, "Zarrina", "Rudaki district"),
        ("pension", "x1", None, "Juraeva", "Aziza", "Olimovna", "1960-01-01", None, "Olim",
         None, None),
        ("health", "h1", "n/a", "<b>Karimzoda</b>", "  ", None, "1971", None, None, None,
         "Vahdat"),
        ("voter", "v1", None, None, None, None, None, None, None, None, None),
    ]
    cols = ["register", "record_id", "pin", "surname", "given_name", "patronymic",
            "birth_date", "birth_date_quality", "father_name", "mother_name", "district"]
    df = pd.DataFrame(rows, columns=cols).astype("string")
    df["source_row"] = pd.Series([1, 2, 3, 4, 5], dtype="int64")
    df["is_deceased"] = pd.array([False, None, True, False, None], dtype="boolean")
    df["src.FIO"] = df["surname"]
    return df.set_index(pd.Index([10, 11, 12, 13, 14]))


def test_standardise_keeps_originals_and_adds_documented_columns() -> None:
    df = _records()
    before = df.copy()
    out = standardise(df)

    pd.testing.assert_frame_equal(df, before)  # the input is not modified
    originals = [c for c in before.columns if c != "birth_date_quality"]
    pd.testing.assert_frame_equal(out[originals], before[originals])
    assert list(out.columns[: len(before.columns)]) == list(before.columns)
    assert set(out.columns) == set(before.columns) | set(STANDARDISED_COLUMNS)
    for column, dtype in STANDARDISED_COLUMNS.items():
        assert str(out[column].dtype) == dtype, column


def test_standardise_values_a_steward_would_check() -> None:
    out = standardise(_records())
    civil, passport, pension, health, voter = (out.loc[i] for i in [10, 11, 12, 13, 14])

    assert civil["surname_std"] == passport["surname_std"] == "jurayev"
    assert civil["surname_root"] == pension["surname_root"] == "jura"
    assert health["surname_std"] == "karimzada" and health["surname_root"] == "karim"
    assert civil["given_std"] == passport["given_std"] == "muhamadali"
    assert civil["given_first"] == passport["given_first"] == "muhamad"
    assert pension["given_first"] == "aziza"
    assert civil["patronymic_root"] == pension["patronymic_root"] == civil["father_root"]
    assert pd.isna(passport["patronymic_root"]) and passport["patronymic_initial"] == "a"
    assert civil["mother_std"] == passport["mother_std"] == "zarina"
    assert civil["pin_std"] == passport["pin_std"] == "0101234567"
    assert pd.isna(health["pin_std"])  # "n/a" has no digit
    assert civil["district_std"] == passport["district_std"] == "rudaki"
    assert civil["surname_phonetic"] == passport["surname_phonetic"]
    assert (civil["birth_year"], civil["birth_month"], civil["birth_day"]) == (1985, 3, 12)
    assert civil["birth_date_quality"] == "exact"
    assert pension["birth_date_quality"] == "placeholder"
    assert health["birth_date_quality"] == "partial" and pd.isna(health["birth_month"])
    assert voter["birth_date_quality"] == "missing"


def test_missing_stays_missing_never_text() -> None:
    out = standardise(_records())
    voter = out.loc[14, list(STANDARDISED_COLUMNS)].drop("birth_date_quality")
    assert voter.isna().all(), voter[voter.notna()]
    assert pd.isna(out.loc[13, "given_std"])  # whitespace only
    text_columns = [c for c, d in STANDARDISED_COLUMNS.items() if d == "string"]
    values = set(out[text_columns].stack().astype(str))
    assert not values & {"", "nan", "None", "<NA>"}


def test_given_quality_is_kept_and_only_gaps_filled() -> None:
    df = _records()
    df.loc[12, "birth_date_quality"] = "exact"  # the register vouches for its 1 January
    out = standardise(df)
    assert out.loc[12, "birth_date_quality"] == "exact"
    assert out.loc[10, "birth_date_quality"] == "exact"  # filled
    assert out.loc[13, "birth_date_quality"] == "partial"  # filled


def test_absent_columns_count_as_missing() -> None:
    df = pd.DataFrame({"surname": pd.array(["Karimov", None], dtype="string")})
    out = standardise(df)
    assert list(out["surname_root"]) == ["karim", pd.NA]
    assert out["given_std"].isna().all() and out["birth_year"].isna().all()
    assert list(out["birth_date_quality"]) == ["missing", "missing"]


def test_unparseable_dates_warn_without_personal_data() -> None:
    df = pd.DataFrame({"birth_date": pd.array(["12.03.1985", "1985-03-12"], dtype="string")})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = standardise(df)
    messages = [str(w.message) for w in caught if issubclass(w.category, MatchingWarning)]
    assert len(messages) == 1 and "1 distinct value" in messages[0]
    assert "1985" not in messages[0]
    assert out["birth_date_quality"].tolist() == ["missing", "exact"]


def test_object_and_str_dtype_inputs_work() -> None:
    df = pd.DataFrame({"surname": ["Каримов", None, float("nan")], "pin": [123, 456, 789]})
    out = standardise(df)
    assert out["surname_std"].tolist() == ["karimav", pd.NA, pd.NA]
    assert out["pin_std"].tolist() == ["123", "456", "789"]


def test_name_parts_learned_from_the_frame() -> None:
    df = pd.DataFrame({"given_name": pd.array(["Gul Bahor", "Gulbahor", "Bahor"],
                                              dtype="string")})
    out = standardise(df)
    assert out["given_first"].tolist() == ["gul", "gul", "bahar"]
    # a fixed vocabulary (e.g. learned once from all registers) overrides the frame's
    out = standardise(df, name_parts=NameParts())
    assert out["given_first"].tolist() == ["gul", "gulbahar", "bahar"]


def test_standardise_is_idempotent_and_handles_an_empty_frame() -> None:
    once = standardise(_records())
    pd.testing.assert_frame_equal(standardise(once), once)
    empty = standardise(_records().iloc[0:0])
    assert len(empty) == 0 and set(STANDARDISED_COLUMNS) <= set(empty.columns)
