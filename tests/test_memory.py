"""``reglink run`` lets Arrow's allocator keep freed memory only for an incremental run.

The setting must be in the environment before pyarrow loads, so it is checked in a new
Python process, as a nightly job starts one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.memory import PURGE_DELAY_ENV, has_published_run
from pipelines.store import make_engine, upgrade
from pipelines.store import repository as repo

ROOT = Path(__file__).resolve().parents[1]


def _database(data_dir: Path, status: str | None) -> str:
    """A migrated SQLite MPI database in ``data_dir``, holding one run with ``status``."""
    url = f"sqlite:///{data_dir / 'mpi.sqlite'}"
    engine = make_engine(url)
    upgrade(engine)
    if status is not None:
        with engine.begin() as conn:
            repo.start_run(conn, "20260101T000000Z", seed=1, config_hash="x")
            repo.finish_run(conn, "20260101T000000Z", status)
    engine.dispose()
    return url


def _cli_start(argv: list[str], env: dict[str, str] | None = None) -> dict:
    """What the CLI decided before loading pyarrow, in a new process."""
    code = (
        "import json, os, sys\n"
        "from pipelines.cli import _before_loading_arrow\n"
        f"_before_loading_arrow({argv!r})\n"
        f"print(json.dumps({{'delay': os.environ.get({PURGE_DELAY_ENV!r}),"
        " 'arrow_loaded': 'pyarrow' in sys.modules}))\n"
    )
    environ = {k: v for k, v in os.environ.items() if k != PURGE_DELAY_ENV}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, env={**environ, **(env or {})}, check=True)
    return json.loads(done.stdout)


def test_a_run_after_a_published_one_keeps_freed_memory(tmp_path):
    _database(tmp_path, "published")
    started = _cli_start(["run", "--data-dir", str(tmp_path), "--run-id", "20260102T000000Z"])
    assert started == {"delay": "60000", "arrow_loaded": False}


@pytest.mark.parametrize("case", ["no_database", "no_tables", "failed_run", "full", "help",
                                  "other_command"])
def test_a_first_or_full_run_keeps_the_default(tmp_path, case):
    if case == "no_tables":
        make_engine(f"sqlite:///{tmp_path / 'mpi.sqlite'}").dispose()
    elif case != "no_database":
        _database(tmp_path, "failed" if case == "failed_run" else "published")
    argv = {"full": ["run", "--full", "--data-dir", str(tmp_path)],
            "help": ["run", "--help", "--data-dir", str(tmp_path)],
            "other_command": ["validate", "--data-dir", str(tmp_path)]
            }.get(case, ["run", "--data-dir", str(tmp_path)])
    assert _cli_start(argv)["delay"] is None


def test_the_operators_setting_is_kept(tmp_path):
    _database(tmp_path, "published")
    started = _cli_start(["run", "--data-dir", str(tmp_path)], {PURGE_DELAY_ENV: "0"})
    assert started["delay"] == "0"


def test_the_database_url_comes_from_the_option_or_the_environment(tmp_path):
    url = _database(tmp_path / "elsewhere", "published")
    assert has_published_run(url)
    assert _cli_start(["run", "--data-dir", str(tmp_path), "--database-url", url])["delay"]
    assert _cli_start(["run", "--data-dir", str(tmp_path)], {"REGLINK_DATABASE_URL": url}
                      )["delay"]
    assert not has_published_run("postgresql+psycopg2://nobody@127.0.0.1:1/none")
