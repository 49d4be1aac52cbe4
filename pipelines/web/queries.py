"""The console's reads and writes against the MPI database.

Every query is bounded (LIMIT, a key or an indexed prefix) so that a page costs the same on
a 1,000-person demo and a 10-million-person index: no page counts or scans ``persons``,
``person_records`` or ``match_pairs`` as a whole.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from matching.translit import name_key
from pipelines.store import schema

PAGE_SIZE = 50
#: Review-queue sizes above this are shown as "10,000+" (counting further costs time).
COUNT_CAP = 10_000

runs_t = schema.runs
persons_t = schema.persons
records_t = schema.person_records
pairs_t = schema.match_pairs
decisions_t = schema.review_decisions
events_t = schema.mpi_events
findings_t = schema.consistency_findings
metrics_t = schema.consistency_metrics


def _rows(result) -> list[dict[str, Any]]:
    return [dict(r._mapping) for r in result]


# ------------------------------------------------------------------------------------ runs


def list_runs(conn: Connection, limit: int = PAGE_SIZE, offset: int = 0) -> list[dict]:
    return _rows(conn.execute(
        sa.select(runs_t).order_by(runs_t.c.started_at.desc(), runs_t.c.run_id.desc())
        .limit(limit).offset(offset)))


def get_run(conn: Connection, run_id: str) -> dict | None:
    row = conn.execute(sa.select(runs_t).where(runs_t.c.run_id == run_id)).one_or_none()
    return dict(row._mapping) if row else None


def latest_published_run(conn: Connection) -> str | None:
    return conn.execute(
        sa.select(runs_t.c.run_id).where(runs_t.c.status == "published")
        .order_by(runs_t.c.started_at.desc(), runs_t.c.run_id.desc()).limit(1)
    ).scalar_one_or_none()


def run_pair_status_counts(conn: Connection, run_id: str) -> dict[str, int]:
    """Pairs of the run in the database by status (``review``, ``linked``, ``rejected``)."""
    out = {}
    for status in schema.PAIR_STATUSES:
        # One bounded count per status over the (run_id, status) index.
        sub = (sa.select(pairs_t.c.id).where(pairs_t.c.run_id == run_id,
                                             pairs_t.c.status == status)
               .limit(COUNT_CAP + 1).subquery())
        out[status] = conn.execute(sa.select(sa.func.count()).select_from(sub)).scalar_one()
    return out


def quarantine_summary(conn: Connection, run_id: str) -> list[dict]:
    q = schema.quarantine
    return _rows(conn.execute(
        sa.select(q.c.register, q.c.rule, q.c.severity, sa.func.count().label("entries"))
        .where(q.c.run_id == run_id)
        .group_by(q.c.register, q.c.rule, q.c.severity)
        .order_by(q.c.register, q.c.rule)))


def quarantine_rows(conn: Connection, run_id: str, limit: int = PAGE_SIZE,
                    offset: int = 0) -> list[dict]:
    q = schema.quarantine
    return _rows(conn.execute(
        sa.select(q.c.register, q.c.record_id, q.c.source_file, q.c.source_row, q.c.rule,
                  q.c.column_name, q.c.value, q.c.severity)
        .where(q.c.run_id == run_id)
        .order_by(q.c.register, q.c.source_file, q.c.source_row, q.c.rule)
        .limit(limit).offset(offset)))


# ------------------------------------------------------------------------------ review queue


def _current_decision_exists(pairs=pairs_t):
    d = decisions_t
    return sa.exists().where(
        d.c.register_l == pairs.c.register_l, d.c.record_id_l == pairs.c.record_id_l,
        d.c.register_r == pairs.c.register_r, d.c.record_id_r == pairs.c.record_id_r,
        d.c.superseded_by.is_(None))


def review_queue(conn: Connection, run_id: str, *, limit: int = PAGE_SIZE, offset: int = 0,
                 skipped: tuple[int, ...] = ()) -> list[dict]:
    """Undecided pairs of the run's review band, most likely matches first."""
    stmt = (sa.select(pairs_t.c.id, pairs_t.c.register_l, pairs_t.c.record_id_l,
                      pairs_t.c.register_r, pairs_t.c.record_id_r, pairs_t.c.match_weight,
                      pairs_t.c.match_probability)
            .where(pairs_t.c.run_id == run_id, pairs_t.c.status == "review",
                   ~_current_decision_exists())
            .order_by(pairs_t.c.match_weight.desc(), pairs_t.c.id)
            .limit(limit).offset(offset))
    if skipped:
        stmt = stmt.where(pairs_t.c.id.not_in(skipped))
    return _rows(conn.execute(stmt))


