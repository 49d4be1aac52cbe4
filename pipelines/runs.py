"""Run partitions: ``<data-dir>/runs/<run_id>/<step>/``, one folder per run and step."""

from __future__ import annotations

from pathlib import Path

from pipelines.errors import ReglinkError


def runs_dir(data_dir: str | Path) -> Path:
    return Path(data_dir) / "runs"


def latest_run_id(data_dir: str | Path) -> str:
    """The newest run that has an extract (run ids sort by time)."""
    candidates = sorted(
        p.name for p in runs_dir(data_dir).glob("*") if (p / "extract").is_dir()
    )
    if not candidates:
        raise ReglinkError(
            f"no run with extracts under {runs_dir(data_dir)}; run `reglink extract` first "
            "(or pass --data-dir of the folder that holds runs/)"
        )
    return candidates[-1]


def run_dir(data_dir: str | Path, run_id: str | None) -> Path:
    """The folder of ``run_id`` (default: the newest run), which must exist."""
    run_id = run_id or latest_run_id(data_dir)
    path = runs_dir(data_dir) / run_id
    if not path.is_dir():
        raise ReglinkError(f"run {run_id!r} not found: {path} does not exist")
    return path
