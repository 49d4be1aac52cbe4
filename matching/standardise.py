"""Standardised columns beside the canonical record (docs/canonical-schema.md).

:func:`standardise` adds, and never overwrites, the columns of the schema's "Standardised
columns" table; the only original it touches is ``birth_date_quality``, whose *missing* values
it fills. Everything is computed once per distinct value (``pd.factorize``) and taken back to
the rows by code, so a million records drawn from a few thousand names cost a few seconds.

The scalar helpers are public so that a steward's tool, a test or a comparison can reproduce
one value: :func:`surname_root`, :func:`patronymic_root`, :func:`patronymic_initial`,
:func:`split_compound_given`, :func:`phonetic_key`, :func:`birth_date_parts`. Name keys come
from :func:`matching.translit.name_key`; read that module for the folding rules and their
trade-offs.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from matching.errors import MatchingWarning
from matching.translit import name_key, name_tokens, to_latin

__all__ = [
    "STANDARDISED_COLUMNS",
    "NameParts",
    "birth_date_parts",
    "birth_date_quality",
    "given_first",
    "patronymic_initial",
    "patronymic_root",
    "phonetic_key",
    "place_key",
    "split_compound_given",
    "standardise",
    "surname_root",
]

log = logging.getLogger(__name__)

#: The columns :func:`standardise` adds (``birth_date_quality`` is filled, not added, when the
#: input has it), with their pandas dtypes.
STANDARDISED_COLUMNS: dict[str, str] = {
    "surname_std": "string",
    "surname_root": "string",
    "given_std": "string",
    "given_first": "string",
    "patronymic_root": "string",
    "patronymic_initial": "string",
    "father_root": "string",
    "mother_std": "string",
    "birth_year": "Int64",
    "birth_month": "Int64",
    "birth_day": "Int64",
    "birth_date_quality": "string",
    "pin_std": "string",
    "surname_phonetic": "string",
    "given_phonetic": "string",
    "district_std": "string",
}

# ---------------------------------------------------------------------------------------------
# Surnames and patronymics
# ---------------------------------------------------------------------------------------------

# Suffixes as they look in *keys* (after folding: -ov is -av, -ev after a vowel is -yev,
# -zoda is -zada, -iyon is -iyan). Longest first; one suffix is removed, never two.
_SURNAME_SUFFIXES: tuple[str, ...] = (
    "zadeh", "zada", "zade", "iyan", "yeva", "kizi", "ugli", "agli", "zad", "yan", "ava", "yev",
    "eva", "pur", "far", "uli", "av", "ev",
)
_MIN_ROOT = 3
# Tajik "-i" (Karimi, Rahimi) is stripped only from longer roots: Ali, Hoji, Nuri stay whole.
_MIN_ROOT_BEFORE_I = 4

_PATRONYMIC_SUFFIXES: tuple[str, ...] = (
    "yevichna", "yevich", "ichna", "yevna", "avich", "evich", "zadeh", "avna", "evna", "kizi",
    "ugli", "agli", "zada", "zade", "uli", "zad", "ich",
)
_MIN_PATRONYMIC_ROOT = 3


def _strip_suffix(key: str, suffixes: Sequence[str], min_root: int) -> str:
    for suffix in suffixes:
        if key.endswith(suffix) and len(key) - len(suffix) >= min_root:
            return key[: -len(suffix)]
    return key


@lru_cache(maxsize=65536)
def surname_root(key: str | None) -> str | None:
    """Stem of a canonical surname key, so that a family's forms share one root.

    Removes one Russian-style suffix (-ov/-ova/-ev/-eva/-yev/-yeva), Tajik/Persian-style
    suffix (-zoda/-zod/-zade/-zadeh, -iyon/-yon, -pur, -far, and -i from roots of four
    letters or more) or Turkic patronymic word (-ugli/-uli/-kizi), only when at least three
    letters remain. ``-in``/``-ina`` are *not* removed: Nuriddin and Amin are surnames too.

    Args:
        key: a canonical key from :func:`matching.translit.name_key` (not raw text).

    Returns:
        The root, or None for a missing key. ``Karimov``, ``Karimova``, ``Karimzoda``,
        ``Karimzod``, ``Karimi`` and ``Каримов`` all give ``karim``.
    """
    if not key:
        return None
    root = _strip_suffix(key, _SURNAME_SUFFIXES, _MIN_ROOT)
    if root == key and key.endswith("i") and len(key) - 1 >= _MIN_ROOT_BEFORE_I:
        root = key[:-1]
    return root


def _given_root(key: str) -> str:
    # Russian drops the final -й before -evich (Sergey → Sergeevich; Nurbay → Nurbaevich):
    # without the glide, the father's name and the patronymic's stem meet.
    if len(key) > _MIN_ROOT and key.endswith("i") and key[-2] in "aeiou":
        return key[:-1]
    return key


@lru_cache(maxsize=65536)
def _patronymic_parts(text: str) -> tuple[str | None, str | None]:
    key = name_key(text)
    if key is None:
        return None, None
    # An initial is one key letter, or at most two letters with a dot ("Kh."): only a dotted
    # text needs transliterating a second time to count its letters.
    if len(key) == 1 or ("." in text and len(to_latin(text).replace(" ", "")) <= 2):
        return None, key[0]
    root = _given_root(_strip_suffix(key, _PATRONYMIC_SUFFIXES, _MIN_PATRONYMIC_ROOT))
    return root, root[0]


def patronymic_root(text: object) -> str | None:
    """Root of a patronymic written in any of its forms; None for an initial or nothing.

    ``Olimovich``, ``Olimovna``, ``Olimzoda``, ``Olimzod``, ``Olim``, ``Olim oʻgʻli``,
    ``Олимович`` and ``Олимовна`` all give ``alim`` (the key of Olim). A bare given name
    gives its own root, so this is also how a father's name is keyed (``father_root``):
    ``Sergey`` and ``Sergeevich`` both give ``serge``. ``O.``, ``О`` or ``Kh.`` is an
    initial: no root (see :func:`patronymic_initial`).
    """
    if not isinstance(text, str):
        return None
    return _patronymic_parts(text)[0]


def patronymic_initial(text: object) -> str | None:
    """First letter of the patronymic's key, also from an initial (``O.`` and ``Olimovich``
    both give ``a`` because о folds to а; ``Kh.`` and ``Khamidovich`` give ``h``)."""
    if not isinstance(text, str):
        return None
    return _patronymic_parts(text)[1]


# ---------------------------------------------------------------------------------------------
# Compound given names
# ---------------------------------------------------------------------------------------------

def _keys(names: Iterable[str]) -> frozenset[str]:
    return frozenset(k for k in (name_key(n) for n in names) if k)


# First elements after which the rest of the name is always a name of its own
# (Muhammadali, Muhammadjon, Ahmadjon, Abdurahmon, Abdulkarim).
_STRONG_HEADS = _keys((
    "Muhammad", "Muhammed", "Mohammad", "Mohammed", "Ahmad", "Ahmed",
    "Abdu", "Abdul", "Abdur", "Abdus", "Abdun",
))
# First elements that split only before a known part (Nurali; Gulbahor if "Bahor" is seen;
# Abdullojon, but not Abdulaziz, which is Abdul + Aziz).
_HEADS = _keys((
    "Nur", "Gul", "Said", "Sayid", "Mir", "Shah", "Shoh", "Khoja", "Khuja", "Sher", "Abdullo",
))
# Second elements known without learning them from the data.
_TAILS = _keys(("Ali", "Jon", "Bek", "Khon", "Bibi", "Niso", "Shoh", "Gul"))
# One form for the first element where spellings differ beyond what the key folds
# (given_first only; given_std keeps the name as written).
_HEAD_ALIASES: dict[str, str] = {
    **{k: name_key("Abdu") or "abdu" for k in _keys(("Abdul", "Abdur", "Abdus", "Abdun"))},
    **{k: name_key("Muhammad") or "muhamad"
       for k in _keys(("Muhammed", "Mohammad", "Mohammed", "Mukhamed"))},
}
_MIN_PART = 3


@dataclass(frozen=True)
class NameParts:
    """Vocabulary for splitting a joined compound given name.

    Attributes:
        heads: keys that start a compound (besides the built-in ones), e.g. learned from
            ``Nur Muhammad`` written as two words.
        known: keys known as names or name parts on their own, e.g. ``ali`` seen alone.
    """

    heads: frozenset[str] = field(default_factory=frozenset)
    known: frozenset[str] = field(default_factory=frozenset)

    @cached_property
    def all_heads(self) -> frozenset[str]:
        """Heads that split before a known part: the built-in ones and the learned ones."""
        return _HEADS | self.heads

    @cached_property
    def all_known(self) -> frozenset[str]:
        """Known parts: the built-in second elements and the learned ones."""
        return _TAILS | self.known

    @classmethod
    def learn(cls, names: Iterable[object]) -> NameParts:
        """Learn from raw given names: the first word of every name written in several words
        is a head; every word of every name is known (``Muhammad Ali`` teaches the head
        ``muhamad`` and the parts ``muhamad`` and ``ali``; ``Ali`` alone teaches ``ali``)."""
        heads: set[str] = set()
        known: set[str] = set()
        for name in names:
            tokens = name_tokens(name)
            if len(tokens) > 1 and len(tokens[0]) >= _MIN_PART:
                heads.add(tokens[0])
            known.update(t for t in tokens if len(t) >= _MIN_PART)
        return cls(frozenset(heads), frozenset(known))


_NO_PARTS = NameParts()


def split_compound_given(key: str | None, parts: NameParts | None = None) -> tuple[str, ...]:
    """Split a joined given-name key into (first element, rest) when it is a known compound.

    A key splits after its longest head (built-in: Muhammad, Ahmad, Abdu/Abdul/Abdur...,
    which always split; Nur, Gul, Said, Mir, Shah, Khoja, Sher, which split only when the
    rest is a known part; and the heads learned in ``parts``, likewise) when the rest has at
    least three letters. ``muhamadali`` → ``("muhamad", "ali")``; ``abdula`` (Abdullo) and
    ``alisher`` (unless "Ali" was learned as a head and "Sher" as a name) stay whole.

    Returns:
        One or two keys; an empty tuple for a missing key.
    """
    if not key:
        return ()
    parts = parts or _NO_PARTS
    for n in range(len(key) - _MIN_PART, _MIN_PART - 1, -1):
        head, rest = key[:n], key[n:]
        if head in _STRONG_HEADS or (head in parts.all_heads and rest in parts.all_known):
            return head, rest
        if rest[0] == "j":
            # d + j folds to j (Muhammadjon = Мухаммаджон → muhamajan): the head lost its d.
            head += "d"
            if head in _STRONG_HEADS or (head in parts.all_heads and rest in parts.all_known):
                return head, rest
    return (key,)


def given_first(text: object, parts: NameParts | None = None) -> str | None:
    """First element of a given name: its first word, else the head of a joined compound,
    else the whole key. ``Muhammad Ali``, ``Muhammad-Ali`` and ``Мухаммадали`` give
    ``muhamad``; the Abd- forms give ``abdu`` and Mohammed/Muhammed give ``muhamad``."""
    tokens = name_tokens(text)
    if not tokens:
        return None
    if len(tokens) > 1:
        first = tokens[0]
    else:
        first = split_compound_given(tokens[0], parts)[0]
    return _HEAD_ALIASES.get(first, first)


# ---------------------------------------------------------------------------------------------
# Phonetic key
# ---------------------------------------------------------------------------------------------

_PHONETIC_DIGRAPHS = (("ch", "c"), ("sh", "x"), ("ts", "s"))
_PHONETIC_CLASS = str.maketrans({
    "p": "b", "f": "b", "v": "b", "d": "t", "g": "k", "z": "s", "j": "c",
    "h": None, "y": None, "a": None, "e": None, "i": None, "o": None, "u": None,
})


@lru_cache(maxsize=65536)
def phonetic_key(key: str | None) -> str | None:
    """A cheap sound-alike key of a canonical key, in the spirit of Soundex.

    The first letter is kept (vowels included); after it, vowels, ``y`` and ``h`` are dropped
    and consonants fall into classes: b/p/f/v (Yusupov = Yusufov, Sharipov = Sharifov: the
    Russified ф → п), t/d, k/g, s/z/ts, c (ch)/j, x (sh); l, m, n, r stay themselves; repeats
    collapse. ``karimav`` → ``krmb``, ``muhamadali`` → ``mtl``.
    No length cap: a longer key keeps more evidence.
    """
    if not key:
        return None
    s = key
    for digraph, letter in _PHONETIC_DIGRAPHS:
        s = s.replace(digraph, letter)
    first = s[0]
    rest = s.translate(_PHONETIC_CLASS)
    first_class = first.translate(_PHONETIC_CLASS)
    if first_class and rest.startswith(first_class):
        rest = rest[1:]
    code = first + rest
    return re.sub(r"(.)\1+", r"\1", code)


# ---------------------------------------------------------------------------------------------
# Dates, PINs, places
# ---------------------------------------------------------------------------------------------

_ISO_DATE = re.compile(r"^\s*(\d{4})(?:-(\d{1,2})(?:-(\d{1,2}))?)?(?:[T ].*)?\s*$")
DateParts = tuple[int | None, int | None, int | None]


@lru_cache(maxsize=65536)
def _parse_iso(text: str) -> DateParts | None:
    m = _ISO_DATE.match(text)
    if not m:
        return None
    year = int(m.group(1))
    month = int(m.group(2)) if m.group(2) else None
    day = int(m.group(3)) if m.group(3) else None
    if (month is not None and not 1 <= month <= 12) or (day is not None and not 1 <= day <= 31):
        return None
    return year, month, day


def birth_date_parts(iso: object) -> DateParts:
    """(year, month, day) of an ISO date ``YYYY-MM-DD``, ``YYYY-MM`` or ``YYYY``.

    Unknown parts are None; a missing or unparseable value gives ``(None, None, None)``.
    """
    if not isinstance(iso, str):
        return None, None, None
    return _parse_iso(iso) or (None, None, None)


def birth_date_quality(iso: object) -> str:
    """``exact``, ``placeholder`` (1 January: registers write 01.01 when only the year is
    known, so it is weak evidence, not an error — real 1 January births exist), ``partial``
    (year, or year and month) or ``missing`` (nothing, or nothing parseable)."""
    return _quality_of(birth_date_parts(iso))


def _quality_of(parts: DateParts) -> str:
    year, month, day = parts
    if year is None:
        return "missing"
    if month is None or day is None:
        return "partial"
    if month == 1 and day == 1:
        return "placeholder"
    return "exact"


# Administrative words around a district's name (Rudaki district, ноҳияи Рӯдакӣ, Рудакинский
# р-н): dropped so that the name itself is the key. Folded forms.
_PLACE_WORDS = frozenset(
    t for w in (
        "district", "rayon", "raion", "region", "nohiya", "nohiyai", "tuman", "tumani",
        "shahr", "shahri", "city", "town", "gorod", "oblast", "viloyat", "viloyati", "r", "n",
        "rn", "g", "sh", "nohiyasi", "tumanı", "район", "ноҳияи", "город", "шаҳри", "шаҳр",
        "ноҳия", "г", "р", "н", "рн",
    )
    for t in name_tokens(w)
)


@lru_cache(maxsize=65536)
def _place_key(text: str) -> str | None:
    tokens = [t for t in name_tokens(text) if t not in _PLACE_WORDS]
    return re.sub(r"(.)\1+", r"\1", "".join(tokens)) if tokens else None


def place_key(text: object) -> str | None:
    """Canonical key of a place name without the administrative words around it
    (``р-н Рудаки``, ``Rudaki district`` and ``ноҳияи Рӯдакӣ`` give ``rudaki``)."""
    if not isinstance(text, str):
        return None
    return _place_key(text)


def _pin_digits(df: pd.DataFrame) -> pd.Series:
    # PINs are nearly all distinct: one vectorised regex beats a call per distinct value.
    if "pin" not in df.columns:
        return pd.Series(pd.NA, index=df.index, dtype="string")
    digits = df["pin"].astype("string").str.replace(r"\D", "", regex=True)
    return digits.mask(digits == "")


# ---------------------------------------------------------------------------------------------
# The DataFrame step
# ---------------------------------------------------------------------------------------------

class _Column:
    """One source column factorised once: functions run on its distinct values only."""

    def __init__(self, df: pd.DataFrame, name: str) -> None:
        self.index = df.index
        # indices: per row, the position of its value in uniques; null when missing.
        self.indices: pa.Array
        self.uniques: list[Any]
        if name in df.columns:
            self.indices, self.uniques = _factorize(df[name])
        else:
            self.indices, self.uniques = pa.nulls(len(df), pa.int32()), []

    def text(self, func: Callable[[Any], str | None]) -> pd.Series:
        return self.text_of([func(u) for u in self.uniques])

    def text_of(self, values: list[str | None]) -> pd.Series:
        """The column of ``values``, given one per distinct value."""
        # Arrow "take" builds the string column without a Python object per row.
        lookup = pa.array(values, type=pa.large_string())
        taken = lookup.take(self.indices)
        return pd.Series(pd.arrays.ArrowStringArray(taken), index=self.index)

    def ints(self, values: Sequence[int | None]) -> pd.Series:
        # Missing rows (code -1) pick the masked entry appended at the end.
        codes = self.indices.fill_null(-1).to_numpy()
        data = np.array([0 if v is None else v for v in values] + [0], dtype=np.int64)
        mask = np.array([v is None for v in values] + [True], dtype=bool)
        array = pd.arrays.IntegerArray(data[codes], mask[codes])
        return pd.Series(array, index=self.index)


def _factorize(values: pd.Series) -> tuple[pa.Array, list[Any]]:
    """Take indices (null for missing) and the distinct values as text, as pd.factorize
    would give them."""
    if isinstance(values.array, pd.arrays.ArrowStringArray):
        # Arrow's dictionary encoding gives both directly; pd.factorize wraps the same
        # encoding in conversions to numpy and back that cost more than the encoding.
        data = pa.array(values.array)
        if isinstance(data, pa.ChunkedArray):
            data = data.combine_chunks()
        encoded = pc.dictionary_encode(data)
        return encoded.indices, encoded.dictionary.to_pylist()
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    return pa.array(codes, mask=codes < 0), [_as_text(u) for u in uniques]


def _as_text(value: Any) -> Any:
    return value if isinstance(value, str) else str(value)


def standardise(df: pd.DataFrame, name_parts: NameParts | None = None) -> pd.DataFrame:
    """Return a copy of ``df`` with the standardised columns of docs/canonical-schema.md.

    Original columns are kept unchanged, except that missing ``birth_date_quality`` values
    are filled from ``birth_date``. A canonical input column that is absent counts as all
    missing. Missing inputs give missing outputs (``<NA>``), never ``""`` or ``"nan"``.

    Args:
        df: canonical records (output of extract; any index).
        name_parts: vocabulary for splitting joined compound given names. By default it is
            learned from this frame's ``given_name``, ``father_name`` and ``mother_name``; pass
            one learned from all registers (:meth:`NameParts.learn`) so that every register's
            ``given_first`` uses the same vocabulary.

    Returns:
        A new DataFrame: the original columns, then the standardised ones in the order of
        :data:`STANDARDISED_COLUMNS` (``birth_date_quality`` stays where it was if present).
    """
    out = df.copy()
    new: dict[str, pd.Series] = {}

    # Keys are computed once per distinct name and reused by the columns derived from them.
    surname = _Column(df, "surname")
    surname_keys = [name_key(u) for u in surname.uniques]
    new["surname_std"] = surname.text_of(surname_keys)
    new["surname_root"] = surname.text_of([surname_root(k) for k in surname_keys])

    given = _Column(df, "given_name")
    father = _Column(df, "father_name")
    mother = _Column(df, "mother_name")
    if name_parts is None:
        name_parts = NameParts.learn([*given.uniques, *father.uniques, *mother.uniques])
    given_keys = [name_key(u) for u in given.uniques]
    new["given_std"] = given.text_of(given_keys)
    new["given_first"] = given.text(lambda text: given_first(text, name_parts))

    patronymic = _Column(df, "patronymic")
    new["patronymic_root"] = patronymic.text(patronymic_root)
    new["patronymic_initial"] = patronymic.text(patronymic_initial)
    new["father_root"] = father.text(patronymic_root)
    new["mother_std"] = mother.text(name_key)

    birth = _Column(df, "birth_date")
    parts = [birth_date_parts(u) for u in birth.uniques]
    new["birth_year"] = birth.ints([p[0] for p in parts])
    new["birth_month"] = birth.ints([p[1] for p in parts])
    new["birth_day"] = birth.ints([p[2] for p in parts])
    computed_quality = birth.text_of([_quality_of(p) for p in parts]).fillna("missing")
    if "birth_date_quality" in df.columns:
        given_quality = df["birth_date_quality"].astype("string")
        new["birth_date_quality"] = given_quality.fillna(computed_quality)
    else:
        new["birth_date_quality"] = computed_quality
    unparseable = sum(1 for u, p in zip(birth.uniques, parts, strict=True) if p[0] is None)
    if unparseable:
        message = (
            f"birth_date: {unparseable} distinct value(s) are not ISO dates (YYYY-MM-DD, "
            "YYYY-MM or YYYY); their parts are missing and their quality is 'missing'"
        )
        log.warning("%s", message)
        warnings.warn(message, MatchingWarning, stacklevel=2)

    new["pin_std"] = _pin_digits(df)
    new["surname_phonetic"] = surname.text_of([phonetic_key(k) for k in surname_keys])
    new["given_phonetic"] = given.text_of([phonetic_key(k) for k in given_keys])
    new["district_std"] = _Column(df, "district").text(place_key)

    for column in STANDARDISED_COLUMNS:
        out[column] = new[column]
    log.info(
        "standardised %d records (%d distinct surnames, %d distinct given names)",
        len(df), len(surname.uniques), len(given.uniques),
    )
    return out
