"""Benchmark: extract and validate the registers of an N-person country (target: 1M in < 2 min).

    .venv/bin/python bench/extract_validate.py --persons 1000000 --seed 1

Generates the synthetic registers once into ``bench/work/synth_<N>_<seed>/source`` (reused;
generation is not timed), then times ``extract_register`` per register and ``validate_run``
(split into GE set-up, per-register validation, writing, Data Docs) into a fresh data
folder, and writes ``bench/results/extract_validate_<N>.json``. Ends with one line:

    persons=1000000 records=3785370 extract_s=... validate_s=... total_s=... target_s=120
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipelines.extract import extract_register  # noqa: E402
from pipelines.registers import load_register_configs  # noqa: E402
from pipelines.validate import validate_run  # noqa: E402

TARGET_SECONDS = 120


def _generate(persons: int, seed: int, out: Path) -> None:
    if (out / "synth.json").is_file():
        return
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [str(ROOT / ".venv" / "bin" / "reglink"), "synth", "--persons", str(persons),
         "--seed", str(seed), "--out", str(out)],
        check=True,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--persons", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--config", type=Path, default=ROOT / "config")
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / "work")
    parser.add_argument("--no-data-docs", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    source = args.work / f"synth_{args.persons}_{args.seed}" / "source"
    _generate(args.persons, args.seed, source)
    data_dir = args.work / f"extract_validate_{args.persons}"
    shutil.rmtree(data_dir, ignore_errors=True)
    run_id = "20261127T000000Z"
    configs = load_register_configs(args.config)

    extract: dict[str, dict[str, float]] = {}
    started = time.perf_counter()
    for name, config in configs.items():
        result = extract_register(
            config, source, data_dir / "runs" / run_id / "extract" / f"{name}.parquet"
        )
        extract[name] = {"rows": result.rows, "seconds": round(result.seconds, 2)}
        print(f"extract {name:12s} {result.rows:>10,} rows {result.seconds:6.1f} s", flush=True)
    extract_s = time.perf_counter() - started

    t0 = time.perf_counter()
    validation = validate_run(
        data_dir, run_id, configs, config_dir=args.config, data_docs=not args.no_data_docs
    )
    validate_s = time.perf_counter() - t0
    total_s = extract_s + validate_s
    records = sum(e["rows"] for e in extract.values())
    per_register = {
        name: {
            "extracted": r.extracted, "passed": r.passed, "quarantined": r.quarantined,
            "flagged": r.flagged, "seconds": r.seconds, "rules": r.rules,
        }
        for name, r in validation.registers.items()
    }
    for name, r in per_register.items():
        print(f"validate {name:12s} {r['extracted']:>10,} rows {r['seconds']:6.1f} s "
              f"quarantined {r['quarantined']:,} flagged {r['flagged']:,}")
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    report = {
        "persons": args.persons,
        "seed": args.seed,
        "records": records,
        "status": validation.status,
        "extract_seconds": round(extract_s, 1),
        "validate_seconds": round(validate_s, 1),
        "total_seconds": round(total_s, 1),
        "target_seconds": TARGET_SECONDS,
        "extract": extract,
        "validate": per_register,
        "validate_breakdown": validation.seconds,
        "peak_rss_mib": round(peak_mib, 1),
        "data_docs": not args.no_data_docs,
        "machine": {"cpus": __import__("os").cpu_count(), "python": platform.python_version()},
        "command": "python bench/extract_validate.py " + " ".join(argv or sys.argv[1:]),
    }
    out = ROOT / "bench" / "results" / f"extract_validate_{args.persons}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    from report import refresh_readme  # bench/ is sys.path[0] when run as a script

    refresh_readme()  # README shows the latest figures
    print(f"validate breakdown: {validation.seconds}")
    print(f"persons={args.persons} records={records} extract_s={extract_s:.1f} "
          f"validate_s={validate_s:.1f} total_s={total_s:.1f} target_s={TARGET_SECONDS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
