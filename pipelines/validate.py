"""Validate: Great Expectations suites over each register's canonical extract.

Reads ``runs/<run_id>/extract/<register>.parquet`` and writes ``runs/<run_id>/validate/``:

- ``<register>.parquet``: the rows that passed (same columns as the extract); written only
  when the whole run's validation passed, so a later step cannot link a failed run;
- ``quarantine.parquet``: one row per (record, failed rule): run_id, register, record_id,
  source_row, source_file, rule, column, value, severity (``error``: the record is kept out
  of linking; ``warning``: the record passes, the field is flagged);
- ``summary.json``: per register the counts, every batch-level check with its outcome and
  row conservation; the run's status (``passed``, ``failed``, ``incomplete``);
- ``data_docs/index.html``: Great Expectations Data Docs of the run (no CDN assets).

Suites are JSON files in Great Expectations' own format (``expectations/``): the canonical
suite plus the register's own. Each expectation's ``meta`` says whether it is row-level
(``action: quarantine`` or ``flag``) or batch-level (a failure trips the circuit breaker).
Rules GE cannot express over the stored columns (the PIN's Luhn check digit, unreadable
dates, partial-date comparisons) are computed into ``check.*`` helper columns first, and the
suite expects on those: plain built-in expectations stay readable and editable as data,
and no custom expectation class has to be registered before a suite can be loaded.

Incremental validation. Given the run whose index is current (``previous_run_dir``), a
register whose rows mostly did not change is not checked row by row again. Reuse needs the
earlier run to have validated the register, passed, with the same suite, register
configuration, validation code and library versions (their hash is ``verdict_key`` in the
summary), the same extract it recorded (``extract_sha256``), the same extract columns and a
reference date not later than this run's. Rows are matched by ``record_id`` (a key that is
missing or not unique on either side matches nothing) and compared on every column that
validation reads (the canonical columns, ``source_file`` and the source's date columns; a
verdict depends on no other) except ``source_row``. Great Expectations then checks row by
row only the new and changed rows, the rows quarantined last time, the rows with an entry
from a rule that depends on more than the row, and every row sharing a value that a
uniqueness rule checks. An unchanged row keeps its verdict: passed, or its flags (warnings),
with ``source_row`` and ``run_id`` brought up to date. When nothing needs checking, Great
Expectations is not even imported.

Why an unchanged row's verdict cannot change (so the outputs equal a full validation's):
row-level rules that read only the row give the same answer on the same values. Uniqueness
reads the whole column: every row whose value is shared is checked again together with all
rows sharing it, and a row that had a duplicate last time was quarantined then, so it is
checked again. Rules on the reference date are only accepted in the shape "reference date
>= a column of the row" (born/died in the future): a row that passed with last run's date
passes with any later date, and a row that failed was quarantined, so it is checked again.
Any other use of ``check.reference_date``, a rule with ``mostly``, a row-level type not
known to read only its row, or a batch-level type not listed below makes the register be
validated in full (the reason is in the summary's ``mode_reason``). Checks that look at the
whole register (row count, column presence, the share of non-null values, null-rate jumps,
quarantined share, required columns, row conservation) are always computed over the whole
extract; the three batch-level expectation types supported incrementally
(``expect_table_row_count_to_be_between``, ``expect_column_to_exist``,
``expect_column_proportion_of_non_null_values_to_be_between``) are computed exactly as
Great Expectations does. Results are reported in suite order in both modes.

The Data Docs of an incremental run describe the row-level expectations over the rows that
were checked in this run, not the whole extract (none are built when no row was checked);
the summary says so (``data_docs_scope``, and per register ``mode`` and ``rows_checked``),
and holds the batch checks over the whole extract.
"""

from __future__ import annotations

import hashlib
import html
import importlib.metadata
import json
import logging
import os
import re
import shutil
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from matching.pin import valid_pin_mask
from pipelines.errors import CircuitBreakerError, ConfigError, ValidationError
from pipelines.extract import extract_parquet_options
from pipelines.registers import CANONICAL_COLUMNS, RegisterConfig

__all__ = [
    "QUARANTINE_COLUMNS",
    "BatchCheck",
    "PreviousCounts",
    "RegisterValidation",
    "RunValidation",
    "Rule",
    "add_check_columns",
    "load_suite",
    "previous_successful_counts",
    "require_validated",
    "validate_run",
]

log = logging.getLogger(__name__)

REPO_EXPECTATIONS = Path(__file__).resolve().parent.parent / "expectations"
CANONICAL_SUITE = "canonical"
QUARANTINE_COLUMNS = (
    "run_id", "register", "record_id", "source_row", "source_file", "rule", "column", "value",
    "severity",
)
VALUE_MAX_CHARS = 1000
STRING = pd.StringDtype()
_RUN_DATE = re.compile(r"^(\d{4})(\d{2})(\d{2})")
_LEVELS = ("row", "batch")
_ACTIONS = ("quarantine", "flag")


# --------------------------------------------------------------------------------------------
# Suites.


@dataclass(frozen=True)
class Rule:
    """What an expectation's ``meta`` says about it."""

    rule: str
    level: str  # row | batch
    action: str  # quarantine | flag (row) ; stop (batch)
    column: str
    value_column: str | None
    suite: str


def _rule_of(config: dict[str, Any], suite: str) -> Rule:
    meta = config.get("meta") or {}
    kwargs = config.get("kwargs") or {}
    column = meta.get("column") or kwargs.get("column") or ",".join(
        str(kwargs[k]) for k in ("column_A", "column_B") if k in kwargs
    )
    level = meta.get("level") or ("row" if "column" in kwargs or "column_A" in kwargs else "batch")
    action = "stop" if level == "batch" else meta.get("action", "quarantine")
    return Rule(
        rule=str(meta.get("rule") or config.get("type")),
        level=level,
        action=action,
        column=str(column),
        value_column=meta.get("value_column"),
        suite=suite,
    )


def suite_path(name: str, config_dir: str | Path, configured: str | None = None) -> Path | None:
    """Where suite ``name`` is: ``configured`` (relative to the config folder), else
    ``<config>/expectations/<name>.json``, else the repository's ``expectations/``."""
    config_dir = Path(config_dir)
    if configured is not None:
        path = Path(configured)
        candidates = [path] if path.is_absolute() else [config_dir / path, REPO_EXPECTATIONS.parent
                                                        / path]
        for candidate in candidates:
            if candidate.is_file():
                return candidate
        raise ConfigError(
            f"quality.suite: {configured!r} not found (looked in {config_dir} and "
            f"{REPO_EXPECTATIONS.parent})"
        )
    for candidate in (config_dir / "expectations" / f"{name}.json",
                      REPO_EXPECTATIONS / f"{name}.json"):
        if candidate.is_file():
            return candidate
    return None


def load_suite(path: str | Path) -> list[dict[str, Any]]:
    """The expectations of a suite file (GE's JSON: name, expectations, meta), checked.

    Raises:
        ConfigError: the file is not JSON, not a suite, or an expectation's meta is invalid;
            every problem is listed with its position in the file.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot be read: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: line {exc.lineno}: not valid JSON: {exc.msg}") from None
    if not isinstance(data, dict) or not isinstance(data.get("expectations"), list):
        raise ConfigError(f"{path}: expected a Great Expectations suite: "
                          '{"name": ..., "expectations": [...], "meta": {...}}')
    problems = []
    for i, item in enumerate(data["expectations"]):
        where = f"expectations[{i}]"
        if not isinstance(item, dict) or not isinstance(item.get("type"), str):
            problems.append(f"{where}: expected {{'type': ..., 'kwargs': {{...}}, 'meta': ...}}")
            continue
        meta = item.get("meta") or {}
        if meta.get("level") not in (None, *_LEVELS):
            problems.append(f"{where}.meta.level: {meta['level']!r}; expected row or batch")
        if meta.get("action") not in (None, *_ACTIONS):
            problems.append(f"{where}.meta.action: {meta['action']!r}; expected quarantine or flag")
    if problems:
        lines = "\n".join(f"  {path}: {p}" for p in problems)
        raise ConfigError(f"{path}: {len(problems)} problem(s):\n{lines}")
    return data["expectations"]


# --------------------------------------------------------------------------------------------
# Helper columns.


def reference_date(run_id: str, extract_path: Path) -> str:
    """The date "today" means for the run: from a run id like ``20261127T120000Z``, else the
    extract file's modification date. Fixed per run, so a re-run gives the same answer."""
    match = _RUN_DATE.match(run_id)
    if match:
        try:
            return date(*map(int, match.groups())).isoformat()
        except ValueError:
            pass
    return datetime.fromtimestamp(extract_path.stat().st_mtime, UTC).date().isoformat()


