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
"""

from __future__ import annotations

import copy
import html
import json
import logging
import os
import re
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from matching.pin import valid_pin_mask
from pipelines.errors import CircuitBreakerError, ConfigError, ValidationError
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

    def suite(self, name: str, expectations: list[tuple[dict[str, Any], str]]) -> Any:
        domain = []
        for i, (item, source) in enumerate(expectations):
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
        a wide extract), and the results are merged into one suite result.
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
                self.suite_class(name=name, expectations=[copy.copy(e) for e in expectations])
            )
            batch_id = part.batch_id
            results.extend(part.results)
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


def _null_rates(frame: pd.DataFrame) -> dict[str, float]:
    n = len(frame)
    columns = [c for c in CANONICAL_COLUMNS if c in frame.columns]
    if n == 0:
        return dict.fromkeys(columns, 0.0)
    counts = frame[columns].isna().sum()
    return {c: round(float(counts[c]) / n, 6) for c in columns}


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


def _validate_register(
    gx: _Gx,
    config: RegisterConfig,
    expectations: list[tuple[dict[str, Any], str]],
    extract_path: Path,
    run_id: str,
    previous: PreviousCounts | None,
) -> tuple[RegisterValidation, pd.DataFrame, np.ndarray | None, pa.Table | None]:
    """Validate one extract: (result, quarantine rows, passed mask, the extract as Arrow)."""
    started = time.perf_counter()
    name = config.name
    result = RegisterValidation(register=name)
    if not extract_path.is_file():
        result.checks.append(BatchCheck(
            "extract_present", False, message=f"no extract {extract_path}; run `reglink "
            f"extract --register {name}` for this run, or validate other registers with "
            "--register",
        ))
        return result, _empty_quarantine(), None, None
    try:
        table = pq.read_table(extract_path)
    except (pa.ArrowInvalid, OSError) as exc:
        result.checks.append(BatchCheck("extract_readable", False,
                                        message=f"{extract_path}: cannot be read: {exc}"))
        return result, _empty_quarantine(), None, None
    result.extracted = table.num_rows
    missing = [c for c in (*CANONICAL_COLUMNS, "source_file") if c not in table.column_names]
    if missing:
        result.checks.append(BatchCheck(
            "column_present", False, missing,
            message=f"{extract_path} lacks canonical column(s) {', '.join(missing)}; re-run "
            "`reglink extract` for this run",
        ))
        return result, _empty_quarantine(), None, table
    wanted = [*CANONICAL_COLUMNS, "source_file"]
    wanted += [f"src.{c}" for canonical in ("birth_date", "death_date")
               if canonical in config.columns
               for c in config.columns[canonical].native_columns()]
    wanted = [c for c in dict.fromkeys(wanted) if c in table.column_names]
    frame = table.select(wanted).to_pandas(
        types_mapper=lambda t: STRING if pa.types.is_string(t) else None
    )
    frame = add_check_columns(frame, config, reference_date(run_id, extract_path))
    result.null_rates = _null_rates(frame)

    suite = gx.suite(name, expectations)
    validation = gx.run(name, suite, _for_gx(frame, expectations), run_id)
    n = len(frame)
    quarantined = np.zeros(n, dtype=bool)
    flagged = np.zeros(n, dtype=bool)
    pieces = []
    for item in validation.results:
        meta = item.expectation_config.meta or {}
        rule = _rule_of(
            {"meta": meta, "kwargs": dict(item.expectation_config.kwargs),
             "type": item.expectation_config.type},
            str(meta.get("suite", "")),
        )
        problem = _exception(item)
        if problem is not None:
            result.checks.append(BatchCheck(
                f"expectation:{rule.rule}", False, message=f"{rule.suite}: expectation "
                f"{item.expectation_config.type} on {rule.column or 'the table'} could not run: "
                f"{problem}",
            ))
            continue
        if rule.level == "batch":
            observed = item.result.get("observed_value")
            kwargs = item.expectation_config.kwargs
            threshold = {k: kwargs[k] for k in ("min_value", "max_value") if k in kwargs} or None
            where = f" {rule.column}" if rule.column else ""
            result.checks.append(BatchCheck(
                f"{rule.rule}" + (f":{rule.column}" if rule.column else ""), bool(item.success),
                observed if isinstance(observed, int | float | str | None) else str(observed),
                threshold,
                f"{rule.suite}: {rule.rule}{where}: observed {observed}, expected {threshold}"
                if not item.success else "",
            ))
            continue
        rows = np.asarray(item.result.get("unexpected_index_list") or [], dtype=np.int64)
        if item.success or len(rows) == 0:
            continue
        result.rules[rule.rule] = result.rules.get(rule.rule, 0) + len(rows)
        (quarantined if rule.action == "quarantine" else flagged)[rows] = True
        pieces.append(_quarantine_rows(frame, run_id, name, rule, rows))

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
        present = int(frame[column].notna().sum()) if column in frame.columns else 0
        result.checks.append(BatchCheck(
            f"required_column:{column}", n == 0 or present > 0, present, "> 0",
            f"required column {column} is missing on every row: check columns.{column} in "
            f"{config.path}",
        ))
    _history_checks(result, config, previous)
    quarantine = pd.concat(pieces, ignore_index=True) if pieces else _empty_quarantine()
    result.seconds = round(time.perf_counter() - started, 3)
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
    gx = _Gx(docs_dir)
    timings["ge_setup"] = round(time.perf_counter() - t0, 3)

    results: dict[str, RegisterValidation] = {}
    quarantines: list[pd.DataFrame] = []
    passed_tables: dict[str, pa.Table] = {}
    bar = tqdm(names, desc="validate", unit="register", file=sys.stderr, leave=False,
               disable=None if progress else True)
    for name in bar:
        bar.set_postfix_str(name)
        previous = previous_successful_counts(data_dir, name, run_id)
        result, quarantine, mask, table = _validate_register(
            gx, configs[name], suites[name], run_folder / "extract" / f"{name}.parquet",
            run_id, previous,
        )
        results[name] = result
        quarantines.append(quarantine)
        if mask is not None and table is not None:
            passed_tables[name] = table.filter(pa.array(mask))
        log.info(
            "validate %s: %d extracted, %d passed, %d quarantined, %d flagged (%.1f s)",
            name, result.extracted, result.passed, result.quarantined, result.flagged,
            result.seconds,
        )
    timings["registers"] = round(time.perf_counter() - t0 - timings["ge_setup"], 3)

    # Row conservation, on what is about to be written: extracted = passed + quarantined.
    for name, result in results.items():
        table = passed_tables.get(name)
        if table is None:
            continue
        passed = table.num_rows
        result.conservation_ok = result.extracted == passed + result.quarantined
        result.passed = passed

    t1 = time.perf_counter()
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
    combined = pd.concat([*keep, *quarantines], ignore_index=True)
    combined = combined.astype({c: STRING for c in QUARANTINE_COLUMNS if c != "source_row"})
    combined["source_row"] = combined["source_row"].astype("Int64")
    _write_parquet(pa.Table.from_pandas(combined, preserve_index=False), quarantine_path)

    # A failed run publishes nothing: no passed file of this run may be left for linking.
    for path in out_dir.glob("*.parquet"):
        if path.stem in configs and (status == "failed" or path.stem in results):
            path.unlink()
    if status != "failed":
        for name, table in passed_tables.items():
            _write_parquet(table, out_dir / f"{name}.parquet")
    timings["write"] = round(time.perf_counter() - t1, 3)

    t2 = time.perf_counter()
    docs_index = gx.build_docs()
    timings["data_docs"] = round(time.perf_counter() - t2, 3)
    timings["total"] = round(time.perf_counter() - started, 3)
    _write_json(
        {
            "run_id": run_id,
            "status": status,
            "validated_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "data_docs": str(docs_index.relative_to(out_dir.resolve())) if docs_index else None,
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
