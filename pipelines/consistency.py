"""Cross-register consistency: rules as data, findings per person, metrics per run.

The rules live in ``<config>/consistency.yaml`` (docs/consistency.md describes the format and
each rule). A rule names its **subject** (records of one or more registers, optionally
narrowed by ``where``) and one ``finding_when`` condition over the person those records are
linked to:

- ``record``: the subject record itself meets conditions (a voter under 18);
- ``exists_in``: the person also has a record of another register (a civil death record);
- ``missing_in``: the person has no such record (no national ID);
- ``count_at_least``: the person has N or more subject records in one register;
- ``conflict``: the person's subject records disagree on a column (birth date, sex).

:func:`evaluate_rules` is the pure core (DataFrames in, DataFrames out, no I/O): vectorised
over integer person codes, and each finding's JSON built column-wise by Arrow, so millions
of records take seconds. :func:`run_consistency` is the pipeline step: it reads the run's
validated records and the published index (from the files the run's assign step wrote when
they match the database, else from ``person_records``), evaluates, and replaces the run's
``consistency_findings`` and ``consistency_metrics`` in one transaction (a rerun gives the
same rows). On PostgreSQL the findings are copied while the next rule is evaluated.
"""

from __future__ import annotations

import difflib
import io
import json
import logging
import re
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, date
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipelines.errors import ConfigError, ReglinkError
from pipelines.keys import key_positions
from pipelines.registers import (
    BOOLEAN_COLUMNS,
    CANONICAL_COLUMNS,
    DATE_COLUMNS,
    read_yaml_mapping,
)
from pipelines.timing import Laps

__all__ = [
    "ALL_REGISTERS",
    "CONSISTENCY_FILE",
    "FINDING_COLUMNS",
    "METRIC_COLUMNS",
    "Condition",
    "ConsistencyError",
    "Evaluation",
    "FindingWhen",
    "Rule",
    "evaluate_assignment",
    "evaluate_rules",
    "load_rules",
    "run_consistency",
    "run_reference_date",
]

log = logging.getLogger(__name__)

CONSISTENCY_FILE = "consistency.yaml"
#: Columns of the findings frame (those of the ``consistency_findings`` table a run writes).
FINDING_COLUMNS = ("rule", "mpi_id", "register", "record_ids", "details")
#: Columns of the metrics frame (those of ``consistency_metrics``).
METRIC_COLUMNS = ("rule", "register", "count", "denominator", "rate")
#: The ``register`` of a metric about the rule as a whole (every subject register).
ALL_REGISTERS = "all"

#: Columns a condition, a conflict or a detail may name: the canonical record's columns
#: other than the record's identity.
FIELDS: tuple[str, ...] = tuple(
    c for c in CANONICAL_COLUMNS if c not in ("register", "record_id", "source_row")
)
FieldName = Literal[FIELDS]  # type: ignore[valid-type]

_RUN_DATE = re.compile(r"^(\d{4})(\d{2})(\d{2})")
_NAME = r"^[a-z][a-z0-9_]*$"


class ConsistencyError(ReglinkError):
    """The consistency step cannot run (no published index for the run, stale run, ...)."""


# --------------------------------------------------------------------------------------------
# The rule vocabulary.


class Condition(BaseModel):
    """Conditions on one column; several given together must all hold.

    A bare value is shorthand for ``equals``: ``record_type: death``, ``voter_active: true``.
    A missing value never meets ``equals``, ``in``, ``age_below`` or ``age_at_least``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    equals: str | bool | None = None
    in_: tuple[str, ...] | None = Field(default=None, alias="in", min_length=1)
    not_null: bool | None = None
    age_below: int | None = Field(default=None, gt=0, le=200)
    age_at_least: int | None = Field(default=None, ge=0, le=200)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if isinstance(data, (str, bool)):
            return {"equals": data}
        if isinstance(data, (int, float)):
            raise ValueError(
                f"expected text or true/false, got the number {data!r}; quote it (\"{data}\")"
            )
        return data

    @model_validator(mode="after")
    def _something(self) -> Condition:
        if all(
            v is None
            for v in (self.equals, self.in_, self.not_null, self.age_below, self.age_at_least)
        ):
            raise ValueError("give at least one of equals, in, not_null, age_below, age_at_least")
        return self


Where = dict[FieldName, Condition]  # type: ignore[valid-type]


class Subject(BaseModel):
    """The records a rule checks: of ``register`` (one, a list, or every register when left
    out), narrowed by ``where``. Persons with such records are the rule's denominator."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    # ``register`` is a BaseModel attribute name: the field is register_ under the YAML key.
    register_: str | tuple[str, ...] | None = Field(default=None, alias="register")
    where: Where = Field(default_factory=dict)

    @property
    def registers(self) -> tuple[str, ...] | None:
        """The subject registers, or None for every register."""
        if self.register_ is None:
            return None
        if isinstance(self.register_, str):
            return (self.register_,)
        return tuple(self.register_)


class RegisterRecords(BaseModel):
    """Records of another register, narrowed by ``where`` (``exists_in``, ``missing_in``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    register_: str = Field(alias="register")
    where: Where = Field(default_factory=dict)

    @property
    def register(self) -> str:
        return self.register_


class FindingWhen(BaseModel):
    """When a person is a finding; exactly one key."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    record: Where | None = None
    exists_in: RegisterRecords | None = None
    missing_in: RegisterRecords | None = None
    count_at_least: int | None = Field(default=None, ge=2)
    conflict: FieldName | None = None  # type: ignore[valid-type]

    @model_validator(mode="after")
    def _exactly_one(self) -> FindingWhen:
        given = [k for k in type(self).model_fields if getattr(self, k) is not None]
        if len(given) != 1:
            keys = ", ".join(type(self).model_fields)
            what = "none" if not given else ", ".join(given)
            raise ValueError(f"give exactly one of {keys} (got {what})")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in type(self).model_fields if getattr(self, k) is not None)


