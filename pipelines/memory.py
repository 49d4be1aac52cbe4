"""How long Arrow's allocator keeps memory it has freed, chosen before pyarrow is loaded.

Arrow allocates through mimalloc, which gives freed memory back to the system 10 ms after
it is freed. Taking it again costs a page fault per page; on a virtual machine that hands
freed memory back to its host (free page reporting, as on our benchmark machines) that is
about 2.5 s of system time per GB. An incremental nightly run frees and takes back
gigabytes from step to step, so ``reglink run`` lets mimalloc keep freed memory for a
minute (``MIMALLOC_PURGE_DELAY=60000``) when the run will be incremental: its peak is
small, and it runs seconds faster (docs/mpi.md has the figures).

A first run or a full relink (``--full``) keeps the default: its steps would keep what they
free until the step ends, and a first run at 1,000,000 persons then peaked over 8 GB.

mimalloc reads the setting when pyarrow is loaded, so this module imports nothing that
loads it (SQLAlchemy and the store's engine and schema modules, to ask the database whether
a run was published; tests/test_memory.py checks that pyarrow is still not loaded).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

log = logging.getLogger(__name__)

PURGE_DELAY_ENV = "MIMALLOC_PURGE_DELAY"
#: Milliseconds mimalloc keeps freed memory during an incremental run.
INCREMENTAL_PURGE_DELAY_MS = 60_000


def has_published_run(database_url: str) -> bool:
    """Whether the MPI database holds a published run (the next run is then incremental,
    unless relinked in full). False when the database or its tables do not exist yet."""
    import sqlalchemy as sa

    from pipelines.store.engine import DatabaseError, make_engine, sqlite_path
    from pipelines.store.schema import runs  # not repository.last_published_run: its module
    # loads pandas, and with it pyarrow

    try:
        path = sqlite_path(database_url)
        if path is not None and not path.is_file():
            return False
        engine = make_engine(database_url, check=False)  # with the connect timeout
    except DatabaseError:  # a malformed URL: the run reports it
        return False
    try:
        with engine.connect() as conn:
            row = conn.execute(sa.select(runs.c.run_id).where(
                runs.c.status == "published").limit(1)).first()
    except sa.exc.SQLAlchemyError:  # no runs table yet, or unreachable: the run will say
        return False
    finally:
        engine.dispose()
    return row is not None


def keep_freed_memory_for_incremental_run(*, data_dir: Path, database_url: str | None,
                                          full: bool) -> bool:
    """Set :data:`PURGE_DELAY_ENV` for this process when the run will be incremental and
    neither the operator nor an earlier import has decided (pyarrow loaded: too late).
    Returns whether it was set."""
    if full or PURGE_DELAY_ENV in os.environ or "pyarrow" in sys.modules:
        return False
    from pipelines.store.engine import database_url as resolve

    if not has_published_run(resolve(data_dir, database_url)):
        return False
    os.environ[PURGE_DELAY_ENV] = str(INCREMENTAL_PURGE_DELAY_MS)
    log.debug("incremental run: Arrow's allocator keeps freed memory for %d ms",
              INCREMENTAL_PURGE_DELAY_MS)
    return True