def _date_bounds(values: pd.Series) -> tuple[pd.Series, pd.Series, pd.Series]:
    """Year, earliest and latest reading of ISO dates that may be partial (YYYY, YYYY-MM)."""
    text = values.astype(STRING)
    length = text.str.len()
    year = pd.to_numeric(text.str.slice(0, 4), errors="coerce").astype("Int64")
    earliest = text.where(length != 4, text + "-01-01").where(length != 7, text + "-01")
    # A month's last day does not matter for ordering: -31 sorts after every real day.
    latest = text.where(length != 4, text + "-12-31").where(length != 7, text + "-31")
    return year, earliest, latest


def _unreadable(frame: pd.DataFrame, canonical: str, config: RegisterConfig) -> pd.Series:
    """The original text where the source gave a date the extract could not read."""
    spec = config.columns.get(canonical)
    out = pd.Series(pd.NA, index=frame.index, dtype=STRING)
    if spec is None:
        return out
    natives = [f"src.{c}" for c in spec.native_columns() if f"src.{c}" in frame.columns]
    if not natives:
        return out
    given = pd.Series(False, index=frame.index)
    original = pd.Series("", index=frame.index, dtype=STRING)
    for i, column in enumerate(natives):
        raw = frame[column].astype(STRING).str.strip()
        present = raw.notna() & (raw != "")
        given = given | present
        original = original + ("" if i == 0 else "/") + raw.fillna("")
    bad = (given & frame[canonical].isna()).to_numpy(dtype=bool, na_value=False)
    out[bad] = original[bad]
    return out


def add_check_columns(
    frame: pd.DataFrame, config: RegisterConfig, ref_date: str
) -> pd.DataFrame:
    """Add the ``check.*`` helper columns the suites expect on (docs/data-quality.md)."""
    n = len(frame)
    checks: dict[str, Any] = {"check.reference_date": pd.Series([ref_date] * n, dtype=STRING,
                                                                index=frame.index)}
    for canonical, prefix in (("birth_date", "birth"), ("death_date", "death")):
        year, earliest, latest = _date_bounds(frame[canonical])
        checks[f"check.{prefix}_year"] = year
        checks[f"check.{canonical}_earliest"] = earliest
        checks[f"check.{canonical}_latest"] = latest
        checks[f"check.{canonical}_unreadable"] = _unreadable(frame, canonical, config)
    pin = frame["pin"].astype(STRING)
    shaped = pin.str.fullmatch(r"[0-9]{9}").fillna(False).to_numpy(dtype=bool)
    luhn = pd.Series(pd.NA, index=frame.index, dtype="boolean")
    luhn[shaped] = valid_pin_mask(pin)[shaped]
    checks["check.pin_check_digit_ok"] = luhn
    checks["check.identifying_fields"] = (
        frame[["surname", "given_name", "birth_date"]].notna().sum(axis=1).astype("Int64")
    )
    return frame.assign(**checks)


# --------------------------------------------------------------------------------------------
# Run history.


@dataclass(frozen=True)
class PreviousCounts:
    """A register's figures in the newest earlier run whose validation passed."""

    run_id: str
    extracted: int
    null_rates: dict[str, float]