class Rule(BaseModel):
    """One consistency rule (docs/consistency.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=_NAME, max_length=63)
    title: str = Field(min_length=1)
    description: str = ""
    severity: Literal["high", "medium", "low"]
    subject: Subject = Field(default_factory=Subject)
    finding_when: FindingWhen
    details: tuple[FieldName, ...] = ()  # type: ignore[valid-type]

    def registers(self) -> set[str]:
        """Every register the rule names."""
        names = set(self.subject.registers or ())
        for relation in (self.finding_when.exists_in, self.finding_when.missing_in):
            if relation is not None:
                names.add(relation.register)
        return names

    def columns(self) -> set[str]:
        """Every canonical column the rule reads."""
        wheres = [self.subject.where, self.finding_when.record or {}]
        for relation in (self.finding_when.exists_in, self.finding_when.missing_in):
            if relation is not None:
                wheres.append(relation.where)
        used = {c for where in wheres for c in where} | set(self.details)
        if self.finding_when.conflict:
            used.add(self.finding_when.conflict)
        if "birth_date" in used:
            used.add("birth_date_quality")
        return used


class _ConsistencyFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rules: list[Rule] = Field(min_length=1)

    @field_validator("rules", mode="before")
    @classmethod
    def _a_list(cls, value: Any) -> Any:
        if isinstance(value, dict):
            raise ValueError("expected a list of rules (each starting with '- name: ...')")
        return value


# --------------------------------------------------------------------------------------------
# Loading and checking the file.

_ALL_KEYS = sorted(
    {
        (field.alias or name)
        for model in (Condition, Subject, RegisterRecords, FindingWhen, Rule, _ConsistencyFile)
        for name, field in model.model_fields.items()
    }
)


def _key_path(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if item == "[key]" or item in ("str", "tuple[str, ...]", "bool"):
            continue  # pydantic's union branch and dict-key markers
        parts.append(f"[{item}]" if isinstance(item, int) else ("." if parts else "") + str(item))
    return "".join(parts) or "(top level)"


def _describe(error: dict[str, Any]) -> str:
    kind, loc = error["type"], error["loc"]
    if kind == "extra_forbidden":
        close = difflib.get_close_matches(str(loc[-1]), _ALL_KEYS, n=1)
        return "unknown key" + (f"; did you mean {close[0]!r}?" if close else "")
    if kind == "literal_error" and (loc[-1] == "[key]" or loc[-2:-1] in (("details",),)
                                    or loc[-1] in ("conflict",) or isinstance(loc[-1], int)):
        value = str(error.get("input"))
        close = difflib.get_close_matches(value, FIELDS, n=1)
        if close:
            return f"{value!r} is not a canonical column; did you mean {close[0]!r}?"
        return f"{value!r} is not a canonical column; expected one of {', '.join(FIELDS)}"
    if kind == "missing":
        return "required key is missing"
    return str(error["msg"]).removeprefix("Value error, ")


def _condition_problems(where: dict[str, Condition], key: str) -> list[tuple[str, str]]:
    problems = []
    for column, condition in where.items():
        at = f"{key}.{column}"
        is_bool, is_date = column in BOOLEAN_COLUMNS, column in DATE_COLUMNS
        if condition.equals is not None:
            if is_bool and not isinstance(condition.equals, bool):
                problems.append((at, f"{column} is true/false; expected true or false, "
                                     f"got {condition.equals!r}"))
            if not is_bool and isinstance(condition.equals, bool):
                problems.append((at, f"{column} is text; got a boolean (YAML reads unquoted "
                                     "yes/no/on/off/true/false as booleans; quote it)"))
        if condition.in_ is not None and is_bool:
            problems.append((f"{at}.in", f"{column} is true/false; use equals: true or false"))
        for op in ("age_below", "age_at_least"):
            if getattr(condition, op) is not None and column != "birth_date":
                problems.append((f"{at}.{op}", "an age is computed from birth_date only"))
        if is_date and condition.in_ is not None:
            problems.append((f"{at}.in", "dates cannot be listed; use age_below/age_at_least "
                                         "or not_null"))
    return problems


def _rule_problems(
    rule: Rule, index: int, registers: Sequence[str] | None
) -> list[tuple[str, str]]:
    key = f"rules[{index}]"
    problems = _condition_problems(rule.subject.where, f"{key}.subject.where")
    when = rule.finding_when
    problems += _condition_problems(when.record or {}, f"{key}.finding_when.record")
    for kind in ("exists_in", "missing_in"):
        relation = getattr(when, kind)
        if relation is not None:
            problems += _condition_problems(relation.where, f"{key}.finding_when.{kind}.where")
    if registers is not None:
        named = [(f"{key}.subject.register", r) for r in rule.subject.registers or ()]
        named += [
            (f"{key}.finding_when.{kind}.register", getattr(when, kind).register)
            for kind in ("exists_in", "missing_in")
            if getattr(when, kind) is not None
        ]
        for at, name in named:
            if name not in registers:
                close = difflib.get_close_matches(name, registers, n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                problems.append((at, f"unknown register {name!r}; {hint}configured: "
                                     f"{', '.join(registers)}"))
    if when.conflict in ("record_type",):
        problems.append((f"{key}.finding_when.conflict",
                         "record_type differs between registers by design; pick another column"))
    return problems


def _fail(path: Path, problems: list[tuple[str, str]]) -> ConfigError:
    if len(problems) == 1:
        key, message = problems[0]
        return ConfigError(f"{path}: {key}: {message}")
    lines = "\n".join(f"  {path}: {key}: {message}" for key, message in problems)
    return ConfigError(f"{path}: {len(problems)} problems:\n{lines}")


def load_rules(path: str | Path, registers: Iterable[str] | None = None) -> list[Rule]:
    """Load and check ``consistency.yaml``.

    Args:
        path: the file.
        registers: the configured register names; when given, every register a rule names
            must be one of them.

    Raises:
        ConfigError: one message naming the file and each bad key (``rules[2].subject...``).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"{path}: consistency rules not found; copy config/{CONSISTENCY_FILE} from reglink "
            "into your configuration folder (docs/consistency.md)"
        )
    data = read_yaml_mapping(path, "rules:")
    try:
        parsed = _ConsistencyFile.model_validate(data)
    except ValidationError as exc:
        problems = list(
            dict.fromkeys((_key_path(e["loc"]), _describe(e)) for e in exc.errors())
        )
        raise _fail(path, problems) from None
    known = sorted(registers) if registers is not None else None
    problems = []
    seen: dict[str, int] = {}
    for i, rule in enumerate(parsed.rules):
        if rule.name in seen:
            problems.append((f"rules[{i}].name",
                             f"{rule.name!r} is already the name of rules[{seen[rule.name]}]"))
        seen.setdefault(rule.name, i)
        problems += _rule_problems(rule, i, known)
    if problems:
        raise _fail(path, problems)
    return parsed.rules


# --------------------------------------------------------------------------------------------
# Evaluation (pure).


