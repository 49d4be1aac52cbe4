"""Field comparisons: each turns a candidate pair into a level (an int8 ``gamma``).

Levels follow Splink's convention: ``-1`` is null (a side is missing: neutral, contributes
nothing), ``0`` is "else" (disagreement) and higher levels are closer agreement; each
comparison names its levels in ``labels`` (index = gamma), which is what the model's m and u
are estimated for and what a steward reads in an explanation.

Everything is vectorised over the pairs: a column is factorised once into integer codes,
exact agreement is a comparison of codes, and a fuzzy similarity is computed by rapidfuzz only
for the distinct (value, value) combinations among the pairs that are not exact, on plain
Python lists (rapidfuzz is several times slower on pandas string arrays).

A comparison whose required column is absent from the records gives ``-1`` (null) for every
pair, with a :class:`MatchingWarning`; an optional column that is absent just never fires its
level, so the levels (and a saved model's parameters) keep their meaning on any register.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
from rapidfuzz import process
from rapidfuzz.distance import JaroWinkler, Levenshtein

from matching.errors import MatchingWarning
from matching.settings import ComparisonSettings

__all__ = [
    "Comparison",
    "RecordColumns",
    "build_comparison",
    "compare_pairs",
]

log = logging.getLogger(__name__)

_SCORERS = {
    "jaro_winkler": JaroWinkler.normalized_similarity,
    "levenshtein": Levenshtein.normalized_similarity,
}
_METRIC_LABEL = {"jaro_winkler": "jw", "levenshtein": "lev"}
_PIN_CHUNK = 2_000_000


def _factorized(series: pd.Series) -> tuple[np.ndarray, pd.Index]:
    """int32 code per value (``-1`` missing) and the distinct values."""
    codes, uniques = pd.factorize(series, use_na_sentinel=True)
    return codes.astype(np.int32, copy=False), pd.Index(uniques)


class RecordColumns:
    """Per-column caches over one records DataFrame (codes, distinct values, integers).

    The distinct values become Python strings only when asked for, and then only those
    asked for where possible: a column of a million distinct PINs takes about a second to
    convert, while an incremental run compares a few hundred thousand pairs.
    """

    def __init__(self, records: pd.DataFrame) -> None:
        self.records = records
        self.n = len(records)
        self._factorized: dict[str, tuple[np.ndarray, pd.Index]] = {}
        self._values: dict[str, np.ndarray] = {}
        self._ints: dict[str, np.ndarray] = {}
        # per PIN column: byte matrix and lengths of the distinct values, and which rows are
        # filled (built on demand, see pin_matrix)
        self._pin: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def has(self, column: str | None) -> bool:
        return column is not None and (column in self.records.columns
                                       or column in self._factorized)

    def code_array(self, column: str) -> np.ndarray:
        """int32 code per record (``-1`` missing), codes numbered as ``codes`` numbers them."""
        if column not in self._factorized:
            self._factorized[column] = _factorized(self.records[column])
        return self._factorized[column][0]

    def n_values(self, column: str) -> int:
        """How many distinct values ``column`` has (codes are ``0 .. n_values - 1``)."""
        self.code_array(column)
        return len(self._factorized[column][1])

    def codes(self, column: str) -> tuple[np.ndarray, np.ndarray]:
        """int32 code per record (``-1`` missing) and the distinct values as strings."""
        codes = self.code_array(column)
        if column not in self._values:
            self._values[column] = _strings(self._factorized[column][1])
        return codes, self._values[column]

    def values_at(self, column: str, which: np.ndarray) -> np.ndarray:
        """The distinct values with codes ``which``, as strings (as ``codes`` gives them)."""
        if column in self._values or len(which) >= self.n_values(column):
            # asked for as many as there are: convert each value once, for every call
            return self.codes(column)[1][which]
        return _strings(self._factorized[column][1].take(which))

    def prefetch(self, columns: Sequence[str]) -> None:
        """Factorise these columns (those of the records not done yet) on worker threads:
        pandas factorises Arrow-backed text in Arrow, without the GIL (11 columns of
        3.8 M records: 1.7 s one after another, 0.8 s on 2 cores)."""
        todo = [c for c in dict.fromkeys(columns)
                if c in self.records.columns and c not in self._factorized]
        workers = min(len(todo), os.cpu_count() or 1)
        if workers < 2:
            for column in todo:
                self.code_array(column)
            return
        with ThreadPoolExecutor(workers, thread_name_prefix="factorize") as pool:
            for column, done in zip(todo, pool.map(
                    lambda c: _factorized(self.records[c]), todo), strict=True):
                self._factorized[column] = done

    def derived(self, name: str, make: Callable[[], pd.Series]) -> str:
        """Register a computed column under ``name`` (built once by ``make``); returns the name.

        Its codes and values are cached like a real column's (``codes(name)``), so that exact
        and fuzzy levels work on it.
        """
        if name not in self._factorized:
            self._factorized[name] = _factorized(make())
        return name

    def coalesce(self, columns: Sequence[str]) -> str:
        """A derived column: per record the first of ``columns`` that is present (one code
        space for all of their values)."""
        present = [c for c in columns if self.has(c)]
        if len(present) == 1:
            return present[0]

        def make() -> pd.Series:
            merged = self.records[present[0]].astype("string")
            for col in present[1:]:
                merged = merged.fillna(self.records[col].astype("string"))
            return merged

        return self.derived("\x00".join(["coalesce", *present]), make)

    def ints(self, column: str) -> np.ndarray:
        """int64 value per record of a numeric column, ``-1`` where missing or not a number."""
        if column not in self._ints:
            s = pd.to_numeric(self.records[column], errors="coerce")
            f = s.to_numpy(dtype="float64", na_value=np.nan)
            out = np.where(np.isnan(f), -1, f).astype(np.int64)
            self._ints[column] = out
        return self._ints[column]

    def pin_matrix(self, column: str, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Distinct values of ``column`` as a (values × width) uint8 matrix (UTF-8 bytes,
        zero-padded; width: the longest value in characters) and their lengths in characters.

        Only the rows of ``codes`` are sure to be filled: rows are encoded on first need, so
        that comparing a few pairs does not encode every distinct PIN of the register.
        """
        if column not in self._pin:
            n_values = self.n_values(column)
            width = max(self._longest(column), 1)
            self._pin[column] = (np.zeros((n_values, width), dtype=np.uint8),
                                 np.zeros(n_values, dtype=np.int32),
                                 np.zeros(n_values, dtype=bool))
        mat, lengths, filled = self._pin[column]
        if filled.all():
            return mat, lengths
        if len(codes) >= filled.size:  # a full run's millions of pairs: all rows at once
            todo = np.flatnonzero(~filled)
        else:
            wanted = np.zeros(filled.size, dtype=bool)
            wanted[codes] = True
            todo = np.flatnonzero(wanted & ~filled)
        if todo.size:
            values = self.values_at(column, todo)
            width = mat.shape[1]
            enc = np.array([v.encode("utf-8", "replace")[:width] for v in values],
                           dtype=f"S{width}")
            mat[todo] = enc.view(np.uint8).reshape(todo.size, width)
            lengths[todo] = [len(v) for v in values]
            filled[todo] = True
        return mat, lengths

    def _longest(self, column: str) -> int:
        """Length in characters of the longest distinct value of ``column`` (0: none)."""
        self.code_array(column)
        uniques = self._factorized[column][1]
        if column not in self._values and uniques.inferred_type == "string":
            # all values are str: measured without a Python string per value
            return int(uniques.str.len().max()) if len(uniques) else 0
        return max((len(v) for v in self.codes(column)[1]), default=0)

    def placeholder(self, column: str | None) -> np.ndarray:
        """True per record whose date quality is ``placeholder``."""
        if not self.has(column):
            return np.zeros(self.n, dtype=bool)
        assert column is not None
        codes, values = self.codes(column)
        is_ph = np.append(np.array([v == "placeholder" for v in values], dtype=bool), False)
        return is_ph[codes]  # code -1 indexes the appended False