def _read_summary(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def previous_successful_counts(
    data_dir: str | Path, register: str, before_run_id: str
) -> PreviousCounts | None:
    """The register's row count and null rates in the newest run before ``before_run_id``
    whose validation passed; None when there is none (the first run).

    Run ids sort by time. The MPI database will take this over; keep callers to this function.
    """
    runs = Path(data_dir) / "runs"
    candidates = sorted((p.name for p in runs.glob("*") if p.name < before_run_id), reverse=True)
    for run_id in candidates:
        summary = _read_summary(runs / run_id / "validate" / "summary.json")
        if not summary or summary.get("status") != "passed":
            continue
        entry = (summary.get("registers") or {}).get(register)
        if entry and entry.get("status") == "passed":
            return PreviousCounts(run_id, int(entry["extracted"]), dict(entry["null_rates"]))
    return None


# --------------------------------------------------------------------------------------------
# Results.


@dataclass
class BatchCheck:
    """One batch-level check and its outcome."""

    check: str
    ok: bool
    observed: Any = None
    threshold: Any = None
    message: str = ""


@dataclass
class RegisterValidation:
    """What validation found in one register's extract."""

    register: str
    extracted: int = 0
    passed: int = 0
    quarantined: int = 0
    flagged: int = 0
    rules: dict[str, int] = field(default_factory=dict)
    checks: list[BatchCheck] = field(default_factory=list)
    null_rates: dict[str, float] = field(default_factory=dict)
    baseline_run: str | None = None
    conservation_ok: bool = True
    # How the rows were checked: "full" (every row) or "incremental" (rows_checked of them,
    # the others keep their verdict from run reused_from); mode_reason says why full.
    mode: str = "full"
    mode_reason: str = ""
    rows_checked: int = 0
    reused_from: str | None = None
    # What a later run needs to reuse these verdicts (see the module docstring).
    verdict_key: str | None = None
    extract_sha256: str | None = None
    reference_date: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.conservation_ok and all(c.ok for c in self.checks)

    def failures(self) -> list[BatchCheck]:
        return [c for c in self.checks if not c.ok]

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["status"] = "passed" if self.ok else "failed"
        return data


@dataclass
class RunValidation:
    """The run's validation: every register validated this time, and where things are."""

    run_id: str
    status: str
    registers: dict[str, RegisterValidation]
    out_dir: Path
    data_docs: Path | None
    seconds: dict[str, float]


# --------------------------------------------------------------------------------------------
# Great Expectations.


class _Gx:
    """One ephemeral GE context for the run; imported lazily (the import costs ~2 s)."""

    SITE = "reglink_run"

    def __init__(self, docs_dir: Path | None):
        logging.getLogger("great_expectations").setLevel(logging.WARNING)
        import great_expectations as gx
        from great_expectations.core.expectation_suite import ExpectationSuite
        from great_expectations.expectations.expectation_configuration import (
            ExpectationConfiguration,
        )

        logging.getLogger("great_expectations").setLevel(logging.WARNING)
        self.gx = gx
        self.suite_class = ExpectationSuite
        self.config_class = ExpectationConfiguration
        self.context = gx.get_context(mode="ephemeral")
        self.context.variables.progress_bars = {"globally": False}
        self.datasource = self.context.data_sources.add_pandas("reglink")
        self.docs_dir = docs_dir
        if docs_dir is not None:
            self.context.add_data_docs_site(
                self.SITE,
                {
                    "class_name": "SiteBuilder",
                    "store_backend": {
                        "class_name": "TupleFilesystemStoreBackend",
                        "base_directory": str(docs_dir),
                    },
                    "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
                },
            )

    def suite(
        self, name: str, expectations: list[tuple[dict[str, Any], str]],
        keep: set[int] | None = None,
    ) -> Any:
        """The suite as GE objects; ``meta.index`` is each expectation's place in the suite.
        With ``keep``, only the expectations at those places."""
        domain = []
        for i, (item, source) in enumerate(expectations):
            if keep is not None and i not in keep:
                continue
            meta = dict(item.get("meta") or {})
            meta["suite"] = source
            meta["index"] = i
            try:
                config = self.config_class(
                    type=item["type"], kwargs=dict(item.get("kwargs") or {}), meta=meta
                )
                domain.append(config.to_domain_obj())
            except Exception as exc:  # GE raises several kinds for a bad expectation
                raise ConfigError(
                    f"{source}: expectation {item.get('type')!r} "
                    f"({(item.get('meta') or {}).get('rule', 'no rule name')}): {exc}"
                ) from None
        return self.context.suites.add(self.suite_class(name=name, expectations=domain))

    def run(self, name: str, suite: Any, frame: pd.DataFrame, run_id: str) -> Any:
        """Validate ``frame`` with ``suite``; the result is stored for Data Docs.

        GE filters the whole batch frame row-wise for every column-map expectation, so its
        cost grows with (expectations x columns). Expectations are therefore run in groups
        by the columns they read, each over a frame of just those columns (5-10x faster on
        a wide extract), and the results are merged into one suite result, in suite order.
        """
        from great_expectations.core.expectation_validation_result import (
            ExpectationSuiteValidationResult,
        )
        from great_expectations.core.run_identifier import RunIdentifier
        from great_expectations.data_context.types.resource_identifiers import (
            ExpectationSuiteIdentifier,
            ValidationResultIdentifier,
        )
        from great_expectations.expectations.expectation import (
            ColumnMapExpectation,
            ColumnPairMapExpectation,
            MulticolumnMapExpectation,
        )
        from great_expectations.validator.v1_validator import Validator
        from great_expectations.validator.validation_statistics import (
            calc_validation_statistics,
        )

        map_kinds = (ColumnMapExpectation, ColumnPairMapExpectation, MulticolumnMapExpectation)
        batch = self.datasource.add_dataframe_asset(name).add_batch_definition_whole_dataframe(
            "whole extract"
        )
        groups: dict[tuple[str, ...], list[Any]] = {}
        for expectation in suite.expectations:
            if isinstance(expectation, map_kinds):
                columns = _columns_of(expectation.configuration.kwargs, list(frame.columns))
            else:
                columns = ("*",)  # table-level: cheap, needs every column to see them
            groups.setdefault(columns, []).append(expectation)
        result_format = {"result_format": "COMPLETE", "partial_unexpected_count": 20}
        results = []
        batch_id = None
        for columns, expectations in groups.items():
            data = frame if columns == ("*",) else frame[list(columns)]
            validator = Validator(batch, result_format, {"dataframe": data})
            part = validator.validate_expectation_suite(
                self.suite_class(name=name, expectations=[_unbound(e) for e in expectations])
            )
            batch_id = part.batch_id
            results.extend(part.results)
        # GE reorders by group and column; suite order does not depend on how we grouped.
        results.sort(key=lambda item: (item.expectation_config.meta or {}).get("index", 0))
        statistics = calc_validation_statistics(results)
        run_identifier = RunIdentifier(run_name=run_id)
        merged = ExpectationSuiteValidationResult(
            results=results,
            success=statistics.success,
            suite_name=name,
            statistics={
                "evaluated_expectations": statistics.evaluated_expectations,
                "successful_expectations": statistics.successful_expectations,
                "unsuccessful_expectations": statistics.unsuccessful_expectations,
                "success_percent": statistics.success_percent,
            },
            meta={"run_id": run_identifier, "validation_time": run_identifier.run_time,
                  "batch_parameters": {"register": name, "run_id": run_id}},
            batch_id=batch_id,
        )
        if self.docs_dir is not None:
            for item in results:
                _escape_for_docs(item.result)
            self.context.validation_results_store.set(
                ValidationResultIdentifier(
                    expectation_suite_identifier=ExpectationSuiteIdentifier(name=name),
                    run_id=run_identifier,
                    batch_identifier=batch_id or name,
                ),
                merged,
            )
        return merged

    def build_docs(self) -> Path | None:
        if self.docs_dir is None:
            return None
        self.context.build_data_docs(site_names=[self.SITE])
        _strip_remote_assets(self.docs_dir)
        return self.docs_dir / "index.html"


class _LazyGx:
    """The run's GE context, set up on first use: a run whose rows all keep their verdict
    does not import Great Expectations at all. ``start_import`` imports it on a background
    thread, so that the import overlaps reading the extracts."""

    def __init__(self, docs_dir: Path | None):
        self.docs_dir = docs_dir
        self.gx: _Gx | None = None
        self.setup_seconds = 0.0  # what the run waited for the import and the context
        self._importing: threading.Thread | None = None

    def start_import(self) -> None:
        if self._importing is None and "great_expectations" not in sys.modules:
            logging.getLogger("great_expectations").setLevel(logging.WARNING)
            self._importing = threading.Thread(target=_import_gx, name="import-gx", daemon=True)
            self._importing.start()

    def get(self) -> _Gx:
        if self.gx is None:
            started = time.perf_counter()
            if self._importing is not None:
                self._importing.join()
            self.gx = _Gx(self.docs_dir)  # imports here if the thread could not
            self.setup_seconds = round(time.perf_counter() - started, 3)
        return self.gx

    def build_docs(self) -> Path | None:
        return self.gx.build_docs() if self.gx is not None else None


def _unbound(expectation: Any) -> Any:
    """A copy of an expectation that belongs to no suite, as GE requires to put it in
    another. Rebuilt from its configuration: equal to GE's ``copy.copy``, a deep pydantic
    copy some 20x slower (a noticeable share of a small incremental check)."""
    config = expectation.configuration
    config.id = None
    return config.to_domain_obj()


def _import_gx() -> None:
    try:
        import great_expectations  # noqa: F401
    except Exception:  # the main thread imports it again and reports the problem
        log.debug("background import of Great Expectations failed", exc_info=True)


def _escape(value: Any) -> Any:
    if isinstance(value, str):
        return html.escape(value[:VALUE_MAX_CHARS])
    if isinstance(value, list | tuple):
        return type(value)(_escape(v) for v in value)
    if isinstance(value, dict):
        return {k: _escape(v) for k, v in value.items()}
    return value


def _escape_for_docs(result: dict[str, Any]) -> None:
    """GE's Data Docs put failing values into the page unescaped: a name like
    ``<script>...</script>`` would run in the steward's browser. Escape them (values only;
    row indices stay numbers)."""
    for key in ("partial_unexpected_list", "partial_unexpected_counts",
                "partial_unexpected_index_list", "unexpected_list", "unexpected_index_list"):
        if key in result:
            result[key] = _escape(result[key])


def _columns_of(kwargs: Any, available: list[str]) -> tuple[str, ...]:
    named = [str(kwargs[k]) for k in ("column", "column_A", "column_B") if kwargs.get(k)]
    named += [str(c) for c in kwargs.get("column_list") or []]
    condition = kwargs.get("row_condition")
    if condition:
        text = str(getattr(condition, "pass_through_filter", None) or condition)
        named += [c for c in available if c in text]
    return tuple(c for c in available if c in set(named)) or ("*",)


_REMOTE_TAGS = (
    re.compile(r"<script[^>]*\bsrc=\"https?://[^\"]*\"[^>]*>\s*</script>", re.I),
    re.compile(r"<link[^>]*\bhref=\"https?://[^\"]*\"[^>]*/?>", re.I),
    re.compile(r"<img[^>]*\bsrc=\"https?://[^\"]*\"[^>]*/?>", re.I),
)
_LOCAL_STYLE = """<style>
body{font-family:system-ui,sans-serif;margin:1rem 2rem;color:#222}
table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #ccc;padding:.2rem .5rem}
.collapse:not(.show){display:none}.text-danger{color:#b00}.text-success{color:#070}
</style>"""


def _strip_remote_assets(folder: Path) -> None:
    """GE's templates load Bootstrap, jQuery, Vega and a logo from CDNs; our pages must load
    nothing from outside (machines without internet, no third party seeing who reads)."""
    for page in folder.rglob("*.html"):
        text = page.read_text(encoding="utf-8")
        for pattern in _REMOTE_TAGS:
            text = pattern.sub("", text)
        text = text.replace("</head>", _LOCAL_STYLE + "</head>", 1)
        page.write_text(text, encoding="utf-8")


def _exception(result: Any) -> str | None:
    info = result.exception_info or {}
    if info.get("raised_exception"):
        return str(info.get("exception_message"))
    for value in info.values():
        if isinstance(value, dict) and value.get("raised_exception"):
            return str(value.get("exception_message"))
    return None


def _string_types(kind: pa.DataType) -> Any:
    return STRING if pa.types.is_string(kind) else None


def _any_string_types(kind: pa.DataType) -> Any:
    return STRING if pa.types.is_string(kind) or pa.types.is_large_string(kind) else None


def _frame_of(table: pa.Table, whole: pa.Table) -> pd.DataFrame:
    """``table`` (rows of ``whole``) as pandas, each column with the dtype the whole column
    converts to: pandas gives a nullable bool or int column another dtype than a full one."""
    frame = table.to_pandas(types_mapper=_string_types)
    for column in table.column_names:
        kind = table.schema.field(column).type
        if whole[column].null_count and not table[column].null_count:
            if pa.types.is_boolean(kind):
                frame[column] = frame[column].astype(object)
            elif pa.types.is_integer(kind):
                frame[column] = frame[column].astype("float64")
    return frame


def _non_null(column: pa.ChunkedArray) -> int:
    """Non-null values as pandas counts them (NaN is null)."""
    return len(column) - int(pc.sum(pc.is_null(column, nan_is_null=True)).as_py() or 0)


def _null_rates(table: pa.Table) -> dict[str, float]:
    n = table.num_rows
    columns = [c for c in CANONICAL_COLUMNS if c in table.column_names]
    if n == 0:
        return dict.fromkeys(columns, 0.0)
    return {c: round(float(n - _non_null(table[c])) / n, 6) for c in columns}


def _batch_check(rule: Rule, kwargs: Any, success: bool, observed: Any) -> BatchCheck:
    threshold = {k: kwargs[k] for k in ("min_value", "max_value") if k in kwargs} or None
    where = f" {rule.column}" if rule.column else ""
    return BatchCheck(
        f"{rule.rule}" + (f":{rule.column}" if rule.column else ""), success,
        observed if isinstance(observed, int | float | str | None) else str(observed),
        threshold,
        f"{rule.suite}: {rule.rule}{where}: observed {observed}, expected {threshold}"
        if not success else "",
    )


# --------------------------------------------------------------------------------------------
# Reusing the verdicts of the run the index is built on.

# Row-level expectation types whose verdict for a row reads nothing but that row's values.
_ROW_LOCAL_TYPES = frozenset({
    "expect_column_values_to_not_be_null", "expect_column_values_to_be_null",
    "expect_column_values_to_be_between", "expect_column_values_to_be_in_set",
    "expect_column_values_to_not_be_in_set", "expect_column_value_lengths_to_be_between",
    "expect_column_value_lengths_to_equal", "expect_column_values_to_match_regex",
    "expect_column_values_to_not_match_regex", "expect_column_values_to_match_regex_list",
    "expect_column_values_to_not_match_regex_list",
    "expect_column_values_to_match_strftime_format",
    "expect_column_values_to_be_dateutil_parseable", "expect_column_values_to_be_json_parseable",
    "expect_column_pair_values_to_be_equal", "expect_column_pair_values_a_to_be_greater_than_b",
    "expect_column_pair_values_to_be_in_set", "expect_multicolumn_sum_to_equal",
    "expect_select_column_values_to_be_unique_within_record",
})
_UNIQUE = "expect_column_values_to_be_unique"
_AFTER = "expect_column_pair_values_a_to_be_greater_than_b"
# Batch-level types computed over the whole extract without GE, and the kwargs understood.
_BETWEEN = ("min_value", "max_value", "strict_min", "strict_max")
_NATIVE_BATCH = {
    "expect_table_row_count_to_be_between": frozenset(_BETWEEN),
    "expect_column_to_exist": frozenset({"column"}),
    "expect_column_proportion_of_non_null_values_to_be_between": frozenset({"column", *_BETWEEN}),
}
REFERENCE_DATE_COLUMN = "check.reference_date"


@cache
def _code_digest() -> str:
    """The code that decides a row's verdict: this module, the PIN check and the libraries.
    Any change to them makes the next run validate in full."""
    digest = hashlib.sha256()
    for module in (__name__, valid_pin_mask.__module__):
        digest.update(Path(sys.modules[module].__file__ or "").read_bytes())
    for package in ("great_expectations", "pandas", "pyarrow", "numpy"):
        digest.update(f"{package}=={importlib.metadata.version(package)}\n".encode())
    return digest.hexdigest()


def verdict_key(config: RegisterConfig, expectations: list[tuple[dict[str, Any], str]]) -> str:
    """What a row's verdict depends on besides the row: the suite, the register's
    configuration, the validation code and library versions (hashed)."""
    payload = json.dumps(
        {"register": config.name, "config": config.model_dump(mode="json"),
         "suite": [[item, source] for item, source in expectations], "code": _code_digest()},
        sort_keys=True, default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


@dataclass
class _SuiteShape:
    """What reusing verdicts needs to know about a suite."""

    rules: list[Rule]
    row_level: set[int] = field(default_factory=set)
    batch_level: set[int] = field(default_factory=set)
    # Row-level rules whose verdict reads more than the row (uniqueness, reference date).
    context: set[int] = field(default_factory=set)
    unique_columns: list[str] = field(default_factory=list)
    # A quarantine entry's (rule, column, severity) -> the expectation that wrote it.
    entry_index: dict[tuple[str, str, str], int] = field(default_factory=dict)
    blocker: str | None = None  # why verdicts cannot be reused with this suite


def _plain_number(value: Any) -> bool:
    return value is None or (isinstance(value, int | float) and not isinstance(value, bool))


def _suite_shape(
    expectations: list[tuple[dict[str, Any], str]], frame_columns: list[str],
    extract_columns: list[str],
) -> _SuiteShape:
    shape = _SuiteShape([_rule_of(item, source) for item, source in expectations])
    problems = []
    for i, (item, source) in enumerate(expectations):
        rule, kind = shape.rules[i], item["type"]
        kwargs = item.get("kwargs") or {}
        where = f"{source}: {kind} ({rule.rule})"
        if rule.level == "batch":
            shape.batch_level.add(i)
            column = kwargs.get("column")
            if kind not in _NATIVE_BATCH or set(kwargs) - _NATIVE_BATCH[kind]:
                problems.append(f"{where}: a batch-level check computed only by GE")
            elif not (all(_plain_number(kwargs.get(k)) for k in ("min_value", "max_value"))
                      and all(isinstance(kwargs.get(k, False), bool)
                              for k in ("strict_min", "strict_max"))):
                problems.append(f"{where}: thresholds other than plain numbers")
            elif kind != "expect_table_row_count_to_be_between" and not isinstance(column, str):
                problems.append(f"{where}: no column named")
            elif (kind == "expect_column_proportion_of_non_null_values_to_be_between"
                  and (column not in frame_columns or column not in extract_columns)):
                problems.append(f"{where}: column {column} is not an extract column")
            continue
        shape.row_level.add(i)
        key = (rule.rule, rule.column, "error" if rule.action == "quarantine" else "warning")
        if key in shape.entry_index:
            problems.append(f"{where}: a second row-level rule {rule.rule} on {rule.column}")
        shape.entry_index[key] = i
        text = json.dumps(kwargs, sort_keys=True, default=str)
        others = json.dumps({k: v for k, v in kwargs.items() if k != "column_A"},
                            sort_keys=True, default=str)
        if "mostly" in kwargs or "$PARAMETER" in text:
            problems.append(f"{where}: mostly or a suite parameter")
        elif (kind == _AFTER and kwargs.get("column_A") == REFERENCE_DATE_COLUMN
              and REFERENCE_DATE_COLUMN not in others
              and rule.value_column != REFERENCE_DATE_COLUMN):
            shape.context.add(i)  # reference date >= a date of the row: see the docstring
        elif REFERENCE_DATE_COLUMN in text or rule.value_column == REFERENCE_DATE_COLUMN:
            problems.append(f"{where}: reads the reference date other than as 'reference "
                            "date >= a column'")
        elif kind == _UNIQUE:
            if kwargs.get("column") not in extract_columns:
                problems.append(f"{where}: uniqueness of a column not in the extract")
            shape.context.add(i)
            shape.unique_columns.append(str(kwargs.get("column")))
        elif kind not in _ROW_LOCAL_TYPES:
            problems.append(f"{where}: not known to read only its own row")
    if problems:
        shape.blocker = "the suite needs a full validation: " + "; ".join(problems)
    return shape


def _native_batch_check(
    item: dict[str, Any], rule: Rule, n: int, frame_columns: list[str], table: pa.Table
) -> BatchCheck:
    """A batch-level expectation over the whole extract, with GE's own semantics."""
    kind, kwargs = item["type"], item.get("kwargs") or {}
    if kind == "expect_column_to_exist":
        return _batch_check(rule, kwargs, kwargs.get("column") in frame_columns, None)
    observed: int | float = n
    if kind == "expect_column_proportion_of_non_null_values_to_be_between":
        observed = _non_null(table[kwargs["column"]]) / n if n > 0 else 0
    low, high = kwargs.get("min_value"), kwargs.get("max_value")
    above = low is None or (observed > low if kwargs.get("strict_min") else observed >= low)
    below = high is None or (observed < high if kwargs.get("strict_max") else observed <= high)
    return _batch_check(rule, kwargs, bool(above and below), observed)


@dataclass
class _Reuse:
    """Rows whose verdict is taken from the base run, and the rows to check again."""

    base_run: str
    recheck: np.ndarray  # positions in the extract, ascending
    kept: pd.DataFrame  # the base run's flags on unchanged rows: quarantine columns, _index, _row


def _codes(values: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, int]:
    """Each value's number among the distinct values (-1 where null) and how many distinct
    values there are. One hashing pass, which counting and matching then share in numpy
    (a value count plus an ``is_in`` per question would hash the strings again each time)."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()  # one dictionary for every chunk
    encoded = pc.dictionary_encode(values)
    codes = pc.fill_null(encoded.indices, -1).to_numpy(zero_copy_only=False)
    return codes.astype(np.int64), len(encoded.dictionary)


def _counts(codes: np.ndarray, distinct: int) -> np.ndarray:
    """How often each distinct value occurs (nulls not counted); at least one slot, so that
    indexing it with 0 for a null is safe."""
    return np.bincount(codes[codes >= 0], minlength=max(distinct, 1))


def _duplicated(values: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Where a value that is not null occurs more than once."""
    codes, distinct = _codes(values)
    valid = codes >= 0
    return valid & (_counts(codes, distinct)[np.where(valid, codes, 0)] > 1)


def _match_ids(ids: pa.ChunkedArray, old_ids: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """For each row of ``ids``: whether another row has its (non-null) id, and the position
    in ``old_ids`` of its earlier version: -1 when the id is null, not in ``old_ids``, or
    on more than one row on either side. Both sides are hashed together, once."""
    codes, distinct = _codes(pa.chunked_array([*old_ids.chunks, *ids.chunks], type=ids.type))
    old_codes, new_codes = codes[:len(old_ids)], codes[len(old_ids):]
    old_count, new_count = _counts(old_codes, distinct), _counts(new_codes, distinct)
    old_at = np.full(len(old_count), -1, dtype=np.int64)
    old_valid = old_codes >= 0
    old_at[old_codes[old_valid]] = np.flatnonzero(old_valid)
    valid = new_codes >= 0
    safe = np.where(valid, new_codes, 0)
    shared = valid & (new_count[safe] > 1)
    single = valid & ~shared & (old_count[safe] == 1)
    return shared, np.where(single, old_at[safe], -1)


# A later extract keeps most rows in the earlier one's order; below this many rows per run
# of consecutive pairs on average, gathering the rows (take) is cheaper than gluing slices.
_MIN_RUN = 64


def _aligned(
    now: pa.Table, before: pa.Table, rows: np.ndarray, at: np.ndarray
) -> tuple[pa.Table, pa.Table]:
    """The rows ``rows`` of ``now`` and ``at`` of ``before``, pair by pair. Where both sides
    advance one row at a time, the pairs are zero-copy slices: gluing a few thousand slices
    is far cheaper than gathering every value of every column (take)."""
    breaks = np.flatnonzero((np.diff(rows) != 1) | (np.diff(at) != 1)) + 1
    starts = np.concatenate(([0], breaks))
    if len(rows) == 0 or len(starts) * _MIN_RUN > len(rows):  # reordered: gather instead
        return now.take(pa.array(rows, type=pa.int64())), before.take(
            pa.array(at, type=pa.int64()))
    lengths = np.diff(np.append(starts, len(rows))).tolist()
    now_slices, before_slices = [], []
    for row, earlier, length in zip(rows[starts].tolist(), at[starts].tolist(), lengths,
                                    strict=True):
        now_slices.append(now.slice(row, length))
        before_slices.append(before.slice(earlier, length))
    return pa.concat_tables(now_slices), pa.concat_tables(before_slices)


def _unchanged(
    table: pa.Table, old: pa.Table, earlier: np.ndarray, columns: list[str]
) -> np.ndarray:
    """Rows of ``table`` with an earlier version in ``old`` (``earlier``: its position, -1
    none) holding the same values in ``columns`` (null equals null; NaN never equals)."""
    rows = np.flatnonzero(earlier >= 0)
    now, before = _aligned(table.select(columns), old.select(columns), rows, earlier[rows])
    same = np.ones(len(rows), dtype=bool)
    for column in columns:
        a, b = now[column], before[column]
        equal = pc.equal(a, b)  # null where either side is null
        if a.null_count or b.null_count:
            equal = pc.or_kleene(equal, pc.and_(pc.is_null(a), pc.is_null(b)))
        same &= pc.fill_null(equal, False).to_numpy(zero_copy_only=False)
    out = np.zeros(table.num_rows, dtype=bool)
    out[rows[same]] = True
    return out


def _reusable(
    base_dir: Path | None, run_folder: Path, result: RegisterValidation, table: pa.Table,
    shape: _SuiteShape, read: list[str],
) -> _Reuse | str:
    """What can be reused from the base run, or why the register is validated in full.
    ``read``: the extract's columns that validation reads (a verdict depends on no other)."""
    name = result.register
    if base_dir is None:
        return "no earlier run to reuse (first run or full relink)"
    if shape.blocker:
        return shape.blocker
    base = base_dir.name
    if base_dir.resolve() == run_folder.resolve():
        return "the base run is this run"
    summary = _read_summary(base_dir / "validate" / "summary.json") or {}
    entry = (summary.get("registers") or {}).get(name)
    if not entry or entry.get("status") != "passed":
        return f"run {base} has no passed validation of {name}"
    if not entry.get("verdict_key"):
        return f"run {base} was validated by a version that did not record its verdict key"
    if entry.get("verdict_key") != result.verdict_key:
        return (f"the suite, the register's configuration or the validation code changed "
                f"since run {base}")
    before = entry.get("reference_date")
    if not before or before > str(result.reference_date):
        return f"reference date {result.reference_date} is before run {base}'s ({before})"
    try:
        data = (base_dir / "extract" / f"{name}.parquet").read_bytes()
        if hashlib.sha256(data).hexdigest() != entry.get("extract_sha256"):
            return f"run {base}'s extract is not the one it validated"
        parquet = pq.ParquetFile(pa.BufferReader(data))
        old_schema = parquet.schema_arrow
        # Only the columns a verdict reads are compared, so only those are decoded;
        # source_row is brought up to date, not compared; matched ids are equal already.
        compared = [c for c in read if c not in ("source_row", "record_id")]
        old = parquet.read(columns=[c for c in ["record_id", *compared] if c in old_schema.names])
        del parquet, data
        entries = pq.read_table(base_dir / "validate" / "quarantine.parquet")
        entries = entries.filter(pc.fill_null(pc.equal(entries["register"], name), False))
    except (OSError, pa.ArrowInvalid) as exc:
        return f"run {base}'s extract or quarantine cannot be read: {exc}"
    if not old_schema.equals(table.schema, check_metadata=False):
        return f"the extract's columns differ from run {base}'s"
    ids = table["record_id"]
    try:
        shared_ids, earlier = _match_ids(ids, old["record_id"])
        unchanged = _unchanged(table, old, earlier, compared)
    except pa.ArrowNotImplementedError as exc:
        return f"the extract cannot be compared with run {base}'s: {exc}"
    del old
    shared = {"record_id": shared_ids}

    flags = entries.to_pandas(types_mapper=_any_string_types)
    keys = pd.DataFrame(
        [(*key, index) for key, index in shape.entry_index.items()],
        columns=["rule", "column", "severity", "_index"],
    ).astype({"rule": STRING, "column": STRING, "severity": STRING})
    flags = flags.merge(keys, how="left", on=["rule", "column", "severity"], sort=False)
    if flags["_index"].isna().any():
        return f"run {base}'s quarantine does not match the suite"
    flags["_index"] = flags["_index"].astype(np.int64)
    # Quarantined last time, or flagged by a rule that reads more than the row: check again.
    again = (flags["severity"] == "error").to_numpy(dtype=bool, na_value=False) | (
        flags["_index"].isin(list(shape.context)).to_numpy())
    # Each row's and each entry's place among the ids with entries: one probe of the rows
    # against those few ids, rather than a hash table of every row's id. -1: none.
    flag_ids = pa.array(flags["record_id"].tolist(), type=ids.type)
    known = pc.unique(pc.drop_null(flag_ids))
    slots = max(len(known), 1)  # indexed with a clipped -1 too
    row_slot = pc.fill_null(pc.index_in(ids, value_set=known), -1).to_numpy(
        zero_copy_only=False)
    flag_slot = pc.fill_null(pc.index_in(flag_ids, value_set=known), -1).to_numpy(
        zero_copy_only=False)
    marked = np.zeros(slots, dtype=bool)
    marked[flag_slot[again & (flag_slot >= 0)]] = True
    recheck = ~unchanged | ((row_slot >= 0) & marked[np.maximum(row_slot, 0)])
    for column in dict.fromkeys(shape.unique_columns):
        recheck |= shared[column] if column in shared else _duplicated(
            table[column].combine_chunks())

    # The other flags stay, on the row where the record is now (its id is on no other row:
    # a row that is not checked again is unchanged, so its id is unique).
    stays = ~recheck & (row_slot >= 0)
    row_of_slot = np.full(slots, -1, dtype=np.int64)
    row_of_slot[row_slot[stays]] = np.flatnonzero(stays)
    kept_slot = flag_slot[~again]
    at = np.where(kept_slot >= 0, row_of_slot[np.maximum(kept_slot, 0)], -1)
    kept = flags[~again][at >= 0].reset_index(drop=True)
    kept["_row"] = at[at >= 0]
    kept["source_row"] = table["source_row"].take(kept["_row"].to_numpy()).to_numpy()
    kept["source_file"] = pd.Series(
        table["source_file"].take(kept["_row"].to_numpy()).to_pylist(), dtype=STRING)
    return _Reuse(base, np.flatnonzero(recheck), kept)


# --------------------------------------------------------------------------------------------
# One register.


def _values(frame: pd.DataFrame, rule: Rule, rows: np.ndarray) -> pd.Series:
    columns = [rule.value_column] if rule.value_column else rule.column.split(",")
    columns = [c for c in columns if c in frame.columns]
    if not columns:
        return pd.Series(pd.NA, index=range(len(rows)), dtype=STRING)
    parts = []
    for column in columns:
        text = frame[column].iloc[rows].astype(STRING).reset_index(drop=True)
        parts.append(text if len(columns) == 1 else (column + "=" + text.fillna("")))
    value = parts[0]
    for part in parts[1:]:
        value = value + "; " + part
    return value.str.slice(0, VALUE_MAX_CHARS)


def _quarantine_rows(
    frame: pd.DataFrame, run_id: str, register: str, rule: Rule, rows: np.ndarray
) -> pd.DataFrame:
    n = len(rows)
    return pd.DataFrame({
        "run_id": pd.Series([run_id] * n, dtype=STRING),
        "register": pd.Series([register] * n, dtype=STRING),
        "record_id": frame["record_id"].iloc[rows].astype(STRING).reset_index(drop=True),
        "source_row": frame["source_row"].iloc[rows].astype("Int64").reset_index(drop=True),
        "source_file": frame["source_file"].iloc[rows].astype(STRING).reset_index(drop=True),
        "rule": pd.Series([rule.rule] * n, dtype=STRING),
        "column": pd.Series([rule.column] * n, dtype=STRING),
        "value": _values(frame, rule, rows),
        "severity": pd.Series(["error" if rule.action == "quarantine" else "warning"] * n,
                              dtype=STRING),
    })


def _empty_quarantine() -> pd.DataFrame:
    return pd.DataFrame({
        c: pd.Series(dtype="Int64" if c == "source_row" else STRING) for c in QUARANTINE_COLUMNS
    })


def _history_checks(
    result: RegisterValidation, config: RegisterConfig, previous: PreviousCounts | None
) -> None:
    quality = config.quality
    if previous is None:
        return
    result.baseline_run = previous.run_id
    floor = previous.extracted * (1 - quality.max_shrink)
    shrink = 1 - result.extracted / previous.extracted if previous.extracted else 0.0
    result.checks.append(BatchCheck(
        "row_count_shrink", result.extracted >= floor, round(shrink, 4), quality.max_shrink,
        f"{result.extracted:,} rows against {previous.extracted:,} in run {previous.run_id} "
        f"({shrink:.0%} fewer; at most {quality.max_shrink:.0%} allowed)",
    ))
    for column, rate in result.null_rates.items():
        before = previous.null_rates.get(column)
        if before is None:
            continue
        jump = rate - before
        if jump > quality.max_null_rate_increase:
            result.checks.append(BatchCheck(
                f"null_rate_increase:{column}", False, round(jump, 4),
                quality.max_null_rate_increase,
                f"{column} is missing on {rate:.0%} of rows against {before:.0%} in run "
                f"{previous.run_id} (at most +{quality.max_null_rate_increase:.0%} allowed)",
            ))
    if not any(c.check.startswith("null_rate_increase:") for c in result.checks):
        result.checks.append(BatchCheck(
            "null_rate_increase", True, None, quality.max_null_rate_increase,
            f"no canonical column's missing share rose by more than "
            f"{quality.max_null_rate_increase:.0%}",
        ))


def _for_gx(frame: pd.DataFrame, expectations: list[tuple[dict[str, Any], str]]) -> pd.DataFrame:
    """Only the columns the suite names (and those its row conditions mention)."""
    named: set[str] = set()
    conditions = []
    for item, _ in expectations:
        kwargs = item.get("kwargs") or {}
        named.update(str(kwargs[k]) for k in ("column", "column_A", "column_B") if k in kwargs)
        named.update(str(c) for c in kwargs.get("column_list") or [])
        if kwargs.get("row_condition"):
            conditions.append(str(kwargs["row_condition"]))
    named.update(c for c in frame.columns if any(c in text for text in conditions))
    columns = [c for c in frame.columns if c in named]
    return frame[columns]


@dataclass
class _Plan:
    """A register's extract, read and compared with the base run, before its row checks."""

    config: RegisterConfig
    expectations: list[tuple[dict[str, Any], str]]
    result: RegisterValidation
    table: pa.Table | None
    finished: bool = False  # the result is final: no extract, unreadable, columns missing
    columns: pa.Table | None = None  # the extract's columns that validation reads
    frame_columns: list[str] = field(default_factory=list)
    shape: _SuiteShape | None = None
    rows: np.ndarray | None = None  # positions Great Expectations checks row by row
    kept: pd.DataFrame | None = None  # entries kept from the base run; None: full validation
    seconds: float = 0.0

    @property
    def needs_gx(self) -> bool:
        return not self.finished and (self.kept is None or bool(len(self.rows)))


def _plan_register(
    config: RegisterConfig,
    expectations: list[tuple[dict[str, Any], str]],
    extract_path: Path,
    run_id: str,
    base_dir: Path | None,
) -> _Plan:
    """Read one extract and decide which rows GE must check: all of them, or (with
    ``base_dir``, the folder of the run the index is built on) only those whose verdict
    may have changed (module docstring)."""
    started = time.perf_counter()
    name = config.name
    result = RegisterValidation(register=name)
    plan = _Plan(config, expectations, result, None, finished=True)
    if not extract_path.is_file():
        result.checks.append(BatchCheck(
            "extract_present", False, message=f"no extract {extract_path}; run `reglink "
            f"extract --register {name}` for this run, or validate other registers with "
            "--register",
        ))
        return plan
    try:
        data = extract_path.read_bytes()
        table = pq.read_table(pa.BufferReader(data))
    except (pa.ArrowInvalid, OSError) as exc:
        result.checks.append(BatchCheck("extract_readable", False,
                                        message=f"{extract_path}: cannot be read: {exc}"))
        return plan
    result.extract_sha256 = hashlib.sha256(data).hexdigest()
    del data
    plan.table = table
    n = result.extracted = table.num_rows
    missing = [c for c in (*CANONICAL_COLUMNS, "source_file") if c not in table.column_names]
    if missing:
        result.checks.append(BatchCheck(
            "column_present", False, missing,
            message=f"{extract_path} lacks canonical column(s) {', '.join(missing)}; re-run "
            "`reglink extract` for this run",
        ))
        return plan
    wanted = [*CANONICAL_COLUMNS, "source_file"]
    wanted += [f"src.{c}" for canonical in ("birth_date", "death_date")
               if canonical in config.columns
               for c in config.columns[canonical].native_columns()]
    wanted = [c for c in dict.fromkeys(wanted) if c in table.column_names]
    result.reference_date = reference_date(run_id, extract_path)
    result.verdict_key = verdict_key(config, expectations)
    result.null_rates = _null_rates(table)
    columns = table.select(wanted)
    frame_columns = list(add_check_columns(
        _frame_of(columns.slice(0, 0), columns), config, result.reference_date).columns)
    shape = _suite_shape(expectations, frame_columns, table.column_names)

    reuse = _reusable(base_dir, extract_path.parent.parent, result, table, shape, wanted)
    if isinstance(reuse, _Reuse):
        result.mode, result.reused_from = "incremental", reuse.base_run
        plan.rows, plan.kept = reuse.recheck, reuse.kept
    else:
        result.mode_reason = reuse
        plan.rows = np.arange(n, dtype=np.int64)
    result.rows_checked = len(plan.rows)
    plan.finished, plan.columns, plan.frame_columns, plan.shape = (
        False, columns, frame_columns, shape)
    plan.seconds = time.perf_counter() - started
    return plan


def _read_order(names: list[str], extract_dir: Path) -> list[str]:
    """The order registers are read (on the worker thread) and checked (on this one), so
    that checks wait for reads as little as possible: the smallest extract first, its plan
    soon telling whether GE is needed; then by size, so that the small registers are checked
    while the large ones are read. The largest comes second to last, so that writing its
    passed rows (on a worker thread) overlaps the last check; or second, when GE is not
    imported yet, so that its read overlaps the import (seconds) instead of following it.

    Measured at 1M persons, nightly, with GE imported: 11.3 s when only the smallest came
    first, 10.9 and 10.2 s by size, 10.0 and 9.0 s with the largest second to last; without
    GE imported: 10.5 s, 11.5 s by size, 10.8 s with the largest second."""
    def size(name: str) -> int:
        path = extract_dir / f"{name}.parquet"
        return path.stat().st_size if path.is_file() else 0

    order = sorted(names, key=lambda name: (size(name), names.index(name)))
    if "great_expectations" not in sys.modules and len(order) > 2:
        order.insert(1, order.pop())
    elif len(order) > 2:
        order.insert(len(order) - 2, order.pop())
    return order


def _plan_ahead(
    gx: _LazyGx, config: RegisterConfig, expectations: list[tuple[dict[str, Any], str]],
    extract_path: Path, run_id: str, base_dir: Path | None,
) -> _Plan:
    """:func:`_plan_register` on a worker thread; when the register needs GE, its import
    starts at once, in the background."""
    plan = _plan_register(config, expectations, extract_path, run_id, base_dir)
    if plan.needs_gx:
        gx.start_import()
    return plan


def _check_register(
    gx: _LazyGx, plan: _Plan, run_id: str, previous: PreviousCounts | None
) -> tuple[RegisterValidation, pd.DataFrame, np.ndarray | None, pa.Table | None]:
    """Check the planned rows; (result, quarantine rows, passed mask, the extract as Arrow).
    Batch-level checks and counts are over the whole extract."""
    started = time.perf_counter()
    result, table = plan.result, plan.table
    if plan.finished:
        result.seconds = round(plan.seconds, 3)
        return result, _empty_quarantine(), None, table
    assert table is not None and plan.columns is not None and plan.shape is not None
    config, expectations, name, n = plan.config, plan.expectations, result.register, len(table)
    rows, kept, shape, frame_columns = plan.rows, plan.kept, plan.shape, plan.frame_columns
    assert rows is not None
    columns = plan.columns
    frame = _frame_of(columns if kept is None else columns.take(rows), columns)
    frame = add_check_columns(frame, config, result.reference_date)

    checks: list[tuple[int, BatchCheck]] = []
    pieces = [kept] if kept is not None and len(kept) else []
    if kept is None or len(rows):
        context = gx.get()
        suite = context.suite(name, expectations, None if kept is None else shape.row_level)
        validation = context.run(name, suite, _for_gx(frame, expectations), run_id)
        for item in validation.results:
            meta = item.expectation_config.meta or {}
            index = int(meta.get("index", 0))
            rule = _rule_of(
                {"meta": meta, "kwargs": dict(item.expectation_config.kwargs),
                 "type": item.expectation_config.type},
                str(meta.get("suite", "")),
            )
            problem = _exception(item)
            if problem is not None:
                checks.append((index, BatchCheck(
                    f"expectation:{rule.rule}", False, message=f"{rule.suite}: expectation "
                    f"{item.expectation_config.type} on {rule.column or 'the table'} could not "
                    f"run: {problem}",
                )))
                continue
            if rule.level == "batch":
                checks.append((index, _batch_check(
                    rule, item.expectation_config.kwargs, bool(item.success),
                    item.result.get("observed_value"),
                )))
                continue
            failing = np.sort(np.asarray(item.result.get("unexpected_index_list") or [],
                                         dtype=np.int64))
            if item.success or len(failing) == 0:
                continue
            piece = _quarantine_rows(frame, run_id, name, rule, failing)
            piece["_index"] = index
            piece["_row"] = rows[failing]
            pieces.append(piece)
    if kept is not None:  # the batch-level expectations, over the whole extract
        for index in sorted(shape.batch_level):
            checks.append((index, _native_batch_check(
                expectations[index][0], shape.rules[index], n, frame_columns, table)))
    checks.sort(key=lambda pair: pair[0])
    result.checks = [check for _, check in checks]

    entries = (pd.concat(pieces, ignore_index=True) if pieces
               else _empty_quarantine().assign(_index=pd.Series(dtype=np.int64),
                                               _row=pd.Series(dtype=np.int64)))
    entries = entries.sort_values(["_index", "_row"], kind="stable", ignore_index=True)
    entries["run_id"] = pd.Series([run_id] * len(entries), dtype=STRING)
    error = (entries["severity"] == "error").to_numpy(dtype=bool, na_value=False)
    at = entries["_row"].to_numpy(dtype=np.int64)
    quarantined = np.zeros(n, dtype=bool)
    quarantined[at[error]] = True
    flagged = np.zeros(n, dtype=bool)
    flagged[at[~error]] = True
    for index, count in entries["_index"].value_counts().sort_index().items():
        rule = shape.rules[int(index)].rule
        result.rules[rule] = result.rules.get(rule, 0) + int(count)

    result.quarantined = int(quarantined.sum())
    result.flagged = int((flagged & ~quarantined).sum())
    result.passed = n - result.quarantined
    share = result.quarantined / n if n else 0.0
    max_q = config.quality.max_quarantined
    result.checks.append(BatchCheck(
        "quarantined_share", share <= max_q, round(share, 4), max_q,
        f"{result.quarantined:,} of {n:,} rows quarantined ({share:.1%}; at most {max_q:.0%} "
        "allowed): the extract or its configuration is likely wrong",
    ))
    for column in config.quality.required_columns:
        present = _non_null(table[column]) if column in frame_columns else 0
        result.checks.append(BatchCheck(
            f"required_column:{column}", n == 0 or present > 0, present, "> 0",
            f"required column {column} is missing on every row: check columns.{column} in "
            f"{config.path}",
        ))
    _history_checks(result, config, previous)
    quarantine = entries[list(QUARANTINE_COLUMNS)]
    result.seconds = round(plan.seconds + time.perf_counter() - started, 3)
    return result, quarantine, ~quarantined, table


# --------------------------------------------------------------------------------------------
# The run.


def _write_parquet(table: pa.Table, path: Path) -> None:
    partial = path.with_name(path.name + ".partial")
    try:
        pq.write_table(table, partial, compression="zstd")
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def _write_json(data: dict[str, Any], path: Path) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n",
                       encoding="utf-8")
    os.replace(partial, path)


def _write_passed(table: pa.Table, mask: np.ndarray, path: Path,
                  extract: tuple[Path, str] | None = None) -> int:
    """Write the rows of ``table`` that ``mask`` keeps. ``extract``: the file ``table`` was
    read from and its SHA-256; when every row passed, the file is copied instead of encoded
    again (a register with nothing quarantined: about 2 s of CPU saved per million rows)."""
    if extract is not None and bool(mask.all()):
        source, sha256 = extract
        shutil.copyfile(source, path)
        with path.open("rb") as copied:  # the very file that was validated
            if hashlib.file_digest(copied, "sha256").hexdigest() == sha256:
                return table.num_rows
    passed = table.filter(pa.array(mask))
    # As extracts are written: standardise, consistency and the next run's validation read
    # these files, and LZ4 reads back 2-3x faster than zstd (civil at 1M: 0.6 s, not 1.4 s).
    pq.write_table(passed, path, **extract_parquet_options(passed))
    return passed.num_rows


class _PassedFiles:
    """Each register's passed rows, filtered and encoded on worker threads while the next
    registers are checked (Arrow releases the GIL). A file is written beside its final name
    and put in place by ``publish``, once the run is known to have passed; on leaving, any
    file not published is removed."""

    def __init__(self, out_dir: Path):
        self.out_dir = out_dir
        self.pool = ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1),
                                       thread_name_prefix="validate-write")
        self.pending: dict[str, Future[int]] = {}

    def _partial(self, name: str) -> Path:
        return self.out_dir / f"{name}.parquet.partial"

    def write(self, name: str, table: pa.Table, mask: np.ndarray,
              extract: tuple[Path, str] | None = None) -> None:
        self.pending[name] = self.pool.submit(_write_passed, table, mask, self._partial(name),
                                              extract)

    def rows(self, name: str) -> int | None:
        """The passed rows written for ``name`` (None: nothing to write)."""
        future = self.pending.get(name)
        return None if future is None else future.result()

    def publish(self) -> None:
        for name, future in self.pending.items():
            future.result()
            os.replace(self._partial(name), self.out_dir / f"{name}.parquet")

    def __enter__(self) -> _PassedFiles:
        return self

    def __exit__(self, *exc: object) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        for name in self.pending:
            self._partial(name).unlink(missing_ok=True)


