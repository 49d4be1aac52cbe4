"""Linkage benchmark: reglink and Splink 5 (DuckDB) on the same records, in one invocation.

    python bench/linkage.py --dataset synth --persons 10000 --seed 42
    python bench/linkage.py --dataset febrl4

The records are prepared once (canonical record + ``matching.standardise``) into
``bench/work/<tag>/records.parquet``; each tool then runs in its own child process on that
file, so that each peak memory (``ru_maxrss`` of the child, read with ``os.wait4``) is the
tool's alone. The parent scores both clusterings against the truth, prints a table, writes
``bench/results/linkage_<dataset>_<N>.json``, refreshes the table in bench/README.md, and
prints as its last line::

    reglink_f1=0.9993 splink_f1=0.9981 reglink_s=12.3 splink_s=160.1 speed_ratio=13.0

(pairwise F1 at each tool's default threshold; seconds of train + predict + cluster;
ratio = splink_s / reglink_s).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform
import re
import resource
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import datasets  # noqa: E402

log = logging.getLogger("bench.linkage")

TOOLS = ("reglink", "splink")
STAGES = ("train", "predict", "cluster")
DEFAULT_SPLINK_THRESHOLD = 0.95
README_START = "<!-- linkage-results:start -->"
README_END = "<!-- linkage-results:end -->"


# --------------------------------------------------------------------------- child side


def reglink_settings_path(dataset: str, override: Path | None) -> Path:
    """reglink's linkage settings: FEBRL has its own columns, everything else the default."""
    if override is not None:
        return override
    if dataset.startswith("febrl"):
        return BENCH / "febrl_linkage.yaml"
    return REPO / "config" / "linkage.yaml"


