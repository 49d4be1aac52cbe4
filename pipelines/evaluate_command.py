"""``reglink evaluate``: linkage quality of a crosswalk against a truth file.

    reglink evaluate --truth truth.csv --pred crosswalk.csv [--json metrics.json]

``truth.csv`` has columns ``register,record_id,person_id``; ``crosswalk.csv`` has columns
``register,record_id,cluster_id`` (other columns are ignored). Prints pairwise and B-cubed
precision, recall and F1, overall and per register pair (see ``matching.evaluation``).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import warnings
from pathlib import Path

import pandas as pd

from matching.errors import MatchingError
from matching.evaluation import (
    KEY_COLUMNS,
    PRED_COLUMNS,
    TRUTH_COLUMNS,
    EvaluationResult,
    evaluate_clusters,
)
from pipelines.cli import add_common_options
from pipelines.errors import ReglinkError

log = logging.getLogger(__name__)


class EvaluationInputError(ReglinkError):
    """A truth or prediction file cannot be used for evaluation."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="precision, recall and F1 of a crosswalk against a truth file",
        description=(
            "Compare predicted clusters (a crosswalk: register,record_id,cluster_id) with true "
            "persons (register,record_id,person_id). Prints pairwise and B-cubed precision, "
            "recall and F1, overall and per register pair. Records in only one file are "
            "counted and left out. Undefined figures (no predicted or no true pairs) are n/a."
        ),
    )
    add_common_options(parser)
    parser.add_argument(
        "--truth", type=Path, required=True, help="CSV with register,record_id,person_id"
    )
    parser.add_argument(
        "--pred", type=Path, required=True, help="CSV with register,record_id,cluster_id"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the figures as JSON")
    parser.set_defaults(func=run)


def read_table(path: Path, role: str, columns: tuple[str, ...]) -> pd.DataFrame:
    """Read a CSV as text and check it can be evaluated; errors name the file and line.

    Line numbers count the header as line 1.
    """
    try:
        df = pd.read_csv(
            path, dtype=str, keep_default_na=False, na_filter=False, encoding="utf-8-sig"
        )
    except FileNotFoundError as exc:
        raise EvaluationInputError(f"{role} file {path} does not exist") from exc
    except (OSError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise EvaluationInputError(f"cannot read {role} file {path} as a UTF-8 CSV: {exc}") from exc
    except pd.errors.EmptyDataError as exc:
        raise EvaluationInputError(
            f"{role} file {path} is empty; expected a header line with columns {','.join(columns)}"
        ) from exc
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise EvaluationInputError(
            f"{role} file {path} lacks column(s) {', '.join(missing)}: expected columns "
            f"{','.join(columns)}; the file has {','.join(map(str, df.columns))}"
        )
    df = df[list(columns)]
    for column in columns:
        blank = df[column].str.strip() == ""
        if blank.any():
            line = int(blank.to_numpy().nonzero()[0][0]) + 2
            raise EvaluationInputError(
                f"{role} file {path}, line {line}: column {column} is empty "
                f"({int(blank.sum())} such rows); every record needs {','.join(columns)}"
            )
    dup = df.duplicated(list(KEY_COLUMNS), keep=False).to_numpy()
    if dup.any():
        first = int(dup.nonzero()[0][0])
        key = df.iloc[first][list(KEY_COLUMNS)]
        same = (df["register"] == key["register"]) & (df["record_id"] == key["record_id"])
        lines = [int(i) + 2 for i in same.to_numpy().nonzero()[0][:5]]
        raise EvaluationInputError(
            f"{role} file {path}, lines {', '.join(map(str, lines))}: record "
            f"register={key['register']} record_id={key['record_id']} is listed more than "
            "once; each record must appear once"
        )
    return df


def _fmt(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.4f}"


def format_result(result: EvaluationResult, truth: Path, pred: Path) -> str:
    """The readable table printed by ``reglink evaluate``."""
    lines = [
        f"truth:      {truth}",
        f"prediction: {pred}",
        f"records evaluated (present in both): {result.n_records}  "
        f"(truth only: {result.n_truth_only}, prediction only: {result.n_pred_only})",
        f"true persons: {result.n_persons}  predicted clusters: {result.n_clusters}",
        "",
    ]
    header = (
        f"{'':<30}{'precision':>10}{'recall':>10}{'F1':>10}"
        f"{'true pairs':>14}{'pred. pairs':>14}{'true pos.':>14}"
    )
    pw, b3 = result.pairwise, result.bcubed
    lines += [
        header,
        f"{'pairwise':<30}{_fmt(pw.precision):>10}{_fmt(pw.recall):>10}{_fmt(pw.f1):>10}"
        f"{pw.true_pairs:>14}{pw.predicted_pairs:>14}{pw.true_positives:>14}",
        f"{'B-cubed':<30}{_fmt(b3.precision):>10}{_fmt(b3.recall):>10}{_fmt(b3.f1):>10}",
        "",
        "pairwise, per register pair",
        header,
    ]
    for row in result.per_register_pair.itertuples(index=False):
        label = f"{row.register_a} – {row.register_b}"
        lines.append(
            f"{label:<30}{_fmt(row.precision):>10}{_fmt(row.recall):>10}{_fmt(row.f1):>10}"
            f"{row.true_pairs:>14}{row.predicted_pairs:>14}{row.true_positives:>14}"
        )
    if result.per_register_pair.empty:
        lines.append("(no true or predicted pairs)")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    truth = read_table(args.truth, "truth", TRUTH_COLUMNS)
    pred = read_table(args.pred, "prediction", PRED_COLUMNS)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = evaluate_clusters(truth, pred)
        except MatchingError as exc:
            raise EvaluationInputError(f"{args.truth} / {args.pred}: {exc}") from exc
    for w in caught:
        log.warning("%s", w.message)
    print(format_result(result, args.truth, args.pred))  # noqa: T201
    if args.json is not None:
        try:
            args.json.write_text(
                json.dumps(result.to_dict(), indent=2, ensure_ascii=False, allow_nan=False) + "\n",
                encoding="utf-8",
            )
        except OSError as exc:
            raise EvaluationInputError(f"cannot write the JSON file {args.json}: {exc}") from exc
    return 0