def _breaker_message(run_id: str, failed: list[RegisterValidation]) -> str:
    lines = [f"run {run_id}: validation stopped the run before linking (circuit breaker); "
             "nothing is published:"]
    for result in failed:
        for check in result.failures():
            lines.append(f"  register {result.register}: {check.check}: {check.message}")
        if not result.conservation_ok:
            lines.append(
                f"  register {result.register}: row_conservation: extracted {result.extracted:,}"
                f" != passed {result.passed:,} + quarantined {result.quarantined:,}"
            )
    lines.append("Fix the extract (or the threshold under quality: in the register's "
                 "configuration), re-run `reglink extract` and `reglink validate`.")
    return "\n".join(lines)


def validate_run(
    data_dir: str | Path,
    run_id: str,
    configs: dict[str, RegisterConfig],
    *,
    config_dir: str | Path = "config",
    registers: list[str] | None = None,
    data_docs: bool = True,
    progress: bool = False,
    previous_run_dir: str | Path | None = None,
) -> RunValidation:
    """Validate the extracts of run ``run_id`` and write ``runs/<run_id>/validate/``.

    Args:
        data_dir: folder holding ``runs/``.
        run_id: the run to validate.
        configs: register configurations by name.
        config_dir: the config folder (suites may live in ``<config>/expectations/``).
        registers: validate only these (default: every configured register).
        data_docs: build Great Expectations Data Docs.
        progress: show progress on stderr (only when it is a terminal).
        previous_run_dir: the folder of the run the index is built on; its verdicts are
            reused for rows that did not change (module docstring). None: check every row.

    Returns:
        The run's validation; its status is ``passed`` only when every configured register
        has been validated in this run and none failed.

    Raises:
        CircuitBreakerError: a batch-level check failed or rows were not conserved; the
            summary (status failed), quarantine and Data Docs are written, the passed files
            are not.
        ConfigError: a suite file is invalid.
    """
    timings: dict[str, float] = {}
    started = time.perf_counter()
    run_folder = Path(data_dir) / "runs" / run_id
    out_dir = run_folder / "validate"
    out_dir.mkdir(parents=True, exist_ok=True)
    names = list(dict.fromkeys(registers or sorted(configs)))

    canonical_path = suite_path(CANONICAL_SUITE, config_dir)
    canonical = (
        [(e, str(canonical_path)) for e in load_suite(canonical_path)] if canonical_path else []
    )
    suites: dict[str, list[tuple[dict[str, Any], str]]] = {}
    for name in names:
        own_path = suite_path(name, config_dir, configs[name].quality.suite)
        own = [(e, str(own_path)) for e in load_suite(own_path)] if own_path else []
        suites[name] = canonical + own

    t0 = time.perf_counter()
    # GE needs an absolute folder for its site; the data folder is often relative (data/).
    docs_dir = (out_dir / "data_docs").resolve() if data_docs else None
    shutil.rmtree(out_dir / "data_docs", ignore_errors=True)  # a re-run replaces the pages
    gx = _LazyGx(docs_dir)
    base_dir = Path(previous_run_dir) if previous_run_dir is not None else None

    results: dict[str, RegisterValidation] = {}
    quarantines: dict[str, pd.DataFrame] = {}
    order = _read_order(names, run_folder / "extract")
    bar = tqdm(order, desc="validate", unit="register", file=sys.stderr, leave=False,
               disable=None if progress else True)
    with _PassedFiles(out_dir) as passed_files:
        # Registers are read and compared (Arrow: releases the GIL) on a worker thread ahead
        # of the row checks on this thread (GE: mostly Python), so that on two cores neither
        # waits for the other; once a register needs GE, its import (seconds) starts there.
        planner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="validate-read")
        try:
            extracts = {name: run_folder / "extract" / f"{name}.parquet" for name in order}
            plans = {name: planner.submit(_plan_ahead, gx, configs[name], suites[name],
                                          extracts[name], run_id, base_dir)
                     for name in order}
            for name in bar:
                bar.set_postfix_str(name)
                previous = previous_successful_counts(data_dir, name, run_id)
                result, quarantine, mask, table = _check_register(
                    gx, plans.pop(name).result(), run_id, previous)
                results[name] = result
                quarantines[name] = quarantine
                if mask is not None and table is not None:
                    passed_files.write(name, table, mask, (
                        extracts[name], result.extract_sha256) if result.extract_sha256 else None)
                log.info(
                    "validate %s: %d extracted, %d passed, %d quarantined, %d flagged; %s, %d "
                    "rows checked (%.1f s)", name, result.extracted, result.passed,
                    result.quarantined, result.flagged, result.mode, result.rows_checked,
                    result.seconds,
                )
                if result.mode_reason and base_dir is not None:
                    log.info("validate %s: every row checked: %s", name, result.mode_reason)
        finally:
            planner.shutdown(wait=True, cancel_futures=True)
        results = {name: results[name] for name in names if name in results}  # config order
        timings["ge_setup"] = gx.setup_seconds
        timings["registers"] = round(time.perf_counter() - t0 - timings["ge_setup"], 3)

        # Row conservation, on what is about to be written: extracted = passed + quarantined.
        t1 = time.perf_counter()
        for name, result in results.items():
            passed = passed_files.rows(name)
            if passed is None:
                continue
            result.conservation_ok = result.extracted == passed + result.quarantined
            result.passed = passed

        failed = [r for r in results.values() if not r.ok]
        summary_path = out_dir / "summary.json"
        earlier = _read_summary(summary_path) or {}
        entries = {k: v for k, v in (earlier.get("registers") or {}).items() if k in configs}
        entries.update({k: v.to_json() for k, v in results.items()})
        if any(v.get("status") != "passed" for v in entries.values()):
            status = "failed"
        elif set(configs) <= set(entries):
            status = "passed"
        else:
            status = "incomplete"

        quarantine_path = out_dir / "quarantine.parquet"
        keep = []
        if quarantine_path.is_file():
            old = pd.read_parquet(quarantine_path)
            keep.append(old[~old["register"].isin(list(results))])
        combined = pd.concat([*keep, *(quarantines[n] for n in names if n in quarantines)],
                             ignore_index=True)
        combined = combined.astype({c: STRING for c in QUARANTINE_COLUMNS if c != "source_row"})
        combined["source_row"] = combined["source_row"].astype("Int64")
        _write_parquet(pa.Table.from_pandas(combined, preserve_index=False), quarantine_path)

        # A failed run publishes nothing: no passed file of this run may be left for linking.
        for path in out_dir.glob("*.parquet"):
            if path.stem in configs and (status == "failed" or path.stem in results):
                path.unlink()
        if status != "failed":
            passed_files.publish()
    timings["write"] = round(time.perf_counter() - t1, 3)

    t2 = time.perf_counter()
    docs_index = gx.build_docs()
    timings["data_docs"] = round(time.perf_counter() - t2, 3)
    timings["total"] = round(time.perf_counter() - started, 3)
    incremental = [k for k, v in results.items() if v.mode == "incremental"]
    _write_json(
        {
            "run_id": run_id,
            "status": status,
            "validated_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "data_docs": str(docs_index.relative_to(out_dir.resolve())) if docs_index else None,
            "data_docs_scope": (
                "every row" if not incremental else
                f"incremental for {', '.join(incremental)}: the row-level expectations over "
                "the rows checked in this run (rows_checked; new, changed and previously "
                "quarantined rows), not the whole extract; the batch checks over the whole "
                "extract are in this summary"
            ),
            "quarantine": quarantine_path.name,
            "registers": entries,
            "seconds": timings,
        },
        summary_path,
    )
    if failed:
        raise CircuitBreakerError(_breaker_message(run_id, failed))
    return RunValidation(run_id, status, results, out_dir, docs_index, timings)


def require_validated(run_folder: str | Path) -> Path:
    """The ``validate/`` folder of a run whose validation passed; later steps call this.

    Raises:
        ValidationError: the run was not validated, failed, or is incomplete.
    """
    run_folder = Path(run_folder)
    summary = _read_summary(run_folder / "validate" / "summary.json")
    if summary is None:
        raise ValidationError(
            f"run {run_folder.name} has not been validated; run `reglink validate --run-id "
            f"{run_folder.name}` first"
        )
    if summary.get("status") != "passed":
        failed = [k for k, v in (summary.get("registers") or {}).items()
                  if v.get("status") != "passed"]
        detail = f" (failed: {', '.join(failed)})" if failed else ""
        raise ValidationError(
            f"run {run_folder.name}: validation is {summary.get('status')}{detail}; it cannot "
            f"be linked. See {run_folder / 'validate' / 'summary.json'}"
        )
    return run_folder / "validate"
