"""The steward web console (``reglink serve``): match reports, review queue, person lookup,
consistency dashboard. docs/console.md describes it.

``create_app(database_url, data_dir)`` returns the FastAPI application.
"""

from pipelines.web.app import create_app

__all__ = ["create_app"]
