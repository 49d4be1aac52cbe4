"""``reglink demo``: synthesise a country and run the whole nightly run on it.

The run is the one ``reglink run`` does (:func:`pipelines.steps.run_all`): extract,
validate, standardise, link, cluster, assign MPI IDs, publish, consistency. The synthetic
truth is read once at the end, by ``reglink evaluate``, to show how accurate the linkage
was; no step of the run reads it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from pipelines.errors import ReglinkError


def register(subparsers: argparse._SubParsersAction) -> None:
    from pipelines.cli import add_common_options

    parser = subparsers.add_parser(
        "demo",
        help="synthesise a country and run the whole nightly run on it",
        description=(
            "Write a synthetic country's five register extracts to <data-dir>/source, run "
            "the nightly run on them (extract, validate, link, assign MPI IDs, publish to the "
            "MPI database) and evaluate the result against the synthetic truth. Everything "
            "goes under --data-dir (default ./data)."
        ),
    )
    add_common_options(parser)
    parser.add_argument("--persons", type=int, default=50_000,
                        help="persons in the synthetic country (default 50,000)")
    parser.add_argument("--seed", type=int, default=42, help="random seed (default 42)")
    parser.add_argument("--run-id", default="demo", help="run id (default: demo)")
    parser.set_defaults(func=run)


def _say(text: str) -> None:
    print(f"\n== {text}", flush=True)  # noqa: T201


def run(args: argparse.Namespace) -> int:
    from pipelines.cli import main
    from pipelines.run_command import describe
    from pipelines.steps import RunContext, run_all

    data_dir = Path(args.data_dir)
    source = data_dir / "source"
    common = ["--config", str(args.config), "--data-dir", str(data_dir)]
    if args.database_url:
        common += ["--database-url", args.database_url]
    started = time.perf_counter()

    _say(f"synth: synthesising {args.persons:,} persons (seed {args.seed}) into {source}")
    status = main(["synth", "--persons", str(args.persons), "--seed", str(args.seed),
                   "--out", str(source), *common])
    if status != 0:
        raise ReglinkError(f"demo stopped: `reglink synth` exited with {status}")

    ctx = RunContext(run_id=args.run_id, config_dir=Path(args.config), data_dir=data_dir,
                     database_url=args.database_url, source_dir=source, seed=None)
    _say(f"run {ctx.run_id}: the nightly run (as `reglink run --run-id {ctx.run_id}`)")
    t0 = time.perf_counter()

    def on_step(name: str) -> None:
        print(f"  [{time.perf_counter() - t0:6.1f} s] {name}", flush=True)  # noqa: T201

    summary = run_all(ctx, on_step=on_step)
    _say("published")
    print(describe(summary, ctx), flush=True)  # noqa: T201

    crosswalk = ctx.run_dir / "cluster" / "crosswalk.csv"
    _say("evaluate: the published persons against the synthetic truth")
    status = main(["evaluate", "--truth", str(source / "truth.csv"), "--pred", str(crosswalk),
                   *common])
    if status != 0:
        raise ReglinkError(f"demo stopped: `reglink evaluate` exited with {status}")
    _say(f"demo finished in {time.perf_counter() - started:.0f} s. Where to look:")
    print(  # noqa: T201
        f"  source extracts and truth:  {source}/\n"
        f"  the run's files:            {ctx.run_dir}/ (extract, validate with Data Docs, "
        "standardise, link, cluster, assign)\n"
        f"  Data Docs:                  {ctx.run_dir / 'validate' / 'data_docs'}/\n"
        f"  the MPI database:           see 'database:' above; try\n"
        f"      reglink person <MPI ID> --data-dir {data_dir}\n"
        f"      reglink export crosswalk --out crosswalk.csv --data-dir {data_dir}\n"
        f"  the steward console:        reglink users add admin --role admin "
        f"--data-dir {data_dir}\n"
        f"      then reglink serve --data-dir {data_dir}  (http://127.0.0.1:8000)",
        file=sys.stdout,
    )
    return 0