class _Records:
    """The records as integer-coded arrays, with column masks computed on demand."""

    def __init__(self, records: pd.DataFrame, reference_date: date):
        self.frame = records
        self.n = len(records)
        self.ref = reference_date
        # Codes in mpi_id order, so that findings come out sorted by person.
        pid, self.persons = pd.factorize(records["mpi_id"], sort=True)
        self.pid = pid.astype(np.int64)
        self.n_persons = len(self.persons)
        reg, names = pd.factorize(records["register"], sort=True)
        self.reg = reg.astype(np.int64)
        self.register_names = [str(r) for r in names]
        self.record_id = records["record_id"]
        self._dates: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self._known: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self._conditions: dict[tuple[str, Condition], np.ndarray] = {}
        self._registers: dict[tuple[str, ...], np.ndarray] = {}

    def register_mask(self, registers: Iterable[str] | None) -> np.ndarray:
        if registers is None:
            return np.ones(self.n, dtype=bool)
        key = tuple(sorted(registers))
        if key not in self._registers:
            wanted = np.zeros(len(self.register_names), dtype=bool)
            for name in key:
                if name in self.register_names:
                    wanted[self.register_names.index(name)] = True
            self._registers[key] = wanted[self.reg]
        return self._registers[key]

    def where(self, where: dict[str, Condition]) -> np.ndarray:
        mask = np.ones(self.n, dtype=bool)
        for column, condition in where.items():
            mask &= self._condition(column, condition)
        return mask

    def _condition(self, column: str, c: Condition) -> np.ndarray:
        # Rules share conditions (voter_active: true); each is computed once.
        if (column, c) not in self._conditions:
            self._conditions[column, c] = self._compute_condition(column, c)
        return self._conditions[column, c]

    def _compute_condition(self, column: str, c: Condition) -> np.ndarray:
        series = self.frame[column]
        mask = np.ones(self.n, dtype=bool)
        if c.not_null is not None:
            mask &= series.notna().to_numpy() == c.not_null
        if c.equals is not None:
            if isinstance(c.equals, bool):
                mask &= _as_bool(series, c.equals)
            else:
                mask &= np.asarray(series.eq(c.equals).fillna(False), dtype=bool)
        if c.in_ is not None:
            mask &= np.asarray(series.isin(list(c.in_)).fillna(False), dtype=bool)
        if c.age_below is not None:
            oldest = self.age(column, reading="earliest")
            mask &= ~np.isnan(oldest) & (oldest < c.age_below)
        if c.age_at_least is not None:
            youngest = self.age(column, reading="latest")
            mask &= ~np.isnan(youngest) & (youngest >= c.age_at_least)
        return mask

    def date_parts(self, column: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Year, month, day of ISO dates (NaN where missing or unknown)."""
        if column not in self._dates:
            self._dates[column] = _iso_parts(self.frame[column])
        return self._dates[column]

    def age(self, column: str, reading: str) -> np.ndarray:
        """Whole years at the reference date; a partial date read at its earliest (oldest
        possible age) or latest (youngest possible age) day."""
        year, month, day = self.known_parts(column)
        if reading == "earliest":
            month, day = np.nan_to_num(month, nan=1), np.nan_to_num(day, nan=1)
        else:
            day = np.where(np.isnan(month), 31, np.nan_to_num(day, nan=31))
            month = np.nan_to_num(month, nan=12)
        before_birthday = (self.ref.month * 100 + self.ref.day) < (month * 100 + day)
        return self.ref.year - year - before_birthday

    def known_parts(self, column: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Like :meth:`date_parts`, with the day and month of a placeholder birth date
        (01.01.YYYY written when only the year is known) set to unknown."""
        if column in self._known:
            return self._known[column]
        year, month, day = self.date_parts(column)
        if column != "birth_date":
            return year, month, day
        placeholder = (month == 1) & (day == 1)
        if "birth_date_quality" in self.frame.columns:
            quality = self.frame["birth_date_quality"]
            stated = np.asarray(quality.notna(), dtype=bool)
            weak = np.asarray(quality.isin(["placeholder", "partial"]), dtype=bool)
            placeholder = np.where(stated, weak, placeholder)
        month = np.where(placeholder, np.nan, month)
        day = np.where(placeholder, np.nan, day)
        self._known[column] = (year, month, day)
        return year, month, day


def _iso_parts(series: pd.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Year, month and day of ``YYYY[-MM[-DD]]`` text as floats, NaN where absent.

    Reads the digits straight from the Arrow string buffers: slicing and parsing millions
    of Python strings took seconds.
    """
    array = pa.array(series.astype("string"), type=pa.large_string(), from_pandas=True)
    array = pc.fill_null(array, "")
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    n = len(array)
    offsets = np.frombuffer(array.buffers()[1], dtype=np.int64)[array.offset : array.offset + n + 1]
    data = array.buffers()[2]
    data = np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(1, np.uint8)
    if not len(data):
        data = np.zeros(1, np.uint8)
    starts, lengths = offsets[:-1], np.diff(offsets)

    def char(k: int) -> np.ndarray:
        at = np.minimum(starts + k, len(data) - 1)
        return np.where(lengths > k, data[at], 0).astype(np.int64)

    def number(first: int, last: int) -> np.ndarray:
        value = np.zeros(n, dtype=np.int64)
        ok = np.ones(n, dtype=bool)
        for k in range(first, last):
            digit = char(k) - ord("0")
            ok &= (digit >= 0) & (digit <= 9)
            value = value * 10 + digit
        return np.where(ok, value, np.nan)

    year = number(0, 4)
    month = np.where(~np.isnan(year) & (char(4) == ord("-")), number(5, 7), np.nan)
    day = np.where(~np.isnan(month) & (char(7) == ord("-")), number(8, 10), np.nan)
    return year, month, day


def _as_bool(series: pd.Series, value: bool) -> np.ndarray:
    """Where a nullable true/false column equals ``value`` (missing never does)."""
    if series.dtype == bool:
        values = series.to_numpy()
        return values if value else ~values
    flags = series.astype("boolean")
    return np.asarray(flags.eq(value).fillna(False), dtype=bool)


def _persons_with(rec: _Records, mask: np.ndarray) -> np.ndarray:
    has = np.zeros(rec.n_persons, dtype=bool)
    has[rec.pid[mask]] = True
    return has


def _conflicting_persons(rec: _Records, column: str, subject: np.ndarray) -> np.ndarray:
    """Persons whose subject records hold more than one value of ``column``."""
    conflict = np.zeros(rec.n_persons, dtype=bool)

    def more_than_one(mask: np.ndarray, values: np.ndarray) -> None:
        # A person whose smallest and largest value differ holds two values (no sort of
        # millions of (person, value) pairs needed).
        if not mask.any():
            return
        persons, values = rec.pid[mask], values[mask]
        smallest = np.full(rec.n_persons, np.iinfo(np.int64).max, dtype=np.int64)
        largest = np.full(rec.n_persons, np.iinfo(np.int64).min, dtype=np.int64)
        np.minimum.at(smallest, persons, values)
        np.maximum.at(largest, persons, values)
        conflict[largest > smallest] = True

    if column in DATE_COLUMNS:
        year, month, day = rec.known_parts(column)
        known = subject & ~np.isnan(year)
        more_than_one(known, np.nan_to_num(year).astype(np.int64))
        exact = known & ~np.isnan(day)
        ymd = year * 10_000 + np.nan_to_num(month) * 100 + np.nan_to_num(day)
        more_than_one(exact, np.nan_to_num(ymd).astype(np.int64))
    else:
        codes, _ = pd.factorize(rec.frame[column])
        more_than_one(subject & (codes >= 0), codes.astype(np.int64))
    return conflict


def _evaluate_rule(rule: Rule, rec: _Records) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    when = rule.finding_when
    present = set(rec.register_names)
    for relation in (when.exists_in, when.missing_in):
        if relation is not None and relation.register not in present:
            log.warning("consistency rule %s skipped: no records of register %s in this run",
                        rule.name, relation.register)
            return None
    subject_registers = [r for r in (rule.subject.registers or rec.register_names)
                         if r in present]
    if not subject_registers:
        log.warning("consistency rule %s skipped: no records of its subject register(s)",
                    rule.name)
        return None
    subject = rec.register_mask(subject_registers) & rec.where(rule.subject.where)
    related = np.zeros(rec.n, dtype=bool)
    if when.record is not None:
        flagged = subject & rec.where(when.record)
    elif when.exists_in is not None or when.missing_in is not None:
        relation = when.exists_in or when.missing_in
        other = rec.register_mask([relation.register]) & rec.where(relation.where)
        has_other = _persons_with(rec, other)
        flagged = subject & (has_other[rec.pid] == (when.exists_in is not None))
        if when.exists_in is not None:
            related = other & _persons_with(rec, flagged)[rec.pid]
    elif when.count_at_least is not None:
        key = rec.pid * len(rec.register_names) + rec.reg
        counts = np.bincount(key[subject], minlength=rec.n_persons * len(rec.register_names))
        flagged = subject & (counts[key] >= when.count_at_least)
    else:
        conflict = _conflicting_persons(rec, when.conflict, subject)
        flagged = subject & rec.frame[when.conflict].notna().to_numpy() & conflict[rec.pid]
    return _findings(rule, rec, flagged, related), _metrics(
        rule, rec, subject, flagged, subject_registers
    )


def _metrics(
    rule: Rule,
    rec: _Records,
    subject: np.ndarray,
    flagged: np.ndarray,
    registers: list[str],
) -> pd.DataFrame:
    rows = []
    for name in [*registers, ALL_REGISTERS]:
        in_register = subject if name == ALL_REGISTERS else subject & rec.register_mask([name])
        denominator = int(_persons_with(rec, in_register).sum())
        count = int(_persons_with(rec, flagged & in_register).sum())
        rate = count / denominator if denominator else None
        rows.append((rule.name, name, count, denominator, rate))
    return pd.DataFrame(rows, columns=list(METRIC_COLUMNS))


def _findings(
    rule: Rule, rec: _Records, flagged: np.ndarray, related: np.ndarray
) -> pd.DataFrame:
    """The rule's findings, ``record_ids`` and ``details`` as JSON text: built column-wise
    by Arrow, not a dict and a ``json.dumps`` per finding (hundreds of thousands of them in
    a whole country)."""
    idx = np.flatnonzero(flagged | related)
    if not flagged.any():
        return pd.DataFrame({c: pd.Series(dtype=object) for c in FINDING_COLUMNS})
    # The records behind the findings, ordered by person (codes follow mpi_id order), then
    # register, then record_id: a stable sort on top of a record_id sort.
    ids = rec.record_id.iloc[idx].astype(str).reset_index(drop=True)
    order = ids.argsort(kind="stable").to_numpy()
    idx, record_id = idx[order], ids.iloc[order]
    order = np.lexsort((rec.reg[idx], rec.pid[idx]))
    idx, record_id = idx[order], record_id.iloc[order]
    pid = rec.pid[idx]
    starts = np.flatnonzero(np.r_[True, pid[1:] != pid[:-1]])
    ends = np.r_[starts[1:], len(pid)]
    person = pid[starts]

    # The register where a steward should act: those of the flagged subject records, as a
    # bit set per person, so that joining their names is done once per distinct set.
    bits = np.zeros(rec.n_persons, dtype=np.int64)
    for code in np.flatnonzero(np.bincount(rec.reg[flagged])):
        bits[_persons_with(rec, flagged & (rec.reg == code))] |= 1 << int(code)
    label = {
        int(b): ",".join(n for k, n in enumerate(rec.register_names) if int(b) >> k & 1)
        for b in pd.unique(bits[person])
    }
    # [{"register": ..., "record_id": ...}, ...] per finding.
    register_json = pa.array([json.dumps(n) for n in rec.register_names], type=_TEXT)
    items = _concat('{"register": ', register_json.take(pa.array(rec.reg[idx])),
                    ', "record_id": ', _json_strings(_text(record_id)), "}")
    return pd.DataFrame(
        {
            "rule": rule.name,
            "mpi_id": np.asarray(rec.persons, dtype=object)[person],
            "register": [label[b] for b in bits[person].tolist()],
            "record_ids": _concat("[", _join_groups(items, starts), "]").to_pandas(),
            "details": _details(rule, rec, idx, flagged[idx], starts, ends).to_pandas(),
        }
    )


_TEXT = pa.large_string()


def _text(values: pd.Series | np.ndarray) -> pa.Array:
    """Text values as one Arrow array (missing: null)."""
    array = pa.array(values, from_pandas=True)
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    return array.cast(_TEXT)


def _concat(*parts: str | pa.Array) -> pa.Array:
    """Element-wise concatenation of arrays and constant texts (null where one is null)."""
    values = [pa.scalar(p, type=_TEXT) if isinstance(p, str) else p for p in parts]
    return pc.binary_join_element_wise(*values, pa.scalar("", type=_TEXT))


#: What a JSON string must escape: the quote, the backslash and control characters.
_JSON_SPECIAL = r'["\\\x00-\x1f]'


def _json_strings(values: pa.Array) -> pa.Array:
    """Each text as a JSON string literal, as ``json.dumps(..., ensure_ascii=False)``
    writes it (the rare one that needs escaping is written by json.dumps itself)."""
    quoted = _concat('"', values, '"')
    special = pc.fill_null(pc.match_substring_regex(values, _JSON_SPECIAL), False)
    if pc.any(special).as_py():
        escaped = [json.dumps(v, ensure_ascii=False) for v in values.filter(special).to_pylist()]
        quoted = pc.replace_with_mask(quoted, special, pa.array(escaped, type=_TEXT))
    return quoted


def _join_groups(items: pa.Array, starts: np.ndarray) -> pa.Array:
    """``items`` joined with ", " per group; groups are consecutive and begin at
    ``starts``."""
    offsets = pa.array(np.r_[starts, len(items)].astype(np.int64))
    return pc.binary_join(pa.LargeListArray.from_arrays(offsets, items),
                          pa.scalar(", ", type=_TEXT))


def _spread(values: pa.Array, at: np.ndarray, n: int) -> pa.Array:
    """``n`` values: ``values`` at positions ``at``, null elsewhere."""
    where = np.full(n, -1, dtype=np.int64)
    where[at] = np.arange(len(at))
    return values.take(pa.array(where, mask=where < 0))


def _member(key: str, values: pa.Array) -> pa.Array:
    """The JSON object member ``"key": value, `` of each value (JSON text); "" where the
    value is null (the key is left out)."""
    return pc.fill_null(_concat(json.dumps(key) + ": ", values, ", "), "")


def _details(
    rule: Rule,
    rec: _Records,
    idx: np.ndarray,
    flagged: np.ndarray,
    starts: np.ndarray,
    ends: np.ndarray,
) -> pa.Array:
    """Each finding's details as a JSON object; ``idx`` are the records behind the
    findings, grouped by finding as ``starts``/``ends`` say, and ``flagged`` which of them
    are subject records. Keys in this order: each details column (and the time since it,
    for a date), ``records``, ``values``."""
    n = len(starts)
    group = np.repeat(np.arange(n), ends - starts)
    members: list[pa.Array] = []
    for column in rule.details:
        values = rec.frame[column].iloc[idx].reset_index(drop=True)
        present = values.notna().to_numpy()
        # Dates: the earliest (e.g. the death date); other columns: the first in sort order.
        first = values[present].astype(str).groupby(group[present]).min()
        keys = first.index.to_numpy()
        members.append(_member(column, _spread(_json_strings(_text(first)), keys, n)))
        if column in DATE_COLUMNS and len(first):
            since = _time_since(column, first, rec.ref)
            known = ~np.isnan(since)
            since_text = _text(since[known].astype(np.int64).astype(str))
            members.append(_member(_since_key(column), _spread(since_text, keys[known], n)))
    when = rule.finding_when
    if when.count_at_least is not None:
        # {"register": number of its subject records, ...} for the registers that have
        # at least count_at_least of them.
        n_reg = len(rec.register_names)
        counts = np.bincount(group[flagged] * n_reg + rec.reg[idx][flagged],
                             minlength=n * n_reg).reshape(n, n_reg)
        many = counts >= when.count_at_least
        per_register = [
            _member(name, _spread(_text(counts[many[:, code], code].astype(str)),
                                  np.flatnonzero(many[:, code]), n))
            for code, name in enumerate(rec.register_names)
        ]
        objects = _concat("{", _without_last_comma(_concat(*per_register)), "}")
        members.append(_member("records", pc.if_else(pa.array(many.any(axis=1)), objects,
                                                     pa.scalar(None, type=_TEXT))))
    if when.conflict is not None:
        values = rec.frame[when.conflict].iloc[idx].reset_index(drop=True)
        present = values.notna().to_numpy()
        # {"register": [its distinct values, sorted], ...} per finding, registers in order.
        pairs = pd.DataFrame({"finding": group[present], "register": rec.reg[idx][present],
                              "value": values[present].astype(str).to_numpy(dtype=object)})
        pairs = pairs.drop_duplicates().sort_values(["finding", "register", "value"],
                                                    ignore_index=True)
        finding, register = pairs["finding"].to_numpy(), pairs["register"].to_numpy()
        pair_starts = np.flatnonzero(np.r_[True, (finding[1:] != finding[:-1])
                                           | (register[1:] != register[:-1])])
        names = pa.array([json.dumps(r) + ": [" for r in rec.register_names], type=_TEXT)
        lists = _concat(names.take(pa.array(register[pair_starts])),
                        _join_groups(_json_strings(_text(pairs["value"])), pair_starts), "]")
        finding = finding[pair_starts]
        finding_starts = np.flatnonzero(np.r_[True, finding[1:] != finding[:-1]])
        objects = _concat("{", _join_groups(lists, finding_starts), "}")
        # Every finding gets the key ({} if it had no value at all).
        objects = pc.fill_null(_spread(objects, finding[finding_starts], n), "{}")
        members.append(_member("values", objects))
    if not members:
        return _text(np.full(n, "{}", dtype=object))
    return _concat("{", _without_last_comma(_concat(*members)), "}")


def _without_last_comma(text: pa.Array) -> pa.Array:
    """``text`` without the ", " that ends it (the last :func:`_member`)."""
    return pc.replace_substring_regex(text, ", $", "")


def _since_key(column: str) -> str:
    """The details key of the time since a date: ``age`` for birth_date, else
    ``days_since_<column without _date>`` (``days_since_death``)."""
    return "age" if column == "birth_date" else f"days_since_{column.removesuffix('_date')}"


def _time_since(column: str, dates: pd.Series, ref: date) -> np.ndarray:
    """Days from ISO dates (the earliest reading of a partial one) to ``ref``; for
    birth_date, the age in whole years. NaN where a date cannot be read."""
    year, month, day = _iso_parts(dates)
    month, day = np.nan_to_num(month, nan=1), np.nan_to_num(day, nan=1)
    if column == "birth_date":
        before = (ref.month * 100 + ref.day) < (month * 100 + day)
        return np.asarray(ref.year - year - before, dtype=float)
    when = pd.to_datetime(
        pd.DataFrame({"year": year, "month": month, "day": day}), errors="coerce"
    )
    return (pd.Timestamp(ref) - when).dt.days.to_numpy(dtype=float, na_value=np.nan)


def evaluate_rules(
    records: pd.DataFrame, rules: Sequence[Rule], reference_date: date
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Check the rules over the canonical records of every register.

    Args:
        records: canonical records (docs/canonical-schema.md) of all registers, one row per
            record, with ``mpi_id``: the person each record is linked to. Only the columns
            the rules use are needed beside ``register``, ``record_id`` and ``mpi_id``.
        rules: from :func:`load_rules`.
        reference_date: the date "today" means (ages, days since a death).

    Returns:
        ``(findings, metrics)``. Findings: one row per rule and person, columns
        :data:`FINDING_COLUMNS`: ``register`` (the register(s) of the flagged records,
        comma-separated), ``record_ids`` (list of ``{"register", "record_id"}``: the flagged
        records and, for ``exists_in``, the records found there) and ``details`` (dict).
        Metrics: per rule, one row per subject register and one for ``all``: ``count``
        (persons with a finding), ``denominator`` (persons with a subject record), ``rate``.
        A rule whose ``exists_in``/``missing_in`` register has no records here is skipped
        (no rows), since every person would be a finding.

    Raises:
        ValueError: a column a rule needs is missing, or a record has no ``mpi_id``.
    """
    findings, metrics = _evaluate(records, rules, reference_date)
    return _parsed(findings), metrics


def _parsed(findings: pd.DataFrame) -> pd.DataFrame:
    """Findings with ``record_ids`` and ``details`` read from their JSON text."""
    return findings.assign(**{
        column: pd.Series([json.loads(text) for text in findings[column]], dtype=object,
                          index=findings.index)
        for column in ("record_ids", "details")
    })


def _evaluate(
    records: pd.DataFrame, rules: Sequence[Rule], reference_date: date
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """:func:`evaluate_rules` with ``record_ids`` and ``details`` as JSON text."""
    findings, metrics = [], []
    for rule_findings, rule_metrics in _each_rule(records, rules, reference_date):
        findings.append(rule_findings)
        metrics.append(rule_metrics)
    return _concat_frames(findings, FINDING_COLUMNS), _concat_frames(metrics, METRIC_COLUMNS)


def _each_rule(
    records: pd.DataFrame, rules: Sequence[Rule], reference_date: date
) -> Iterator[tuple[pd.DataFrame, pd.DataFrame]]:
    """Findings (JSON text) and metrics of each rule that is not skipped, in rule order."""
    needed = {"register", "record_id", "mpi_id"}
    for rule in rules:
        needed |= rule.columns() - {"birth_date_quality"}
    missing = sorted(needed - set(records.columns))
    if missing:
        raise ValueError(f"records lack column(s) {missing} that the rules use")
    if records["mpi_id"].isna().any():
        raise ValueError("every record needs an mpi_id; drop the unlinked ones first")
    rec = _Records(records.reset_index(drop=True), reference_date)
    for rule in rules:
        started = time.perf_counter()
        result = _evaluate_rule(rule, rec)
        if result is None:
            continue
        log.debug("rule %s: %d finding(s) in %.2f s", rule.name, len(result[0]),
                  time.perf_counter() - started)
        yield result


def _concat_frames(frames: list[pd.DataFrame], columns: Sequence[str]) -> pd.DataFrame:
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in columns})
    return pd.concat(frames, ignore_index=True)


# --------------------------------------------------------------------------------------------
# The pipeline step.


def run_reference_date(run_id: str, started_at: Any = None) -> date:
    """The date "today" means for a run: from a run id like ``20261127T120000Z``, else the
    UTC date the run started. Fixed per run, so a rerun gives the same findings."""
    match = _RUN_DATE.match(run_id)
    if match:
        try:
            return date(*map(int, match.groups()))
        except ValueError:
            pass
    if started_at is None:
        raise ConsistencyError(
            f"run {run_id!r}: no reference date (the run id is not like 20261127T120000Z and "
            "the run has no start time)"
        )
    return started_at.astimezone(UTC).date()


#: The columns of the published index that the step reads: each record and its person.
LINK_COLUMNS = ("register", "record_id", "mpi_id")


def _read_person_records(conn: sa.Connection) -> pa.Table:
    """``register, record_id, mpi_id`` of the published index, from the database."""
    if conn.dialect.name == "postgresql":
        # COPY is several times faster than fetching millions of rows through the cursor.
        buffer = io.BytesIO()
        cursor = conn.connection.dbapi_connection.cursor()
        try:
            cursor.copy_expert(
                "COPY (SELECT register, record_id, mpi_id FROM person_records) TO STDOUT "
                "WITH (FORMAT csv)",
                buffer,
            )
        finally:
            cursor.close()
        if buffer.getbuffer().nbytes:
            buffer.seek(0)
            return pacsv.read_csv(
                buffer,
                read_options=pacsv.ReadOptions(column_names=list(LINK_COLUMNS)),
                # Every value is text, none is NULL (NOT NULL columns); quoted values may
                # hold line breaks.
                parse_options=pacsv.ParseOptions(newlines_in_values=True),
                convert_options=pacsv.ConvertOptions(
                    column_types=dict.fromkeys(LINK_COLUMNS, _TEXT), strings_can_be_null=False
                ),
            )
        rows: list[tuple[Any, ...]] = []
    else:
        rows = conn.exec_driver_sql(
            "SELECT register, record_id, mpi_id FROM person_records"
        ).fetchall()
    columns = list(zip(*rows, strict=True)) if rows else [(), (), ()]
    return pa.table({name: pa.array(values, type=_TEXT)
                     for name, values in zip(LINK_COLUMNS, columns, strict=True)})


def _links_from_files(
    conn: sa.Connection, run_id: str, run_dir: Path, published: dict[str, Any]
) -> pa.Table | None:
    """The published index as the run's own assign step wrote it
    (``assign/person_records.parquet``: every record and its ID), or None when that file is
    gone or may not be what the database holds (then the index is read from the database).

    The run is the latest published run, so the index is its assignment, provided that
    assignment was computed before the run was published (an assignment over its own index,
    ``index_run`` = the run, is written by a rerun and may not be published yet), publish
    recorded the same counts, and ``person_records`` still holds as many rows.
    """
    folder = run_dir / "assign"
    path, summary_path = folder / "person_records.parquet", folder / "summary.json"
    if not (path.is_file() and summary_path.is_file()):
        return None
    try:
        summary = json.loads(summary_path.read_text())
    except (OSError, ValueError):
        return None
    n_rows = pq.read_metadata(path).num_rows
    if (
        summary.get("run_id") != run_id
        or summary.get("index_run") == run_id
        or published.get("records") != n_rows
        or published.get("changes") != summary.get("changes")
    ):
        return None
    from pipelines.store import schema

    n_index = conn.execute(
        sa.select(sa.func.count()).select_from(schema.person_records)
    ).scalar_one()
    if n_index != n_rows:
        log.warning("consistency: %s holds %d records but the published index %d; reading "
                    "the index from the database", path, n_rows, n_index)
        return None
    return pq.read_table(path, columns=list(LINK_COLUMNS))


def _read_validated(validated: Path, columns: set[str]) -> pa.Table:
    """``columns`` of the validated records of every register, as one table."""
    files = sorted(p for p in validated.glob("*.parquet") if p.name != "quarantine.parquet")
    if not files:
        raise ConsistencyError(f"no validated records in {validated}; run `reglink validate`")
    tables = []
    for path in files:
        available = set(pq.read_schema(path).names)
        tables.append(pq.read_table(path, columns=sorted(columns & available)))
    types: dict[str, pa.DataType] = {}
    for table in tables:
        for field in table.schema:
            types.setdefault(field.name, field.type)
    wanted = sorted(columns)
    for i, table in enumerate(tables):
        for column in sorted(columns - set(table.column_names)):
            # A column the register does not have: all missing.
            table = table.append_column(
                column, pa.nulls(table.num_rows, types.get(column, pa.null()))
            )
        tables[i] = table.select(wanted)
    return pa.concat_tables(tables, promote_options="permissive")


def _person_of(records: pa.Table, links: pa.Table) -> pa.ChunkedArray:
    """Each record's ``mpi_id`` in the index ``links`` (null where it is not there)."""
    found = key_positions(links, records)
    rows = found[found >= 0]
    if len(rows) and np.bincount(rows).max() > 1:
        raise ConsistencyError(
            "the validated records hold a (register, record_id) twice; rerun `reglink "
            "validate`"
        )
    return links["mpi_id"].take(pa.array(found, mask=found < 0))


def _evaluate_into(
    conn: sa.Connection, run_id: str, records: pd.DataFrame, rules: Sequence[Rule],
    reference: date,
) -> tuple[int, pd.DataFrame]:
    """Evaluate the rules and replace the run's ``consistency_findings`` in the transaction
    of ``conn``; returns the number of findings and the metrics.

    On PostgreSQL each rule's findings are copied by a second thread while the next rule is
    evaluated, and checked (keys, foreign keys) as they arrive rather than at the commit, so
    the database's work overlaps the evaluation instead of following it.
    """
    from pipelines.store import schema

    table = schema.consistency_findings
    if conn.dialect.name != "postgresql":
        findings, metrics = _evaluate(records, rules, reference)
        return _write_findings(conn, run_id, findings), metrics
    conn.exec_driver_sql("SET CONSTRAINTS ALL IMMEDIATE")
    conn.execute(sa.delete(table).where(table.c.run_id == run_id))
    dbapi = conn.connection.dbapi_connection
    metrics, copies, n_findings = [], [], 0
    # Leaving the block waits for every copy, so none is running when the transaction ends
    # (committed, or rolled back after an error).
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="consistency-copy") as writer:
        for findings, rule_metrics in _each_rule(records, rules, reference):
            metrics.append(rule_metrics)
            if len(findings):
                n_findings += len(findings)
                copies.append(writer.submit(_copy_findings, dbapi, run_id, findings))
        for copy in copies:
            copy.result()  # the first error, if any
    return n_findings, _concat_frames(metrics, METRIC_COLUMNS)