def run_reglink(
    records: pd.DataFrame, settings_path: Path, *, seed: int
) -> dict[str, Any]:
    """Train, predict and cluster with reglink's facade; time each stage."""
    from matching.linker import Linker
    from matching.settings import LinkageSettings

    seconds: dict[str, float] = {}
    settings = LinkageSettings.from_yaml(settings_path)
    linker = Linker(settings, seed=seed)
    t0 = time.perf_counter()
    model = linker.train(records)
    seconds["train"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    pairs = linker.predict(records, model)
    seconds["predict"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    cluster_id = linker.cluster(records, pairs)
    seconds["cluster"] = time.perf_counter() - t0
    clusters = pd.DataFrame({
        "register": records["register"].astype("string").to_numpy(),
        "record_id": records["record_id"].astype("string").to_numpy(),
        "cluster_id": pd.array(np.asarray(cluster_id)).astype("string"),
    })
    return {
        "clusters": clusters,
        "seconds": seconds,
        "n_pairs": int((pairs["match_probability"] >= settings.thresholds.link).sum()),
        "n_pairs_retained": int(len(pairs)),
        "engine_timings": dict(linker.timings),  # block/compare/train/predict/cluster
        "threshold_match_probability": settings.thresholds.link,
        "version": _version("reglink"),
        "settings": {"file": str(settings_path.relative_to(REPO)
                                 if settings_path.is_relative_to(REPO) else settings_path)},
        "pairs": pairs,
    }


def child_main(args: argparse.Namespace) -> int:
    """Run one tool on the prepared records and write its clusters and timings."""
    t0 = time.perf_counter()
    records = pd.read_parquet(args.records)
    for col in records.columns:
        if records[col].dtype == object:
            records[col] = records[col].astype("string")
    load_s = time.perf_counter() - t0
    rss_after_load = _maxrss_mb()
    if args.only == "reglink":
        result = run_reglink(
            records, reglink_settings_path(args.dataset, args.reglink_settings), seed=args.seed
        )
    else:
        from bench.splink_runner import run_splink

        result = run_splink(records, args.dataset, seed=args.seed, threshold=args.splink_threshold)
    out_dir = Path(args.out)
    result["clusters"].to_parquet(out_dir / f"{args.only}_clusters.parquet", index=False)
    pairs = result.pop("pairs", None)
    if pairs is not None and args.keep_pairs:
        pd.DataFrame(pairs).to_parquet(out_dir / f"{args.only}_pairs.parquet", index=False)
    summary = {k: v for k, v in result.items() if k != "clusters"}
    summary["seconds"]["load"] = summary["seconds"].get("load", 0.0) + load_s
    summary["rss_after_load_mb"] = rss_after_load
    summary["peak_rss_self_mb"] = _maxrss_mb()
    (out_dir / f"{args.only}.json").write_text(json.dumps(summary, indent=2, default=str))
    return 0


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


# --------------------------------------------------------------------------- scoring


def score(truth: pd.DataFrame, clusters: pd.DataFrame) -> dict[str, float]:
    """Pairwise and B-cubed precision, recall and F1 of a clustering against the truth.

    Records absent from ``clusters`` count as singletons.
    """
    key = ["register", "record_id"]
    df = truth[key + ["person_id"]].merge(clusters[key + ["cluster_id"]], on=key, how="left")
    lone = df["cluster_id"].isna()
    df.loc[lone, "cluster_id"] = "__single__" + df.loc[lone, "register"] + "|" + df.loc[
        lone, "record_id"]
    person = pd.factorize(df["person_id"])[0]
    cluster = pd.factorize(df["cluster_id"])[0]
    n_p = np.bincount(person)
    n_c = np.bincount(cluster)
    cell = person.astype(np.int64) * (cluster.max() + 1) + cluster
    cells, inverse, n_pc = np.unique(cell, return_inverse=True, return_counts=True)

    def pairs(n: np.ndarray) -> float:
        n = n.astype(np.float64)
        return float((n * (n - 1) / 2).sum())

    tp, pred, true = pairs(n_pc), pairs(n_c), pairs(n_p)
    p = tp / pred if pred else 1.0
    r = tp / true if true else 1.0
    per_cell = n_pc[inverse].astype(np.float64)
    bp = float((per_cell / n_c[cluster]).mean())
    br = float((per_cell / n_p[person]).mean())
    return {
        "pairwise_precision": p, "pairwise_recall": r, "pairwise_f1": _f1(p, r),
        "bcubed_precision": bp, "bcubed_recall": br, "bcubed_f1": _f1(bp, br),
        "true_pairs": true, "predicted_pairs": pred, "true_positive_pairs": tp,
    }


def _f1(p: float, r: float) -> float:
    return 2 * p * r / (p + r) if p + r else 0.0


def evaluate(truth: pd.DataFrame, clusters: pd.DataFrame) -> dict[str, float]:
    """Scores from ``matching.evaluation`` when it exists, cross-checked with ``score``."""
    mine = score(truth, clusters)
    try:
        from matching.evaluation import evaluate_clusters
    except ImportError:
        mine["scored_by"] = "bench.linkage.score"
        return mine
    theirs = evaluate_clusters(truth, clusters)
    flat = _flatten_scores(theirs)
    f1 = flat.get("pairwise_f1")
    if f1 is not None and abs(f1 - mine["pairwise_f1"]) > 1e-9:
        log.warning("matching.evaluation pairwise F1 %.6f != bench %.6f", f1, mine["pairwise_f1"])
    merged = {**mine, **{k: v for k, v in flat.items() if k in mine}}
    merged["scored_by"] = "matching.evaluation.evaluate_clusters"
    return merged


def _flatten_scores(obj: Any) -> dict[str, float]:
    """Accept a dict, nested dict or dataclass of scores; return ``pairwise_f1``-style keys."""
    if hasattr(obj, "__dataclass_fields__"):
        obj = {k: getattr(obj, k) for k in obj.__dataclass_fields__}
    elif hasattr(obj, "model_dump"):
        obj = obj.model_dump()
    flat: dict[str, float] = {}
    if not isinstance(obj, dict):
        return flat
    for k, v in obj.items():
        if isinstance(v, dict) or hasattr(v, "__dataclass_fields__"):
            for k2, v2 in _flatten_scores(v).items():
                flat[f"{k}_{k2}"] = v2
        elif isinstance(v, (int, float, np.floating)):
            flat[k] = float(v)
    return {re.sub(r"^b_?cubed", "bcubed", k): v for k, v in flat.items()}


# --------------------------------------------------------------------------- parent side


def run_child(tool: str, args: argparse.Namespace, records: Path, out_dir: Path) -> dict:
    """Run one tool in a fresh interpreter; return its summary with its own peak RSS."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--only", tool,
           "--dataset", args.dataset, "--persons", str(args.persons), "--seed", str(args.seed),
           "--records", str(records), "--out", str(out_dir),
           "--splink-threshold", str(args.splink_threshold)]
    if args.reglink_settings:
        cmd += ["--reglink-settings", str(args.reglink_settings)]
    if args.keep_pairs:
        cmd.append("--keep-pairs")
    log.info("running %s", tool)
    wall0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - wall0
    if proc.returncode != 0:
        raise RuntimeError(f"{tool} child failed with exit code {proc.returncode}")
    summary = json.loads((out_dir / f"{tool}.json").read_text())
    summary["peak_rss_mb"] = usage.ru_maxrss / 1024.0
    summary["child_wall_s"] = wall
    summary["seconds"]["total"] = sum(summary["seconds"][s] for s in STAGES)
    return summary


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _machine() -> dict[str, Any]:
    mem = None
    try:
        with open("/proc/meminfo") as fh:
            mem = round(int(fh.readline().split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return {"cores": os.cpu_count(), "memory_gib": mem, "platform": platform.platform(),
            "python": platform.python_version(), "processor": platform.processor()}


def print_table(result: dict[str, Any]) -> None:
    head = (f"{'tool':<8} {'pw P':>7} {'pw R':>7} {'pw F1':>7} {'B3 F1':>7} "
            f"{'train':>8} {'predict':>8} {'cluster':>8} {'total':>8} {'peak MB':>8} {'pairs':>9}")
    print(head)
    print("-" * len(head))
    for tool in result["tools"]:
        t = result["tools"][tool]
        a, s = t["accuracy"], t["seconds"]
        print(f"{tool:<8} {a['pairwise_precision']:7.4f} {a['pairwise_recall']:7.4f} "
              f"{a['pairwise_f1']:7.4f} {a['bcubed_f1']:7.4f} {s['train']:8.2f} "
              f"{s['predict']:8.2f} {s['cluster']:8.2f} {s['total']:8.2f} "
              f"{t['peak_rss_mb']:8.0f} {t['n_pairs']:9d}")
    r = result.get("ratios")
    if r:
        print(f"speed ratio (splink/reglink) {r['speed']:.1f}x, "
              f"memory ratio (splink/reglink) {r['memory']:.2f}x")


def last_line(result: dict[str, Any]) -> str:
    t = result["tools"]
    rs, ss = t["reglink"]["seconds"]["total"], t["splink"]["seconds"]["total"]
    return (f"reglink_f1={t['reglink']['accuracy']['pairwise_f1']:.4f} "
            f"splink_f1={t['splink']['accuracy']['pairwise_f1']:.4f} "
            f"reglink_s={rs:.1f} splink_s={ss:.1f} speed_ratio={ss / rs:.1f}")


def readme_table(results_dir: Path) -> str:
    """Markdown table of the newest result of every data set/size in ``results_dir``."""
    rows = []
    for path in sorted(results_dir.glob("linkage_*.json")):
        r = json.loads(path.read_text())
        if set(r.get("tools", {})) != set(TOOLS):
            continue
        t = r["tools"]
        rows.append(
            f"| {r['dataset']} | {r['n_records']:,} | "
            f"{t['reglink']['accuracy']['pairwise_f1']:.4f} | "
            f"{t['splink']['accuracy']['pairwise_f1']:.4f} | "
            f"{t['reglink']['seconds']['total']:.1f} | {t['splink']['seconds']['total']:.1f} | "
            f"{r['ratios']['speed']:.1f}× | {t['reglink']['peak_rss_mb']:.0f} | "
            f"{t['splink']['peak_rss_mb']:.0f} | {r['finished_at'][:10]} |"
        )
    head = ("| data set | records | reglink F1 | Splink F1 | reglink s | Splink s | speed-up "
            "| reglink MB | Splink MB | date |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    return head + "\n" + "\n".join(rows)


def update_readme(results_dir: Path, readme: Path) -> None:
    if not readme.exists():
        return
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        return
    before, rest = text.split(README_START, 1)
    _, after = rest.split(README_END, 1)
    readme.write_text(
        f"{before}{README_START}\n{readme_table(results_dir)}\n{README_END}{after}"
    )


def parent_main(args: argparse.Namespace) -> int:
    started = dt.datetime.now(dt.UTC)
    # other work on the machine skews the seconds: keep the load beside them
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    records_path, truth_path = datasets.prepare(
        args.dataset, args.persons, args.seed, args.work_dir, force=args.force_prepare
    )
    prepare_s = time.perf_counter() - t0
    truth = pd.read_parquet(truth_path).astype("string")
    n_records = len(truth)
    out_dir = records_path.parent / "out"
    out_dir.mkdir(exist_ok=True)

    tools: dict[str, Any] = {}
    for tool in args.tools:
        summary = run_child(tool, args, records_path, out_dir)
        clusters = pd.read_parquet(out_dir / f"{tool}_clusters.parquet").astype("string")
        summary["accuracy"] = evaluate(truth, clusters)
        tools[tool] = summary

    size = args.persons if args.dataset == "synth" else n_records
    result: dict[str, Any] = {
        "dataset": args.dataset,
        "n": size,
        "n_persons": int(truth["person_id"].nunique()),
        "n_records": n_records,
        "seed": args.seed,
        "started_at": started.isoformat(timespec="seconds"),
        "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "prepare_s": prepare_s,
        "splink_threshold_match_probability": args.splink_threshold,
        "versions": {d: _version(d) for d in
                     ("reglink", "splink", "duckdb", "pandas", "numpy", "rapidfuzz", "pyarrow")},
        "machine": {**_machine(), "loadavg_1_5_15_before": load_before,
                    "loadavg_1_5_15_after": os.getloadavg()},
        "tools": tools,
    }
    if set(tools) == set(TOOLS):
        result["ratios"] = {
            "speed": tools["splink"]["seconds"]["total"] / tools["reglink"]["seconds"]["total"],
            "memory": tools["splink"]["peak_rss_mb"] / tools["reglink"]["peak_rss_mb"],
        }
    args.results_dir.mkdir(parents=True, exist_ok=True)
    out = args.results_dir / f"linkage_{args.dataset}_{size}.json"
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    from report import refresh_readme  # bench/ is sys.path[0] when run as a script

    refresh_readme()  # README shows the latest figures
    print(f"\n{args.dataset}: {n_records:,} records, {result['n_persons']:,} persons, "
          f"seed {args.seed}, {result['machine']['cores']} cores; results in "
          f"{out.relative_to(REPO) if out.is_relative_to(REPO) else out}")
    print_table(result)
    if "ratios" in result:
        if args.update_readme:
            update_readme(args.results_dir, BENCH / "README.md")
        print(last_line(result))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", choices=("synth", "febrl3", "febrl4"), default="synth")
    p.add_argument("--persons", type=int, default=10_000, help="synth only (default 10000)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--tools", nargs="+", choices=TOOLS, default=list(TOOLS),
                   help="run only some tools (the last line needs both)")
    p.add_argument("--splink-threshold", type=float, default=DEFAULT_SPLINK_THRESHOLD,
                   help="Splink match probability for predict and cluster (default 0.95)")
    p.add_argument("--reglink-settings", type=Path, default=None,
                   help="reglink linkage YAML (default: config/linkage.yaml; "
                        "bench/febrl_linkage.yaml for FEBRL)")
    p.add_argument("--work-dir", type=Path, default=BENCH / "work")
    p.add_argument("--results-dir", type=Path, default=BENCH / "results")
    p.add_argument("--force-prepare", action="store_true",
                   help="rebuild the prepared records even if bench/work has them")
    p.add_argument("--keep-pairs", action="store_true", help="also write reglink's pairs")
    p.add_argument("--no-readme", dest="update_readme", action="store_false",
                   help="do not refresh the results table in bench/README.md")
    # Internal: the child process of one tool.
    p.add_argument("--only", choices=TOOLS, help=argparse.SUPPRESS)
    p.add_argument("--records", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.only:
        return child_main(args)
    return parent_main(args)


if __name__ == "__main__":
    sys.exit(main())
