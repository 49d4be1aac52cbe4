"""Refresh the benchmark tables of README.md from bench/results/*.json.

    python bench/report.py            # rewrite the tables between the bench markers

Every benchmark writes its figures to ``bench/results/<name>.json`` and calls
:func:`refresh_readme` at the end, so README always shows the latest measured figures. A
table lives between ``<!-- bench:<section>:start -->`` and ``<!-- bench:<section>:end -->``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
README = BENCH.parent / "README.md"


def _load(pattern: str) -> list[dict[str, Any]]:
    rows = []
    for path in sorted(RESULTS.glob(pattern)):
        try:
            rows.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return rows


def _n(value: Any, digits: int = 1) -> str:
    if value is None:
        return "–"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.{digits}f}"


def linkage_table() -> str:
    sys.path.insert(0, str(BENCH.parent))
    from bench.linkage import readme_table

    table = readme_table(RESULTS)
    solo = []
    for r in _load("linkage_*.json"):
        if set(r.get("tools", {})) == {"reglink"}:
            t = r["tools"]["reglink"]
            solo.append(f"| {r['dataset']} | {r['n_records']:,} | "
                        f"{t['accuracy']['pairwise_f1']:.4f} | – | "
                        f"{t['seconds']['total']:.1f} | – | – | {t['peak_rss_mb']:.0f} | – | "
                        f"{r['finished_at'][:10]} |")
    return table + ("\n" + "\n".join(solo) if solo else "")


def synth_table() -> str:
    rows = ["| persons | register rows | wall s | peak RSS MiB |", "|---:|---:|---:|---:|"]
    for r in sorted(_load("synth_*.json"), key=lambda r: r["persons"]):
        rows.append(f"| {r['persons']:,} | {_n(r.get('total_rows'))} | "
                    f"{_n(r.get('wall_seconds'))} | {_n(r.get('peak_rss_mib'), 0)} |")
    return "\n".join(rows)


def extract_validate_table() -> str:
    rows = ["| persons | records | extract s | validate s | total s | target s | peak RSS MiB |",
            "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(_load("extract_validate_*.json"), key=lambda r: r["persons"]):
        rows.append(f"| {r['persons']:,} | {_n(r.get('records'))} | "
                    f"{_n(r.get('extract_seconds'))} | {_n(r.get('validate_seconds'))} | "
                    f"{_n(r.get('total_seconds'))} | {_n(r.get('target_seconds'))} | "
                    f"{_n(r.get('peak_rss_mib'), 0)} |")
    return "\n".join(rows)


def nightly_table() -> str:
    rows = ["| persons | records | database | run 1 s | run 1 peak GB | delta | run 2 "
            "(incremental) s | run 2 process | IDs kept | incremental vs full F1 | "
            "F1 vs truth | later nights s |",
            "|---:|---:|---|---:|---:|---:|---:|---|---:|---:|---:|---|"]
    for r in sorted(_load("nightly_*.json"),
                    key=lambda r: (r["persons"], r.get("run2_process") == "new")):
        inc = (r.get("incremental_vs_full") or {}).get("pairwise_f1")
        truth = (r.get("run2_vs_truth") or {}).get("pairwise_f1")
        kept = r.get("ids_kept_share")
        run2 = _n(r.get("run2_seconds"))
        each = r.get("run2_seconds_each") or []
        if len(each) > 1:  # --run2-repeats: the median, and the spread
            run2 = (f"{_n(r.get('run2_seconds_median'))} (median of {len(each)}: "
                    f"{_n(min(each))}–{_n(max(each))})")
        rows.append(
            f"| {r['persons']:,} | {_n(r.get('records'))} | {r.get('database', '')} | "
            f"{_n(r.get('run1_seconds'))} | {_n(r.get('run1_peak_rss_gb'))} | "
            f"{_n((r.get('delta_share') or 0) * 100, 1)} % | {run2} | "
            f"{'new (`reglink run`)' if r.get('run2_process') == 'new' else 'same as run 1'} | "
            f"{'–' if kept is None else f'{kept * 100:.3f} %'} | "
            f"{'–' if inc is None else f'{inc:.5f}'} | "
            f"{'–' if truth is None else f'{truth:.4f}'} | "
            f"{', '.join(_n(n['seconds']) for n in r.get('later_nights') or []) or '–'} |")
    return "\n".join(rows)


def dag_table() -> str:
    rows = ["| persons | executor | DAG run s | work s (sum of tasks) | overhead per task s "
            "(mean / max) |", "|---:|---|---:|---:|---:|"]
    for r in sorted(_load("dag_run_*.json"), key=lambda r: r["persons"]):
        overheads = [t["overhead_s"] for t in r.get("tasks", []) if t.get("overhead_s") is not None]
        mean = sum(overheads) / len(overheads) if overheads else None
        rows.append(f"| {r['persons']:,} | {r.get('executor', '')} | "
                    f"{_n((r.get('dag_run') or {}).get('wall_seconds'))} | "
                    f"{_n(r.get('work_seconds_total'))} | {_n(mean, 2)} / "
                    f"{_n(max(overheads) if overheads else None, 2)} |")
    return "\n".join(rows)


def console_table() -> str:
    out = []
    for r in _load("console_*.json"):
        out.append(f"{r['persons']:,} persons in PostgreSQL, {r.get('repeat')} requests per page "
                   f"(measured {str(r.get('measured_at', ''))[:10]}):\n")
        out.append("| page | median ms | p95 ms |\n|---|---:|---:|")
        for page, t in r.get("pages", {}).items():
            out.append(f"| {page} | {_n(t.get('median_ms'))} | {_n(t.get('p95_ms'))} |")
    return "\n".join(out) or "(no results yet)"


SECTIONS: dict[str, Callable[[], str]] = {
    "linkage": linkage_table,
    "synth": synth_table,
    "extract-validate": extract_validate_table,
    "nightly": nightly_table,
    "dag": dag_table,
    "console": console_table,
}


def refresh_readme(readme: Path = README) -> list[str]:
    """Rewrite every bench table found in ``readme``; returns the sections refreshed."""
    if not readme.is_file():
        return []
    text = readme.read_text(encoding="utf-8")
    done = []
    for name, build in SECTIONS.items():
        start, end = f"<!-- bench:{name}:start -->", f"<!-- bench:{name}:end -->"
        if start not in text or end not in text:
            continue
        before, rest = text.split(start, 1)
        _, after = rest.split(end, 1)
        text = f"{before}{start}\n{build()}\n{end}{after}"
        done.append(name)
    readme.write_text(text, encoding="utf-8")
    return done


if __name__ == "__main__":
    print("refreshed:", ", ".join(refresh_readme()) or "nothing (no markers in README.md)")