def review_count(conn: Connection, run_id: str) -> int:
    sub = (sa.select(pairs_t.c.id)
           .where(pairs_t.c.run_id == run_id, pairs_t.c.status == "review",
                  ~_current_decision_exists())
           .limit(COUNT_CAP + 1).subquery())
    return conn.execute(sa.select(sa.func.count()).select_from(sub)).scalar_one()


def get_pair(conn: Connection, pair_id: int) -> dict | None:
    row = conn.execute(sa.select(pairs_t).where(pairs_t.c.id == pair_id)).one_or_none()
    return dict(row._mapping) if row else None


def ordered_pair(a: tuple[str, str], b: tuple[str, str]) -> tuple[str, str, str, str]:
    """The pair as stored: ``(register_l, record_id_l) < (register_r, record_id_r)``."""
    left, right = sorted((a, b))
    return (left[0], left[1], right[0], right[1])


def _pair_where(table, pair: tuple[str, str, str, str]):
    return sa.and_(table.c.register_l == pair[0], table.c.record_id_l == pair[1],
                   table.c.register_r == pair[2], table.c.record_id_r == pair[3])


def pair_decisions(conn: Connection, pair: tuple[str, str, str, str]) -> list[dict]:
    return _rows(conn.execute(
        sa.select(decisions_t).where(_pair_where(decisions_t, pair))
        .order_by(decisions_t.c.decided_at.desc(), decisions_t.c.id.desc())))


def record_decision(conn: Connection, pair: tuple[str, str, str, str], decision: str,
                    author: str, reason: str | None, run_id: str | None) -> int:
    """Store a steward decision; the pair's previous current decision is superseded."""
    if decision not in schema.DECISIONS:
        raise ValueError(f"decision {decision!r}: expected one of {schema.DECISIONS}")
    new_id = conn.execute(
        sa.insert(decisions_t).values(
            register_l=pair[0], record_id_l=pair[1], register_r=pair[2], record_id_r=pair[3],
            decision=decision, author=author, reason=reason or None,
            decided_at=schema.utcnow(), run_id=run_id)
        .returning(decisions_t.c.id)).scalar_one()
    conn.execute(
        sa.update(decisions_t)
        .where(_pair_where(decisions_t, pair), decisions_t.c.superseded_by.is_(None),
               decisions_t.c.id != new_id)
        .values(superseded_by=new_id))
    return int(new_id)


def person_of_records(conn: Connection, keys: list[tuple[str, str]]) -> dict[tuple, str]:
    if not keys:
        return {}
    cond = sa.or_(*[sa.and_(records_t.c.register == r, records_t.c.record_id == i)
                    for r, i in keys])
    return {(r.register, r.record_id): r.mpi_id for r in conn.execute(
        sa.select(records_t.c.register, records_t.c.record_id, records_t.c.mpi_id)
        .where(cond))}


# ---------------------------------------------------------------------------- person lookup


_DMY = re.compile(r"^(\d{1,2})[./-](\d{1,2})[./-](\d{4})$")
_YMD = re.compile(r"^(\d{4})(?:-(\d{1,2}))?(?:-(\d{1,2}))?$")


class LookupError_(ValueError):
    """A lookup the console cannot run; the message says what to type instead."""


def parse_birth_date(text: str) -> tuple[str, str] | None:
    """(lower, upper) ISO bounds for a typed birth date: ``1985``, ``1985-03``,
    ``1985-03-12`` or ``12.03.1985``; None when empty.

    Golden dates may be partial (``1985`` when only the year is known), so an exact date
    also matches a person whose golden date is its year or month (see :func:`find_persons`).
    """
    text = text.strip()
    if not text:
        return None
    m = _DMY.match(text)
    if m:
        text = f"{m.group(3)}-{int(m.group(2)):02d}-{int(m.group(1)):02d}"
    m = _YMD.match(text)
    if not m:
        raise LookupError_("birth date: type it as YYYY-MM-DD, DD.MM.YYYY, YYYY-MM or YYYY")
    year, month, day = m.group(1), m.group(2), m.group(3)
    try:
        if day:
            iso = date(int(year), int(month), int(day)).isoformat()
            return iso, iso
        if month:
            if not 1 <= int(month) <= 12:
                raise ValueError
            return f"{year}-{int(month):02d}", f"{year}-{int(month):02d}-99"
    except ValueError:
        raise LookupError_("birth date: no such date") from None
    return year, f"{year}-99"


