"""``reglink demo``: synthesise a country and run every step of the nightly run on it.

Each step is the same command a user would type; the demo only chains them and says what
it did. The synthetic truth is read once at the end, by ``reglink evaluate``, to show how
accurate the linkage was; no step of the run reads it.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from pipelines.errors import ReglinkError

# Steps in order; a step is skipped (and said so) only when its command is not installed.
STEPS = ("synth", "extract", "validate", "link", "evaluate")


def register(subparsers: argparse._SubParsersAction) -> None:
    from pipelines.cli import add_common_options

    parser = subparsers.add_parser(
        "demo",
        help="synthesise a country and run every step on it",
        description=(
            "Write a synthetic country's five register extracts to <data-dir>/source, then "
            "extract, validate and link them as one run, and evaluate the result against the "
            "synthetic truth. Everything goes under --data-dir (default ./data)."
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
    from pipelines.cli import available_commands, main

    available = available_commands()
    data_dir = Path(args.data_dir)
    source = data_dir / "source"
    common = ["--config", str(args.config), "--data-dir", str(data_dir)]
    if args.database_url:
        common += ["--database-url", args.database_url]
    run_id = args.run_id
    crosswalk = data_dir / "runs" / run_id / "link" / "crosswalk.csv"
    commands = {
        "synth": (f"synthesising {args.persons:,} persons (seed {args.seed}) into {source}",
                  ["synth", "--persons", str(args.persons), "--seed", str(args.seed),
                   "--out", str(source), *common]),
        "extract": (f"extracting the five registers into run {run_id}",
                    ["extract", "--run-id", run_id, "--source-dir", str(source), *common]),
        "validate": (f"validating run {run_id} (quarantine, circuit breaker)",
                     ["validate", "--run-id", run_id, *common]),
        "link": (f"linking run {run_id}",
                 ["link", "--run-id", run_id, *common]),
        "evaluate": ("evaluating the links against the synthetic truth",
                     ["evaluate", "--truth", str(source / "truth.csv"), "--pred",
                      str(crosswalk), *common]),
    }
    started = time.perf_counter()
    for step in STEPS:
        title, argv = commands[step]
        if step not in available:
            _say(f"{step}: not available in this version, skipped")
            continue
        _say(f"{step}: {title}")
        status = main(argv)
        if status != 0:
            raise ReglinkError(f"demo stopped: `reglink {' '.join(argv)}` exited with {status}")
    _say(f"demo finished in {time.perf_counter() - started:.0f} s. Where to look:")
    print(  # noqa: T201
        f"  source extracts and truth:  {source}/\n"
        f"  canonical extracts:         {data_dir / 'runs' / run_id / 'extract'}/\n"
        f"  links, model, crosswalk:    {data_dir / 'runs' / run_id / 'link'}/"
    )
    return 0
