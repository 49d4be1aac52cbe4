"""``reglink link``: link the extracts of a run into clusters of records (one per person)."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipelines.errors import ReglinkError
from pipelines.link import link_run
from pipelines.runs import run_dir


def register(subparsers: argparse._SubParsersAction) -> None:
    from pipelines.cli import add_common_options

    parser = subparsers.add_parser(
        "link",
        help="standardise, train, score and cluster the extracts of a run",
        description=(
            "Link the extracts of a run (<data-dir>/runs/<run-id>/extract/) with the settings "
            "of <config>/linkage.yaml and write model.json, pairs.parquet, crosswalk.csv and "
            "report.json to <data-dir>/runs/<run-id>/link/."
        ),
    )
    add_common_options(parser)
    parser.add_argument("--run-id", default=None, help="run to link (default: the newest)")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed for u sampling (default: the settings' seed)")
    parser.add_argument("--model", type=Path, default=None,
                        help="score with this saved model.json instead of training")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings_path = Path(args.config) / "linkage.yaml"
    if not settings_path.is_file():
        raise ReglinkError(f"{settings_path} not found: the linkage settings are needed "
                           "(copy config/linkage.yaml of the repository and adapt it)")
    if args.model is not None and not args.model.is_file():
        raise ReglinkError(f"--model {args.model}: file not found")
    folder = run_dir(args.data_dir, args.run_id)
    result = link_run(folder, settings_path, seed=args.seed, model_path=args.model)
    print(  # noqa: T201
        f"run {folder.name}: linked {result.records:,} records into {result.clusters:,} "
        f"clusters; {result.pairs_linked:,} pairs auto-linked, {result.pairs_review:,} in "
        f"the review band ({result.seconds['total']:.1f} s)\n"
        f"  output: {result.out_dir}/ (crosswalk.csv, pairs.parquet, model.json, report.json)"
    )
    return 0