def _next_key(key: str) -> str:
    # Upper bound of a prefix range over lowercase ASCII keys ("muhamad" -> "muhamae").
    return key[:-1] + chr(ord(key[-1]) + 1)


@dataclass
class Lookup:
    """What was searched, as the console understood it (for the result page)."""

    kind: str
    surname_key: str | None = None
    given_key: str | None = None
    birth: tuple[str, str] | None = None


def find_by_id(conn: Connection, text: str, limit: int = PAGE_SIZE) -> list[dict]:
    """Persons whose MPI ID or golden PIN is ``text`` (a PIN also without separators)."""
    text = text.strip()
    if not text:
        return []
    found = _rows(conn.execute(sa.select(persons_t).where(persons_t.c.mpi_id == text)))
    if found:
        return found
    variants = {text, re.sub(r"\D", "", text)} - {""}
    return _rows(conn.execute(
        sa.select(persons_t).where(persons_t.c.pin.in_(sorted(variants)))
        .order_by(persons_t.c.mpi_id).limit(limit)))


def find_persons(conn: Connection, surname: str, given_name: str = "", birth_date: str = "",
                 *, limit: int = PAGE_SIZE) -> tuple[list[dict], Lookup]:
    """Persons by name in any script (and birth date), through the name-key index.

    The surname must match its canonical key exactly (Каримов = Karimov, not Karimova); the
    given name is a prefix (Muhammad finds Muhammad Ali). A full birth date also finds
    persons whose golden date is only the year or month of it.

    Raises:
        LookupError_: no letters in the surname, or an unreadable birth date.
    """
    skey = name_key(surname)
    if not skey:
        raise LookupError_("surname: type at least one letter (any script)")
    gkey = name_key(given_name) if given_name.strip() else None
    birth = parse_birth_date(birth_date)
    p = persons_t
    cond = [p.c.surname_key == skey]
    if gkey:
        cond.append(sa.and_(p.c.given_key >= gkey, p.c.given_key < _next_key(gkey)))
    if birth:
        lower, upper = birth
        date_cond = sa.and_(p.c.birth_date >= lower, p.c.birth_date <= upper)
        if lower == upper:  # an exact date: also the partial golden dates it falls in
            date_cond = sa.or_(date_cond, p.c.birth_date.in_([lower[:4], lower[:7]]))
        cond.append(date_cond)
    rows = _rows(conn.execute(
        sa.select(p).where(*cond)
        .order_by(p.c.status, p.c.surname_key, p.c.given_key, p.c.birth_date, p.c.mpi_id)
        .limit(limit)))
    return rows, Lookup("name", skey, gkey, birth)


def get_person(conn: Connection, mpi_id: str) -> dict | None:
    row = conn.execute(sa.select(persons_t).where(persons_t.c.mpi_id == mpi_id)).one_or_none()
    return dict(row._mapping) if row else None


def person_records(conn: Connection, mpi_id: str, limit: int = 500) -> list[dict]:
    return _rows(conn.execute(
        sa.select(records_t).where(records_t.c.mpi_id == mpi_id)
        .order_by(records_t.c.register, records_t.c.record_id).limit(limit)))


def person_events(conn: Connection, mpi_id: str, limit: int = 200) -> list[dict]:
    return _rows(conn.execute(
        sa.select(events_t)
        .where(sa.or_(events_t.c.mpi_id == mpi_id, events_t.c.other_mpi_id == mpi_id))
        .order_by(events_t.c.created_at.desc(), events_t.c.id.desc()).limit(limit)))


def person_findings(conn: Connection, mpi_id: str, limit: int = 100) -> list[dict]:
    return _rows(conn.execute(
        sa.select(findings_t.c.run_id, findings_t.c.rule, findings_t.c.register,
                  findings_t.c.details)
        .where(findings_t.c.mpi_id == mpi_id)
        .order_by(findings_t.c.run_id.desc(), findings_t.c.rule).limit(limit)))


