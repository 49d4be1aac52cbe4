"""The people of the synthetic country: households born, married and dying over decades.

A chunk of the population is a set of households, generated together with numpy (no loop
over persons). A household is a founding couple (or a single adult) and their children;
grown children marry children of other households of the same chunk, so the wife takes her
husband's surname and moves to his household's address. Every household stays within one
chunk, so chunks are independent and can be written out one after the other.

Surnames follow a family *type*:

- ``A``: Russian form throughout (Каримов / Каримова);
- ``B``: Russian form until the family's change year (2007–2024), Tajik form afterwards
  (Каримов in an old record, Каримзода in a newer one);
- ``C``: Tajik form from the start (-зода, -зод, -иён, -пур, -фар).

The same family type decides the patronymic form at a date: Russian (-ович/-овна) while
the family uses Russian surnames, else the person's Tajik form (father's name + зода, or
the bare father's name).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipelines.synth import calendar as cal
from pipelines.synth.names import (
    N_PATRONYMIC_FORMS,
    N_SURNAME_FORMS,
    PF_BARE,
    PF_RU_F,
    PF_RU_M,
    PF_ZODA,
    SF_FAR,
    SF_IYON,
    SF_PUR,
    SF_RU_F,
    SF_RU_M,
    SF_ZOD,
    SF_ZODA,
    Vocabulary,
)

REFERENCE_DATE = cal.day(2026, 11, 1)
FIRST_FOUNDER_YEAR = 1925
LAST_FOUNDER_YEAR = 2003
TYPE_A, TYPE_B, TYPE_C = 0, 1, 2
NEVER_YEAR = 9999
ROLE_HEAD, ROLE_WIFE, ROLE_CHILD = 0, 1, 2
MALE, FEMALE = 0, 1

_YEAR_DAYS = 365.2425
_PHONE_PREFIXES = np.array([93, 92, 90, 91, 98, 99, 50, 55, 88, 11, 77])
_PHONE_WEIGHTS = np.array([20, 18, 14, 10, 9, 8, 6, 5, 4, 3, 3], dtype=float)


@dataclass
class Population:
    """One chunk of persons; every array has one entry per person (chunk-local index)."""

    global_index: np.ndarray  # int64, position of the person in the whole country
    household: np.ndarray  # chunk-local household of birth (or founding)
    role: np.ndarray
    sex: np.ndarray  # MALE / FEMALE
    birth: np.ndarray  # day numbers (calendar.py)
    death: np.ndarray  # NO_DATE when alive at the reference date
    given: np.ndarray  # index into Vocabulary.given (joined form)
    father_given: np.ndarray  # male given-name index of the father
    mother_given: np.ndarray  # given-name index of the mother
    father: np.ndarray  # chunk-local index of the father, -1 when not in the population
    mother: np.ndarray
    root: np.ndarray  # own (birth family) surname root
    family_type: np.ndarray
    change_year: np.ndarray
    tajik_form: np.ndarray  # surname form used when Tajik (SF_ZODA ...)
    patronymic_tajik_form: np.ndarray  # PF_ZODA or PF_BARE
    spouse: np.ndarray  # -1 when never married
    marriage: np.ndarray  # day of marriage, NO_DATE when never married
    marriage_registered: np.ndarray  # bool: a civil marriage record exists
    married_root: np.ndarray  # wives: husband's family surname fields, -1 otherwise
    married_type: np.ndarray
    married_change_year: np.ndarray
    married_tajik_form: np.ndarray
    placeholder_birth: np.ndarray  # bool: some registers only know 01.01.YYYY
    born_in_country: np.ndarray  # bool
    disabled_since: np.ndarray  # day disability pension started, NO_DATE when none
    region: np.ndarray
    district: np.ndarray
    locality: np.ndarray
    street: np.ndarray
    house: np.ndarray
    phone: np.ndarray  # int64, 9 digits

    def __len__(self) -> int:
        return len(self.sex)

    def age_at(self, idx: np.ndarray, when: np.ndarray | int) -> np.ndarray:
        return (np.asarray(when) - self.birth[idx]) / _YEAR_DAYS

    def surname_index(self, idx: np.ndarray, when: np.ndarray) -> np.ndarray:
        """Surname vocabulary index of persons ``idx`` as a record dated ``when`` shows it."""
        use_married = (self.married_root[idx] >= 0) & (self.marriage[idx] <= when)
        root = np.where(use_married, self.married_root[idx], self.root[idx])
        ftype = np.where(use_married, self.married_type[idx], self.family_type[idx])
        change = np.where(use_married, self.married_change_year[idx], self.change_year[idx])
        tajik_form = np.where(use_married, self.married_tajik_form[idx], self.tajik_form[idx])
        year = cal.YEAR[np.clip(when, 0, cal.N_DAYS - 1)]
        tajik = (ftype == TYPE_C) | ((ftype == TYPE_B) & (year >= change))
        russian = np.where(self.sex[idx] == FEMALE, SF_RU_F, SF_RU_M)
        return root * N_SURNAME_FORMS + np.where(tajik, tajik_form, russian)

    def patronymic_index(self, idx: np.ndarray, when: np.ndarray) -> np.ndarray:
        """Patronymic vocabulary index (form of the person's birth family at ``when``)."""
        year = cal.YEAR[np.clip(when, 0, cal.N_DAYS - 1)]
        ftype = self.family_type[idx]
        tajik = (ftype == TYPE_C) | ((ftype == TYPE_B) & (year >= self.change_year[idx]))
        russian = np.where(self.sex[idx] == FEMALE, PF_RU_F, PF_RU_M)
        form = np.where(tajik, self.patronymic_tajik_form[idx], russian)
        return self.father_given[idx] * N_PATRONYMIC_FORMS + form


def _days(rng: np.random.Generator, low_years: float, high_years: float, n: int) -> np.ndarray:
    return rng.integers(int(low_years * _YEAR_DAYS), int(high_years * _YEAR_DAYS), n)


def _family_names(rng: np.random.Generator, vocab: Vocabulary, founder_year: np.ndarray):
    """Root, type, change year and Tajik form of ``len(founder_year)`` families."""
    n = len(founder_year)
    root = rng.choice(vocab.n_roots, size=n, p=vocab.root_weights)
    young = np.clip((founder_year - 1960) / 40.0, 0.0, 1.0)
    p_c = 0.04 + 0.26 * young
    p_b = 0.30 + 0.15 * young
    u = rng.random(n)
    ftype = np.where(u < p_c, TYPE_C, np.where(u < p_c + p_b, TYPE_B, TYPE_A))
    change = np.where(ftype == TYPE_B, rng.integers(2007, 2025, n), NEVER_YEAR)
    tajik_any = rng.choice(
        [SF_ZODA, SF_ZOD, SF_IYON, SF_PUR, SF_FAR], size=n, p=[0.5, 0.15, 0.12, 0.12, 0.11]
    )
    tajik_switch = rng.choice([SF_ZODA, SF_ZOD], size=n, p=[0.8, 0.2])
    form = np.where(ftype == TYPE_C, tajik_any, tajik_switch)
    return root, ftype.astype(np.int8), change.astype(np.int16), form.astype(np.int8)


def _death_after(rng: np.random.Generator, birth: np.ndarray, infants: bool) -> np.ndarray:
    """Death day from a Gompertz law (median about 74 years) plus some infant deaths."""
    n = len(birth)
    a, b = 0.00012, 0.085
    u = rng.random(n)
    age_years = np.log1p(-(b / a) * np.log(u)) / b
    if infants:
        infant = rng.random(n) < 0.02
        age_years = np.where(infant, rng.random(n) * 2.0, age_years)
    return birth + (age_years * _YEAR_DAYS).astype(np.int64)


def _zipf_given(rng: np.random.Generator, vocab: Vocabulary, sex: np.ndarray) -> np.ndarray:
    n = len(sex)
    male = rng.choice(vocab.n_male, size=n, p=vocab.male_weights)
    female = vocab.n_male + rng.choice(vocab.n_female, size=n, p=vocab.female_weights)
    return np.where(sex == MALE, male, female)


def generate_chunk(
    rng: np.random.Generator, vocab: Vocabulary, n_persons: int, first_index: int
) -> Population:
    """Generate exactly ``n_persons`` persons in whole households (the last one trimmed)."""
    n_families = max(8, int(n_persons / 2.2) + 16)
    while True:
        pop = _try_chunk(rng, vocab, n_persons, first_index, n_families)
        if pop is not None:
            return pop
        n_families *= 2


def _try_chunk(
    rng: np.random.Generator, vocab: Vocabulary, n_persons: int, first_index: int, F: int
) -> Population | None:
    ref = REFERENCE_DATE
    years = np.arange(FIRST_FOUNDER_YEAR, LAST_FOUNDER_YEAR + 1)
    year_weights = np.exp(0.024 * (years - FIRST_FOUNDER_YEAR))
    founder_year = rng.choice(years, size=F, p=year_weights / year_weights.sum())
    head_birth = (
        np.array([cal.day(int(y)) for y in years])[founder_year - FIRST_FOUNDER_YEAR]
        + rng.integers(0, 365, F)
    )
    marriage = head_birth + _days(rng, 20, 30, F)
    wife_birth = head_birth + _days(rng, -2, 8, F)
    wife_birth = np.minimum(wife_birth, marriage - _days(rng, 18, 19, F))
    single = (rng.random(F) < 0.06) | (marriage > ref)
    married = ~single

    # Children: flat arrays with their family index.
    mar_year = cal.YEAR[np.clip(marriage, 0, cal.N_DAYS - 1)]
    mean_children = np.where(mar_year < 1975, 5.0, np.where(mar_year < 1995, 4.2, 3.2))
    n_children = np.where(married, np.minimum(rng.poisson(mean_children), 9), 0)
    kid_family = np.repeat(np.arange(F), n_children)
    K = len(kid_family)
    gaps = rng.integers(400, 1500, K)
    starts = np.cumsum(n_children) - n_children
    first = np.zeros(K, dtype=bool)
    first[starts[n_children > 0]] = True
    gaps[first] = rng.integers(280, 900, int(first.sum()))
    csum = np.cumsum(gaps)
    kid_birth = marriage[kid_family] + csum - (csum - gaps)[first][np.cumsum(first) - 1]
    # Twins share the birth day of the previous child of the same family.
    twin = (rng.random(K) < 0.015) & ~first
    anchor = np.maximum.accumulate(np.where(twin, 0, np.arange(K)))
    kid_birth = kid_birth[anchor]
    keep = (kid_birth <= ref) & (kid_birth <= wife_birth[kid_family] + int(45 * _YEAR_DAYS))
    kid_family, kid_birth = kid_family[keep], kid_birth[keep]
    n_children = np.bincount(kid_family, minlength=F)

    # Trim to exactly n_persons: whole families, the last one cut short.
    size = 1 + married + n_children
    total = np.cumsum(size)
    if total[-1] < n_persons:
        return None
    last = int(np.searchsorted(total, n_persons))
    excess = int(total[last] - n_persons)
    F = last + 1
    cut_children = min(excess, int(n_children[last]))
    n_children = n_children[:F].copy()
    n_children[last] -= cut_children
    married = married[:F].copy()
    if excess - cut_children:
        married[last] = False
    kid_mask = kid_family < F
    kid_family, kid_birth = kid_family[kid_mask], kid_birth[kid_mask]
    order_in_family = np.arange(len(kid_family)) - np.searchsorted(kid_family, kid_family)
    kid_keep = order_in_family < n_children[kid_family]
    kid_family, kid_birth = kid_family[kid_keep], kid_birth[kid_keep]
    head_birth, wife_birth, marriage = head_birth[:F], wife_birth[:F], marriage[:F]
    founder_year = founder_year[:F]

    # Persons: heads, then wives of married founders, then children.
    wives = np.flatnonzero(married)
    n_heads, n_wives, n_kids = F, len(wives), len(kid_family)
    n = n_heads + n_wives + n_kids
    assert n == n_persons, (n, n_persons)
    household = np.concatenate([np.arange(F), wives, kid_family])
    role = np.concatenate(
        [np.full(n_heads, ROLE_HEAD), np.full(n_wives, ROLE_WIFE), np.full(n_kids, ROLE_CHILD)]
    ).astype(np.int8)
    head_of = np.arange(F)
    wife_of = np.full(F, -1)
    wife_of[wives] = n_heads + np.arange(n_wives)
    sex = np.empty(n, dtype=np.int8)
    sex[:n_heads] = np.where(married, MALE, (rng.random(F) < 0.35).astype(np.int8))
    sex[n_heads : n_heads + n_wives] = FEMALE
    sex[n_heads + n_wives :] = (rng.random(n_kids) < 0.488).astype(np.int8)
    birth = np.concatenate([head_birth, wife_birth[wives], kid_birth]).astype(np.int64)

    # Family surnames: household's for heads and children, own birth family for wives.
    f_root, f_type, f_change, f_form = _family_names(rng, vocab, founder_year)
    w_root, w_type, w_change, w_form = _family_names(rng, vocab, founder_year[wives])
    root = np.concatenate([f_root, w_root, f_root[kid_family]])
    family_type = np.concatenate([f_type, w_type, f_type[kid_family]])
    change_year = np.concatenate([f_change, w_change, f_change[kid_family]])
    tajik_form = np.concatenate([f_form, w_form, f_form[kid_family]])
    patronymic_tajik_form = np.where(rng.random(n) < 0.6, PF_ZODA, PF_BARE).astype(np.int8)

    given = _zipf_given(rng, vocab, sex)
    father = np.full(n, -1)
    mother = np.full(n, -1)
    kids = np.arange(n_heads + n_wives, n)
    father[kids] = head_of[kid_family]
    mother[kids] = wife_of[kid_family]
    father_given = rng.choice(vocab.n_male, size=n, p=vocab.male_weights)
    mother_given = vocab.n_male + rng.choice(vocab.n_female, size=n, p=vocab.female_weights)
    father_given[kids] = given[father[kids]]
    mother_given[kids] = given[mother[kids]]

    # Deaths, never before the events that the person took part in.
    death = _death_after(rng, birth, infants=False)
    death[kids] = _death_after(rng, birth[kids], infants=True)
    last_child = np.full(F, -1, dtype=np.int64)
    np.maximum.at(last_child, kid_family, kid_birth)
    floor = np.where(married, np.maximum(marriage, last_child - 250), -1)
    heads = np.arange(F)
    death[heads] = np.where(
        death[heads] < floor, floor + rng.integers(30, 3650, F), death[heads]
    )
    wife_rows = wife_of[wives]
    floor_w = np.maximum(marriage[wives], last_child[wives])
    death[wife_rows] = np.where(
        death[wife_rows] < floor_w,
        floor_w + rng.integers(30, 3650, n_wives),
        death[wife_rows],
    )

    spouse = np.full(n, -1)
    marriage_day = np.full(n, cal.NO_DATE, dtype=np.int64)
    married_root = np.full(n, -1)
    married_type = np.zeros(n, dtype=np.int8)
    married_change = np.full(n, NEVER_YEAR, dtype=np.int16)
    married_form = np.zeros(n, dtype=np.int8)
    spouse[wives] = wife_rows
    spouse[wife_rows] = wives
    marriage_day[wives] = marriage[wives]
    marriage_day[wife_rows] = marriage[wives]

    # Grown children marry children of other households of the chunk.
    age_ref = (REFERENCE_DATE - birth) / _YEAR_DAYS
    sons = kids[(sex[kids] == MALE) & (age_ref[kids] >= 20) & (rng.random(n_kids) < 0.85)]
    daughters = kids[(sex[kids] == FEMALE) & (age_ref[kids] >= 18) & (rng.random(n_kids) < 0.85)]
    sons = sons[np.argsort(birth[sons] + rng.normal(0, 700, len(sons)), kind="stable")]
    daughters = daughters[
        np.argsort(birth[daughters] - 1400 + rng.normal(0, 700, len(daughters)), kind="stable")
    ]
    m = min(len(sons), len(daughters))
    husbands, brides = sons[:m], daughters[:m]
    wedding = np.maximum(
        birth[husbands] + _days(rng, 21, 29, m), birth[brides] + _days(rng, 18, 20, m)
    )
    ok = (
        (wedding <= ref)
        & (wedding < death[husbands])
        & (wedding < death[brides])
        & (household[husbands] != household[brides])
    )
    husbands, brides, wedding = husbands[ok], brides[ok], wedding[ok]
    spouse[husbands], spouse[brides] = brides, husbands
    marriage_day[husbands] = wedding
    marriage_day[brides] = wedding

    all_wives = np.concatenate([wife_rows, brides])
    all_husbands = np.concatenate([wives, husbands])
    married_root[all_wives] = root[all_husbands]
    married_type[all_wives] = family_type[all_husbands]
    married_change[all_wives] = change_year[all_husbands]
    married_form[all_wives] = tajik_form[all_husbands]
    registered = np.zeros(n, dtype=bool)
    reg = rng.random(len(all_wives)) < 0.85
    registered[all_wives[reg]] = True
    registered[all_husbands[reg]] = True

    death = np.where(death > ref, cal.NO_DATE, death)

    # Household address; a bride moves to her husband's household.
    region = rng.choice(len(vocab.regions), size=F, p=vocab.region_weights)
    district = np.empty(F, dtype=np.int64)
    for r in range(len(vocab.regions)):
        in_region = np.flatnonzero(region == r)
        choices = np.flatnonzero(vocab.district_region == r)
        district[in_region] = rng.choice(choices, size=len(in_region))
    locality = rng.integers(0, vocab.locality.shape[1], F)
    street = rng.integers(0, vocab.street.shape[1], F)
    house = rng.integers(1, 180, F)
    address_household = household.copy()
    address_household[brides] = household[husbands]

    placeholder = (cal.YEAR[np.clip(birth, 0, cal.N_DAYS - 1)] < 1960) & (rng.random(n) < 0.15)
    born_in_country = rng.random(n) < np.where(role == ROLE_CHILD, 0.98, 0.93)
    disabled = (rng.random(n) < 0.02) & (age_ref >= 18)
    disabled_since = np.full(n, cal.NO_DATE, dtype=np.int64)
    start = np.maximum(birth + int(18 * _YEAR_DAYS), ref - _days(rng, 0, 15, n))
    disabled_since[disabled] = np.minimum(start[disabled], death[disabled])

    phone = rng.choice(_PHONE_PREFIXES, size=n, p=_PHONE_WEIGHTS / _PHONE_WEIGHTS.sum())
    phone = phone * 10_000_000 + rng.integers(0, 10_000_000, n)
    minor = (age_ref < 14) & (mother >= 0)
    phone[minor] = phone[mother[minor]]

    return Population(
        global_index=first_index + np.arange(n, dtype=np.int64),
        household=household,
        role=role,
        sex=sex,
        birth=birth,
        death=death,
        given=given,
        father_given=father_given,
        mother_given=mother_given,
        father=father,
        mother=mother,
        root=root,
        family_type=family_type,
        change_year=change_year,
        tajik_form=tajik_form,
        patronymic_tajik_form=patronymic_tajik_form,
        spouse=spouse,
        marriage=marriage_day,
        marriage_registered=registered,
        married_root=married_root,
        married_type=married_type,
        married_change_year=married_change,
        married_tajik_form=married_form,
        placeholder_birth=placeholder,
        born_in_country=born_in_country,
        disabled_since=disabled_since,
        region=region[address_household],
        district=district[address_household],
        locality=locality[address_household],
        street=street[address_household],
        house=house[address_household],
        phone=phone,
    )
