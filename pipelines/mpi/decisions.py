"""Steward decisions: a pair of records that must (or must never) be one person.

Decisions live in ``review_decisions`` with their author and reason. They do not depend on
the model, so they survive retraining: every run reads the current decisions (those not
superseded) and the cluster step applies them as must-link / cannot-link constraints. A new
decision on the same pair supersedes the earlier one; the history stays.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from pipelines.errors import ReglinkError
from pipelines.store import schema

log = logging.getLogger(__name__)

DECISIONS = schema.DECISIONS
PAIR_COLUMNS = ["register_l", "record_id_l", "register_r", "record_id_r"]


class DecisionError(ReglinkError):
    """A steward decision cannot be recorded as given."""


def ordered_pair(a: tuple[str, str], b: tuple[str, str]) -> tuple[str, str, str, str]:
    """The pair in the stored order: ``(register_l, record_id_l) < (register_r, record_id_r)``."""
    lo, hi = (a, b) if a <= b else (b, a)
    return lo[0], lo[1], hi[0], hi[1]


def record_decision(
    conn: Connection,
    a: tuple[str, str],
    b: tuple[str, str],
    decision: str,
    *,
    author: str,
    reason: str | None = None,
    run_id: str | None = None,
    decided_at: datetime | None = None,
) -> int:
    """Record a steward's decision on the records ``a`` and ``b`` (register, record_id).

    The pair's earlier current decision, if any, is superseded by this one. Returns the new
    decision's id.

    Raises:
        DecisionError: unknown decision, no author, or a record paired with itself.
    """
    if decision not in DECISIONS:
        raise DecisionError(f"decision {decision!r}: expected one of {', '.join(DECISIONS)}")
    if not author or not author.strip():
        raise DecisionError("a decision needs its author (--author USERNAME)")
    if tuple(a) == tuple(b):
        raise DecisionError(f"record {a[0]}/{a[1]} cannot be paired with itself")
    pair = dict(zip(PAIR_COLUMNS, ordered_pair(tuple(a), tuple(b)), strict=True))
    t = schema.review_decisions
    where = sa.and_(*(t.c[k] == v for k, v in pair.items()), t.c.superseded_by.is_(None))
    earlier = conn.execute(sa.select(t.c.id).where(where)).scalars().all()
    new_id = conn.execute(
        t.insert().values(**pair, decision=decision, author=author.strip(), reason=reason,
                          run_id=run_id, decided_at=decided_at or datetime.now(UTC))
        .returning(t.c.id)
    ).scalar_one()
    if earlier:
        conn.execute(sa.update(t).where(t.c.id.in_(earlier)).values(superseded_by=new_id))
    log.info("decision %d (%s) recorded by a steward", new_id, decision)
    return int(new_id)


def current_decisions(conn: Connection) -> pd.DataFrame:
    """The decisions in force: one per pair, those not superseded, oldest first."""
    t = schema.review_decisions
    rows = conn.execute(
        sa.select(t.c.id, *(t.c[c] for c in PAIR_COLUMNS), t.c.decision, t.c.author,
                  t.c.reason, t.c.decided_at)
        .where(t.c.superseded_by.is_(None))
        .order_by(t.c.id)
    ).all()
    frame = pd.DataFrame(rows, columns=["id", *PAIR_COLUMNS, "decision", "author", "reason",
                                        "decided_at"])
    # Two current rows for one pair can only come from concurrent writers: the newest wins.
    return frame.drop_duplicates(PAIR_COLUMNS, keep="last").reset_index(drop=True)