_FINDINGS_COPY = (
    "COPY consistency_findings (run_id, rule, mpi_id, register, record_ids, details) "
    "FROM STDIN WITH (FORMAT csv)"
)


def _copy_findings(dbapi: Any, run_id: str, findings: pd.DataFrame) -> None:
    """``COPY`` findings (JSON as text) into ``consistency_findings`` (PostgreSQL)."""
    table = pa.table({
        "run_id": pa.array(np.full(len(findings), run_id, dtype=object), type=_TEXT),
        **{c: _text(findings[c]) for c in FINDING_COLUMNS},
    })
    sink = pa.BufferOutputStream()
    # Every text is quoted ("" is an empty text, an unquoted empty field is NULL).
    pacsv.write_csv(table, sink, pacsv.WriteOptions(include_header=False,
                                                    quoting_style="needed"))
    payload = sink.getvalue().to_pybytes()
    cursor = dbapi.cursor()
    try:
        # Sent in one piece: the thread then waits for the database without the GIL.
        cursor.copy_expert(_FINDINGS_COPY, io.BytesIO(payload), size=max(len(payload), 8192))
    finally:
        cursor.close()


@dataclass
class Evaluation:
    """The rules evaluated on the index a run is about to publish: the records and IDs its
    assign step wrote (:func:`evaluate_assignment`). :func:`run_consistency` writes it once
    the run is published, if what was published is that assignment (its mark)."""

    run_id: str
    assignment: str
    reference: date
    records: int
    unlinked: int
    findings: pd.DataFrame  # record_ids and details as JSON text
    metrics: pd.DataFrame
    seconds: dict[str, float]


