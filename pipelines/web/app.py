"""The application factory of the steward console, its session, security headers and errors.

``create_app(database_url, data_dir)`` builds the FastAPI app; ``reglink serve`` runs it
with uvicorn. Pages are rendered on the server (Jinja2, autoescape on); the only script is
``static/console.js`` (keyboard shortcuts); nothing is loaded from another site.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.sessions import SessionMiddleware

from pipelines.store import make_engine
from pipelines.store.migrations import require_head
from pipelines.web import present

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
ENV_SECRET = "REGLINK_SECRET_KEY"
ENV_SECURE_COOKIE = "REGLINK_SECURE_COOKIE"
SESSION_COOKIE = "reglink_session"
SESSION_MAX_AGE = 8 * 3600

# Pages: only our own CSS and script, no inline script, no framing, forms post to us only.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
# Great Expectations Data Docs carry inline scripts and styles; they come from our own run
# folder, are shown only to stewards and still may not call out anywhere.
CSP_DATA_DOCS = ("default-src 'self' 'unsafe-inline' data:; connect-src 'none'; "
                 "form-action 'none'; frame-ancestors 'self'; base-uri 'none'")


class NotAuthenticated(Exception):
    """No valid session: browsers are sent to the login page, API clients get 401."""


class Forbidden(Exception):
    """The user's role may not do this (403)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _secret_key() -> str:
    key = os.environ.get(ENV_SECRET)
    if key:
        return key
    log.warning("%s is not set: using a random key for this process; everyone is logged "
                "out when the console restarts (set it to a long random string)", ENV_SECRET)
    return secrets.token_urlsafe(48)


def wants_json(request: Request) -> bool:
    accept = request.headers.get("accept", "")
    return request.url.path.startswith("/api/") or (
        "application/json" in accept and "text/html" not in accept)


def _fmt_time(value: Any) -> str:
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S UTC")
    return "" if value is None else str(value)


def _fmt_num(value: Any, digits: int = 0) -> str:
    if value is None or isinstance(value, jinja2.Undefined):
        return ""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    if digits == 0 and number.is_integer():
        return f"{int(number):,}"
    return f"{number:,.{digits or 3}f}"


@jinja2.pass_context
def _mask(ctx: jinja2.runtime.Context, value: Any, field: str) -> Any:
    user = ctx.get("user")
    if user is not None and user.sees_personal_data:
        return value
    return present.mask_value(field, value)


def make_templates() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,  # every template, whatever its name: names may carry <script>
        # Run files written by other versions may lack a key: show nothing rather than fail.
        undefined=jinja2.ChainableUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["mask"] = _mask
    env.filters["time"] = _fmt_time
    env.filters["num"] = _fmt_num
    env.filters["urlq"] = lambda v: quote(str(v), safe="")
    return env


def _warm_up(engine, data_dir: Path) -> None:
    """Summarise the newest published run's pairs file now, not on the first report view
    (millions of pairs take seconds to read)."""
    from pipelines.web import queries
    from pipelines.web.runfiles import RunFiles

    try:
        with engine.connect() as conn:
            run_id = queries.latest_published_run(conn)
        if run_id:
            RunFiles(data_dir, run_id).pair_summary()
    except Exception as exc:  # noqa: BLE001 - only a cache; the page reads the file itself
        log.warning("console warm-up skipped: %s", exc)


def create_app(database_url: str, data_dir: str | Path, *, check_schema: bool = True) -> FastAPI:
    """The console application.

    Args:
        database_url: the MPI database (SQLite file or PostgreSQL).
        data_dir: the data folder holding ``runs/<run_id>/`` (match reports, Data Docs).
        check_schema: refuse to start on a database that is not at the newest revision.

    Raises:
        DatabaseError: the database cannot be reached or its schema is not the newest.
    """
    from pipelines.web import routes

    engine = make_engine(database_url)
    if check_schema:
        with engine.connect() as conn:
            require_head(conn)

    app = FastAPI(title="reglink console", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine = engine
    app.state.data_dir = Path(data_dir)
    app.state.templates = make_templates()

    @app.middleware("http")
    async def security_headers(request: Request, call_next):
        response: Response = await call_next(request)
        path = request.url.path
        data_docs = "/data-docs/" in path
        response.headers.setdefault("Content-Security-Policy", CSP_DATA_DOCS if data_docs
                                    else CSP)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault("X-Frame-Options", "SAMEORIGIN" if data_docs else "DENY")
        if not path.startswith("/static/"):
            # Pages carry personal data: no copies in shared caches or the browser's history.
            response.headers.setdefault("Cache-Control", "no-store")
        return response

    # Added after the header middleware so that it wraps it: the session is decoded first.
    app.add_middleware(
        SessionMiddleware,
        secret_key=_secret_key(),
        session_cookie=SESSION_COOKIE,
        max_age=SESSION_MAX_AGE,
        same_site="strict",
        https_only=os.environ.get(ENV_SECURE_COOKIE, "").lower() in ("1", "true", "yes"),
    )

    @app.exception_handler(NotAuthenticated)
    async def _not_authenticated(request: Request, exc: NotAuthenticated):
        if wants_json(request) or request.method != "GET":
            return JSONResponse({"detail": "not authenticated"}, status_code=401)
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=302)

    @app.exception_handler(Forbidden)
    async def _forbidden(request: Request, exc: Forbidden):
        if wants_json(request):
            return JSONResponse({"detail": exc.message}, status_code=403)
        return routes.render(request, "error.html", {"title": "Not allowed",
                                                     "message": exc.message}, status=403)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        if wants_json(request) or exc.status_code not in (400, 404, 405):
            return JSONResponse({"detail": exc.detail}, status_code=exc.status_code)
        try:
            user = routes.optional_user(request)
        except Exception:  # noqa: BLE001 - an error page must not fail on the session
            user = None
        if user is None:
            # Do not tell an anonymous client which pages exist.
            return JSONResponse({"detail": "not authenticated"}, status_code=401) \
                if request.method != "GET" else RedirectResponse("/login", status_code=302)
        return routes.render(request, "error.html", {"title": "Not found"
                             if exc.status_code == 404 else "Bad request",
                             "message": str(exc.detail)}, status=exc.status_code)

    threading.Thread(target=_warm_up, args=(engine, Path(data_dir)), daemon=True,
                     name="reglink-console-warm-up").start()
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    app.include_router(routes.router)
    return app


__all__ = ["create_app", "wants_json"]