def records_decisions(conn: Connection, keys: list[tuple[str, str]],
                      limit: int = 200) -> list[dict]:
    """Current decisions that involve any of the records (for the person page)."""
    if not keys:
        return []
    d = decisions_t
    left = sa.tuple_(d.c.register_l, d.c.record_id_l).in_(keys)
    right = sa.tuple_(d.c.register_r, d.c.record_id_r).in_(keys)
    return _rows(conn.execute(
        sa.select(d).where(sa.or_(left, right), d.c.superseded_by.is_(None))
        .order_by(d.c.decided_at.desc()).limit(limit)))


# ----------------------------------------------------------------------------- consistency


def consistency_trend(conn: Connection, runs: int = 30) -> tuple[list[str], dict[str, dict]]:
    """Per rule: findings per published run (oldest first), over the last ``runs`` runs.

    A rule's figure for a run is its ``all`` row when there is one, else the sum over
    registers.
    """
    recent = (sa.select(runs_t.c.run_id, runs_t.c.started_at)
              .where(runs_t.c.status == "published")
              .order_by(runs_t.c.started_at.desc(), runs_t.c.run_id.desc())
              .limit(runs).subquery())
    rows = conn.execute(
        sa.select(metrics_t.c.run_id, metrics_t.c.rule, metrics_t.c.register,
                  metrics_t.c.count, metrics_t.c.denominator, recent.c.started_at)
        .join(recent, recent.c.run_id == metrics_t.c.run_id)).all()
    run_order = sorted({(r.started_at, r.run_id) for r in rows})
    run_ids = [r for _, r in run_order]
    per_rule: dict[str, dict] = {}
    for r in rows:
        rule = per_rule.setdefault(r.rule, {"all": {}, "sum": {}, "registers": {},
                                            "denominator": {}})
        if r.register == "all":
            rule["all"][r.run_id] = r.count
            rule["denominator"][r.run_id] = r.denominator
        else:
            rule["sum"][r.run_id] = rule["sum"].get(r.run_id, 0) + r.count
            rule["registers"].setdefault(r.run_id, {})[r.register] = r.count
    out = {}
    for name, rule in sorted(per_rule.items()):
        series = [(run_id, rule["all"].get(run_id, rule["sum"].get(run_id)))
                  for run_id in run_ids]
        series = [(run_id, v) for run_id, v in series if v is not None]
        out[name] = {"series": series,
                     "latest": series[-1] if series else None,
                     "previous": series[-2] if len(series) > 1 else None,
                     "registers": rule["registers"].get(series[-1][0], {}) if series else {},
                     "denominator": rule["denominator"].get(series[-1][0]) if series else None}
    return run_ids, out


def findings_page(conn: Connection, run_id: str, rule: str, *, limit: int | None = PAGE_SIZE,
                  offset: int = 0) -> list[dict]:
    """One rule's findings of a run with each person's golden record, by MPI ID."""
    f, p = findings_t, persons_t
    stmt = (sa.select(f.c.mpi_id, f.c.register, f.c.record_ids, f.c.details, p.c.status,
                      p.c.pin, p.c.surname, p.c.given_name, p.c.patronymic, p.c.birth_date,
                      p.c.death_date, p.c.region, p.c.district)
            .select_from(f.outerjoin(p, p.c.mpi_id == f.c.mpi_id))
            .where(f.c.run_id == run_id, f.c.rule == rule)
            .order_by(f.c.mpi_id).offset(offset))
    if limit is not None:
        stmt = stmt.limit(limit)
    return _rows(conn.execute(stmt))


def rule_runs(conn: Connection, rule: str, limit: int = 30) -> list[str]:
    """Published runs (newest first) that have figures for ``rule``."""
    return list(conn.execute(
        sa.select(runs_t.c.run_id)
        .where(runs_t.c.status == "published",
               sa.exists().where(metrics_t.c.run_id == runs_t.c.run_id,
                                 metrics_t.c.rule == rule))
        .order_by(runs_t.c.started_at.desc(), runs_t.c.run_id.desc()).limit(limit)).scalars())


# ----------------------------------------------------------------------------------- audit


def audit_page(conn: Connection, limit: int = PAGE_SIZE, offset: int = 0) -> list[dict]:
    a = schema.audit_log
    return _rows(conn.execute(
        sa.select(a).order_by(a.c.at.desc(), a.c.id.desc()).limit(limit).offset(offset)))