def _strings(uniques: pd.Index) -> np.ndarray:
    """Distinct values as an object array of Python strings."""
    return np.asarray([str(v) for v in uniques], dtype=object)


def _similarity(cols: RecordColumns, column: str, ca: np.ndarray, cb: np.ndarray,
                metric: str) -> np.ndarray:
    """Similarity in [0, 1] of the values with codes ``ca``/``cb`` (all >= 0), per pair."""
    if ca.size == 0:
        return np.empty(0, dtype=np.float32)
    n_values = cols.n_values(column)
    lo = np.minimum(ca, cb).astype(np.int64)
    hi = np.maximum(ca, cb).astype(np.int64)
    inverse, uniq = pd.factorize(lo * max(n_values, 1) + hi)
    ua, ub = np.divmod(uniq, max(n_values, 1))
    sims = process.cpdist(cols.values_at(column, ua).tolist(),
                          cols.values_at(column, ub).tolist(), scorer=_SCORERS[metric],
                          workers=-1)
    return np.asarray(sims, dtype=np.float32)[inverse]


class Comparison:
    """Base class: a named comparison with its level labels (index = gamma)."""

    kind = ""

    def __init__(self, spec: ComparisonSettings) -> None:
        self.spec = spec
        self.name = spec.name
        self.labels: list[str] = ["else"]

    @property
    def required(self) -> list[str]:
        return [self.spec.columns[r] for r in ("value", "year") if r in self.spec.columns]

    @property
    def tf_column(self) -> str | None:
        """Column whose value frequencies adjust the exact level (``None``: no adjustment)."""
        return self.spec.columns.get("value") if self.spec.tf_adjustment else None

    @property
    def tf_level(self) -> int | None:
        return self.labels.index("exact") if self.tf_column and "exact" in self.labels else None

    def missing_columns(self, cols: RecordColumns) -> list[str]:
        return [c for c in self.required if not cols.has(c)]

    def compute(self, cols: RecordColumns, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        """Level per pair (int8, ``-1`` null)."""
        if self.missing_columns(cols):
            return np.full(left.size, -1, dtype=np.int8)
        return self._compute(cols, left, right)

    def _compute(self, cols: RecordColumns, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _fuzzy_labels(self) -> list[str]:
        m = _METRIC_LABEL[self.spec.metric]
        # ascending strength: the loosest threshold is the weakest level
        return [f"{m}>={t:g}" for t in sorted(self.spec.thresholds)]

    def _assign_fuzzy(self, gamma: np.ndarray, todo: np.ndarray, cols: RecordColumns,
                      column: str, ca: np.ndarray, cb: np.ndarray) -> None:
        """Set fuzzy levels on the pairs in ``todo`` (mask) from the similarity of ``column``."""
        if not self.spec.thresholds:
            return
        at = np.flatnonzero(todo & (ca >= 0) & (cb >= 0))
        sims = _similarity(cols, column, ca[at], cb[at], self.spec.metric)
        for t in sorted(self.spec.thresholds):  # stricter thresholds overwrite looser ones
            m = _METRIC_LABEL[self.spec.metric]
            gamma[at[sims >= t]] = self.labels.index(f"{m}>={t:g}")


class ExactComparison(Comparison):
    kind = "exact"

    def __init__(self, spec: ComparisonSettings) -> None:
        super().__init__(spec)
        self.labels = ["else", "exact"]

    def _compute(self, cols, left, right):
        codes = cols.code_array(self.spec.columns["value"])
        ca, cb = codes[left], codes[right]
        gamma = (ca == cb).astype(np.int8)
        gamma[(ca < 0) | (cb < 0)] = -1
        return gamma


class StringComparison(Comparison):
    """exact / first part of a compound value / swapped with another column / fuzzy / else."""

    kind = "string"

    def __init__(self, spec: ComparisonSettings) -> None:
        super().__init__(spec)
        labels = ["else", *self._fuzzy_labels()]
        if "swap" in spec.columns:
            labels.append("swapped")
        if "part" in spec.columns:
            labels.append("part")
        self.labels = [*labels, "exact"]

    def _compute(self, cols, left, right):
        col = self.spec.columns["value"]
        codes = cols.code_array(col)
        ca, cb = codes[left], codes[right]
        null = (ca < 0) | (cb < 0)
        gamma = np.zeros(left.size, dtype=np.int8)
        exact = (ca == cb) & ~null
        self._assign_fuzzy(gamma, ~exact & ~null, cols, col, ca, cb)
        swap_col = self.spec.columns.get("swap")
        if swap_col and cols.has(swap_col):
            # the swap column is factorised separately: compare through the values' strings
            s_codes, s_values = cols.codes(swap_col)
            _, values = cols.codes(col)
            # map this column's codes into the swap column's code space
            lookup = pd.Index(s_values)
            to_swap = np.append(lookup.get_indexer(values).astype(np.int32), -1)
            va_in_s, vb_in_s = to_swap[ca], to_swap[cb]  # code -1 indexes the appended -1
            sa, sb = s_codes[left], s_codes[right]
            swapped = (~exact & ~null & (va_in_s >= 0) & (va_in_s == sb) & (vb_in_s >= 0)
                       & (vb_in_s == sa))
            gamma[swapped] = self.labels.index("swapped")
        part_col = self.spec.columns.get("part")
        if part_col and cols.has(part_col):
            p_codes = cols.code_array(part_col)
            pa, pb = p_codes[left], p_codes[right]
            gamma[~exact & ~null & (pa >= 0) & (pa == pb)] = self.labels.index("part")
        gamma[exact] = self.labels.index("exact")
        gamma[null] = -1
        return gamma


class NameComparison(Comparison):
    """Surname style: exact full key / exact root / fuzzy on the root / else."""

    kind = "name"

    def __init__(self, spec: ComparisonSettings) -> None:
        super().__init__(spec)
        root = ["root"] if "root" in spec.columns else []
        self.labels = ["else", *self._fuzzy_labels(), *root, "exact"]

    def _compute(self, cols, left, right):
        col = self.spec.columns["value"]
        codes = cols.code_array(col)
        ca, cb = codes[left], codes[right]
        null = (ca < 0) | (cb < 0)
        exact = (ca == cb) & ~null
        gamma = np.zeros(left.size, dtype=np.int8)
        root_col = self.spec.columns.get("root")
        fuzzy_col, fa, fb = col, ca, cb
        todo = ~exact & ~null
        if root_col and cols.has(root_col):
            r_codes = cols.code_array(root_col)
            ra, rb = r_codes[left], r_codes[right]
            root = todo & (ra >= 0) & (ra == rb)
            fuzzy_col, fa, fb = root_col, ra, rb
            self._assign_fuzzy(gamma, todo & ~root, cols, fuzzy_col, fa, fb)
            gamma[root] = self.labels.index("root")
        else:
            self._assign_fuzzy(gamma, todo, cols, fuzzy_col, fa, fb)
        gamma[exact] = self.labels.index("exact")
        gamma[null] = -1
        return gamma


class PatronymicComparison(Comparison):
    """exact root / fuzzy root / initials agree where a side has only an initial / else.

    With a ``father`` column (the father's given name, same canonical form as the root), a
    record without a patronymic is compared by its father's name instead. The patronymic is
    made from the father's given name, so the two are one piece of evidence: comparing both
    would count one fact twice, and two siblings would look like one person.
    """

    kind = "patronymic"

    def __init__(self, spec: ComparisonSettings) -> None:
        super().__init__(spec)
        initial = ["initial"] if "initial" in spec.columns else []
        self.labels = ["else", *initial, *self._fuzzy_labels(), "exact"]

    @property
    def required(self) -> list[str]:
        # a register with only initials still compares at the initial level
        return [self.spec.columns["value"]]

    def _compute(self, cols, left, right):
        col = self.spec.columns["value"]
        father = self.spec.columns.get("father")
        if father and cols.has(father):
            col = cols.coalesce([col, father])
        codes = cols.code_array(col)
        ca, cb = codes[left], codes[right]
        has_a, has_b = ca >= 0, cb >= 0
        both_roots = has_a & has_b
        gamma = np.zeros(left.size, dtype=np.int8)
        init_col = self.spec.columns.get("initial")
        if init_col and cols.has(init_col) and father and cols.has(father):
            # a record known by its father's name has that name's initial
            src, fat = init_col, father
            init_col = cols.derived(f"\x00initial\x00{src}\x00{fat}", lambda: (
                cols.records[src].astype("string").fillna(
                    cols.records[fat].astype("string").str.slice(0, 1))))
        if init_col and cols.has(init_col):
            i_codes = cols.code_array(init_col)
            ia, ib = i_codes[left], i_codes[right]
            has_a |= ia >= 0
            has_b |= ib >= 0
            gamma[~both_roots & (ia >= 0) & (ia == ib)] = self.labels.index("initial")
        exact = both_roots & (ca == cb)
        self._assign_fuzzy(gamma, both_roots & ~exact, cols, col, ca, cb)
        gamma[exact] = self.labels.index("exact")
        gamma[~(has_a & has_b)] = -1
        return gamma


class DateComparison(Comparison):
    """exact / day-month swapped / year and month / placeholder same year / year / +-1 / else.

    A placeholder date (01.01.YYYY written when the real date was unknown) only ever agrees at
    its own level, so that the model learns how little it is worth; partial dates (year, or
    year and month) reach only the levels their parts allow.
    """

    kind = "date"

    def __init__(self, spec: ComparisonSettings) -> None:
        super().__init__(spec)
        self.labels = ["else", "year+-1", "year", "placeholder_year", "year_month",
                       "day_month_swapped", "exact"]

    def _part(self, cols: RecordColumns, role: str, n: int) -> np.ndarray:
        col = self.spec.columns.get(role)
        if col is None or not cols.has(col):
            return np.full(n, -1, dtype=np.int64)
        return cols.ints(col)

    def _compute(self, cols, left, right):
        n = cols.n
        year = self._part(cols, "year", n)
        month = self._part(cols, "month", n)
        day = self._part(cols, "day", n)
        ph = cols.placeholder(self.spec.columns.get("quality"))
        ya, yb = year[left], year[right]
        ma, mb = month[left], month[right]
        da, db = day[left], day[right]
        null = (ya < 0) | (yb < 0)
        placeholder = ph[left] | ph[right]
        same_y = (ya == yb) & ~null
        both_m = (ma >= 0) & (mb >= 0) & ~placeholder
        both_d = (da >= 0) & (db >= 0) & both_m
        same_ym = same_y & both_m & (ma == mb)
        exact = same_ym & both_d & (da == db)
        swapped = same_y & both_d & (ma == db) & (da == mb) & (ma != mb)
        gamma = np.zeros(left.size, dtype=np.int8)
        gamma[(np.abs(ya - yb) == 1) & ~null] = self.labels.index("year+-1")
        gamma[same_y] = self.labels.index("year")
        gamma[same_y & placeholder] = self.labels.index("placeholder_year")
        gamma[same_ym] = self.labels.index("year_month")
        gamma[swapped] = self.labels.index("day_month_swapped")
        gamma[exact] = self.labels.index("exact")
        gamma[null] = -1
        return gamma


class PinComparison(Comparison):
    """exact / one digit different / two adjacent digits transposed / else."""

    kind = "pin"

    def __init__(self, spec: ComparisonSettings) -> None:
        super().__init__(spec)
        self.labels = ["else", "one_digit", "transposition", "exact"]

    def _compute(self, cols, left, right):
        col = self.spec.columns["value"]
        codes = cols.code_array(col)
        ca, cb = codes[left], codes[right]
        null = (ca < 0) | (cb < 0)
        exact = (ca == cb) & ~null
        gamma = np.zeros(left.size, dtype=np.int8)
        at = np.flatnonzero(~exact & ~null)
        one, trans = self.labels.index("one_digit"), self.labels.index("transposition")
        for s in range(0, at.size, _PIN_CHUNK):
            idx = at[s:s + _PIN_CHUNK]
            xa, xb = ca[idx], cb[idx]
            mat, lengths = cols.pin_matrix(col, np.concatenate([xa, xb]))
            a, b = mat[xa], mat[xb]
            same_len = lengths[xa] == lengths[xb]
            diff = a != b
            nd = diff.sum(axis=1)
            gamma[idx[same_len & (nd == 1)]] = one
            cand = np.flatnonzero(same_len & (nd == 2))
            if cand.size and mat.shape[1] > 1:
                d = diff[cand]
                p = d.argmax(axis=1)
                p1 = np.minimum(p + 1, mat.shape[1] - 1)
                rows = np.arange(cand.size)
                ac, bc = a[cand], b[cand]
                ok = (d[rows, p1] & (p1 == p + 1) & (ac[rows, p] == bc[rows, p1])
                      & (ac[rows, p1] == bc[rows, p]))
                gamma[idx[cand[ok]]] = trans
        gamma[exact] = self.labels.index("exact")
        gamma[null] = -1
        return gamma


_KINDS: dict[str, type[Comparison]] = {
    "exact": ExactComparison,
    "string": StringComparison,
    "name": NameComparison,
    "patronymic": PatronymicComparison,
    "date": DateComparison,
    "pin": PinComparison,
}


def build_comparison(spec: ComparisonSettings) -> Comparison:
    """The comparison object for one settings entry."""
    return _KINDS[spec.kind](spec)


def compare_pairs(
    comparisons: Sequence[Comparison],
    cols: RecordColumns,
    left: np.ndarray,
    right: np.ndarray,
    *,
    warn: bool = True,
) -> np.ndarray:
    """Comparison vectors: an (n_pairs × n_comparisons) int8 matrix of levels.

    A comparison whose required column is absent gives null (``-1``) on every pair, with a
    :class:`MatchingWarning` naming the comparison and the column (once per call).
    """
    out = np.empty((left.size, len(comparisons)), dtype=np.int8, order="F")
    for k, comp in enumerate(comparisons):
        missing = comp.missing_columns(cols)
        if missing and warn:
            warnings.warn(
                f"comparison {comp.name!r}: column(s) {', '.join(missing)} not in the records; "
                "it counts as missing (neutral) for every pair", MatchingWarning, stacklevel=2)
        out[:, k] = comp.compute(cols, left, right)
        log.debug("comparison %s computed on %d pairs", comp.name, left.size)
    return out
