"""Shared fixtures.

PostgreSQL: tests marked ``postgres`` get a throwaway database created for the test session
and dropped afterwards. The server comes from ``REGLINK_TEST_PG_URL`` (default: the local
server with trust auth). Without a server they skip on a laptop, but fail under ``CI=true``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

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


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def empty_db_url(request: pytest.FixtureRequest, tmp_path) -> Iterator[str]:
    """URL of an empty MPI database, once on SQLite and once on a new PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'mpi.sqlite'}"
        return
    server_url = request.getfixturevalue("pg_url")
    name = f"reglink_test_{uuid.uuid4().hex[:12]}"
    admin = _admin_connect(server_url.replace("postgresql+psycopg2://", "postgresql://"))
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    try:
        yield server_url.rsplit("/", 1)[0] + "/" + name
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()
