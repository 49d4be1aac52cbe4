"""The five registers, each in its own native layout, built from one chunk of persons.

Each builder selects who is in the register, dates each record (the date decides the
surname and patronymic forms the record shows), renders the native columns and injects
errors. :func:`build_registers` then shuffles each register's rows and gives them record
ids drawn from a per-register scrambled counter, so that ids reveal neither the person
nor the household.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from matching.pin import pin_check_digits
from pipelines.synth import calendar as cal
from pipelines.synth.errors import (
    ErrorRates,
    blank,
    date_errors,
    swap_names,
    typos,
    wrong_pin_digits,
)
from pipelines.synth.names import SCHEME_INDEX, Vocabulary
from pipelines.synth.population import FEMALE, REFERENCE_DATE, Population

_YEAR = 365.2425
_ID_START = cal.day(2000, 1, 1)

CYR_TJ, CYR_RU, CYR_RU_A = (SCHEME_INDEX[k] for k in ("cyr_tj", "cyr_ru", "cyr_ru_a"))
LAT_TJ, LAT_RU, LAT_ICAO, LAT_X, LAT_RU_A = (
    SCHEME_INDEX[k] for k in ("lat_tj", "lat_ru", "lat_icao", "lat_x", "lat_ru_a")
)
_LATIN_ALL = np.array([LAT_TJ, LAT_RU, LAT_ICAO, LAT_X, LAT_RU_A])

# Native layouts: column order of each register's file (README.md, section The synthetic
# country, describes them).
COLUMNS: dict[str, list[str]] = {
    "civil": [
        "NOMER_ZAPISI", "TIP_ZAPISI", "DATA_ZAPISI", "SVIDETELSTVO", "FAMILIYA", "IMYA",
        "OTCHESTVO", "POL", "DATA_ROZHDENIYA", "DATA_SMERTI", "IMYA_OTCA", "IMYA_MATERI",
        "FAMILIYA_DO_BRAKA", "OBLAST", "RAYON",
    ],
    "national_id": [
        "card_no", "pin", "last_name", "first_name", "middle_name", "sex", "date_of_birth",
        "region", "district", "locality", "address", "issue_date", "status",
    ],
    "electoral": [
        "VOTER_NO", "FIO", "JINS", "SANAI_TAVALLUD", "PIN", "UCHASTOK", "NOHIYA", "MAHALLA",
        "FAOL",
    ],
    "pension": [
        "PENS_NO", "PIN", "FAMILIYA", "ISM", "NASAB", "JINS", "DR_DEN", "DR_MES", "DR_GOD",
        "NOGIRONI", "SANAI_TAYINOT", "STATUS", "VILOYAT", "NOHIYA",
    ],
    "health": [
        "karta_raqam", "nasab", "nom", "nomi_padar", "jins", "sanai_tavallud", "telefon",
        "nohiya", "suroga", "holat",
    ],
}
REGISTERS = tuple(COLUMNS)

_CERT_SERIES = [
    f"{roman}-{letters}"
    for roman in ("I", "II", "III", "IV", "V", "VI", "VII", "VIII", "IX", "X")
    for letters in ("ДЖ", "ТЧ", "ХЛ", "СГ", "РТ", "ШН", "ГБ", "КЛ", "ВД", "ДН")
]
_ID_LETTERS = [a + b for a in "ABCDEFGHIJKLMNOPQRSTUVWXYZ" for b in "ABCDEFGHIJKLMNOPQRSTUVWXYZ"]


@dataclass(frozen=True)
class IdSpace:
    """A bijective scramble of a counter onto ``[0, modulus)``, and its text form."""

    modulus: int
    formatter: Callable[[int], str]
    multiplier: int = 1
    offset: int = 0

    @classmethod
    def seeded(cls, rng: np.random.Generator, modulus: int, formatter) -> IdSpace:
        multiplier = int(rng.integers(modulus // 7, modulus // 3)) | 1
        while math.gcd(multiplier, modulus) != 1:
            multiplier += 2
        return cls(modulus, formatter, multiplier, int(rng.integers(0, modulus)))

    def render(self, counters: np.ndarray) -> np.ndarray:
        if len(counters) and int(counters[-1]) >= self.modulus:
            raise OverflowError("record id space exhausted; generate fewer persons")
        return np.array([self.formatter(v) for v in self.scramble(counters).tolist()], dtype=object)

    def scramble(self, counters: np.ndarray) -> np.ndarray:
        """``(counter * multiplier + offset) % modulus`` without int64 overflow."""
        c = np.asarray(counters, dtype=np.int64) % self.modulus
        high, low = self.multiplier >> 20, self.multiplier & 0xFFFFF
        # c < 2**34 and both halves < 2**20 keep every product below 2**63.
        x = (c * high) % self.modulus
        x = ((x << 20) % self.modulus + c * low) % self.modulus
        return (x + self.offset) % self.modulus


def id_spaces(seed: int) -> dict[str, IdSpace]:
    """The record-id spaces of every register (and civil certificates) for a seed."""
    rng = np.random.default_rng([seed, 0x1D5])
    return {
        "civil": IdSpace.seeded(rng, 10**10, lambda v: f"{v:010d}"),
        "civil_cert": IdSpace.seeded(
            rng, 10**8, lambda v: f"{_CERT_SERIES[v // 10**6]} {v % 10**6:06d}"
        ),
        "national_id": IdSpace.seeded(
            rng, 676 * 10**7, lambda v: f"{_ID_LETTERS[v // 10**7]}{v % 10**7:07d}"
        ),
        "electoral": IdSpace.seeded(rng, 10**9, lambda v: f"{v // 10**6:03d}/{v % 10**6:06d}"),
        "pension": IdSpace.seeded(rng, 10**9, lambda v: f"PN-{v:09d}"),
        "health": IdSpace.seeded(rng, 10**10, lambda v: f"{v // 10**6:04d}-{v % 10**6:06d}"),
        "person": IdSpace.seeded(rng, 16**10, lambda v: f"{v:010X}"),
        "pin": IdSpace.seeded(rng, 10**8, lambda v: f"{v:08d}"),
    }


@dataclass
class Chunk:
    """What the builders share while rendering one chunk."""

    pop: Population
    vocab: Vocabulary
    rates: ErrorRates
    rng: np.random.Generator
    pins: np.ndarray  # PIN text per person
    upper: dict[str, np.ndarray] = field(default_factory=dict)

    def table(self, name: str, upper: bool = False) -> np.ndarray:
        base = getattr(self.vocab, name)
        if not upper:
            return base
        if name not in self.upper:
            self.upper[name] = np.vectorize(str.upper, otypes=[object])(base)
        return self.upper[name]


@dataclass
class Rows:
    """A register's rows before shuffling: native columns and the person of each row."""

    person: np.ndarray
    columns: dict[str, np.ndarray]
    certificate: np.ndarray | None = None  # civil: event number shared by both spouses


