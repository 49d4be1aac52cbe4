"""MPI commands: ``reglink export crosswalk``, ``reglink person``, ``reglink decide``."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import sqlalchemy as sa

from pipelines.errors import ReglinkError
from pipelines.store import schema


def _engine(args: argparse.Namespace):
    from pipelines.store import database_url, make_engine
    from pipelines.store.migrations import require_head

    engine = make_engine(database_url(args.data_dir, args.database_url))
    with engine.connect() as conn:
        require_head(conn)
    return engine


def register(subparsers: argparse._SubParsersAction) -> None:
    from pipelines.cli import add_common_options

    export = subparsers.add_parser("export", help="export the published index",
                                   description="Export the published index.")
    what = export.add_subparsers(dest="what", metavar="WHAT", required=True)
    cw = what.add_parser("crosswalk", help="register,record_id,mpi_id of every record",
                         description="Write register,record_id,mpi_id of every record of the "
                         "published index to a CSV file (UTF-8), sorted by register and "
                         "record_id.")
    add_common_options(cw)
    cw.add_argument("--out", type=Path, required=True, help="CSV file to write ('-': stdout)")
    cw.set_defaults(func=export_crosswalk)

    person = subparsers.add_parser(
        "person", help="a person's golden record, linked records and history",
        description="Show a person of the published index, by MPI ID or by golden PIN: the "
        "golden record (each value with the record it came from), the linked records and the "
        "ID's history (new, merges, splits, updates).")
    add_common_options(person)
    person.add_argument("ident", metavar="MPI_ID_OR_PIN")
    person.add_argument("--json", action="store_true", help="print JSON")
    person.set_defaults(func=show_person)

    decide = subparsers.add_parser(
        "decide", help="record a steward decision: two records are (not) one person",
        description="Record that two records must be linked (--must-link) or must never be "
        "linked (--cannot-link). Every later run applies the decision, whatever the model "
        "says; a new decision on the same pair replaces the earlier one.")
    add_common_options(decide)
    decide.add_argument("record_a", metavar="REGISTER:RECORD_ID")
    decide.add_argument("record_b", metavar="REGISTER:RECORD_ID")
    kind = decide.add_mutually_exclusive_group(required=True)
    kind.add_argument("--must-link", dest="decision", action="store_const", const="must_link")
    kind.add_argument("--cannot-link", dest="decision", action="store_const",
                      const="cannot_link")
    decide.add_argument("--author", required=True, help="the steward's username")
    decide.add_argument("--reason", required=True, help="why (kept with the decision)")
    decide.set_defaults(func=record)


def export_crosswalk(args: argparse.Namespace) -> int:
    engine = _engine(args)
    t = schema.person_records
    query = sa.select(t.c.register, t.c.record_id, t.c.mpi_id).order_by(t.c.register,
                                                                       t.c.record_id)
    out = sys.stdout if str(args.out) == "-" else open(args.out, "w", encoding="utf-8",
                                                       newline="")
    n = 0
    try:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["register", "record_id", "mpi_id"])
        with engine.connect() as conn:
            result = conn.execution_options(stream_results=True, yield_per=50_000).execute(query)
            for rows in result.partitions():
                writer.writerows(rows)
                n += len(rows)
    finally:
        if out is not sys.stdout:
            out.close()
    if out is not sys.stdout:
        print(f"wrote {n:,} records to {args.out}")  # noqa: T201
    return 0


def _split_record(text: str) -> tuple[str, str]:
    register, sep, record_id = text.partition(":")
    if not sep or not register or not record_id:
        raise ReglinkError(f"{text!r}: expected REGISTER:RECORD_ID, e.g. civil:4935099945")
    return register, record_id


def record(args: argparse.Namespace) -> int:
    from pipelines.mpi.decisions import record_decision

    a, b = _split_record(args.record_a), _split_record(args.record_b)
    engine = _engine(args)
    t = schema.person_records
    with engine.begin() as conn:
        for register, record_id in (a, b):
            found = conn.execute(sa.select(t.c.mpi_id).where(
                t.c.register == register, t.c.record_id == record_id)).scalar_one_or_none()
            if found is None:
                print(f"note: {register}:{record_id} is not in the published index; the "  # noqa: T201
                      "decision applies when it arrives", file=sys.stderr)
        new = record_decision(conn, a, b, args.decision, author=args.author, reason=args.reason)
    print(f"decision {new}: {args.decision.replace('_', '-')} {a[0]}:{a[1]} and "  # noqa: T201
          f"{b[0]}:{b[1]} (by {args.author}); the next run applies it")
    return 0


def person_view(conn: sa.Connection, ident: str) -> dict:
    """Golden record, records and history of a person, by MPI ID or golden PIN."""
    p = schema.persons
    row = conn.execute(sa.select(p).where(p.c.mpi_id == ident)).mappings().one_or_none()
    if row is None:
        rows = conn.execute(sa.select(p).where(p.c.pin == ident, p.c.status == "active")
                            ).mappings().all()
        if len(rows) > 1:
            ids = ", ".join(r["mpi_id"] for r in rows)
            raise ReglinkError(f"PIN {ident} is the golden PIN of several persons ({ids}); "
                               "look one up by MPI ID")
        row = rows[0] if rows else None
    if row is None:
        raise ReglinkError(f"no person with MPI ID or PIN {ident!r} in the published index")
    person = dict(row)
    chain = [person["mpi_id"]]
    while person["status"] == "retired" and person["merged_into"] and len(chain) < 50:
        nxt = conn.execute(sa.select(p).where(p.c.mpi_id == person["merged_into"])
                           ).mappings().one()
        person = dict(nxt)
        chain.append(person["mpi_id"])
    mpi_id = person["mpi_id"]
    t = schema.person_records
    records = [dict(r) for r in conn.execute(
        sa.select(t.c.register, t.c.record_id, t.c.match_probability, t.c.link_basis,
                  t.c.linked_run, t.c.first_seen_run)
        .where(t.c.mpi_id == mpi_id).order_by(t.c.register, t.c.record_id)).mappings()]
    e = schema.mpi_events
    events = [dict(r) for r in conn.execute(
        sa.select(e.c.run_id, e.c.event_type, e.c.mpi_id, e.c.other_mpi_id, e.c.reason,
                  e.c.details)
        .where(sa.or_(e.c.mpi_id.in_(chain), e.c.other_mpi_id.in_(chain)))
        .order_by(e.c.id)).mappings()]
    return {"looked_up": ident, "redirected_from": chain[:-1], "person": person,
            "records": records, "history": events}


def show_person(args: argparse.Namespace) -> int:
    engine = _engine(args)
    with engine.connect() as conn:
        view = person_view(conn, args.ident)
    if args.json:
        print(json.dumps(view, indent=2, default=str, ensure_ascii=False))  # noqa: T201
        return 0
    person = view["person"]
    lines = []
    if view["redirected_from"]:
        lines.append(f"{' -> '.join(view['redirected_from'])} was merged into "
                     f"{person['mpi_id']}")
    lines.append(f"MPI ID {person['mpi_id']} ({person['status']}; created in run "
                 f"{person['created_run']}, last changed in run {person['updated_run']})")
    provenance = person.get("provenance") or {}
    if isinstance(provenance, str):
        provenance = json.loads(provenance)
    lines.append("golden record:")
    for attr in schema.GOLDEN_ATTRIBUTES:
        value = person.get(attr)
        if value is None:
            continue
        src = provenance.get(attr) or {}
        origin = f"{src.get('register')}:{src.get('record_id')}" if src else ""
        lines.append(f"  {attr:<20}{value!s:<32}{origin}")
    lines.append(f"records ({len(view['records'])}):")
    for r in view["records"]:
        prob = r["match_probability"]
        lines.append(f"  {r['register'] + ':' + r['record_id']:<40}{r['link_basis'] or '':<9}"
                     f"{'' if prob is None else f'{prob:.4f}':<8} linked in {r['linked_run']}")
    lines.append("history:")
    for ev in view["history"]:
        other = f" {ev['other_mpi_id']}" if ev["other_mpi_id"] else ""
        lines.append(f"  run {ev['run_id']}: {ev['event_type']} {ev['mpi_id']}{other} — "
                     f"{ev['reason'] or ''}")
    print("\n".join(lines))  # noqa: T201
    return 0