def _rules_of(run_dir: Path, config_dir: Path) -> tuple[list[Rule], Path]:
    """The rules, checked against the configured registers, and the validated folder."""
    from pipelines.registers import load_register_configs
    from pipelines.validate import require_validated

    registers = None
    if (config_dir / "registers").is_dir():
        registers = sorted(load_register_configs(config_dir))
    rules = load_rules(config_dir / CONSISTENCY_FILE, registers)
    return rules, require_validated(run_dir)


def _linked_records(
    run_id: str, validated: Path, rules: Sequence[Rule], links: pa.Table
) -> tuple[pd.DataFrame, int]:
    """The validated records the rules read, each with its ``mpi_id`` in ``links``; those
    not in the index are left out (their number is returned beside)."""
    needed = {"register", "record_id"} | {c for r in rules for c in r.columns()}
    table = _read_validated(validated, needed)
    person = _person_of(table, links)
    unlinked = person.null_count
    if unlinked == len(table):
        raise ConsistencyError(
            f"run {run_id!r}: none of its {len(table):,} validated records is in the "
            "published index (person_records); publish the run before checking consistency"
        )
    records = table.append_column("mpi_id", person).to_pandas()
    del table, person
    if unlinked:
        log.warning("consistency: %d validated record(s) of run %s are not in the published "
                    "index and are left out", unlinked, run_id)
        records = records[records["mpi_id"].notna()]
    return records, unlinked


