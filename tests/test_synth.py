"""``reglink synth``: the synthetic country's extracts, as a user of the benchmark checks them."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from matching.pin import valid_pin_mask
from pipelines.cli import main as cli_main
from pipelines.synth import generate
from pipelines.synth.names import build_vocabulary
from pipelines.synth.population import REFERENCE_DATE, ROLE_CHILD, generate_chunk

FILES = ["civil.csv", "national_id.csv", "electoral.csv", "pension.csv", "health.parquet",
         "truth.csv", "synth.json"]

# The native layouts documented in README.md, section The synthetic country.
NATIVE_COLUMNS = {
    "civil": ["NOMER_ZAPISI", "TIP_ZAPISI", "DATA_ZAPISI", "SVIDETELSTVO", "FAMILIYA", "IMYA",
              "OTCHESTVO", "POL", "DATA_ROZHDENIYA", "DATA_SMERTI", "IMYA_OTCA", "IMYA_MATERI",
              "FAMILIYA_DO_BRAKA", "OBLAST", "RAYON"],
    "national_id": ["card_no", "pin", "last_name", "first_name", "middle_name", "sex",
                    "date_of_birth", "region", "district", "locality", "address", "issue_date",
                    "status"],
    "electoral": ["VOTER_NO", "FIO", "JINS", "SANAI_TAVALLUD", "PIN", "UCHASTOK", "NOHIYA",
                  "MAHALLA", "FAOL"],
    "pension": ["PENS_NO", "PIN", "FAMILIYA", "ISM", "NASAB", "JINS", "DR_DEN", "DR_MES",
                "DR_GOD", "NOGIRONI", "SANAI_TAYINOT", "STATUS", "VILOYAT", "NOHIYA"],
    "health": ["karta_raqam", "nasab", "nom", "nomi_padar", "jins", "sanai_tavallud",
               "telefon", "nohiya", "suroga", "holat"],
}
RECORD_ID_PATTERN = {
    "civil": r"\d{10}",
    "national_id": r"[A-Z]{2}\d{7}",
    "electoral": r"\d{3}/\d{6}",
    "pension": r"PN-\d{9}",
    "health": r"\d{4}-\d{6}",
}
TAJIK_LETTERS = set("ҳҷқғӯӣҲҶҚҒӮӢ")


def read(folder: Path, register: str) -> pd.DataFrame:
    if register == "health":
        return pd.read_parquet(folder / "health.parquet").astype("string").fillna("")
    options = {
        "civil": {"encoding": "cp1251", "sep": ";"},
        "pension": {"sep": ";"},
    }.get(register, {})
    return pd.read_csv(
        folder / f"{register}.csv", dtype=str, keep_default_na=False, **options
    )


@pytest.fixture(scope="module")
def country(tmp_path_factory) -> dict[str, Path]:
    """Several small countries: default errors, the same again, another seed, clean, noisy."""
    base = tmp_path_factory.mktemp("synth")
    runs = {
        "a": (1500, 11, 0.05),
        "a_again": (1500, 11, 0.05),
        "other_seed": (1500, 12, 0.05),
        "clean": (4000, 21, 0.0),
        "noisy": (4000, 21, 0.3),
    }
    folders = {}
    for key, (persons, seed, rate) in runs.items():
        folders[key] = base / key
        generate(persons, seed, folders[key], error_rate=rate, progress=False)
    return folders


def test_same_seed_gives_identical_files_and_another_seed_does_not(country) -> None:
    for name in FILES:
        same = (country["a"] / name).read_bytes() == (country["a_again"] / name).read_bytes()
        assert same, f"{name} differs between two runs with the same seed"
    differing = [
        name for name in FILES[:6]
        if (country["a"] / name).read_bytes() != (country["other_seed"] / name).read_bytes()
    ]
    assert differing == FILES[:6]


@pytest.mark.parametrize("register", list(NATIVE_COLUMNS))
def test_every_register_has_its_native_columns_and_id_format(country, register) -> None:
    frame = read(country["a"], register)
    assert list(frame.columns) == NATIVE_COLUMNS[register]
    assert len(frame) > 50
    ids = frame.iloc[:, 0]
    assert ids.is_unique
    assert ids.str.fullmatch(RECORD_ID_PATTERN[register]).all()


def test_truth_covers_every_record_of_every_register_exactly_once(country) -> None:
    truth = pd.read_csv(country["a"] / "truth.csv", dtype=str)
    assert list(truth.columns) == ["register", "record_id", "person_id"]
    assert not truth.duplicated(["register", "record_id"]).any()
    for register in NATIVE_COLUMNS:
        ids = read(country["a"], register).iloc[:, 0]
        in_truth = truth.loc[truth["register"] == register, "record_id"]
        assert sorted(ids) == sorted(in_truth), register
    # Record ids give nothing away about the person.
    person_ids = set(truth["person_id"])
    assert not person_ids & set(truth["record_id"])
    assert truth["person_id"].str.fullmatch(r"[0-9A-F]{10}").all()
    assert truth["person_id"].nunique() <= 1500


def test_civil_register_is_cp1251_with_russian_letters_only(country) -> None:
    raw = (country["a"] / "civil.csv").read_bytes()
    text = raw.decode("cp1251")
    with pytest.raises(UnicodeDecodeError):
        raw.decode("utf-8")
    assert "\r\n" in text
    assert not TAJIK_LETTERS & set(text)
    assert re.search(r"[А-Яа-я]", text)
    # The other Cyrillic registers keep the Tajik letters.
    electoral = read(country["a"], "electoral")
    assert TAJIK_LETTERS & set("".join(electoral["FIO"]))


def test_civil_rows_are_person_events_with_marriages_in_pairs(country) -> None:
    civil = read(country["clean"], "civil")
    assert set(civil["TIP_ZAPISI"]) == {"Р", "С", "Б"}
    births = civil[civil["TIP_ZAPISI"] == "Р"]
    assert (births["IMYA_OTCA"] != "").all() and (births["IMYA_MATERI"] != "").all()
    assert (civil.loc[civil["TIP_ZAPISI"] == "С", "DATA_SMERTI"] != "").all()
    marriages = civil[civil["TIP_ZAPISI"] == "Б"]
    per_certificate = marriages.groupby("SVIDETELSTVO")["POL"].agg(lambda s: "".join(sorted(s)))
    assert (per_certificate == "ЖМ").all()
    assert civil["SVIDETELSTVO"].str.fullmatch(r"[IVX]+-[А-Я]{2} \d{6}").all()


def test_generated_pins_are_valid_unless_an_error_was_injected(country) -> None:
    for register, column in [("national_id", "pin"), ("electoral", "PIN"), ("pension", "PIN")]:
        clean = read(country["clean"], register)[column]
        clean = clean[clean != ""]
        assert len(clean) > 0
        assert valid_pin_mask(clean).all(), register
    noisy = read(country["noisy"], "national_id")["pin"]
    noisy = noisy[noisy != ""]
    invalid_share = 1 - valid_pin_mask(noisy).mean()
    assert 0.005 < invalid_share < 0.1  # 0.1 * 0.3 = 3 % injected, most caught by Luhn


def test_nobody_under_16_holds_an_id_card_in_a_clean_country(country) -> None:
    ids = read(country["clean"], "national_id")
    born = pd.to_datetime(ids["date_of_birth"])
    age = (pd.Timestamp("2026-11-01") - born).dt.days / 365.2425
    assert age.min() >= 16
    electoral = read(country["clean"], "electoral")
    born = pd.to_datetime(electoral["SANAI_TAVALLUD"], format="%d/%m/%Y")
    assert ((pd.Timestamp("2026-11-01") - born).dt.days / 365.2425).min() >= 18


def _linked(folder: Path, left: str, right: str) -> pd.DataFrame:
    truth = pd.read_csv(folder / "truth.csv", dtype=str)
    frames = []
    for register in (left, right):
        frame = read(folder, register).rename(columns=lambda c, r=register: f"{r}.{c}")
        ids = truth[truth["register"] == register][["record_id", "person_id"]]
        frames.append(frame.merge(ids, left_on=frame.columns[0], right_on="record_id"))
    return frames[0].merge(frames[1], on="person_id")


def test_error_rate_zero_versus_high(country) -> None:
    clean_truth = pd.read_csv(country["clean"] / "truth.csv", dtype=str)
    noisy_truth = pd.read_csv(country["noisy"] / "truth.csv", dtype=str)
    for register in ["national_id", "electoral", "pension", "health"]:
        clean_counts = clean_truth[clean_truth["register"] == register]["person_id"].value_counts()
        assert clean_counts.max() == 1, f"duplicates in clean {register}"
        noisy_counts = noisy_truth[noisy_truth["register"] == register]["person_id"].value_counts()
        assert noisy_counts.max() == 2, f"no duplicates in noisy {register}"
    # The dead: clean registers mark them, noisy ones keep some active.
    for key, expect_stale in [("clean", False), ("noisy", True)]:
        both = _linked(country[key], "civil", "national_id")
        dead = both[both["civil.TIP_ZAPISI"] == "С"]
        assert len(dead) > 20
        stale = (dead["national_id.status"] == "ACTIVE").any()
        assert stale == expect_stale, key
    # Spelling variety: the distinct spellings of one person's given name across the
    # national ID and pension registers (capitals folded) grow with the error rate.
    spellings = {}
    for key in ("clean", "noisy"):
        both = _linked(country[key], "national_id", "pension")
        names = pd.concat(
            [both[["person_id", "national_id.first_name"]].set_axis(["p", "n"], axis=1),
             both[["person_id", "pension.ISM"]].set_axis(["p", "n"], axis=1)]
        )
        spellings[key] = names.assign(n=names["n"].str.upper()).groupby("p")["n"].nunique().mean()
    assert spellings["noisy"] > spellings["clean"] + 0.1, spellings
    clean_ids = read(country["clean"], "national_id")
    noisy_ids = read(country["noisy"], "national_id")
    assert (clean_ids["middle_name"] == "").sum() == 0
    assert (noisy_ids["middle_name"] == "").mean() > 0.02
    # Under the clean rate every ID card spells names the one official way (kh, j, q, gh).
    assert not clean_ids["last_name"].str.contains("Dzh|x", regex=True).any()
    assert noisy_ids["last_name"].str.contains("Dzh|x", regex=True).any()
    # Minors on the roll only by mistake.
    for key, expect_minors in [("clean", False), ("noisy", True)]:
        roll = read(country[key], "electoral")
        born = pd.to_datetime(roll["SANAI_TAVALLUD"], format="%d/%m/%Y", errors="coerce")
        age = (pd.Timestamp("2026-11-01") - born).dt.days / 365.2425
        assert (age < 18).any() == expect_minors, key


def test_women_keep_their_maiden_name_in_older_records(country) -> None:
    both = _linked(country["clean"], "civil", "civil")
    brides = both[(both["civil.TIP_ZAPISI_x"] == "Б") & (both["civil.POL_x"] == "Ж")
                  & (both["civil.TIP_ZAPISI_y"] == "Р")]
    assert len(brides) > 20
    married_differs = brides["civil.FAMILIYA_x"] != brides["civil.FAMILIYA_y"]
    assert married_differs.mean() > 0.8
    # Her birth record and the "before marriage" surname of the marriage record agree
    # unless the family changed its surname form in between.
    same_maiden = brides["civil.FAMILIYA_DO_BRAKA_x"] == brides["civil.FAMILIYA_y"]
    assert same_maiden.mean() > 0.7


def test_surnames_move_from_russian_to_tajik_form(country) -> None:
    both = _linked(country["clean"], "civil", "national_id")
    births = both[both["civil.TIP_ZAPISI"] == "Р"]
    old_form = births["civil.FAMILIYA"].str.contains(r"(?:ов|ев)а?$", regex=True)
    new_form = births["national_id.last_name"].str.endswith(("zoda", "zod"))
    assert (old_form & new_form).sum() > 5  # Каримов at birth, Karimzoda on the ID card


def test_patronymics_come_from_the_fathers_name(country) -> None:
    civil = read(country["clean"], "civil")
    births = civil[civil["TIP_ZAPISI"] == "Р"]
    stems = births["IMYA_OTCA"].str.replace(r"[иоеауэ]$", "", regex=True)
    derived = [
        p.startswith(s) for p, s in zip(births["OTCHESTVO"], stems, strict=True)
    ]
    assert np.mean(derived) > 0.97
    forms = births["OTCHESTVO"]
    assert forms.str.endswith(("ович", "евич", "овна", "евна")).any()
    assert forms.str.endswith("зода").any()
    assert forms.isin(births["IMYA_OTCA"]).any()  # the bare father's name


def test_placeholder_birth_dates_for_part_of_the_older_population(country) -> None:
    ids = read(country["clean"], "national_id")
    old = ids[ids["date_of_birth"] < "1960"]
    share = old["date_of_birth"].str.endswith("-01-01").mean()
    assert 0.06 < share < 0.3
    young = ids[ids["date_of_birth"] >= "1970"]
    assert young["date_of_birth"].str.endswith("-01-01").mean() < 0.02
    births = read(country["clean"], "civil")
    births = births[births["TIP_ZAPISI"] == "Р"]
    assert births["DATA_ROZHDENIYA"].str.startswith("01.01.").mean() < 0.02


def test_given_names_follow_a_skewed_distribution(country) -> None:
    ids = read(country["clean"], "national_id")
    counts = ids["first_name"].value_counts()
    assert counts.index[0] in {"Muhammad", "Zarina", "Abdullo", "Madina"}
    assert counts.iloc[0] > 8 * counts.median()
    assert len(counts) > 100


def test_households_share_surname_roots_and_parents() -> None:
    vocab = build_vocabulary()
    pop = generate_chunk(np.random.default_rng(3), vocab, 3000, 0)
    assert len(pop) == 3000
    kids = np.flatnonzero(pop.role == ROLE_CHILD)
    assert len(kids) > 1000
    assert (pop.root[kids] == pop.root[pop.father[kids]]).all()
    assert (pop.father_given[kids] == pop.given[pop.father[kids]]).all()
    assert (pop.birth[kids] > pop.birth[pop.mother[kids]] + 15 * 365).all()
    assert (pop.birth <= REFERENCE_DATE).all()
    siblings = np.bincount(pop.household[kids])
    assert (siblings >= 3).sum() > 100
    twins = pd.DataFrame({"h": pop.household[kids], "b": pop.birth[kids]}).duplicated().sum()
    assert twins > 0


def test_cli_writes_the_extracts_and_refuses_bad_arguments(tmp_path, capsys) -> None:
    out = tmp_path / "src"
    assert cli_main(["synth", "--persons", "300", "--seed", "4", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)
    assert "national_id" in capsys.readouterr().out
    assert cli_main(["synth", "--persons", "0", "--out", str(out)]) == 2
    assert "--persons must be between" in capsys.readouterr().err
    assert cli_main(["synth", "--persons", "10", "--error-rate", "2", "--out", str(out)]) == 2
    assert "--error-rate" in capsys.readouterr().err