# --------------------------------------------------------------------------------------
# Shared steps
# --------------------------------------------------------------------------------------


def _pick(ch: Chunk, eligible: np.ndarray, coverage: float | np.ndarray) -> np.ndarray:
    n = len(eligible)
    u, v = ch.rng.random(n), ch.rng.random(n)
    return np.flatnonzero(eligible & (u < coverage) & (v >= ch.rates.absent))


def _duplicate(ch: Chunk, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Row selector with some rows repeated, and the flag of the repeats."""
    dup = np.flatnonzero(ch.rng.random(n) < ch.rates.duplicate)
    rows = np.concatenate([np.arange(n), dup])
    flag = np.zeros(len(rows), dtype=bool)
    flag[n:] = True
    return rows, flag


def _schemes(ch: Chunk, n: int, dominant: np.ndarray | int, others, dup: np.ndarray):
    """The spelling of each record: the register's usual one, else one of ``others``."""
    mix = np.where(dup, 0.5, ch.rates.scheme_mix)
    other = ch.rng.choice(np.asarray(others), size=n)
    return np.where(ch.rng.random(n) < mix, other, dominant)


def _uniform_day(ch: Chunk, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    span = np.maximum(high - low, 0)
    return (low + (ch.rng.random(len(low)) * (span + 1)).astype(np.int64)).astype(np.int64)


def _names(ch: Chunk, person, when, scheme, dup, upper=False, russian=False):
    """Surname, given name and patronymic as a record dated ``when`` writes them."""
    vocab, rates, rng = ch.vocab, ch.rates, ch.rng
    n = len(person)
    given_idx = ch.pop.given[person]
    flip = rng.random(n) < rates.compound
    given_idx = np.where(flip, vocab.given_alt[given_idx], given_idx)
    surname = ch.table("surname", upper)[scheme, ch.pop.surname_index(person, when)]
    given = ch.table("given", upper)[scheme, given_idx]
    patronymic = ch.table("patronymic", upper)[scheme, ch.pop.patronymic_index(person, when)]
    rate = np.where(dup, max(0.3, rates.typo), rates.typo)
    for values in (surname, given, patronymic):
        typos(values, rate, rng, russian)
    swap_names(surname, given, rates.name_swap, rng)
    return surname, given, patronymic


def _birth(ch: Chunk, person: np.ndarray, placeholder: bool) -> np.ndarray:
    """Birth day as the register knows it, with its errors; -1 when missing."""
    birth = ch.pop.birth[person]
    if placeholder:
        jan1 = cal.MONTH_START[(cal.YEAR[birth] - 1900) * 12]
        birth = np.where(ch.pop.placeholder_birth[person], jan1, birth)
    birth = date_errors(birth, ch.rates, ch.rng)
    missing = ch.rng.random(len(birth)) < 0.1 * ch.rates.rate
    return np.where(missing, -1, birth)


def _pins(ch: Chunk, person: np.ndarray, present: float) -> np.ndarray:
    pins = ch.pins[person].copy()
    pins[ch.rng.random(len(person)) >= present] = ""
    wrong_pin_digits(pins, ch.rates.wrong_pin, ch.rng)
    blank(pins, 0.1 * ch.rates.missing, ch.rng)
    return pins


def _codes(mask: np.ndarray, if_true: str, if_false: str) -> np.ndarray:
    return np.where(mask, if_true, if_false).astype(object)


def _end(pop: Population, person: np.ndarray) -> np.ndarray:
    """Last day a person could be recorded: death, else the reference date."""
    return np.minimum(pop.death[person], REFERENCE_DATE)


# --------------------------------------------------------------------------------------
# Registers
# --------------------------------------------------------------------------------------


def civil(ch: Chunk) -> Rows:
    """Births (born in the country), deaths and registered marriages (a row per spouse)."""
    pop, rng = ch.pop, ch.rng
    old = cal.YEAR[pop.birth] < 1960
    births = _pick(ch, pop.born_in_country, np.where(old, 0.6, 0.95))
    dead = pop.death != cal.NO_DATE
    deaths = _pick(ch, dead & (cal.YEAR[np.minimum(pop.death, cal.N_DAYS - 1)] >= 1940), 0.95)
    registered = pop.marriage_registered & (pop.sex == FEMALE)
    wives = np.flatnonzero(registered)
    keep = rng.random(len(wives)) >= ch.rates.absent
    wives = wives[keep]
    husbands = pop.spouse[wives]
    n_marriages = len(wives)

    person = np.concatenate([births, deaths, husbands, wives])
    kind = np.concatenate(
        [np.full(len(births), "Р"), np.full(len(deaths), "С"), np.full(2 * n_marriages, "Б")]
    ).astype(object)
    event_day = np.concatenate(
        [pop.birth[births], pop.death[deaths], pop.marriage[husbands], pop.marriage[wives]]
    )
    registered_on = np.concatenate(
        [
            np.minimum(pop.birth[births] + rng.integers(3, 30, len(births)), REFERENCE_DATE),
            np.minimum(pop.death[deaths] + rng.integers(1, 10, len(deaths)), REFERENCE_DATE),
            np.tile(pop.marriage[wives], 2),
        ]
    )
    # Certificates: one per birth/death, one per marriage shared by the two spouses.
    n_events = len(births) + len(deaths) + n_marriages
    certificate = np.concatenate(
        [np.arange(len(births) + len(deaths)), np.tile(np.arange(n_marriages), 2)]
    )
    certificate[len(births) + len(deaths) :] += len(births) + len(deaths)
    assert certificate.max(initial=-1) < n_events

    rows, dup = _duplicate(ch, len(person))
    person, kind, event_day, registered_on = (
        person[rows], kind[rows], event_day[rows], registered_on[rows]
    )
    certificate = certificate[rows]
    m = len(person)
    is_birth, is_death, is_marriage = kind == "Р", kind == "С", kind == "Б"
    # Soviet-era clerks often wrote the Tajik long "о" as "а" (Рахмон -> Рахман).
    soviet = cal.YEAR[event_day] < 1991
    dominant = np.where(soviet & (rng.random(m) < 0.3), CYR_RU_A, CYR_RU)
    scheme = _schemes(ch, m, dominant, [CYR_RU, CYR_RU_A], dup)
    surname, given, patronymic = _names(ch, person, event_day, scheme, dup, russian=True)
    before = ch.vocab.surname[scheme, pop.surname_index(person, event_day - 1)]
    before = np.where(is_marriage, before, "").astype(object)
    birth = _birth(ch, person, placeholder=True)
    exact = pop.birth[person]
    birth = np.where(is_birth, date_errors(exact, ch.rates, rng), birth)
    father = np.where(is_birth, ch.vocab.given[scheme, pop.father_given[person]], "")
    mother = np.where(is_birth, ch.vocab.given[scheme, pop.mother_given[person]], "")
    father, mother = father.astype(object), mother.astype(object)
    for values in (father, mother):
        typos(values, ch.rates.typo, rng, russian=True)
        blank(values, ch.rates.missing, rng)
    blank(patronymic, ch.rates.missing, rng)
    death = np.where(is_death, event_day, -1)

    columns = {
        "TIP_ZAPISI": kind,
        "DATA_ZAPISI": cal.render(registered_on, "%d.%m.%Y"),
        "FAMILIYA": surname,
        "IMYA": given,
        "OTCHESTVO": patronymic,
        "POL": _codes(pop.sex[person] == FEMALE, "Ж", "М"),
        "DATA_ROZHDENIYA": cal.render(birth, "%d.%m.%Y"),
        "DATA_SMERTI": cal.render(death, "%d.%m.%Y"),
        "IMYA_OTCA": father,
        "IMYA_MATERI": mother,
        "FAMILIYA_DO_BRAKA": before,
        "OBLAST": ch.vocab.region[CYR_RU, pop.region[person]],
        "RAYON": ch.vocab.district[CYR_RU, pop.district[person]],
    }
    return Rows(person, columns, certificate)


def national_id(ch: Chunk) -> Rows:
    """ID card holders: people 16 or older (alive, or dead since 2000), Latin script."""
    pop, rng = ch.pop, ch.rng
    everyone = np.arange(len(pop))
    sixteen = pop.birth + int(16 * _YEAR)
    end = _end(pop, everyone)
    eligible = (sixteen <= end) & (end >= _ID_START)
    person = _pick(ch, eligible, 0.96)
    issued = _uniform_day(ch, np.maximum(sixteen[person], _ID_START), end[person])
    rows, dup = _duplicate(ch, len(person))
    person, issued = person[rows], issued[rows]
    # A re-issued card of the same person carries a later issue date.
    issued[dup] = _uniform_day(ch, issued[dup], end[person[dup]])
    m = len(person)
    scheme = _schemes(ch, m, LAT_TJ, [LAT_RU, LAT_ICAO, LAT_X, LAT_RU_A], dup)
    surname, given, patronymic = _names(ch, person, issued, scheme, dup)
    blank(patronymic, ch.rates.missing, rng)
    dead = pop.death[person] != cal.NO_DATE
    stale = dead & (rng.random(m) < ch.rates.stale_status)
    street = ch.vocab.street[LAT_TJ, pop.street[person]]
    address = "kuch. " + street + " " + cal.NUMBER_TEXT[pop.house[person]]
    blank(address, ch.rates.missing, rng)
    columns = {
        "pin": _pins(ch, person, 1.0),
        "last_name": surname,
        "first_name": given,
        "middle_name": patronymic,
        "sex": _codes(pop.sex[person] == FEMALE, "F", "M"),
        "date_of_birth": cal.render(_birth(ch, person, placeholder=True), "%Y-%m-%d"),
        "region": ch.vocab.region[LAT_TJ, pop.region[person]],
        "district": ch.vocab.district[LAT_TJ, pop.district[person]],
        "locality": ch.vocab.locality[LAT_TJ, pop.locality[person]],
        "address": address,
        "issue_date": cal.render(issued, "%Y-%m-%d"),
        "status": _codes(dead & ~stale, "DECEASED", "ACTIVE"),
    }
    return Rows(person, columns)


def electoral(ch: Chunk) -> Rows:
    """The roll: adults, some of the dead still on it, a few minors by mistake."""
    pop, rng = ch.pop, ch.rng
    everyone = np.arange(len(pop))
    alive = pop.death == cal.NO_DATE
    age = pop.age_at(everyone, REFERENCE_DATE)
    adults = _pick(ch, alive & (age >= 18), 0.92)
    age_at_death = pop.age_at(everyone, np.minimum(pop.death, cal.N_DAYS - 1))
    dead_recent = ~alive & (pop.death >= cal.day(2015)) & (age_at_death >= 18)
    stale = _pick(ch, dead_recent, ch.rates.stale_status)
    minors = _pick(ch, alive & (age >= 16) & (age < 18), ch.rates.minor_voter)
    person = np.concatenate([adults, stale, minors])
    rows, dup = _duplicate(ch, len(person))
    person = person[rows]
    m = len(person)
    end = _end(pop, person)
    when = np.maximum(end - rng.integers(0, int(4 * _YEAR), m), pop.birth[person] + 16 * 365)
    scheme = _schemes(ch, m, CYR_TJ, [CYR_RU, CYR_RU_A], dup)
    surname, given, patronymic = _names(ch, person, when, scheme, dup)
    fio = surname + " " + given + " " + patronymic
    station = 1000 + pop.district[person] * 60 + pop.locality[person] % 60
    columns = {
        "FIO": fio,
        "JINS": _codes(pop.sex[person] == FEMALE, "2", "1"),
        "SANAI_TAVALLUD": cal.render(_birth(ch, person, placeholder=True), "%d/%m/%Y"),
        "PIN": _pins(ch, person, 0.6),
        "UCHASTOK": cal.NUMBER_TEXT[station],
        "NOHIYA": ch.vocab.district[CYR_TJ, pop.district[person]],
        "MAHALLA": ch.vocab.locality[CYR_TJ, pop.locality[person]],
        "FAOL": _codes(rng.random(m) < 0.02, "0", "1"),
    }
    return Rows(person, columns)


def pension(ch: Chunk) -> Rows:
    """Old-age pensioners (men 63+, women 58+) and some younger disabled; Latin capitals."""
    pop, rng = ch.pop, ch.rng
    everyone = np.arange(len(pop))
    end = _end(pop, everyone)
    pension_age = np.where(pop.sex == FEMALE, 58, 63)
    start = np.minimum(pop.birth + (pension_age * _YEAR).astype(np.int64), pop.disabled_since)
    eligible = (start <= end) & (end >= cal.day(2010))
    person = _pick(ch, eligible, 0.95)
    rows, dup = _duplicate(ch, len(person))
    person = person[rows]
    m = len(person)
    granted = start[person]
    when = _uniform_day(ch, granted, end[person])
    scheme = _schemes(ch, m, LAT_RU, [LAT_TJ, LAT_ICAO, LAT_X, LAT_RU_A], dup)
    surname, given, patronymic = _names(ch, person, when, scheme, dup, upper=True)
    blank(patronymic, ch.rates.missing, rng)
    birth = _birth(ch, person, placeholder=True)
    known = birth >= 0
    safe = np.clip(birth, 0, cal.N_DAYS - 1)
    day = np.where(known, cal.NUMBER_TEXT[cal.DAY[safe]], "").astype(object)
    month = np.where(known, cal.NUMBER_TEXT[cal.MONTH[safe]], "").astype(object)
    year = np.where(known, cal.NUMBER_TEXT[cal.YEAR[safe]], "").astype(object)
    disabled = pop.disabled_since[person] <= granted
    group = np.where(disabled, cal.NUMBER_TEXT[1 + rng.integers(0, 3, m)], "").astype(object)
    dead = pop.death[person] != cal.NO_DATE
    paid = ~dead | (rng.random(m) < ch.rates.stale_status)
    columns = {
        "PIN": _pins(ch, person, 0.9),
        "FAMILIYA": surname,
        "ISM": given,
        "NASAB": patronymic,
        "JINS": _codes(pop.sex[person] == FEMALE, "A", "E"),
        "DR_DEN": day,
        "DR_MES": month,
        "DR_GOD": year,
        "NOGIRONI": group,
        "SANAI_TAYINOT": cal.render(granted, "%d.%m.%Y"),
        "STATUS": _codes(paid, "A", "S"),
        "VILOYAT": ch.table("region", upper=True)[LAT_RU, pop.region[person]],
        "NOHIYA": ch.table("district", upper=True)[LAT_RU, pop.district[person]],
    }
    return Rows(person, columns)


def health(ch: Chunk) -> Rows:
    """Patient cards: most of the living, half of those dead since 2010; Tajik Cyrillic."""
    pop, rng = ch.pop, ch.rng
    alive = pop.death == cal.NO_DATE
    recent_dead = ~alive & (pop.death >= cal.day(2010))
    person = _pick(ch, alive | recent_dead, np.where(alive, 0.9, 0.5))
    rows, dup = _duplicate(ch, len(person))
    person = person[rows]
    m = len(person)
    end = _end(pop, person)
    when = _uniform_day(ch, np.maximum(pop.birth[person], cal.day(2008)), end)
    scheme = _schemes(ch, m, CYR_TJ, [CYR_RU, CYR_RU_A], dup)
    surname, given, patronymic = _names(ch, person, when, scheme, dup)
    # Many clinics write only the initial of the patronymic.
    initial = (rng.random(m) < 0.25) & (patronymic != "")
    patronymic[initial] = [p[0] + "." for p in patronymic[initial]]
    blank(patronymic, ch.rates.missing, rng)
    phone = pop.phone[person]
    style = rng.integers(0, 3, m)
    text = np.array([f"{p:09d}" for p in phone.tolist()], dtype=object)
    formatted = np.where(
        style == 0,
        np.array([f"+992 {t[:2]} {t[2:5]} {t[5:]}" for t in text], dtype=object),
        np.where(
            style == 1,
            np.array([f"{t[:2]}-{t[2:5]}-{t[5:7]}-{t[7:]}" for t in text], dtype=object),
            "992" + text,
        ),
    ).astype(object)
    formatted[rng.random(m) < 0.1] = ""
    blank(formatted, ch.rates.missing, rng)
    street = ch.vocab.street[scheme, pop.street[person]]
    address = "кӯч. " + street + ", " + cal.NUMBER_TEXT[pop.house[person]]
    dead = pop.death[person] != cal.NO_DATE
    stale = dead & (rng.random(m) < ch.rates.stale_status)
    columns = {
        "nasab": surname,
        "nom": given,
        "nomi_padar": patronymic,
        "jins": _codes(pop.sex[person] == FEMALE, "зан", "мард"),
        "sanai_tavallud": cal.render(_birth(ch, person, placeholder=False), "%Y%m%d"),
        "telefon": formatted,
        "nohiya": ch.vocab.district[CYR_TJ, pop.district[person]],
        "suroga": address,
        "holat": _codes(dead & ~stale, "фавтида", "зинда"),
    }
    return Rows(person, columns)


BUILDERS: dict[str, Callable[[Chunk], Rows]] = {
    "civil": civil,
    "national_id": national_id,
    "electoral": electoral,
    "pension": pension,
    "health": health,
}


def person_pins(pop: Population, spaces: dict[str, IdSpace]) -> np.ndarray:
    """Each person's PIN: a scrambled 8-digit body and its Luhn check digit."""
    body = spaces["pin"].scramble(pop.global_index)
    check = pin_check_digits(body)
    return np.array(
        [f"{b:08d}{c}" for b, c in zip(body.tolist(), check.tolist(), strict=True)], dtype=object
    )


def build_registers(
    pop: Population,
    vocab: Vocabulary,
    rates: ErrorRates,
    rng: np.random.Generator,
    spaces: dict[str, IdSpace],
    counters: dict[str, int],
) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, np.ndarray]]:
    """Render every register for one chunk.

    Returns:
        ``(tables, truth_person_ids)``: per register, its native columns in file order
        (record id first), and the person id of each row. ``counters`` (rows and
        certificates issued so far per id space) is advanced in place.
    """
    chunk = Chunk(pop, vocab, rates, rng, person_pins(pop, spaces))
    person_ids = spaces["person"].render(pop.global_index)
    tables: dict[str, dict[str, np.ndarray]] = {}
    truth: dict[str, np.ndarray] = {}
    for name, builder in BUILDERS.items():
        rows = builder(chunk)
        order = rng.permutation(len(rows.person))
        start = counters[name]
        counters[name] = start + len(order)
        record_ids = spaces[name].render(np.arange(start, start + len(order), dtype=np.int64))
        table = {COLUMNS[name][0]: record_ids}
        if rows.certificate is not None:
            # Certificate numbers in order of first appearance in the shuffled file.
            cert = rows.certificate[order]
            _, first, inverse = np.unique(cert, return_index=True, return_inverse=True)
            rank = np.empty(len(first), dtype=np.int64)
            rank[np.argsort(first, kind="stable")] = np.arange(len(first))
            cstart = counters["civil_cert"]
            counters["civil_cert"] = cstart + len(first)
            numbers = spaces["civil_cert"].render(cstart + np.arange(len(first), dtype=np.int64))
            table["SVIDETELSTVO"] = numbers[rank[inverse]]
        for column in COLUMNS[name][1:]:
            if column not in table:
                table[column] = rows.columns[column][order]
        tables[name] = {column: table[column] for column in COLUMNS[name]}
        truth[name] = person_ids[rows.person[order]]
    return tables, truth
