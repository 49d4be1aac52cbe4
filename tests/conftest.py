"""Shared fixtures.

PostgreSQL: tests marked ``postgres`` get a throwaway database created for the test session
and dropped afterwards. The server comes from ``REGLINK_TEST_PG_URL`` (default: the local
server with trust auth). Without a server they skip on a laptop, but fail under ``CI=true``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def _admin_connect(url: str):
    import psycopg2

    conn = psycopg2.connect(url, connect_timeout=5)
    conn.autocommit = True
    return conn


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """URL (``postgresql+psycopg2://...``) of a fresh database, dropped after the session."""
    admin_url = os.environ.get("REGLINK_TEST_PG_URL", DEFAULT_PG_URL)
    try:
        admin = _admin_connect(admin_url)
    except Exception as exc:  # any connection failure: no server here
        message = f"PostgreSQL not reachable at {admin_url}: {exc}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message + " (CI=true: tests that need PostgreSQL must not skip)")
        pytest.skip(message)
    name = f"reglink_test_{uuid.uuid4().hex[:12]}"
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    base = admin_url.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}".replace("postgresql://", "postgresql+psycopg2://", 1)
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@contextmanager
def new_pg_database(server_url: str, prefix: str = "reglink_test") -> Iterator[str]:
    """A new empty database on the server of ``server_url`` (a ``pg_url``), dropped after
    the block, even while connections are still open."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = _admin_connect(server_url.replace("postgresql+psycopg2://", "postgresql://"))
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    try:
        yield server_url.rsplit("/", 1)[0] + "/" + name
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def empty_db_url(request: pytest.FixtureRequest, tmp_path) -> Iterator[str]:
    """URL of an empty MPI database, once on SQLite and once on a new PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'mpi.sqlite'}"
        return
    with new_pg_database(request.getfixturevalue("pg_url")) as url:
        yield url


def synthetic_country(base: Path, persons: int, seed: int, *, share: float,
                      delta_seed: int) -> dict[str, Path]:
    """``reglink synth`` of ``persons`` under ``base/source``, and the same country one
    night later (``share`` of the records corrected, added or deleted) under ``base/delta``."""
    from pipelines.cli import main
    from pipelines.mpi.incremental import make_nightly_delta

    source, delta = base / "source", base / "delta"
    assert main(["synth", "--persons", str(persons), "--seed", str(seed),
                 "--out", str(source)]) == 0
    config = Path(__file__).resolve().parents[1] / "config"
    make_nightly_delta(source, delta, config, share=share, seed=delta_seed)
    return {"source": source, "delta": delta}
