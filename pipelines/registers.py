"""Register configuration: ``config/registers/<register>.yaml`` loaded into typed objects.

The format is documented for users in README.md (section Register configuration). Every
problem in a file is collected and raised once as a :class:`~pipelines.errors.ConfigError`
whose lines each name the file and the key path (``columns.birth_date.format``), so a data
steward can fix the whole file in one pass.
"""

from __future__ import annotations

import codecs
import difflib
import glob
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from pipelines.errors import ConfigError

__all__ = [
    "BOOLEAN_COLUMNS",
    "CANONICAL_COLUMNS",
    "DATE_COLUMNS",
    "MAPPABLE_COLUMNS",
    "TEXT_COLUMNS",
    "ColumnSpec",
    "ComposeSpec",
    "FileSource",
    "IncrementalSpec",
    "PostgresSource",
    "QualityConfig",
    "RegisterConfig",
    "SplitSpec",
    "load_register_config",
    "load_register_configs",
]

# The canonical record, in output order (docs/canonical-schema.md).
CANONICAL_COLUMNS: tuple[str, ...] = (
    "register",
    "record_id",
    "source_row",
    "record_type",
    "pin",
    "surname",
    "given_name",
    "patronymic",
    "sex",
    "birth_date",
    "birth_date_quality",
    "death_date",
    "father_name",
    "mother_name",
    "region",
    "district",
    "locality",
    "address",
    "phone",
    "is_deceased",
    "voter_active",
    "pension_active",
    "source_updated_at",
)
# Filled by extract itself, never mapped from a native column.
DERIVED_COLUMNS: tuple[str, ...] = ("register", "source_row", "birth_date_quality")
DATE_COLUMNS: tuple[str, ...] = ("birth_date", "death_date")
TIMESTAMP_COLUMNS: tuple[str, ...] = ("source_updated_at",)
BOOLEAN_COLUMNS: tuple[str, ...] = ("is_deceased", "voter_active", "pension_active")
MAPPABLE_COLUMNS: tuple[str, ...] = tuple(c for c in CANONICAL_COLUMNS if c not in DERIVED_COLUMNS)
TEXT_COLUMNS: tuple[str, ...] = tuple(
    c
    for c in MAPPABLE_COLUMNS
    if c not in DATE_COLUMNS + TIMESTAMP_COLUMNS + BOOLEAN_COLUMNS
)
SEX_VALUES = ("M", "F")

# Directives pandas.to_datetime understands with an explicit format.
_FORMAT_DIRECTIVES = set("aAbBdHIjmMpSfyYzZ%")
_YEAR_DIRECTIVES = {"Y", "y"}
_REGISTER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
_ENV_REF = re.compile(r"\$\{([^}]*)\}")

# A literal type built from the tuple itself, so the two can never disagree.
MappableColumn = Literal[MAPPABLE_COLUMNS]  # type: ignore[valid-type]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _native_name(value: Any) -> Any:
    # header: false names columns "1", "2", ...; YAML reads an unquoted 3 as an int.
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


def _check_date_format(fmt: str) -> str:
    directives = re.findall(r"%(.)", fmt.replace("%%", ""))
    bad = sorted({d for d in directives if d not in _FORMAT_DIRECTIVES})
    if bad or fmt.rstrip().endswith("%") and not fmt.endswith("%%"):
        shown = ", ".join(f"%{d}" for d in bad) or "a lone %"
        raise ValueError(
            f"{fmt!r} is not a valid date format ({shown} is not a strptime directive); "
            'use e.g. "%d.%m.%Y" or "%Y-%m-%d"'
        )
    if not _YEAR_DIRECTIVES & set(directives):
        raise ValueError(f"date format {fmt!r} has no year (%Y or %y)")
    return fmt


class ComposeSpec(_Strict):
    """A date built from separate day, month and year columns (day and month optional)."""

    year: str
    month: str | None = None
    day: str | None = None

    @field_validator("year", "month", "day", mode="before")
    @classmethod
    def _names(cls, value: Any) -> Any:
        return _native_name(value)

    def native_columns(self) -> list[str]:
        return [c for c in (self.day, self.month, self.year) if c is not None]


