"""The console's pages and JSON endpoints.

Every route except ``/login`` depends on :func:`current_user`; routes that change anything
also check the role (:func:`require`) and the form's CSRF token (:func:`check_csrf`).
Handlers are plain ``def``: FastAPI runs them in its thread pool, where blocking database
calls belong.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import sqlalchemy as sa
from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    StreamingResponse,
)

from pipelines.store import schema
from pipelines.web import auth, charts, explain, present
from pipelines.web import queries as q
from pipelines.web.app import Forbidden, NotAuthenticated
from pipelines.web.runfiles import RECORD_FIELDS, RunFiles, band_counts, cached_in

log = logging.getLogger(__name__)

router = APIRouter()

#: Pairs a steward skipped stay out of their queue for the session, up to this many.
MAX_SKIPPED = 500
#: "Undo a merge" writes cannot-link decisions between the two parts: at most this many.
MAX_SPLIT_PAIRS = 500


# ------------------------------------------------------------------------------ plumbing


def engine(request: Request) -> sa.Engine:
    return request.app.state.engine


def optional_user(request: Request) -> auth.User | None:
    username = request.session.get("user")
    if not username:
        return None
    cached = request.scope.get("reglink.user")
    if cached is not None:
        return cached
    with engine(request).connect() as conn:
        user = auth.load_user(conn, username)
    if user is None:
        request.session.clear()
        return None
    request.scope["reglink.user"] = user
    return user


def current_user(request: Request) -> auth.User:
    user = optional_user(request)
    if user is None:
        raise NotAuthenticated()
    return user


CurrentUser = Annotated[auth.User, Depends(current_user)]


def require(role: str):
    def dependency(user: CurrentUser) -> auth.User:
        if not user.can(role):
            raise Forbidden(f"this needs the {role} role; you are a {user.role}")
        return user

    return dependency


Steward = Annotated[auth.User, Depends(require("steward"))]
Admin = Annotated[auth.User, Depends(require("admin"))]


async def check_csrf(request: Request) -> dict[str, Any]:
    """The submitted form, after checking its CSRF token against the session's."""
    form = await request.form()
    if not auth.csrf_ok(request.session, form.get("csrf_token")):
        raise HTTPException(status_code=400, detail="the form has expired or was not sent by "
                            "this console; reload the page and try again")
    return {k: form.get(k) for k in form.keys()} | {"_multi": form}


def render(request: Request, template: str, context: dict[str, Any],
           status: int = 200) -> HTMLResponse:
    env = request.app.state.templates
    user = request.scope.get("reglink.user")
    flash = request.session.pop("flash", None) if "session" in request.scope else None
    full = {"request": request, "user": user, "flash": flash,
            "csrf": auth.csrf_token(request.session), "path": request.url.path,
            "title": "", **context}
    return HTMLResponse(env.get_template(template).render(full), status_code=status)


def _flash(request: Request, text: str) -> None:
    request.session["flash"] = text


def _page(request: Request) -> int:
    try:
        return max(int(request.query_params.get("page", "1")), 1)
    except ValueError:
        return 1


def _safe_next(target: str | None) -> str:
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/runs"


def _audit(request: Request, user: auth.User | None, action: str, target: str | None = None,
           details: dict | None = None) -> None:
    with engine(request).begin() as conn:
        auth.audit(conn, user.username if user else None, action, target, details)


# --------------------------------------------------------------------------------- login


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request):
    if optional_user(request):
        return RedirectResponse(_safe_next(request.query_params.get("next")), status_code=302)
    return render(request, "login.html", {"title": "Sign in",
                                          "next": _safe_next(request.query_params.get("next")),
                                          "error": None})


@router.post("/login")
async def login(request: Request):
    form = await request.form()
    username = str(form.get("username") or "")
    password = str(form.get("password") or "")
    target = _safe_next(str(form.get("next") or ""))
    if not auth.csrf_ok(request.session, form.get("csrf_token")):
        return render(request, "login.html", {"title": "Sign in", "next": target,
                      "error": "The form expired; please sign in again."}, status=400)
    from starlette.concurrency import run_in_threadpool

    def _check():
        with engine(request).begin() as conn:
            return auth.authenticate(conn, username, password)

    user, outcome = await run_in_threadpool(_check)
    if user is None:
        message = ("Too many failed attempts; wait a minute and try again."
                   if outcome == "locked" else "Wrong username or password.")
        return render(request, "login.html", {"title": "Sign in", "next": target,
                                              "error": message}, status=401)
    request.session.clear()  # a fresh session (and CSRF token) at each login
    request.session["user"] = user.username
    auth.csrf_token(request.session)
    return RedirectResponse(target, status_code=303)


