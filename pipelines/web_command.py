"""``reglink serve`` (the steward console) and ``reglink users add`` (console accounts)."""

from __future__ import annotations

import argparse
import getpass
import logging
import sys

from pipelines.errors import ReglinkError

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    from pipelines.cli import add_common_options
    from pipelines.store.schema import ROLES

    serve = subparsers.add_parser(
        "serve",
        help="run the steward web console",
        description=(
            "Serve the steward console (match reports, review queue, person lookup, "
            "consistency dashboard) over HTTP. Sessions are signed with $REGLINK_SECRET_KEY; "
            "without it everyone is logged out when the console restarts. Put it behind a "
            "TLS-terminating proxy and set REGLINK_SECURE_COOKIE=1 when it is reached over "
            "the network."
        ),
    )
    add_common_options(serve)
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.set_defaults(func=run_serve)

    users = subparsers.add_parser("users", help="manage console accounts",
                                  description="Manage the web console's accounts.")
    users_sub = users.add_subparsers(dest="users_command", metavar="ACTION", required=True)
    add = users_sub.add_parser(
        "add",
        help="create a console account",
        description=(
            "Create an account of the web console. The password is asked for (twice), or "
            "read from standard input with --password-stdin; it is never a command-line "
            "argument, which other users of the machine could see."
        ),
    )
    add_common_options(add)
    add.add_argument("username")
    add.add_argument("--role", required=True, choices=ROLES,
                     help="viewer: reads, personal data masked; steward: decides pairs and "
                     "sees personal data; admin: also reads the audit log")
    add.add_argument("--password-stdin", action="store_true",
                     help="read the password from the first line of standard input")
    add.add_argument("--replace", action="store_true",
                     help="reset the password and role of an existing account")
    add.set_defaults(func=run_users_add)


def _engine(args: argparse.Namespace):
    from pipelines.store import database_url, make_engine

    return make_engine(database_url(args.data_dir, args.database_url))


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        line = sys.stdin.readline()
        return line.rstrip("\r\n")
    if not sys.stdin.isatty():
        raise ReglinkError("no terminal to ask for the password; pass --password-stdin and "
                           "send the password on standard input")
    first = getpass.getpass("Password: ")
    second = getpass.getpass("Password again: ")
    if first != second:
        raise ReglinkError("the two passwords differ; nothing was changed")
    return first


def run_users_add(args: argparse.Namespace) -> int:
    from pipelines.store.migrations import require_head
    from pipelines.web.auth import add_user, validate_new_user

    password = _read_password(args.password_stdin)
    validate_new_user(args.username, password, args.role)
    engine = _engine(args)
    try:
        with engine.begin() as conn:
            require_head(conn)
            created = add_user(conn, args.username, password, args.role, replace=args.replace)
    finally:
        engine.dispose()
    verb = "created" if created else "updated"
    print(f"user {args.username} {verb} (role {args.role})")  # noqa: T201
    return 0


def run_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from pipelines.store import database_url
    from pipelines.web import create_app

    app = create_app(database_url(args.data_dir, args.database_url), args.data_dir)
    print(f"reglink console on http://{args.host}:{args.port}/ (Ctrl-C stops it)",  # noqa: T201
          flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info", proxy_headers=False,
                server_header=False)
    return 0