def _run_row(conn: sa.Connection, run_id: str) -> Any:
    from pipelines.store import schema

    runs = schema.runs
    run = conn.execute(
        sa.select(runs.c.status, runs.c.started_at, runs.c.counts).where(runs.c.run_id == run_id)
    ).one_or_none()
    if run is None:
        raise ConsistencyError(
            f"run {run_id!r} is not in the MPI database; run and publish it first"
        )
    return run


def evaluate_assignment(
    engine: sa.Engine, run_id: str, run_dir: str | Path, config_dir: str | Path
) -> Evaluation | None:
    """Evaluate the rules on the index the run's assign step wrote, before it is published,
    so that the evaluation can run beside publish (``run_all`` does, on a nightly run);
    nothing is written. None when there is no such assignment to evaluate: its files are
    missing, or it is a rerun's assignment over the run's own published index."""
    started = time.perf_counter()
    run_dir, config_dir = Path(run_dir), Path(config_dir)
    folder = run_dir / "assign"
    path, summary_path = folder / "person_records.parquet", folder / "summary.json"
    if not (path.is_file() and summary_path.is_file()):
        return None
    summary = json.loads(summary_path.read_text())
    mark = summary.get("assignment")
    if summary.get("run_id") != run_id or summary.get("index_run") == run_id or not mark:
        return None
    rules, validated = _rules_of(run_dir, config_dir)
    with engine.connect() as conn:
        reference = run_reference_date(run_id, _run_row(conn, run_id).started_at)
    links = pq.read_table(path, columns=list(LINK_COLUMNS))
    records, unlinked = _linked_records(run_id, validated, rules, links)
    del links
    findings, metrics = _evaluate(records, rules, reference)
    return Evaluation(run_id, mark, reference, len(records), unlinked, findings, metrics,
                      {"evaluate": round(time.perf_counter() - started, 2)})