@router.post("/logout")
async def logout(request: Request, user: CurrentUser):
    await check_csrf(request)
    _audit(request, user, "logout")
    request.session.clear()
    return RedirectResponse("/login", status_code=303)


@router.get("/")
def home(user: CurrentUser):
    return RedirectResponse("/runs", status_code=302)


# ---------------------------------------------------------------------------------- runs


def _flatten(counts: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(counts, dict):
        out: list[tuple[str, Any]] = []
        for k, v in counts.items():
            out.extend(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return [(prefix, counts)]


def _run_files(request: Request, run_id: str) -> RunFiles | None:
    try:
        return RunFiles(request.app.state.data_dir, run_id)
    except ValueError:
        return None


@router.get("/runs", response_class=HTMLResponse)
def runs_page(request: Request, user: CurrentUser):
    page = _page(request)
    with engine(request).connect() as conn:
        runs = q.list_runs(conn, q.PAGE_SIZE + 1, (page - 1) * q.PAGE_SIZE)
    more = len(runs) > q.PAGE_SIZE
    runs = runs[: q.PAGE_SIZE]
    for run in runs:
        run["flat_counts"] = _flatten(run.get("counts") or {})
        run["duration"] = ((run["finished_at"] - run["started_at"]).total_seconds()
                           if run.get("finished_at") and run.get("started_at") else None)
    return render(request, "runs.html", {"title": "Runs", "runs": runs, "page": page,
                                         "more": more})


def _report_context(request: Request, run: dict) -> dict[str, Any]:
    files = _run_files(request, run["run_id"])
    ctx: dict[str, Any] = {"files": files, "report": None, "model": None, "validation": None,
                           "per_pair": [], "hist": None, "thresholds": None,
                           "data_docs": False}
    if files is None:
        return ctx
    ctx["report"] = files.link_report
    ctx["model"] = files.model
    ctx["validation"] = files.validation
    ctx["data_docs"] = files.has_data_docs()
    thresholds = files.thresholds()
    summary = files.pair_summary()
    if thresholds:
        ctx["thresholds"] = {k: {"probability": v, "weight": charts.weight_of_probability(v)}
                             for k, v in thresholds.items()}
    if summary is not None:
        weights_th = {k: v["weight"] for k, v in (ctx["thresholds"] or {}).items()}
        ctx["hist"] = cached_in(summary, ("hist", *sorted(weights_th.items())),
                                lambda: charts.histogram(summary["weights"], weights_th))
        ctx["per_pair"] = band_counts(summary, thresholds or {})
        ctx["pairs_in_file"] = int(len(summary["weights"]))
    return ctx


@router.get("/runs/{run_id}", response_class=HTMLResponse)
def run_page(request: Request, run_id: str, user: CurrentUser):
    with engine(request).connect() as conn:
        run = q.get_run(conn, run_id)
        if run is None:
            raise HTTPException(404, f"no run {run_id}")
        pair_counts = q.run_pair_status_counts(conn, run_id)
        quarantine = q.quarantine_summary(conn, run_id)
    ctx = _report_context(request, run)
    return render(request, "run.html", {
        "title": f"Run {run_id}", "run": run, "flat_counts": _flatten(run.get("counts") or {}),
        "pair_counts": pair_counts, "count_cap": q.COUNT_CAP, "quarantine": quarantine, **ctx})


@router.get("/runs/{run_id}/quarantine", response_class=HTMLResponse)
def quarantine_page(request: Request, run_id: str, user: CurrentUser):
    page = _page(request)
    with engine(request).connect() as conn:
        run = q.get_run(conn, run_id)
        if run is None:
            raise HTTPException(404, f"no run {run_id}")
        rows = q.quarantine_rows(conn, run_id, q.PAGE_SIZE + 1, (page - 1) * q.PAGE_SIZE)
    return render(request, "quarantine.html", {
        "title": f"Quarantine of run {run_id}", "run": run, "rows": rows[: q.PAGE_SIZE],
        "page": page, "more": len(rows) > q.PAGE_SIZE})


@router.get("/runs/{run_id}/data-docs/{path:path}")
def data_docs(request: Request, run_id: str, path: str,
              user: Steward):
    files = _run_files(request, run_id)
    if files is None:
        raise HTTPException(404, "no such run")
    root = files.data_docs_dir.resolve()
    target = (root / (path or "index.html")).resolve()
    if root not in target.parents and target != root or not target.is_file():
        raise HTTPException(404, "no such Data Docs page")
    return FileResponse(target)


# ---------------------------------------------------------------------------------- review


def _queue_run(request: Request, conn: sa.Connection) -> str | None:
    run_id = request.query_params.get("run")
    return run_id if run_id else q.latest_published_run(conn)


def _skipped(request: Request) -> tuple[int, ...]:
    return tuple(request.session.get("skipped", []))


@router.get("/review", response_class=HTMLResponse)
def review_page(request: Request, user: CurrentUser):
    page = _page(request)
    with engine(request).connect() as conn:
        run_id = _queue_run(request, conn)
        rows, total = [], 0
        if run_id:
            rows = q.review_queue(conn, run_id, limit=q.PAGE_SIZE + 1,
                                  offset=(page - 1) * q.PAGE_SIZE)
            total = q.review_count(conn, run_id)
    return render(request, "review.html", {
        "title": "Review queue", "run_id": run_id, "rows": rows[: q.PAGE_SIZE],
        "more": len(rows) > q.PAGE_SIZE, "page": page, "total": total,
        "count_cap": q.COUNT_CAP, "skipped": len(_skipped(request))})


@router.get("/review/next")
def review_next(request: Request, user: CurrentUser):
    with engine(request).connect() as conn:
        run_id = _queue_run(request, conn)
        rows = q.review_queue(conn, run_id, limit=1, skipped=_skipped(request)) \
            if run_id else []
    if not rows:
        _flash(request, "The review queue is empty" + (" (apart from the pairs you skipped)."
                                                        if _skipped(request) else "."))
        return RedirectResponse("/review", status_code=303)
    return RedirectResponse(f"/review/{rows[0]['id']}", status_code=303)


def _side_values(pair: dict, records: dict, contributions: list[dict]) -> list[dict]:
    left = records.get((pair["register_l"], pair["record_id_l"]), {})
    right = records.get((pair["register_r"], pair["record_id_r"]), {})
    by_field = {"given": "given_name", "mother": "mother_name", "father": "father_name"}
    levels = {by_field.get(c["name"], c["name"]): c for c in contributions}
    rows = []
    for field in RECORD_FIELDS:
        lv, rv = left.get(field), right.get(field)
        comp = levels.get(field)
        if comp and lv is None and rv is None:
            lv, rv = comp.get("left"), comp.get("right")
        if lv is None and rv is None and comp is None:
            continue
        same = lv is not None and rv is not None and str(lv).casefold() == str(rv).casefold()
        rows.append({"field": field, "left": lv, "right": rv, "same": same,
                     "label": comp["label"] if comp else "",
                     "weight": comp["weight"] if comp else None})
    return rows


@router.get("/review/{pair_id}", response_class=HTMLResponse)
def pair_page(request: Request, pair_id: int, user: CurrentUser):
    with engine(request).connect() as conn:
        pair = q.get_pair(conn, pair_id)
        if pair is None:
            raise HTTPException(404, f"no pair {pair_id}")
        key = (pair["register_l"], pair["record_id_l"], pair["register_r"], pair["record_id_r"])
        history = q.pair_decisions(conn, key)
        sides = q.person_of_records(conn, [key[:2], key[2:]])
    files = _run_files(request, pair["run_id"])
    model = files.model if files else None
    prior, contributions = explain.contributions(pair.get("explanation"), model,
                                                 pair["match_weight"])
    records = files.records([key[:2], key[2:]]) if files else {}
    waterfall = None
    if prior is not None and contributions:
        waterfall = charts.waterfall(prior, [
            (f"{c['name']}: {c['label']}" if c["label"] else c["name"], c["weight"])
            for c in contributions])
    return render(request, "pair.html", {
        "title": f"Pair {pair_id}", "pair": pair, "history": history,
        "current": next((h for h in history if h["superseded_by"] is None), None),
        "fields": _side_values(pair, records, contributions), "records_found": bool(records),
        "mpi_l": sides.get(key[:2]), "mpi_r": sides.get(key[2:]),
        "waterfall": waterfall, "prior": prior, "contributions": contributions,
        "run_q": request.query_params.get("run", "")})


@router.post("/review/{pair_id}")
async def decide(request: Request, pair_id: int, user: Steward):
    form = await check_csrf(request)
    action = form.get("action")
    reason = str(form.get("reason") or "").strip()[:500] or None
    run_q = str(form.get("run") or "")
    next_url = "/review/next" + (f"?run={quote(run_q, safe='')}" if run_q else "")
    from starlette.concurrency import run_in_threadpool

    def _write() -> str:
        with engine(request).begin() as conn:
            pair = q.get_pair(conn, pair_id)
            if pair is None:
                raise HTTPException(404, f"no pair {pair_id}")
            key = (pair["register_l"], pair["record_id_l"], pair["register_r"],
                   pair["record_id_r"])
            if action == "skip":
                auth.audit(conn, user.username, "skip_pair", f"pair:{pair_id}",
                           {"reason": reason, "run_id": pair["run_id"]})
                return "skipped"
            decision = {"accept": "must_link", "reject": "cannot_link"}.get(str(action))
            if decision is None:
                raise HTTPException(400, "action must be accept, reject or skip")
            decision_id = q.record_decision(conn, key, decision, user.username, reason,
                                            pair["run_id"])
            auth.audit(conn, user.username, "decide_pair", f"pair:{pair_id}",
                       {"decision": decision, "reason": reason, "decision_id": decision_id,
                        "run_id": pair["run_id"], "pair": list(key)})
            return decision

    outcome = await run_in_threadpool(_write)
    if outcome == "skipped":
        skipped = [i for i in _skipped(request) if i != pair_id] + [pair_id]
        request.session["skipped"] = skipped[-MAX_SKIPPED:]
        _flash(request, f"Pair {pair_id} skipped.")
    else:
        label = "accepted (must link)" if outcome == "must_link" else "rejected (cannot link)"
        _flash(request, f"Pair {pair_id} {label}; the next run applies it.")
    return RedirectResponse(next_url, status_code=303)


# --------------------------------------------------------------------------------- persons


@router.get("/persons", response_class=HTMLResponse)
def persons_page(request: Request, user: CurrentUser):
    params = request.query_params
    ident = params.get("id", "").strip()
    surname = params.get("surname", "").strip()
    given = params.get("given", "").strip()
    birth = params.get("birth", "").strip()
    rows: list[dict] | None = None
    error = None
    kind = None
    with engine(request).connect() as conn:
        try:
            if ident:
                kind = "id"
                rows = q.find_by_id(conn, ident)
            elif surname or given or birth:
                kind = "name"
                rows, _ = q.find_persons(conn, surname, given, birth)
        except q.LookupError_ as exc:
            error = str(exc)
    if rows is not None:
        _audit(request, user, "lookup", None, {"kind": kind, "results": len(rows),
                                               "query": {"id": ident, "surname": surname,
                                                         "given": given, "birth": birth}})
        if kind == "id" and len(rows) == 1:
            return RedirectResponse(f"/persons/{quote(rows[0]['mpi_id'], safe='')}",
                                    status_code=303)
    return render(request, "persons.html", {
        "title": "Person lookup", "rows": rows, "error": error, "form": {
            "id": ident, "surname": surname, "given": given, "birth": birth},
        "limit": q.PAGE_SIZE})


def _merge_parts(events: list[dict], mpi_id: str) -> set[tuple[str, str]]:
    """Records the newest merge into ``mpi_id`` brought in, when its event lists them."""
    for event in events:
        if event["event_type"] == "merge" and event["mpi_id"] == mpi_id:
            details = event.get("details") or {}
            listed = details.get("absorbed_records") or details.get("records") or []
            keys = {(str(r.get("register")), str(r.get("record_id")))
                    for r in listed if isinstance(r, dict)}
            if keys:
                return keys
    return set()


@router.get("/persons/{mpi_id}", response_class=HTMLResponse)
def person_page(request: Request, mpi_id: str, user: CurrentUser):
    with engine(request).begin() as conn:
        person = q.get_person(conn, mpi_id)
        if person is None:
            raise HTTPException(404, f"no person with MPI ID {mpi_id}")
        records = q.person_records(conn, mpi_id)
        events = q.person_events(conn, mpi_id)
        findings = q.person_findings(conn, mpi_id)
        decisions = q.records_decisions(conn, [(r["register"], r["record_id"])
                                               for r in records])
        auth.audit(conn, user.username, "view_person", mpi_id)
    golden = [(a, person.get(a), (person.get("provenance") or {}).get(a))
              for a in schema.GOLDEN_ATTRIBUTES]
    return render(request, "person.html", {
        "title": f"Person {mpi_id}", "person": person, "golden": golden, "records": records,
        "events": events, "findings": findings, "decisions": decisions,
        "preselect": _merge_parts(events, mpi_id)})


@router.post("/persons/{mpi_id}/split")
async def split_person(request: Request, mpi_id: str,
                       user: Steward):
    form = await check_csrf(request)
    chosen = {tuple(v.split(":", 1)) for v in form["_multi"].getlist("record")
              if isinstance(v, str) and ":" in v}
    reason = str(form.get("reason") or "").strip()[:500] or None
    from starlette.concurrency import run_in_threadpool

    def _write() -> tuple[int, str | None]:
        with engine(request).begin() as conn:
            records = {(r["register"], r["record_id"]) for r in q.person_records(conn, mpi_id)}
            if not records:
                raise HTTPException(404, f"no person with MPI ID {mpi_id}")
            part = chosen & records
            rest = records - part
            if not part or not rest:
                return 0, "Tick the records of one part (at least one, not all)."
            pairs = [q.ordered_pair(a, b) for a in sorted(part) for b in sorted(rest)]
            if len(pairs) > MAX_SPLIT_PAIRS:
                return 0, (f"That would record {len(pairs):,} decisions (at most "
                           f"{MAX_SPLIT_PAIRS}); decide the pairs in the review queue.")
            for pair in pairs:
                q.record_decision(conn, pair, "cannot_link", user.username,
                                  reason or "undo merge", None)
            auth.audit(conn, user.username, "undo_merge", mpi_id,
                       {"reason": reason, "part": sorted(map(list, part)),
                        "decisions": len(pairs)})
            return len(pairs), None

    written, problem = await run_in_threadpool(_write)
    _flash(request, problem or f"{written} cannot-link decision(s) recorded; the next run "
           "splits the ticked records off this person.")
    return RedirectResponse(f"/persons/{quote(mpi_id, safe='')}", status_code=303)


# ----------------------------------------------------------------------------- consistency


@router.get("/consistency", response_class=HTMLResponse)
def consistency_page(request: Request, user: CurrentUser):
    with engine(request).connect() as conn:
        run_ids, rules = q.consistency_trend(conn)
    for rule in rules.values():
        rule["chart"] = charts.trend(rule["series"])
        latest, previous = rule["latest"], rule["previous"]
        rule["change"] = latest[1] - previous[1] if latest and previous else None
        rule["rate"] = (latest[1] / rule["denominator"]
                        if latest and rule["denominator"] else None)
    return render(request, "consistency.html", {"title": "Consistency", "rules": rules,
                                                "run_ids": run_ids})


@router.get("/consistency/{rule}", response_class=HTMLResponse)
def rule_page(request: Request, rule: str, user: CurrentUser):
    page = _page(request)
    with engine(request).connect() as conn:
        runs = q.rule_runs(conn, rule)
        if not runs:
            raise HTTPException(404, f"no figures for rule {rule}")
        run_id = request.query_params.get("run") or runs[0]
        rows = q.findings_page(conn, run_id, rule, limit=q.PAGE_SIZE + 1,
                               offset=(page - 1) * q.PAGE_SIZE)
        _, trend = q.consistency_trend(conn)
    series = trend.get(rule, {}).get("series", [])
    return render(request, "rule.html", {
        "title": f"Rule {rule}", "rule": rule, "runs": runs, "run_id": run_id,
        "rows": rows[: q.PAGE_SIZE], "more": len(rows) > q.PAGE_SIZE, "page": page,
        "chart": charts.trend(series, width=720, height=160), "series": series})


CSV_COLUMNS = ("run_id", "rule", "mpi_id", "register", "status", "pin", "surname",
               "given_name", "patronymic", "birth_date", "death_date", "region", "district",
               "record_ids", "details")


@router.get("/consistency/{rule}/export.csv")
def rule_csv(request: Request, rule: str, user: CurrentUser):
    with engine(request).connect() as conn:
        runs = q.rule_runs(conn, rule)
    if not runs:
        raise HTTPException(404, f"no figures for rule {rule}")
    run_id = request.query_params.get("run") or runs[0]
    if run_id not in runs:
        raise HTTPException(404, f"rule {rule} has no figures for run {run_id}")
    _audit(request, user, "export_findings", rule, {"run_id": run_id})
    see_all = user.sees_personal_data
    eng = engine(request)

    def rows() -> Iterator[str]:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        buffer.write("\ufeff")  # spreadsheets then read the file as UTF-8 (Cyrillic names)
        writer.writerow(CSV_COLUMNS)
        offset, batch = 0, 5000
        while True:
            with eng.connect() as conn:
                chunk = q.findings_page(conn, run_id, rule, limit=batch, offset=offset)
            for row in chunk:
                row = present.mask_row(row, see_all)
                values = {**row, "run_id": run_id, "rule": rule,
                          "record_ids": json.dumps(row.get("record_ids"), ensure_ascii=False)
                          if see_all else "",
                          "details": json.dumps(row.get("details"), ensure_ascii=False)}
                writer.writerow([present.csv_safe(values.get(c)) for c in CSV_COLUMNS])
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
            if len(chunk) < batch:
                return
            offset += batch

    filename = f"findings_{rule}_{run_id}.csv".replace('"', "")
    return StreamingResponse(rows(), media_type="text/csv; charset=utf-8",
                             headers={"Content-Disposition":
                                      f"attachment; filename=\"{quote(filename)}\""})


# ----------------------------------------------------------------------------------- audit


@router.get("/audit", response_class=HTMLResponse)
def audit_page(request: Request, user: Admin):
    page = _page(request)
    with engine(request).connect() as conn:
        rows = q.audit_page(conn, q.PAGE_SIZE + 1, (page - 1) * q.PAGE_SIZE)
    return render(request, "audit.html", {"title": "Audit log", "rows": rows[: q.PAGE_SIZE],
                                          "more": len(rows) > q.PAGE_SIZE, "page": page})


# ------------------------------------------------------------------------------------- API


def _json_safe(row: dict) -> dict:
    out = {}
    for k, v in row.items():
        if hasattr(v, "isoformat"):
            v = v.isoformat()
        elif isinstance(v, float) and not math.isfinite(v):
            v = None
        out[k] = v
    return out


@router.get("/api/me")
def api_me(user: CurrentUser):
    return {"username": user.username, "role": user.role}


@router.get("/api/runs")
def api_runs(request: Request, user: CurrentUser):
    with engine(request).connect() as conn:
        return JSONResponse([_json_safe(r) for r in q.list_runs(conn)])


@router.get("/api/review")
def api_review(request: Request, user: CurrentUser):
    with engine(request).connect() as conn:
        run_id = _queue_run(request, conn)
        rows = q.review_queue(conn, run_id) if run_id else []
    see_all = user.sees_personal_data
    return {"run_id": run_id, "pairs": [present.mask_row(r, see_all) for r in rows]}


@router.get("/api/persons/{mpi_id}")
def api_person(request: Request, mpi_id: str, user: CurrentUser):
    with engine(request).begin() as conn:
        person = q.get_person(conn, mpi_id)
        if person is None:
            raise HTTPException(404, f"no person with MPI ID {mpi_id}")
        records = q.person_records(conn, mpi_id)
        auth.audit(conn, user.username, "view_person", mpi_id, {"via": "api"})
    see_all = user.sees_personal_data
    return {"person": _json_safe(present.mask_row(person, see_all)),
            "records": [_json_safe(present.mask_row(r, see_all)) for r in records]}


def static_dir() -> Path:
    return Path(__file__).resolve().parent / "static"
