"""Linkage settings as data: blocking rules, comparisons, training and thresholds.

Settings load from a dict or a YAML file (``config/linkage.yaml``) and save back to a dict, so
that a run's settings are stored beside its model and can be diffed and reviewed. Every
problem found while loading is collected and raised once, as a :class:`MatchingError` that
names the key (``comparisons[2].thresholds``) and what was expected.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from matching.errors import MatchingError

__all__ = [
    "COMPARISON_KINDS",
    "BlockingRule",
    "ComparisonSettings",
    "LinkageSettings",
    "Thresholds",
    "TrainingSettings",
]

# kind -> (required column roles, optional column roles)
COMPARISON_KINDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "exact": (("value",), ()),
    "string": (("value",), ("part", "swap")),
    "name": (("value",), ("root",)),
    "patronymic": (("value",), ("initial", "father")),
    "date": (("year",), ("month", "day", "quality")),
    "pin": (("value",), ()),
}
METRICS = ("jaro_winkler", "levenshtein")
PIN_CHECKS = ("luhn", "none")


@dataclass(frozen=True)
class BlockingRule:
    """Records whose values agree on every column of ``columns`` are compared.

    With ``swap_with`` (as many columns as ``columns``), the rule matches one record's
    ``columns`` against the other record's ``swap_with``, position by position, in either
    direction: ``columns: [given_std, birth_year]`` with ``swap_with: [surname_std,
    birth_year]`` compares two records when one's given name is the other's surname and
    their birth years agree (given name and surname written in each other's field).
    """

    name: str
    columns: tuple[str, ...]
    swap_with: tuple[str, ...] | None = None

    @property
    def all_columns(self) -> tuple[str, ...]:
        """Every column the rule reads (both sides of a swapped rule)."""
        return tuple(dict.fromkeys(self.columns + (self.swap_with or ())))

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "columns": list(self.columns)}
        if self.swap_with is not None:
            d["swap_with"] = list(self.swap_with)
        return d


@dataclass(frozen=True)
class ComparisonSettings:
    """One field comparison: its kind, the columns it reads (by role) and its parameters.

    Roles per kind (``value`` may be given as ``column:``):

    - ``exact``: value. Levels: exact / else.
    - ``string``: value, optional part (first part of a compound value) and swap (a column whose
      value swapped with this one's counts as a level, e.g. given name and surname exchanged).
      Levels: exact / part / swap / fuzzy thresholds / else.
    - ``name``: value (full key), optional root. Levels: exact / root exact / fuzzy on the root
      (or the value) per threshold / else.
    - ``patronymic``: value (root), optional initial and father (father's given name, used
      where a record has no patronymic). Levels: exact / fuzzy / initial only / else.
    - ``date``: year, optional month, day and quality (``placeholder`` marks weak dates).
      Levels: exact / placeholder year / day-month swapped / year and month / year /
      year +-1 / else.
    - ``pin``: value. Levels: exact / one digit off / adjacent transposition / else.
    """

    name: str
    kind: str
    columns: dict[str, str]
    thresholds: tuple[float, ...] = ()
    metric: str = "jaro_winkler"
    tf_adjustment: bool = False

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self.columns.values()))

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "columns": dict(self.columns),
            "thresholds": list(self.thresholds),
            "metric": self.metric,
            "tf_adjustment": self.tf_adjustment,
        }


@dataclass(frozen=True)
class TrainingSettings:
    """How the model is estimated.

    Attributes:
        u_sample_pairs: uniformly random record pairs drawn (seeded) to estimate u.
        blocking_rules: names of blocking rules whose pairs train m by EM, one EM session per
            rule; the rule's own columns are left out of that session (they agree by
            construction). Empty: one session on all candidate pairs.
        em_max_iterations, em_tolerance: EM stops when no m moves by more than the tolerance.
        tf_minimum: lower bound of a value's relative frequency in the term-frequency
            adjustment (0: one occurrence among the training records).
        u_pairs_per_record: on small data, u is counted on at most this many random pairs
            per record (all pairs when there are fewer), not ``u_sample_pairs``: the estimate
            is as good and costs a fraction.
        m_prior_pairs: pseudo-matches of the Dirichlet prior on m (spread like u, i.e. "no
            evidence"), added in every M-step.
        min_log2_bayes_factor: floor of log2(m/u) for every level (bits): no single field can
            count more than this against a pair, however rare its disagreement was in training.
    """

    u_sample_pairs: int = 2_000_000
    blocking_rules: tuple[str, ...] = ()
    em_max_iterations: int = 100
    em_tolerance: float = 1e-5
    tf_minimum: float = 0.0
    u_pairs_per_record: int = 100
    m_prior_pairs: float = 1.0
    min_log2_bayes_factor: float = -10.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "u_sample_pairs": self.u_sample_pairs,
            "u_pairs_per_record": self.u_pairs_per_record,
            "blocking_rules": list(self.blocking_rules),
            "em_max_iterations": self.em_max_iterations,
            "em_tolerance": self.em_tolerance,
            "tf_minimum": self.tf_minimum,
            "m_prior_pairs": self.m_prior_pairs,
            "min_log2_bayes_factor": self.min_log2_bayes_factor,
        }


@dataclass(frozen=True)
class Thresholds:
    """Match-probability thresholds.

    Attributes:
        link: pairs at or above are linked automatically.
        review: pairs at or above (and below ``link``) go to the steward's review queue.
        retain: pairs below are dropped from the prediction output (``None`` keeps all).
    """

    link: float = 0.95
    review: float = 0.5
    retain: float | None = 0.001

    def to_dict(self) -> dict[str, Any]:
        return {"link": self.link, "review": self.review, "retain": self.retain}


@dataclass(frozen=True)
class LinkageSettings:
    """Everything the engine needs to block, compare, train, score and cluster."""

    blocking_rules: tuple[BlockingRule, ...]
    comparisons: tuple[ComparisonSettings, ...]
    max_block_size: int = 5000
    training: TrainingSettings = field(default_factory=TrainingSettings)
    thresholds: Thresholds = field(default_factory=Thresholds)
    seed: int = 42
    pin_column: str | None = "pin_std"
    pin_check: str = "luhn"

    # ---- loading -------------------------------------------------------------------------

    @classmethod
    def from_yaml(cls, path: str | Path) -> LinkageSettings:
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise MatchingError(f"{path}: cannot read linkage settings: {exc}") from exc
        except yaml.YAMLError as exc:
            raise MatchingError(f"{path}: not valid YAML: {exc}") from exc
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "linkage settings") -> LinkageSettings:
        """Build settings from a dict; every problem is reported at once, naming its key."""
        problems: list[str] = []
        if not isinstance(data, dict):
            raise MatchingError(f"{source}: expected a mapping at the top level, got "
                                f"{type(data).__name__}")
        known = {"blocking_rules", "comparisons", "max_block_size", "training", "thresholds",
                 "seed", "pin_column", "pin_check"}
        _unknown(data, known, "", problems)

        rules = _parse_rules(data.get("blocking_rules"), problems)
        comparisons = _parse_comparisons(data.get("comparisons"), problems)
        max_block = _int(data, "max_block_size", 5000, "", problems, minimum=2)
        seed = _int(data, "seed", 42, "", problems, minimum=0)
        training = _parse_training(data.get("training") or {}, rules, problems)
        thresholds = _parse_thresholds(data.get("thresholds") or {}, problems)
        pin_column = data.get("pin_column", "pin_std")
        if pin_column is not None and not isinstance(pin_column, str):
            problems.append(f"pin_column: expected a column name or null, got {pin_column!r}")
        pin_check = data.get("pin_check", "luhn")
        if pin_check not in PIN_CHECKS:
            problems.append(f"pin_check: expected one of {', '.join(PIN_CHECKS)}, "
                            f"got {pin_check!r}")
        if problems:
            raise MatchingError(f"{source}: {len(problems)} problem(s):\n  - "
                                + "\n  - ".join(problems))
        return cls(
            blocking_rules=rules, comparisons=comparisons, max_block_size=max_block,
            training=training, thresholds=thresholds, seed=seed, pin_column=pin_column,
            pin_check=pin_check,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "max_block_size": self.max_block_size,
            "blocking_rules": [r.to_dict() for r in self.blocking_rules],
            "comparisons": [c.to_dict() for c in self.comparisons],
            "training": self.training.to_dict(),
            "thresholds": self.thresholds.to_dict(),
            "pin_column": self.pin_column,
            "pin_check": self.pin_check,
        }

    def with_seed(self, seed: int) -> LinkageSettings:
        d = self.to_dict()
        d["seed"] = seed
        return LinkageSettings.from_dict(d)


# ---- parsing helpers ----------------------------------------------------------------------


def _unknown(d: dict, known: set[str], where: str, problems: list[str]) -> None:
    for key in d:
        if key not in known:
            problems.append(f"{where}{key}: unknown key (expected one of "
                            f"{', '.join(sorted(known))})")


def _int(d: dict, key: str, default: int, where: str, problems: list[str],
         minimum: int = 0) -> int:
    value = d.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        problems.append(f"{where}{key}: expected an integer >= {minimum}, got {value!r}")
        return default
    return value


def _prob(d: dict, key: str, default: float | None, where: str, problems: list[str],
          allow_none: bool = False) -> float | None:
    value = d.get(key, default)
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        problems.append(f"{where}{key}: expected a number between 0 and 1, got {value!r}")
        return default
    return float(value)


def _parse_rules(raw: Any, problems: list[str]) -> tuple[BlockingRule, ...]:
    if not isinstance(raw, list) or not raw:
        problems.append("blocking_rules: expected a non-empty list of rules "
                        "(each a list of columns, or {name:, columns: [...]})")
        return ()
    rules: list[BlockingRule] = []
    for i, item in enumerate(raw):
        where = f"blocking_rules[{i}]"
        swap: Any = None
        if isinstance(item, list | str):
            cols, name = ([item] if isinstance(item, str) else item), None
        elif isinstance(item, dict):
            _unknown(item, {"name", "columns", "swap_with"}, where + ".", problems)
            cols, name, swap = item.get("columns"), item.get("name"), item.get("swap_with")
            if isinstance(cols, str):
                cols = [cols]
            if isinstance(swap, str):
                swap = [swap]
        else:
            problems.append(f"{where}: expected a list of columns or a mapping, got {item!r}")
            continue
        if not isinstance(cols, list) or not cols or not all(isinstance(c, str) for c in cols):
            problems.append(f"{where}.columns: expected a non-empty list of column names, "
                            f"got {cols!r}")
            continue
        if swap is not None:
            if (not isinstance(swap, list) or len(swap) != len(cols)
                    or not all(isinstance(c, str) for c in swap)):
                problems.append(f"{where}.swap_with: expected a list of {len(cols)} column "
                                f"name(s), one per column of columns {cols}, got {swap!r}")
                continue
            if swap == cols:
                problems.append(f"{where}.swap_with: same columns as columns; leave swap_with "
                                "out for a rule on equal values")
                continue
        default = "+".join(cols) + ("~" + "+".join(swap) if swap is not None else "")
        name = name if isinstance(name, str) and name else default
        if any(r.name == name for r in rules):
            problems.append(f"{where}.name: duplicate rule name {name!r}")
        rules.append(BlockingRule(name=name, columns=tuple(cols),
                                  swap_with=tuple(swap) if swap is not None else None))
    return tuple(rules)


def _parse_comparisons(raw: Any, problems: list[str]) -> tuple[ComparisonSettings, ...]:
    if not isinstance(raw, list) or not raw:
        problems.append("comparisons: expected a non-empty list of comparisons")
        return ()
    out: list[ComparisonSettings] = []
    for i, item in enumerate(raw):
        where = f"comparisons[{i}]"
        if not isinstance(item, dict):
            problems.append(f"{where}: expected a mapping, got {item!r}")
            continue
        _unknown(item, {"name", "kind", "column", "columns", "thresholds", "metric",
                        "tf_adjustment"}, where + ".", problems)
        name = item.get("name")
        if not isinstance(name, str) or not name.isidentifier():
            problems.append(f"{where}.name: expected an identifier (letters, digits, _), "
                            f"got {name!r}")
            name = f"comparison_{i}"
        elif any(c.name == name for c in out):
            problems.append(f"{where}.name: duplicate comparison name {name!r}")
        where = f"comparisons[{i}] ({name})"
        kind = item.get("kind")
        if kind not in COMPARISON_KINDS:
            problems.append(f"{where}.kind: expected one of {', '.join(COMPARISON_KINDS)}, "
                            f"got {kind!r}")
            continue
        columns = item.get("columns") or {}
        if not isinstance(columns, dict):
            problems.append(f"{where}.columns: expected a mapping role -> column, got "
                            f"{columns!r}")
            columns = {}
        columns = dict(columns)
        if "column" in item:
            columns["value"] = item["column"]
        required, optional = COMPARISON_KINDS[kind]
        for role in required:
            if not isinstance(columns.get(role), str):
                problems.append(f"{where}.columns.{role}: required for kind {kind!r}")
        for role, col in columns.items():
            if role not in required + optional:
                problems.append(f"{where}.columns.{role}: unknown role for kind {kind!r} "
                                f"(expected {', '.join(required + optional)})")
            elif not isinstance(col, str):
                problems.append(f"{where}.columns.{role}: expected a column name, got {col!r}")
        thresholds = item.get("thresholds", [] if kind in ("exact", "date", "pin") else [0.9])
        if isinstance(thresholds, int | float):
            thresholds = [thresholds]
        if not isinstance(thresholds, list) or not all(
            isinstance(t, int | float) and not isinstance(t, bool) and 0 < t < 1
            for t in thresholds
        ):
            problems.append(f"{where}.thresholds: expected a list of similarities strictly "
                            f"between 0 and 1, got {thresholds!r}")
            thresholds = []
        elif thresholds and kind in ("exact", "date", "pin"):
            problems.append(f"{where}.thresholds: kind {kind!r} has no fuzzy levels")
        metric = item.get("metric", "jaro_winkler")
        if metric not in METRICS:
            problems.append(f"{where}.metric: expected one of {', '.join(METRICS)}, "
                            f"got {metric!r}")
        tf = item.get("tf_adjustment", False)
        if not isinstance(tf, bool):
            problems.append(f"{where}.tf_adjustment: expected true or false, got {tf!r}")
            tf = False
        out.append(ComparisonSettings(
            name=name, kind=kind, columns={k: v for k, v in columns.items() if isinstance(v, str)},
            thresholds=tuple(sorted((float(t) for t in thresholds), reverse=True)),
            metric=metric, tf_adjustment=tf,
        ))
    return tuple(out)


def _parse_training(raw: Any, rules: tuple[BlockingRule, ...],
                    problems: list[str]) -> TrainingSettings:
    if not isinstance(raw, dict):
        problems.append(f"training: expected a mapping, got {raw!r}")
        return TrainingSettings()
    _unknown(raw, {"u_sample_pairs", "u_pairs_per_record", "blocking_rules",
                   "em_max_iterations", "em_tolerance", "tf_minimum", "m_prior_pairs",
                   "min_log2_bayes_factor"}, "training.", problems)
    d = TrainingSettings()
    names = raw.get("blocking_rules", [])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        problems.append(f"training.blocking_rules: expected a list of rule names, got {names!r}")
        names = []
    known = {r.name for r in rules}
    for n in names:
        if rules and n not in known:
            problems.append(f"training.blocking_rules: {n!r} is not a blocking rule name "
                            f"(rules: {', '.join(sorted(known))})")
    tol = raw.get("em_tolerance", d.em_tolerance)
    if isinstance(tol, bool) or not isinstance(tol, int | float) or not 0 < tol < 1:
        problems.append(f"training.em_tolerance: expected a number in (0, 1), got {tol!r}")
        tol = d.em_tolerance
    prior = raw.get("m_prior_pairs", d.m_prior_pairs)
    if isinstance(prior, bool) or not isinstance(prior, int | float) or prior < 0:
        problems.append(f"training.m_prior_pairs: expected a number >= 0, got {prior!r}")
        prior = d.m_prior_pairs
    floor = raw.get("min_log2_bayes_factor", d.min_log2_bayes_factor)
    if isinstance(floor, bool) or not isinstance(floor, int | float) or not -60 <= floor < 0:
        problems.append(f"training.min_log2_bayes_factor: expected a negative number of bits "
                        f"(-60 to 0, e.g. -10), got {floor!r}")
        floor = d.min_log2_bayes_factor
    return TrainingSettings(
        u_sample_pairs=_int(raw, "u_sample_pairs", d.u_sample_pairs, "training.", problems,
                            minimum=1000),
        u_pairs_per_record=_int(raw, "u_pairs_per_record", d.u_pairs_per_record, "training.",
                                problems, minimum=1),
        m_prior_pairs=float(prior),
        min_log2_bayes_factor=float(floor),
        blocking_rules=tuple(names),
        em_max_iterations=_int(raw, "em_max_iterations", d.em_max_iterations, "training.",
                               problems, minimum=1),
        em_tolerance=float(tol),
        tf_minimum=_prob(raw, "tf_minimum", d.tf_minimum, "training.", problems) or 0.0,
    )


def _parse_thresholds(raw: Any, problems: list[str]) -> Thresholds:
    if not isinstance(raw, dict):
        problems.append(f"thresholds: expected a mapping, got {raw!r}")
        return Thresholds()
    _unknown(raw, {"link", "review", "retain"}, "thresholds.", problems)
    d = Thresholds()
    link = _prob(raw, "link", d.link, "thresholds.", problems)
    review = _prob(raw, "review", d.review, "thresholds.", problems)
    retain = _prob(raw, "retain", d.retain, "thresholds.", problems, allow_none=True)
    if link is not None and review is not None and review > link:
        problems.append(f"thresholds.review: must not exceed thresholds.link ({review} > {link})")
    if retain is not None and review is not None and retain > review:
        problems.append(f"thresholds.retain: must not exceed thresholds.review "
                        f"({retain} > {review})")
    return Thresholds(link=float(link), review=float(review), retain=retain)