def _write_findings(conn: sa.Connection, run_id: str, findings: pd.DataFrame) -> int:
    """Replace the run's ``consistency_findings`` with ``findings`` (JSON text); returns
    their number."""
    from pipelines.store import repository as repo
    from pipelines.store import schema

    table = schema.consistency_findings
    if conn.dialect.name != "postgresql":
        repo.replace_run_rows(conn, table, run_id, _parsed(findings))
    else:
        conn.execute(sa.delete(table).where(table.c.run_id == run_id))
        if len(findings):
            _copy_findings(conn.connection.dbapi_connection, run_id, findings)
    return len(findings)


def run_consistency(
    engine: sa.Engine, run_id: str, run_dir: str | Path, config_dir: str | Path,
    evaluation: Evaluation | None = None,
) -> dict[str, Any]:
    """The consistency step of a run, called after publish.

    Reads ``<run_dir>/validate/<register>.parquet`` and the published index (which record
    belongs to which person): from ``<run_dir>/assign/person_records.parquet``, the index
    this run published, when that file still matches the database, else from
    ``person_records``. Checks ``<config_dir>/consistency.yaml`` and replaces the run's rows
    of ``consistency_findings`` and ``consistency_metrics`` in one transaction; the run's
    ``counts`` get a ``consistency`` entry. Both ways of reading the index give the same rows.

    Args:
        evaluation: the rules already evaluated on the run's assignment
            (:func:`evaluate_assignment`, beside publish). Written as it is when the run
            published that assignment; otherwise ignored, and the rules are evaluated here.

    Returns:
        ``{"reference_date", "records", "unlinked", "findings": {rule: count},
        "skipped": [rule, ...], "index_source": "files" or "database",
        "evaluated_before_publish", "seconds"}`` (``seconds`` per phase: read_index,
        read_records, evaluate (with the findings' copy on PostgreSQL), write, total).

    Raises:
        ConfigError: bad rules file. ValidationError: the run was not validated.
        ConsistencyError: the run is not in the MPI database or not published, a newer
        run has been published since, or none of its records is in the published index.
    """
    from pipelines.store import repository as repo
    from pipelines.store.migrations import require_head

    started = time.perf_counter()
    lap = Laps(started)

    run_dir = Path(run_dir)
    config_dir = Path(config_dir)
    rules, validated = _rules_of(run_dir, config_dir)

    with engine.connect() as conn:
        require_head(conn)
        run = _run_row(conn, run_id)
        if run.status != "published":
            raise ConsistencyError(
                f"run {run_id!r} is {run.status}, not published; consistency is checked on "
                "the published index, so publish the run first"
            )
        latest = repo.last_published_run(conn)
        if latest != run_id:
            raise ConsistencyError(
                f"run {run_id!r} is no longer the published index (run {latest!r} was "
                "published after it); consistency describes the current index, so check "
                f"run {latest!r} instead"
            )
        reference = run_reference_date(run_id, run.started_at)
        counts = dict(run.counts or {})
        published = counts.get("published") or {}
        if evaluation is not None and not (
                evaluation.run_id == run_id and evaluation.reference == reference
                and evaluation.assignment == published.get("assignment")):
            evaluation = None  # of another assignment than the one published
        links = None
        index_source = "files"
        if evaluation is None:
            links = _links_from_files(conn, run_id, run_dir, published)
            if links is None:
                links = _read_person_records(conn)
                index_source = "database"
    lap("read_index")

    if links is not None:
        records, unlinked = _linked_records(run_id, validated, rules, links)
        del links
        n_records = len(records)
        lap("read_records")
    with engine.begin() as conn:
        require_head(conn)
        if evaluation is not None:
            n_records, unlinked, metrics = (evaluation.records, evaluation.unlinked,
                                            evaluation.metrics)
            n_findings = _write_findings(conn, run_id, evaluation.findings)
        else:
            n_findings, metrics = _evaluate_into(conn, run_id, records, rules, reference)
            lap("evaluate")
            del records
        summary = _write_summary(conn, run_id, rules, metrics, reference, n_records,
                                 unlinked, index_source)
    lap("write")
    summary["evaluated_before_publish"] = evaluation.seconds if evaluation else None
    summary["seconds"] = {**lap.seconds, "total": round(time.perf_counter() - started, 2)}
    log.info("consistency of run %s: %d finding(s) over %d rule(s), index from %s, in %.1f s",
             run_id, n_findings, len(summary["findings"]), index_source,
             time.perf_counter() - started)
    return summary


def _write_summary(
    conn: sa.Connection, run_id: str, rules: Sequence[Rule], metrics: pd.DataFrame,
    reference: date, n_records: int, unlinked: int, index_source: str,
) -> dict[str, Any]:
    """The run's ``consistency_metrics`` replaced, and its ``counts.consistency`` set (to
    what is returned)."""
    from pipelines.store import repository as repo
    from pipelines.store import schema

    repo.replace_run_rows(conn, schema.consistency_metrics, run_id, metrics)
    per_rule = (
        metrics[metrics["register"] == ALL_REGISTERS].set_index("rule")["count"].astype(int)
    )
    evaluated = set(per_rule.index)
    summary = {
        "reference_date": reference.isoformat(),
        "records": n_records,
        "unlinked": unlinked,
        "findings": {r.name: int(per_rule[r.name]) for r in rules if r.name in evaluated},
        "skipped": [r.name for r in rules if r.name not in evaluated],
        "index_source": index_source,
    }
    counts = conn.execute(
        sa.select(schema.runs.c.counts).where(schema.runs.c.run_id == run_id)
    ).scalar_one_or_none()
    repo.update_run(conn, run_id, counts={**(counts or {}), "consistency": summary})
    return summary
