"""Console accounts: password hashes, users, sessions, roles, CSRF tokens and the audit log.

Passwords are hashed with ``hashlib.scrypt`` (a per-user random salt, N=2**14, r=8, p=1) and
compared in constant time; the stored form is ``scrypt$N$r$p$<salt b64>$<hash b64>``, so the
cost can be raised later without invalidating existing hashes.

A signed session cookie (Starlette's ``SessionMiddleware``, key from ``REGLINK_SECRET_KEY``)
holds the username and a CSRF token. The user's role and ``active`` flag are read from the
database on every request, so a deactivated account is locked out at once.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from pipelines.errors import ReglinkError
from pipelines.store import schema

log = logging.getLogger(__name__)

ROLES = schema.ROLES
#: What each role may do, cumulative: a steward can do what a viewer can, and more.
ROLE_RANK = {"viewer": 0, "steward": 1, "admin": 2}

_SCRYPT_N, _SCRYPT_R, _SCRYPT_P, _DKLEN = 2**14, 8, 1, 32
MIN_PASSWORD_LENGTH = 10
USERNAME_MAX = 64

#: After this many failed logins for one username, further attempts wait LOCKOUT_SECONDS.
MAX_FAILURES = 5
LOCKOUT_SECONDS = 60


class UserError(ReglinkError):
    """A console account cannot be created or changed as asked."""


@dataclass(frozen=True)
class User:
    username: str
    role: str

    def can(self, role: str) -> bool:
        """True when this user has ``role`` or a higher one."""
        return ROLE_RANK[self.role] >= ROLE_RANK[role]

    @property
    def sees_personal_data(self) -> bool:
        """Viewers see masked names, PINs and dates; stewards and admins see them whole."""
        return self.can("steward")


# ------------------------------------------------------------------------------- passwords


def hash_password(password: str) -> str:
    """A salted scrypt hash of ``password`` in the self-describing stored form."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R,
                            p=_SCRYPT_P, dklen=_DKLEN)
    b64 = base64.b64encode
    return (f"scrypt${_SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}$"
            f"{b64(salt).decode()}${b64(digest).decode()}")


def verify_password(password: str, stored: str) -> bool:
    """True when ``password`` matches ``stored``; constant-time comparison."""
    try:
        scheme, n, r, p, salt_b64, digest_b64 = stored.split("$")
        if scheme != "scrypt":
            return False
        salt = base64.b64decode(salt_b64)
        expected = base64.b64decode(digest_b64)
        digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=int(n), r=int(r),
                                p=int(p), dklen=len(expected))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(digest, expected)


# A hash to verify against when the username is unknown, so that the answer takes as long
# as for a known user (no username probing by timing).
_DUMMY_HASH = hash_password(secrets.token_urlsafe(16))


# ----------------------------------------------------------------------------------- users


def validate_new_user(username: str, password: str, role: str) -> None:
    """Raise :class:`UserError` with what to change when the account would be refused."""
    if role not in ROLES:
        raise UserError(f"role {role!r}: expected one of {', '.join(ROLES)}")
    if not username or len(username) > USERNAME_MAX or not username.isprintable() or (
        username != username.strip() or any(c.isspace() for c in username)
    ):
        raise UserError(f"username must be 1 to {USERNAME_MAX} printable characters "
                        "without spaces")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise UserError(f"the password must have at least {MIN_PASSWORD_LENGTH} characters")


def add_user(conn: Connection, username: str, password: str, role: str,
             *, replace: bool = False) -> bool:
    """Create a console account (or, with ``replace``, reset its password and role).

    Returns:
        True when the account was created, False when an existing one was replaced.

    Raises:
        UserError: bad role, username or password, or the user exists and not ``replace``.
    """
    validate_new_user(username, password, role)
    users = schema.users
    exists = conn.execute(
        sa.select(users.c.username).where(users.c.username == username)
    ).scalar_one_or_none()
    values = {"password_hash": hash_password(password), "role": role, "active": True}
    if exists is not None:
        if not replace:
            raise UserError(f"user {username!r} already exists; pass --replace to reset the "
                            "password and role")
        conn.execute(sa.update(users).where(users.c.username == username).values(**values))
        audit(conn, None, "user_replaced", username, {"role": role})
        return False
    conn.execute(sa.insert(users).values(username=username, created_at=schema.utcnow(),
                                         **values))
    audit(conn, None, "user_added", username, {"role": role})
    return True


def load_user(conn: Connection, username: str) -> User | None:
    """The active account ``username``, or None."""
    row = conn.execute(
        sa.select(schema.users.c.username, schema.users.c.role).where(
            schema.users.c.username == username, schema.users.c.active.is_(True))
    ).one_or_none()
    return User(row.username, row.role) if row else None


class _Throttle:
    """Counts failed logins per username in this process, to slow down password guessing."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._failures: dict[str, tuple[int, float]] = {}

    def locked(self, username: str) -> bool:
        with self._lock:
            count, since = self._failures.get(username, (0, 0.0))
            if count < MAX_FAILURES:
                return False
            if time.monotonic() - since > LOCKOUT_SECONDS:
                self._failures.pop(username, None)
                return False
            return True

    def failed(self, username: str) -> None:
        with self._lock:
            count, _ = self._failures.get(username, (0, 0.0))
            self._failures[username] = (count + 1, time.monotonic())

    def succeeded(self, username: str) -> None:
        with self._lock:
            self._failures.pop(username, None)


throttle = _Throttle()


def authenticate(conn: Connection, username: str, password: str) -> tuple[User | None, str]:
    """Check a login; returns (user or None, outcome) and writes the attempt to the audit log.

    The outcome is ``ok``, ``bad_credentials`` or ``locked`` (too many failures in a row).
    """
    username = username.strip()[:USERNAME_MAX]
    if throttle.locked(username):
        audit(conn, username, "login_failed", None, {"reason": "locked"})
        return None, "locked"
    row = conn.execute(
        sa.select(schema.users).where(schema.users.c.username == username)
    ).one_or_none()
    ok = verify_password(password, row.password_hash if row else _DUMMY_HASH)
    if not ok or row is None or not row.active:
        throttle.failed(username)
        reason = "inactive" if ok and row is not None else "bad_credentials"
        audit(conn, username, "login_failed", None, {"reason": reason})
        return None, "bad_credentials"
    throttle.succeeded(username)
    audit(conn, username, "login", None, {"role": row.role})
    return User(row.username, row.role), "ok"


# ----------------------------------------------------------------------------------- audit


def audit(conn: Connection, username: str | None, action: str, target: str | None = None,
          details: dict[str, Any] | None = None) -> None:
    """Append one entry to ``audit_log`` (in the caller's transaction)."""
    conn.execute(sa.insert(schema.audit_log).values(
        at=schema.utcnow(), username=username, action=action, target=target, details=details))


# ------------------------------------------------------------------------------------ CSRF


def csrf_token(session: dict[str, Any]) -> str:
    """The session's CSRF token, created on first use."""
    token = session.get("csrf")
    if not token:
        token = secrets.token_urlsafe(32)
        session["csrf"] = token
    return token


def csrf_ok(session: dict[str, Any], submitted: object) -> bool:
    expected = session.get("csrf")
    return bool(expected) and isinstance(submitted, str) and hmac.compare_digest(
        expected.encode(), submitted.encode())


__all__ = [
    "ROLES",
    "User",
    "UserError",
    "add_user",
    "audit",
    "authenticate",
    "csrf_ok",
    "csrf_token",
    "hash_password",
    "load_user",
    "verify_password",
]
