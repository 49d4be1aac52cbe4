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
over integer person codes, so millions of records take seconds. :func:`run_consistency` is
the pipeline step: it reads the run's validated records and the published
``person_records``, evaluates, and replaces the run's ``consistency_findings`` and
``consistency_metrics`` in one transaction (a rerun gives the same rows).
"""

from __future__ import annotations

import difflib
import io
import logging
import re
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, date
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipelines.errors import ConfigError, ReglinkError
from pipelines.registers import (
    BOOLEAN_COLUMNS,
    CANONICAL_COLUMNS,
    DATE_COLUMNS,
    read_yaml_mapping,
)

__all__ = [
    "ALL_REGISTERS",
    "CONSISTENCY_FILE",
    "FINDING_COLUMNS",
    "METRIC_COLUMNS",
    "Condition",
    "ConsistencyError",
    "FindingWhen",
    "Rule",
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
        # Distinct (person, value) pairs as one int64 key; a person in two pairs conflicts.
        values = values[mask]
        if not len(values):
            return
        width = int(values.max()) + 1
        # (np.unique is many times slower than a plain sort on numpy 2.4.)
        keys = np.sort(rec.pid[mask] * width + values)
        distinct = keys[np.r_[True, keys[1:] != keys[:-1]]]
        conflict[np.bincount(distinct // width, minlength=rec.n_persons) > 1] = True

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
    idx = np.flatnonzero(flagged | related)
    if not flagged.any():
        return pd.DataFrame({c: pd.Series(dtype=object) for c in FINDING_COLUMNS})
    # The records behind the findings, ordered by person (codes follow mpi_id order), then
    # register, then record_id: a stable sort on top of a record_id sort.
    ids = rec.record_id.iloc[idx].reset_index(drop=True)
    order = ids.argsort(kind="stable").to_numpy()
    idx, record_id = idx[order], ids.to_numpy(dtype=object)[order]
    order = np.lexsort((rec.reg[idx], rec.pid[idx]))
    idx, record_id = idx[order], record_id[order]
    pid = rec.pid[idx]
    starts = np.flatnonzero(np.r_[True, pid[1:] != pid[:-1]])
    ends = np.r_[starts[1:], len(pid)]
    person = pid[starts]
    names = np.asarray(rec.register_names, dtype=object)
    register = names[rec.reg[idx]]

    # The register where a steward should act: those of the flagged subject records, as a
    # bit set per person, so that joining their names is done once per distinct set.
    bits = np.zeros(rec.n_persons, dtype=np.int64)
    for code in np.flatnonzero(np.bincount(rec.reg[flagged])):
        bits[_persons_with(rec, flagged & (rec.reg == code))] |= 1 << int(code)
    label = {
        int(b): ",".join(n for k, n in enumerate(rec.register_names) if int(b) >> k & 1)
        for b in pd.unique(bits[person])
    }
    items = [
        {"register": r, "record_id": str(i)}
        for r, i in zip(register.tolist(), record_id.tolist(), strict=True)
    ]
    return pd.DataFrame(
        {
            "rule": rule.name,
            "mpi_id": np.asarray(rec.persons, dtype=object)[person],
            "register": [label[b] for b in bits[person].tolist()],
            "record_ids": [items[a:b] for a, b in zip(starts, ends, strict=True)],
            "details": _details(rule, rec, idx, flagged[idx], starts, ends),
        }
    )


def _details(
    rule: Rule,
    rec: _Records,
    idx: np.ndarray,
    flagged: np.ndarray,
    starts: np.ndarray,
    ends: np.ndarray,
) -> list[dict[str, Any]]:
    """Each finding's details; ``idx`` are the records behind the findings, grouped by
    finding as ``starts``/``ends`` say, and ``flagged`` which of them are subject records."""
    out: list[dict[str, Any]] = [{} for _ in starts]
    group = np.repeat(np.arange(len(starts)), ends - starts)
    for column in rule.details:
        values = rec.frame[column].iloc[idx].reset_index(drop=True)
        present = values.notna().to_numpy()
        # Dates: the earliest (e.g. the death date); other columns: the first in sort order.
        first = values[present].astype(str).groupby(group[present]).min()
        keys = first.index.to_numpy()
        text = first.tolist()
        for k, value in zip(keys.tolist(), text, strict=True):
            out[k][column] = value
        if column in DATE_COLUMNS and len(first):
            since = _time_since(column, first, rec.ref)
            key = _since_key(column)
            for k, value in zip(keys.tolist(), since.tolist(), strict=True):
                if value is not None:
                    out[k][key] = value
    when = rule.finding_when
    if when.count_at_least is not None:
        n_reg = len(rec.register_names)
        counts = np.bincount(group[flagged] * n_reg + rec.reg[idx][flagged],
                             minlength=len(starts) * n_reg).reshape(len(starts), n_reg)
        for k, code in zip(*np.nonzero(counts >= when.count_at_least), strict=True):
            out[k].setdefault("records", {})[rec.register_names[code]] = int(counts[k, code])
    if when.conflict is not None:
        values = rec.frame[when.conflict].iloc[idx].to_numpy(dtype=object)
        registers = np.asarray(rec.register_names, dtype=object)[rec.reg[idx]]
        for k, (a, b) in enumerate(zip(starts.tolist(), ends.tolist(), strict=True)):
            by_register: dict[str, set[str]] = {}
            for register, value in zip(registers[a:b], values[a:b], strict=True):
                if not pd.isna(value):
                    by_register.setdefault(register, set()).add(str(value))
            out[k]["values"] = {r: sorted(v) for r, v in sorted(by_register.items())}
    return out


def _since_key(column: str) -> str:
    """The details key of the time since a date: ``age`` for birth_date, else
    ``days_since_<column without _date>`` (``days_since_death``)."""
    return "age" if column == "birth_date" else f"days_since_{column.removesuffix('_date')}"


def _time_since(column: str, dates: pd.Series, ref: date) -> pd.Series:
    """Days from ISO dates (the earliest reading of a partial one) to ``ref``; for
    birth_date, the age in whole years. None where a date cannot be read."""
    year, month, day = _iso_parts(dates)
    month, day = np.nan_to_num(month, nan=1), np.nan_to_num(day, nan=1)
    if column == "birth_date":
        before = (ref.month * 100 + ref.day) < (month * 100 + day)
        value = ref.year - year - before
    else:
        when = pd.to_datetime(
            pd.DataFrame({"year": year, "month": month, "day": day}), errors="coerce"
        )
        value = (pd.Timestamp(ref) - when).dt.days.to_numpy(dtype=float, na_value=np.nan)
    return pd.Series([None if np.isnan(v) else int(v) for v in value], dtype=object)


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
    needed = {"register", "record_id", "mpi_id"}
    for rule in rules:
        needed |= rule.columns() - {"birth_date_quality"}
    missing = sorted(needed - set(records.columns))
    if missing:
        raise ValueError(f"records lack column(s) {missing} that the rules use")
    if records["mpi_id"].isna().any():
        raise ValueError("every record needs an mpi_id; drop the unlinked ones first")
    rec = _Records(records.reset_index(drop=True), reference_date)
    findings, metrics = [], []
    for rule in rules:
        started = time.perf_counter()
        result = _evaluate_rule(rule, rec)
        if result is None:
            continue
        findings.append(result[0])
        metrics.append(result[1])
        log.debug("rule %s: %d finding(s) in %.2f s", rule.name, len(result[0]),
                  time.perf_counter() - started)
    empty_f = pd.DataFrame({c: pd.Series(dtype=object) for c in FINDING_COLUMNS})
    empty_m = pd.DataFrame({c: pd.Series(dtype=object) for c in METRIC_COLUMNS})
    findings_frame = (
        pd.concat(findings, ignore_index=True) if findings else empty_f
    )
    metrics_frame = pd.concat(metrics, ignore_index=True) if metrics else empty_m
    return findings_frame, metrics_frame


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


def _read_person_records(conn: sa.Connection) -> pd.DataFrame:
    """``register, record_id, mpi_id`` of the published index."""
    if conn.dialect.name == "postgresql":
        # COPY is several times faster than fetching millions of rows through the cursor.
        buffer = io.StringIO()
        cursor = conn.connection.dbapi_connection.cursor()
        try:
            cursor.copy_expert(
                'COPY (SELECT register, record_id, mpi_id FROM person_records) TO STDOUT '
                "WITH (FORMAT csv, HEADER true)",
                buffer,
            )
        finally:
            cursor.close()
        buffer.seek(0)
        return pd.read_csv(buffer, dtype=str, keep_default_na=False, na_filter=False)
    result = conn.exec_driver_sql("SELECT register, record_id, mpi_id FROM person_records")
    return pd.DataFrame(result.fetchall(), columns=["register", "record_id", "mpi_id"])


def _read_validated(validated: Path, columns: set[str]) -> pd.DataFrame:
    files = sorted(p for p in validated.glob("*.parquet") if p.name != "quarantine.parquet")
    if not files:
        raise ConsistencyError(f"no validated records in {validated}; run `reglink validate`")
    frames = []
    for path in files:
        available = set(pq.read_schema(path).names)
        frame = pd.read_parquet(path, columns=sorted(columns & available))
        for column in columns - available:
            frame[column] = pd.NA  # a column the register does not have: all missing
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def run_consistency(
    engine: sa.Engine, run_id: str, run_dir: str | Path, config_dir: str | Path
) -> dict[str, Any]:
    """The consistency step of a run, called after publish.

    Reads ``<run_dir>/validate/<register>.parquet`` and the published ``person_records``,
    checks ``<config_dir>/consistency.yaml`` and replaces the run's rows of
    ``consistency_findings`` and ``consistency_metrics`` in one transaction; the run's
    ``counts`` get a ``consistency`` entry.

    Returns:
        ``{"reference_date", "records", "unlinked", "findings": {rule: count},
        "skipped": [rule, ...], "seconds"}``.

    Raises:
        ConfigError: bad rules file. ValidationError: the run was not validated.
        ConsistencyError: the run is not in the MPI database or not published, a newer
        run has been published since, or none of its records is in the published index.
    """
    from pipelines.registers import load_register_configs
    from pipelines.store import repository as repo
    from pipelines.store import schema
    from pipelines.store.migrations import require_head
    from pipelines.validate import require_validated

    started = time.perf_counter()
    config_dir = Path(config_dir)
    registers = None
    if (config_dir / "registers").is_dir():
        registers = sorted(load_register_configs(config_dir))
    rules = load_rules(config_dir / CONSISTENCY_FILE, registers)
    validated = require_validated(Path(run_dir))

    with engine.connect() as conn:
        require_head(conn)
        runs = schema.runs
        run = conn.execute(
            sa.select(runs.c.status, runs.c.started_at).where(runs.c.run_id == run_id)
        ).one_or_none()
        if run is None:
            raise ConsistencyError(
                f"run {run_id!r} is not in the MPI database; run and publish it first"
            )
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
        links = _read_person_records(conn)

    needed = {"register", "record_id"} | {c for r in rules for c in r.columns()}
    records = _read_validated(validated, needed)
    records["record_id"] = records["record_id"].astype(str)
    records = records.merge(links, on=["register", "record_id"], how="left", validate="1:1")
    unlinked = int(records["mpi_id"].isna().sum())
    if unlinked == len(records):
        raise ConsistencyError(
            f"run {run_id!r}: none of its {len(records):,} validated records is in the "
            "published index (person_records); publish the run before checking consistency"
        )
    if unlinked:
        log.warning("consistency: %d validated record(s) of run %s are not in the published "
                    "index and are left out", unlinked, run_id)
        records = records[records["mpi_id"].notna()]

    t = time.perf_counter()
    findings, metrics = evaluate_rules(records, rules, reference)
    evaluate_seconds = time.perf_counter() - t
    per_rule = (
        metrics[metrics["register"] == ALL_REGISTERS].set_index("rule")["count"].astype(int)
    )
    evaluated = set(per_rule.index)
    skipped = [r.name for r in rules if r.name not in evaluated]
    summary = {
        "reference_date": reference.isoformat(),
        "records": len(records),
        "unlinked": unlinked,
        "findings": {r.name: int(per_rule[r.name]) for r in rules if r.name in evaluated},
        "skipped": skipped,
    }
    with engine.begin() as conn:
        require_head(conn)
        repo.replace_run_rows(conn, schema.consistency_findings, run_id, findings)
        repo.replace_run_rows(conn, schema.consistency_metrics, run_id, metrics)
        counts = conn.execute(
            sa.select(schema.runs.c.counts).where(schema.runs.c.run_id == run_id)
        ).scalar_one_or_none()
        repo.update_run(conn, run_id, counts={**(counts or {}), "consistency": summary})
    summary["seconds"] = {"evaluate": round(evaluate_seconds, 2),
                          "total": round(time.perf_counter() - started, 2)}
    log.info("consistency of run %s: %d finding(s) over %d rule(s) in %.1f s",
             run_id, len(findings), len(evaluated), time.perf_counter() - started)
    return summary
