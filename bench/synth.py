"""Speed and memory of ``reglink synth``: wall time and peak RSS of the CLI as a subprocess.

    python bench/synth.py --persons 1000000 --seed 1

Writes bench/results/synth_<N>.json and prints the figures. Output goes to bench/work/
(git-ignored) and is deleted afterwards unless --keep.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--persons", type=int, required=True)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--error-rate", type=float, default=0.05)
    parser.add_argument("--out", type=Path, default=None, help="default bench/work/synth_<N>")
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    args = parser.parse_args()

    out = args.out or ROOT / "bench" / "work" / f"synth_{args.persons}"
    if out.exists():
        shutil.rmtree(out)
    command = [
        sys.executable, "-m", "pipelines.cli", "synth", "--persons", str(args.persons),
        "--seed", str(args.seed), "--error-rate", str(args.error_rate), "--out", str(out),
    ]
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True, env=os.environ | {"PYTHONPATH": str(ROOT)})
    wall = time.perf_counter() - start
    # ru_maxrss of the children: the CLI is the only child, in KiB on Linux.
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    manifest = json.loads((out / "synth.json").read_text(encoding="utf-8"))
    sizes = {p.name: p.stat().st_size for p in sorted(out.iterdir())}
    result = {
        "persons": args.persons,
        "seed": args.seed,
        "error_rate": args.error_rate,
        "wall_seconds": round(wall, 1),
        "peak_rss_mib": round(peak_kib / 1024, 1),
        "rows": manifest["rows"],
        "total_rows": sum(manifest["rows"].values()),
        "bytes": sizes,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "command": " ".join(["python", "bench/synth.py", "--persons", str(args.persons),
                             "--seed", str(args.seed)]),
    }
    results = ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / f"synth_{args.persons}.json").write_text(json.dumps(result, indent=2) + "\n")
    from report import refresh_readme  # bench/ is sys.path[0] when run as a script

    refresh_readme()  # README shows the latest figures
    print(f"persons {args.persons:,}: {wall:.1f} s wall, peak RSS {peak_kib / 1024:.0f} MiB, "
          f"{result['total_rows']:,} register rows")
    if not args.keep:
        shutil.rmtree(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