class ColumnSpec(_Strict):
    """How one canonical column is taken from the extract.

    ``columns: {record_id: CERT_NO}`` is shorthand for ``{column: CERT_NO}``.
    """

    column: str | None = None
    compose: ComposeSpec | None = None
    codes: dict[str, str | bool | None] | None = None
    unknown: Literal["missing", "keep"] = "missing"
    format: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        data = _native_name(data)
        if isinstance(data, str):
            return {"column": data}
        if data is None:
            raise ValueError("empty; give a native column name or a mapping with `column:`")
        return data

    @field_validator("column", mode="before")
    @classmethod
    def _column_name(cls, value: Any) -> Any:
        return _native_name(value)

    @field_validator("codes", mode="before")
    @classmethod
    def _code_keys(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            raise ValueError(
                "expected a mapping of native code to canonical value, e.g. {\"М\": M, \"Ж\": F}"
            )
        keys: dict[str, Any] = {}
        for key, canonical in value.items():
            if isinstance(key, bool) or key is None:
                raise ValueError(
                    f"a code YAML read as {key!r}: YAML reads unquoted yes/no/on/off/true/false/"
                    'null as booleans; quote the native code, e.g. "Y": true'
                )
            # An unquoted numeric code: YAML gives an int; the extract holds text.
            keys[str(key)] = canonical
        return keys

    @field_validator("format")
    @classmethod
    def _valid_format(cls, value: str | None) -> str | None:
        return None if value is None else _check_date_format(value)

    @model_validator(mode="after")
    def _one_source(self) -> ColumnSpec:
        if (self.column is None) == (self.compose is None):
            raise ValueError("give exactly one of `column:` or `compose:`")
        if self.compose is not None and self.codes is not None:
            raise ValueError("`codes:` cannot be used with `compose:`")
        return self

    def native_columns(self) -> list[str]:
        if self.compose is not None:
            return self.compose.native_columns()
        return [self.column] if self.column is not None else []


class SplitSpec(_Strict):
    """A full-name column split on whitespace into two or three canonical parts."""

    column: str
    into: Annotated[list[MappableColumn], Field(min_length=2, max_length=3)]

    @field_validator("column", mode="before")
    @classmethod
    def _column_name(cls, value: Any) -> Any:
        return _native_name(value)


class IncrementalSpec(_Strict):
    """``source.incremental``: extract only the rows changed since the last published run.

    ``watermark_column`` is the native column holding each row's last-change time; it is
    mapped to the canonical ``source_updated_at`` (implicitly when that is not mapped).
    """

    watermark_column: str

    @field_validator("watermark_column", mode="before")
    @classmethod
    def _column_name(cls, value: Any) -> Any:
        return _native_name(value)


class FileSource(_Strict):
    """CSV or Parquet file(s); ``path`` may be a glob and may use ``${VAR}``."""

    kind: Literal["file"]
    path: str
    format: Literal["csv", "parquet"] | None = None
    encoding: str = "utf-8"
    delimiter: str = ","
    header: bool = True
    incremental: IncrementalSpec | None = None

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        try:
            codecs.lookup(value)
        except LookupError:
            raise ValueError(
                f"unknown encoding {value!r}; use a Python codec name such as utf-8, cp1251, "
                "koi8-r, utf-16"
            ) from None
        return value

    @field_validator("delimiter")
    @classmethod
    def _one_char(cls, value: str) -> str:
        if len(value) != 1:
            raise ValueError(f'delimiter must be one character, got {value!r} (tab: "\\t")')
        return value

    @property
    def file_format(self) -> str:
        """The declared format, else guessed from the path: ``.parquet``/``.pq`` or csv."""
        if self.format is not None:
            return self.format
        return "parquet" if self.path.lower().endswith((".parquet", ".pq")) else "csv"


class PostgresSource(_Strict):
    """A PostgreSQL table or query; the URL comes from an environment variable."""

    kind: Literal["postgres"]
    table: str | None = None
    query: str | None = None
    connection_env: str = "REGLINK_SOURCE_URL"
    incremental: IncrementalSpec | None = None

    @model_validator(mode="after")
    def _table_or_query(self) -> PostgresSource:
        if (self.table is None) == (self.query is None):
            raise ValueError("give exactly one of `table:` or `query:`")
        return self


Share = Annotated[float, Field(ge=0, le=1)]


class QualityConfig(_Strict):
    """Data-quality thresholds of a register (docs/data-quality.md).

    ``suite`` is a Great Expectations suite file; a relative path is looked up in the
    config folder, then in the repository's ``expectations/``.
    """

    max_shrink: Share = 0.2
    max_null_rate_increase: Share = 0.2
    max_quarantined: Share = 0.1
    required_columns: list[MappableColumn] = Field(default_factory=list)
    suite: str | None = None


class RegisterConfig(_Strict):
    """One register's configuration. ``name`` is the file's stem; ``path`` the file."""

    description: str | None = None
    source: Annotated[FileSource | PostgresSource, Field(discriminator="kind")]
    columns: dict[MappableColumn, ColumnSpec] = Field(default_factory=dict)
    split: list[SplitSpec] = Field(default_factory=list)
    trust: dict[MappableColumn, Annotated[int, Field(ge=1)]] = Field(default_factory=dict)
    quality: QualityConfig = Field(default_factory=QualityConfig)

    _name: str = PrivateAttr(default="")
    _path: Path = PrivateAttr(default=Path())

    @model_validator(mode="before")
    @classmethod
    def _watermark_is_source_updated_at(cls, data: Any) -> Any:
        # The watermark column is what publish advances the watermark from, so it must
        # reach the canonical source_updated_at; map it there when the file does not.
        if not isinstance(data, dict) or not isinstance(data.get("source"), dict):
            return data
        incremental = data["source"].get("incremental")
        if not isinstance(incremental, dict) or "watermark_column" not in incremental:
            return data
        columns = data.get("columns")
        if columns is None:
            columns = {}
        if isinstance(columns, dict) and "source_updated_at" not in columns:
            data = {**data, "columns": {**columns,
                                        "source_updated_at": incremental["watermark_column"]}}
        return data

    @property
    def incremental(self) -> IncrementalSpec | None:
        """The source's ``incremental:`` block, None for a register extracted whole."""
        return self.source.incremental

    @property
    def name(self) -> str:
        return self._name

    @property
    def path(self) -> Path:
        return self._path

    def native_columns(self) -> dict[str, str]:
        """Native columns the config reads, as {key path: native column}."""
        needed: dict[str, str] = {}
        for canonical, spec in self.columns.items():
            if spec.compose is not None:
                for part in ("day", "month", "year"):
                    native = getattr(spec.compose, part)
                    if native is not None:
                        needed[f"columns.{canonical}.compose.{part}"] = native
            elif spec.column is not None:
                needed[f"columns.{canonical}.column"] = spec.column
        for i, split in enumerate(self.split):
            needed[f"split[{i}].column"] = split.column
        return needed

    def resolve_files(self, source_dir: Path) -> list[Path]:
        """The extract's files, sorted: ``${VAR}`` expanded, relative to ``source_dir``.

        Raises:
            ConfigError: naming this file and ``source.path`` when a variable is not set or
                nothing matches.
        """
        if not isinstance(self.source, FileSource):
            raise ConfigError(f"{self.path}: source.kind: {self.source.kind} has no files")
        pattern = expand_env(self.source.path, where=f"{self.path}: source.path")
        full = Path(pattern).expanduser()
        if not full.is_absolute():
            full = Path(source_dir) / full
        if glob.has_magic(str(full)):
            files = sorted(Path(p) for p in glob.glob(str(full)) if Path(p).is_file())
        else:
            files = [full] if full.is_file() else []
        if not files:
            raise ConfigError(
                f"{self.path}: source.path: no file matches {str(full)!r} "
                f"(path {self.source.path!r}, source folder {str(source_dir)!r}); "
                "check the path or pass --source-dir / set REGLINK_SOURCE_DIR"
            )
        return files


def expand_env(text: str, *, where: str) -> str:
    """Replace every ``${VAR}`` in ``text``; a variable that is not set is an error."""
    missing = [m for m in _ENV_REF.findall(text) if m not in os.environ or not m]
    if missing:
        names = ", ".join("${" + m + "}" for m in dict.fromkeys(missing))
        raise ConfigError(
            f"{where}: environment variable {names} is not set; set it or write the path out"
        )
    return _ENV_REF.sub(lambda m: os.environ[m.group(1)], text)


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key written twice (PyYAML silently keeps the last one)."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} appears twice", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping
)

_ALL_KEYS = sorted(
    {
        name
        for model in (
            RegisterConfig, FileSource, PostgresSource, ColumnSpec, ComposeSpec, SplitSpec,
            QualityConfig, IncrementalSpec,
        )
        for name in model.model_fields
    }
)


def _key_path(loc: tuple[Any, ...], kind: str = "") -> str:
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        loc = (*loc, "kind")
    parts: list[str] = []
    for i, item in enumerate(loc):
        if item == "[key]":
            continue
        # The discriminated union puts the tag in the path: source.file.delimeter.
        if i == 1 and loc[0] == "source" and item in ("file", "postgres"):
            continue
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts) or "(top level)"


def _describe(error: dict[str, Any]) -> str:
    kind = error["type"]
    loc = error["loc"]
    if kind == "extra_forbidden":
        key = str(loc[-1])
        close = difflib.get_close_matches(key, _ALL_KEYS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return f"unknown key{hint}"
    if kind == "literal_error" and loc and loc[-1] == "[key]":
        return "unknown canonical column; expected one of " + ", ".join(MAPPABLE_COLUMNS)
    if kind == "literal_error" and len(loc) >= 2 and loc[0] == "split" and loc[-2] == "into":
        return "unknown canonical column; expected one of " + ", ".join(TEXT_COLUMNS)
    if kind == "union_tag_invalid":
        return f"{error['input'].get('kind')!r} is not a source kind; expected file or postgres"
    if kind == "union_tag_not_found":
        return "required key is missing; expected file or postgres"
    if kind == "missing":
        return "required key is missing"
    message = str(error["msg"])
    return message.removeprefix("Value error, ")


def _semantic_problems(config: RegisterConfig) -> list[tuple[str, str]]:
    """Cross-field rules pydantic's per-field validation cannot see."""
    problems: list[tuple[str, str]] = []
    for canonical, spec in config.columns.items():
        key = f"columns.{canonical}"
        is_date = canonical in DATE_COLUMNS
        if spec.compose is not None and not is_date:
            problems.append((f"{key}.compose", "only birth_date and death_date can be composed"))
        if spec.format is not None and not (is_date or canonical in TIMESTAMP_COLUMNS):
            problems.append(
                (f"{key}.format", "a format applies only to birth_date, death_date, "
                 "source_updated_at")
            )
        if spec.format is not None and spec.compose is not None:
            problems.append((f"{key}.format", "not used with compose: (day/month/year columns)"))
        if spec.codes is not None and canonical in DATE_COLUMNS + TIMESTAMP_COLUMNS:
            problems.append((f"{key}.codes", "a date column cannot have codes"))
        for code, value in (spec.codes or {}).items():
            where = f"{key}.codes.{code}"
            if canonical in BOOLEAN_COLUMNS:
                if value is not None and not isinstance(value, bool):
                    problems.append((where, f"expected true, false or null, got {value!r}"))
            elif isinstance(value, bool):
                problems.append(
                    (where, "expected text, got a boolean (YAML reads unquoted yes/no/on/off/"
                     "true/false as booleans; quote it)")
                )
            elif canonical == "sex" and value is not None and value not in SEX_VALUES:
                problems.append((where, f"expected M, F or null, got {value!r}"))
        if canonical in BOOLEAN_COLUMNS and spec.unknown == "keep":
            problems.append((f"{key}.unknown", "a true/false column cannot keep unknown codes"))
    targets: dict[str, str] = {}
    for i, split in enumerate(config.split):
        for target in split.into:
            where = f"split[{i}].into"
            if target not in TEXT_COLUMNS:
                problems.append((where, f"{target} is not a text column"))
            elif target in config.columns:
                problems.append((where, f"{target} is also mapped under columns.{target}"))
            elif target in targets:
                problems.append((where, f"{target} is already filled by {targets[target]}"))
            targets.setdefault(target, where)
    incremental = config.source.incremental
    updated = config.columns.get("source_updated_at")
    if incremental is not None and updated is not None:
        where = "source.incremental.watermark_column"
        if updated.column != incremental.watermark_column:
            problems.append((where, f"{incremental.watermark_column!r} is not the column "
                             f"mapped to source_updated_at ({updated.column!r}); the "
                             "watermark column must be that column"))
        elif isinstance(config.source, PostgresSource) and updated.format is not None:
            problems.append(("columns.source_updated_at.format", "a PostgreSQL watermark "
                             "column is compared in SQL, so it must be a timestamp or date "
                             "column (or ISO text): remove the format, or convert the column "
                             "in source.query, e.g. to_timestamp(changed, 'DD.MM.YYYY "
                             "HH24:MI') AS changed_at"))
    for column in config.quality.required_columns:
        if column not in config.columns and column not in targets:
            problems.append(
                ("quality.required_columns", f"{column} is not mapped under columns: or split:")
            )
    return problems


def _fail(path: Path, problems: list[tuple[str, str]]) -> ConfigError:
    if len(problems) == 1:
        key, message = problems[0]
        return ConfigError(f"{path}: {key}: {message}")
    lines = "\n".join(f"  {path}: {key}: {message}" for key, message in problems)
    return ConfigError(f"{path}: {len(problems)} problems:\n{lines}")


def read_yaml_mapping(path: Path, expected: str) -> dict[Any, Any]:
    """A configuration file's top-level mapping; a key written twice is an error.

    Raises:
        ConfigError: the file is not UTF-8, not YAML (with the line and column), or not a
            mapping (``expected`` names the keys that should be there).
    """
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(f"{path}: {where}not valid YAML: {exc.problem or exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with {expected} at top level")
    return data


def load_register_config(path: str | Path) -> RegisterConfig:
    """Load and validate one register file; its stem is the register's name.

    Raises:
        ConfigError: one message listing every problem, each naming the file and the key.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: register configuration file not found")
    name = path.stem
    if not _REGISTER_NAME.match(name):
        raise ConfigError(
            f"{path}: the file name is the register's name and may hold only letters, digits, "
            "'_' and '-' (e.g. civil.yaml)"
        )
    data = read_yaml_mapping(path, "source:, columns:, ...")
    try:
        config = RegisterConfig.model_validate(data)
    except ValidationError as exc:
        problems = [(_key_path(e["loc"], e["type"]), _describe(e)) for e in exc.errors()]
        raise _fail(path, problems) from None
    problems = _semantic_problems(config)
    if problems:
        raise _fail(path, problems)
    config._name = name
    config._path = path
    return config


def load_register_configs(config_dir: str | Path) -> dict[str, RegisterConfig]:
    """Load every ``<config_dir>/registers/*.yaml``, sorted by name.

    Raises:
        ConfigError: the folder holds no register file, or one message for all bad files.
    """
    folder = Path(config_dir) / "registers"
    files = sorted(folder.glob("*.yaml"))
    if not files:
        stray = sorted(p.name for p in folder.glob("*.yml"))
        hint = f" (found {', '.join(stray)}: rename to .yaml)" if stray else ""
        raise ConfigError(
            f"{folder}: no register configuration (*.yaml){hint}; "
            "see README.md, section Register configuration, or pass --config DIR"
        )
    configs: dict[str, RegisterConfig] = {}
    errors: list[str] = []
    for file in files:
        try:
            configs[file.stem] = load_register_config(file)
        except ConfigError as exc:
            errors.append(str(exc))
    if errors:
        raise ConfigError("\n".join(errors))
    return configs
