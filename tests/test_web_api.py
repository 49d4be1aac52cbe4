"""The steward console over HTTP (FastAPI's TestClient): auth, roles, CSRF, masking, pages.

The MPI database is seeded directly with a small hand-made index (Cyrillic and Latin names,
a name carrying a script tag, a name that is a spreadsheet formula), so these tests do not
depend on the publish step.
"""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from matching.translit import name_key
from pipelines.store import make_engine, schema, upgrade
from pipelines.web import auth, create_app
from pipelines.web.present import csv_safe, mask_date, mask_id, mask_name

PASSWORD = "correct horse battery"
XSS = "<script>alert(1)</script>"
FORMULA = "=cmd|' /C calc'!A0"
RUNS = ("20261101T010000Z", "20261102T010000Z", "20261103T010000Z")
LATEST = RUNS[-1]

PERSONS = [
    # mpi_id, surname, given, patronymic, birth, pin, region
    ("MPI-0001", "Каримов", "Алишер", "Рустамович", "1985-03-12", "1234567890123", "Sughd"),
    ("MPI-0002", "Karimov", "Alisher", "Rustamovich", "1985-03-12", "1234567890999", "Sughd"),
    ("MPI-0003", "Ҷӯраева", "Нодира", None, "1990-07-01", "2222333344445", "Khatlon"),
    ("MPI-0004", XSS, "Mallory", None, "1970-01-01", "9999888877776", "Dushanbe"),
    ("MPI-0005", FORMULA, "+Bob", None, "1960", "5555444433332", "GBAO"),
    ("MPI-0006", "Rahimov", "Muhammad Ali", None, "2001-11-30", "7777666655554", "Sughd"),
]

RECORDS = [
    # register, record_id, mpi_id
    ("civil", "B-1", "MPI-0001"), ("national_id", "ID-1", "MPI-0001"),
    ("pension", "P-1", "MPI-0001"),
    ("civil", "B-2", "MPI-0002"), ("electoral", "E-2", "MPI-0002"),
    ("civil", "B-3", "MPI-0003"),
    ("civil", "B-4", "MPI-0004"), ("health", "H-4", "MPI-0004"),
    ("civil", "B-5", "MPI-0005"),
    ("civil", "B-6", "MPI-0006"),
]

# Review-band pairs of the latest run: (left, right, weight, probability).
PAIRS = [
    (("civil", "B-1"), ("civil", "B-2"), 3.5, 0.918),
    (("civil", "B-4"), ("health", "H-4"), 2.0, 0.8),
    (("civil", "B-3"), ("civil", "B-6"), 0.5, 0.586),
]

MODEL = {
    "prior_weight": -11.78, "lambda": 0.00028, "seed": 42,
    "thresholds": {"link": 0.95, "review": 0.5},
    "comparisons": [
        {"name": "surname", "labels": ["else", "jw>=0.88", "exact"], "m": [0.1, 0.2, 0.7],
         "u": [0.97, 0.02, 0.01], "log2_bayes_factor": [-3.28, 3.32, 6.13]},
        {"name": "birth_date", "labels": ["else", "year", "exact"], "m": [0.05, 0.15, 0.8],
         "u": [0.9, 0.09, 0.01], "log2_bayes_factor": [-4.17, 0.74, 6.32]},
    ],
}


def _explanation(weight: float) -> dict:
    return {"prior_weight": MODEL["prior_weight"], "comparisons": [
        {"name": "surname", "level": 2, "label": "exact", "weight": 6.13},
        {"name": "birth_date", "level": 2, "label": "exact",
         "weight": round(weight - MODEL["prior_weight"] - 6.13, 2)},
    ]}


def seed_index(url: str, data_dir: Path) -> None:
    """Write a small published index, three runs of consistency figures and a run folder."""
    engine = make_engine(url)
    upgrade(engine)
    t0 = datetime(2026, 11, 1, 1, tzinfo=UTC)
    with engine.begin() as conn:
        for i, run_id in enumerate(RUNS):
            conn.execute(sa.insert(schema.runs).values(
                run_id=run_id, started_at=t0 + timedelta(days=i),
                finished_at=t0 + timedelta(days=i, minutes=20), status="published", seed=42,
                config_hash="cfg", counts={"extracted": {"civil": 6}, "persons": 6}))
        conn.execute(sa.insert(schema.persons), [
            {"mpi_id": m, "status": "active", "surname": s, "given_name": g, "patronymic": p,
             "birth_date": b, "birth_date_quality": "exact" if len(b) == 10 else "partial",
             "pin": pin, "region": region, "district": "D", "address": "Street 1",
             "phone": "+992 900 000 000", "surname_key": name_key(s), "given_key": name_key(g),
             "provenance": {"surname": {"register": "civil", "record_id": "B-x"}},
             "created_run": RUNS[0], "updated_run": LATEST}
            for m, s, g, p, b, pin, region in PERSONS])
        conn.execute(sa.insert(schema.person_records), [
            {"register": r, "record_id": rid, "mpi_id": m, "match_probability": 0.99,
             "link_basis": "model", "linked_run": LATEST, "first_seen_run": RUNS[0]}
            for r, rid, m in RECORDS])
        conn.execute(sa.insert(schema.match_pairs), [
            {"run_id": LATEST, "register_l": a[0], "record_id_l": a[1], "register_r": b[0],
             "record_id_r": b[1], "match_weight": w, "match_probability": p,
             "status": "review", "explanation": _explanation(w)}
            for a, b, w, p in PAIRS])
        conn.execute(sa.insert(schema.mpi_events), [
            {"run_id": RUNS[0], "event_type": "new", "mpi_id": "MPI-0001",
             "other_mpi_id": None, "reason": None, "details": None},
            {"run_id": RUNS[1], "event_type": "merge", "mpi_id": "MPI-0001",
             "other_mpi_id": "MPI-0009", "reason": "linked by the model",
             "details": {"absorbed_records": [{"register": "pension", "record_id": "P-1"}]}},
        ])
        # dead_but_pension_active grows 1 -> 2 -> 3 findings over the runs.
        for i, run_id in enumerate(RUNS):
            conn.execute(sa.insert(schema.consistency_metrics), [
                {"run_id": run_id, "rule": "dead_but_pension_active", "register": "pension",
                 "count": i + 1, "denominator": 6, "rate": (i + 1) / 6},
                {"run_id": run_id, "rule": "minor_on_electoral_roll", "register": "electoral",
                 "count": 2, "denominator": 6, "rate": 2 / 6},
            ])
        conn.execute(sa.insert(schema.consistency_findings), [
            {"run_id": LATEST, "rule": "dead_but_pension_active", "mpi_id": m,
             "register": "pension", "record_ids": [{"register": "pension", "record_id": "P-1"}],
             "details": {"note": FORMULA}}
            for m in ("MPI-0001", "MPI-0004", "MPI-0005")])
        conn.execute(sa.insert(schema.quarantine).values(
            run_id=LATEST, register="civil", record_id="B-99", source_file="civil.csv",
            source_row=7, rule="pin_check_digit", column_name="pin", value="1234567890000",
            severity="error", created_at=t0))
        for username, role in (("vera", "viewer"), ("stan", "steward"), ("ada", "admin")):
            auth.add_user(conn, username, PASSWORD, role)
    engine.dispose()

    run_dir = data_dir / "runs" / LATEST
    (run_dir / "link").mkdir(parents=True)
    (run_dir / "validate").mkdir(parents=True)
    (run_dir / "link" / "model.json").write_text(json.dumps(MODEL))
    (run_dir / "link" / "report.json").write_text(json.dumps({
        "run_id": LATEST, "records": 10, "pairs": {"scored": 6, "linked": 3, "review": 3},
        "clusters": 6, "thresholds": MODEL["thresholds"],
        "blocking": {"n_records": 10, "max_block_size": 1000, "total_pairs": 9, "rules": [
            {"rule": "surname_given_year", "columns": ["surname_root", "birth_year"],
             "blocks": 4, "pairs": 9, "new_pairs": 9, "cumulative_pairs": 9,
             "records_without_key": 0, "oversized_blocks": 0}]}}))
    pd.DataFrame({
        "register_l": ["civil", "civil", "civil", "civil", "civil", "national_id"],
        "record_id_l": ["B-1", "B-4", "B-3", "B-1", "B-2", "ID-1"],
        "register_r": ["civil", "health", "civil", "national_id", "electoral", "pension"],
        "record_id_r": ["B-2", "H-4", "B-6", "ID-1", "E-2", "P-1"],
        "match_weight": [3.5, 2.0, 0.5, 20.0, 18.0, 15.0],
        "match_probability": [0.918, 0.8, 0.586, 1.0, 1.0, 1.0],
    }).to_parquet(run_dir / "link" / "pairs.parquet")
    pd.DataFrame({"record_id": ["B-1", "B-2", "B-3", "B-4", "B-6"],
                  "surname": ["Каримов", "Karimov", "Ҷӯраева", XSS, "Rahimov"],
                  "given_name": ["Алишер", "Alisher", "Нодира", "Mallory", "Muhammad Ali"],
                  "birth_date": ["1985-03-12", "1985-03-12", "1990-07-01", "1970-01-01",
                                 "2001-11-30"],
                  "pin": ["1234567890123", "1234567890999", None, None, None]}
                 ).to_parquet(run_dir / "validate" / "civil.parquet")
    pd.DataFrame({"record_id": ["H-4"], "surname": [XSS], "given_name": ["Mallory"],
                  "birth_date": ["1970-01-01"], "pin": [None]}
                 ).to_parquet(run_dir / "validate" / "health.parquet")
    (run_dir / "validate" / "summary.json").write_text(json.dumps({
        "run_id": LATEST, "status": "passed", "registers": {"civil": {
            "extracted": 7, "passed": 6, "quarantined": 1, "flagged": 0, "checks": [
                {"check": "extract_not_empty", "ok": True}]}}}))
    (run_dir / "validate" / "data_docs").mkdir()
    (run_dir / "validate" / "data_docs" / "index.html").write_text("<h1>Data Docs</h1>")


@pytest.fixture(scope="module")
def seeded(tmp_path_factory) -> tuple[str, Path]:
    data_dir = tmp_path_factory.mktemp("console")
    url = f"sqlite:///{data_dir / 'mpi.sqlite'}"
    seed_index(url, data_dir)
    return url, data_dir


@pytest.fixture(scope="module")
def app(seeded):
    url, data_dir = seeded
    return create_app(url, data_dir)


def _csrf(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "no CSRF token in the page"
    return match.group(1)


def login(client: TestClient, username: str, password: str = PASSWORD):
    page = client.get("/login")
    return client.post("/login", data={"username": username, "password": password,
                                       "csrf_token": _csrf(page.text), "next": "/runs"},
                       follow_redirects=False)


@pytest.fixture
def client(app):
    with TestClient(app, base_url="http://testserver") as c:
        yield c


def as_user(app, username: str) -> TestClient:
    c = TestClient(app, base_url="http://testserver")
    assert login(c, username).status_code == 303
    return c


@pytest.fixture
def steward(app):
    with as_user(app, "stan") as c:
        yield c


@pytest.fixture
def viewer(app):
    with as_user(app, "vera") as c:
        yield c


def _db(seeded):
    return make_engine(seeded[0])


# ------------------------------------------------------------------------------------ auth


@pytest.mark.parametrize("path", [
    "/", "/runs", f"/runs/{LATEST}", f"/runs/{LATEST}/quarantine", "/review", "/review/1",
    "/persons", "/persons/MPI-0001", "/consistency", "/consistency/dead_but_pension_active",
    "/consistency/dead_but_pension_active/export.csv", "/audit", "/no-such-page",
    f"/runs/{LATEST}/data-docs/index.html",
])
def test_unauthenticated_browser_is_sent_to_login(client: TestClient, path: str) -> None:
    response = client.get(path, follow_redirects=False)
    assert response.status_code == 302
    assert response.headers["location"].startswith("/login")


@pytest.mark.parametrize("path", ["/api/runs", "/api/me", "/api/review", "/api/persons/MPI-0001"])
def test_unauthenticated_api_gets_401(client: TestClient, path: str) -> None:
    assert client.get(path).status_code == 401
    assert client.get(path.replace("/api", ""), headers={"accept": "application/json"},
                      follow_redirects=False).status_code in (401, 404)


def test_unauthenticated_post_is_refused(client: TestClient) -> None:
    response = client.post("/review/1", data={"action": "accept"}, follow_redirects=False)
    assert response.status_code == 401


def test_wrong_password_is_refused_and_audited(app, seeded) -> None:
    with TestClient(app) as c:
        response = login(c, "stan", "not the password")
        assert response.status_code == 401
        assert "Wrong username or password" in response.text
        assert c.get("/api/me").status_code == 401
        assert login(c, "nobody", "whatever at all").status_code == 401
    with _db(seeded).connect() as conn:
        failed = conn.execute(sa.select(schema.audit_log.c.username).where(
            schema.audit_log.c.action == "login_failed")).scalars().all()
    assert {"stan", "nobody"} <= set(failed)


def test_login_is_audited_and_session_works(app, seeded) -> None:
    with as_user(app, "ada") as c:
        assert c.get("/api/me").json() == {"username": "ada", "role": "admin"}
        page = c.get("/runs")
        assert page.status_code == 200 and LATEST in page.text
        assert c.post("/logout", data={"csrf_token": _csrf(page.text)},
                      follow_redirects=False).status_code == 303
        assert c.get("/api/me").status_code == 401
    with _db(seeded).connect() as conn:
        actions = conn.execute(sa.select(schema.audit_log.c.action).where(
            schema.audit_log.c.username == "ada")).scalars().all()
    assert "login" in actions and "logout" in actions


def test_login_form_without_csrf_token_is_refused(client: TestClient) -> None:
    client.get("/login")
    response = client.post("/login", data={"username": "stan", "password": PASSWORD})
    assert response.status_code == 400
    assert client.get("/api/me").status_code == 401


def test_login_redirect_stays_on_this_site(client: TestClient) -> None:
    page = client.get("/login")
    response = client.post("/login", data={"username": "stan", "password": PASSWORD,
                                           "csrf_token": _csrf(page.text),
                                           "next": "//evil.example/x"}, follow_redirects=False)
    assert response.headers["location"] == "/runs"


def test_session_cookie_is_httponly_and_samesite(client: TestClient) -> None:
    response = client.get("/login")
    cookie = response.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie


def test_pages_forbid_inline_and_foreign_scripts(steward: TestClient) -> None:
    page = steward.get("/runs")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert page.headers["cache-control"] == "no-store"
    # Nothing is loaded from another site: every src/href is local.
    for url in re.findall(r'(?:src|href)="([^"]+)"', steward.get(f"/runs/{LATEST}").text):
        assert not url.startswith(("http:", "https:", "//")), url


# ------------------------------------------------------------------------------- decisions


def test_viewer_cannot_decide(viewer: TestClient, seeded) -> None:
    page = viewer.get("/review/1")
    assert page.status_code == 200
    assert "Viewers cannot decide" in page.text and 'id="btn-accept"' not in page.text
    response = viewer.post("/review/1", data={"action": "accept",
                                              "csrf_token": _csrf(viewer.get("/runs").text)})
    assert response.status_code == 403
    with _db(seeded).connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(
            schema.review_decisions).where(schema.review_decisions.c.author == "vera")
        ).scalar() == 0


def test_decision_without_csrf_token_is_refused(steward: TestClient, seeded) -> None:
    response = steward.post("/review/2", data={"action": "reject"})
    assert response.status_code == 400
    response = steward.post("/review/2", data={"action": "reject", "csrf_token": "forged"})
    assert response.status_code == 400


def test_steward_decides_a_pair_and_it_leaves_the_queue(steward: TestClient, seeded) -> None:
    queue = steward.get("/api/review").json()
    ids = [p["id"] for p in queue["pairs"]]
    assert queue["run_id"] == LATEST and 3 in ids
    page = steward.get("/review/3")
    response = steward.post("/review/3", data={"action": "reject", "reason": "twins",
                                               "csrf_token": _csrf(page.text)},
                            follow_redirects=False)
    assert response.status_code == 303
    assert 3 not in [p["id"] for p in steward.get("/api/review").json()["pairs"]]
    # A second decision on the same pair supersedes the first.
    page = steward.get("/review/3")
    assert 'id="current-decision">cannot_link' in page.text
    steward.post("/review/3", data={"action": "accept", "reason": "same person after all",
                                    "csrf_token": _csrf(page.text)})
    with _db(seeded).connect() as conn:
        rows = conn.execute(sa.select(schema.review_decisions).where(
            schema.review_decisions.c.record_id_l == "B-3")
            .order_by(schema.review_decisions.c.id)).all()
        audit = conn.execute(sa.select(schema.audit_log.c.details).where(
            schema.audit_log.c.action == "decide_pair",
            schema.audit_log.c.target == "pair:3")).scalars().all()
    assert [(r.decision, r.author, r.reason) for r in rows] == [
        ("cannot_link", "stan", "twins"), ("must_link", "stan", "same person after all")]
    assert rows[0].superseded_by == rows[1].id and rows[1].superseded_by is None
    assert (rows[1].register_l, rows[1].record_id_l, rows[1].register_r,
            rows[1].record_id_r) == ("civil", "B-3", "civil", "B-6")
    assert len(audit) == 2


def test_skip_keeps_the_pair_undecided_but_moves_on(steward: TestClient, seeded) -> None:
    page = steward.get("/review/1")
    response = steward.post("/review/1", data={"action": "skip", "reason": "need papers",
                                               "csrf_token": _csrf(page.text)},
                            follow_redirects=False)
    assert response.headers["location"].startswith("/review/next")
    nxt = steward.get("/review/next", follow_redirects=False)
    assert nxt.headers["location"] != "/review/1"
    with _db(seeded).connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(
            schema.review_decisions).where(schema.review_decisions.c.record_id_l == "B-1")
        ).scalar() == 0


def test_undo_merge_records_cannot_link_between_the_parts(steward: TestClient, seeded) -> None:
    page = steward.get("/persons/MPI-0001")
    # The merge event lists the absorbed record: it is ticked already.
    assert 'value="pension:P-1" checked' in page.text
    response = steward.post("/persons/MPI-0001/split", data={
        "record": ["pension:P-1"], "reason": "different person",
        "csrf_token": _csrf(page.text)}, follow_redirects=False)
    assert response.status_code == 303
    with _db(seeded).connect() as conn:
        rows = conn.execute(sa.select(schema.review_decisions).where(
            schema.review_decisions.c.author == "stan",
            schema.review_decisions.c.decision == "cannot_link",
            sa.or_(schema.review_decisions.c.record_id_l == "P-1",
                   schema.review_decisions.c.record_id_r == "P-1"))).all()
    pairs = {(r.register_l, r.record_id_l, r.register_r, r.record_id_r) for r in rows}
    assert pairs == {("civil", "B-1", "pension", "P-1"), ("national_id", "ID-1", "pension", "P-1")}


def test_viewer_cannot_undo_a_merge(viewer: TestClient) -> None:
    page = viewer.get("/persons/MPI-0001")
    assert 'id="split"' not in page.text
    response = viewer.post("/persons/MPI-0001/split", data={
        "record": ["pension:P-1"], "csrf_token": _csrf(page.text)})
    assert response.status_code == 403


# ---------------------------------------------------------------------------------- lookup


@pytest.mark.parametrize(("params", "expected"), [
    ({"surname": "Каримов"}, {"MPI-0001", "MPI-0002"}),            # Cyrillic finds Latin too
    ({"surname": "Karimov", "given": "Алишер"}, {"MPI-0001", "MPI-0002"}),
    ({"surname": "Қаримов"}, {"MPI-0001", "MPI-0002"}),            # Tajik қ = k
    ({"surname": "Karimova"}, set()),                               # another surname
    ({"surname": "Juraeva", "birth": "01.07.1990"}, {"MPI-0003"}),  # Ҷӯраева, DD.MM.YYYY
    ({"surname": "Dzhuraeva", "birth": "1990"}, {"MPI-0003"}),      # year only
    ({"surname": "Juraeva", "birth": "1991"}, set()),
    ({"surname": "Rahimov", "given": "Muhammad"}, {"MPI-0006"}),    # compound given name
    ({"id": "MPI-0003"}, {"MPI-0003"}),
    ({"id": "2222-3333-44445"}, {"MPI-0003"}),                      # PIN with separators
])
def test_person_lookup(steward: TestClient, params: dict, expected: set) -> None:
    response = steward.get("/persons", params=params)
    assert response.status_code == 200
    final = str(response.url)
    found = set(re.findall(r'href="/persons/(MPI-\d+)"', response.text))
    if final.rstrip("/").split("/")[-1].startswith("MPI-"):
        found = {final.rstrip("/").split("/")[-1]}
    assert found == expected


def test_partial_golden_birth_date_is_found_by_full_date(steward: TestClient) -> None:
    # MPI-0005 has only a birth year (1960); a full date of that year finds it.
    response = steward.get("/persons", params={"surname": FORMULA, "birth": "1960-05-05"})
    assert "MPI-0005" in response.text


def test_bad_birth_date_says_what_to_type(steward: TestClient) -> None:
    response = steward.get("/persons", params={"surname": "Karimov", "birth": "31.02.1985"})
    assert "no such date" in response.text
    response = steward.get("/persons", params={"surname": "Karimov", "birth": "March"})
    assert "YYYY-MM-DD" in response.text


def test_person_page_shows_golden_record_records_and_history(steward: TestClient) -> None:
    page = steward.get("/persons/MPI-0001").text
    assert "Каримов" in page and "1234567890123" in page and "1985-03-12" in page
    assert "national_id" in page and "ID-1" in page
    assert "merge" in page and "MPI-0009" in page
    assert "dead_but_pension_active" in page


def test_unknown_person_is_404(steward: TestClient) -> None:
    assert steward.get("/persons/NOPE").status_code == 404


# ---------------------------------------------------------------------------------- masking


def test_viewer_sees_masked_personal_data(viewer: TestClient) -> None:
    page = viewer.get("/persons/MPI-0001").text
    assert "Каримов" not in page and "К***" in page
    assert "1234567890123" not in page and "***-***-123" in page
    assert "1985-03-12" not in page and "1985" in page
    assert "Street 1" not in page and "+992" not in page
    data = viewer.get("/api/persons/MPI-0001").json()
    assert data["person"]["surname"] == "К***" and data["person"]["pin"] == "***-***-123"
    assert "record_id" not in json.dumps(data["person"]["provenance"])
    pair = viewer.get("/review/1").text
    assert "Alisher" not in pair and "A***" in pair


def test_viewer_cannot_open_data_docs(viewer: TestClient, steward: TestClient) -> None:
    assert viewer.get(f"/runs/{LATEST}/data-docs/index.html").status_code == 403
    assert steward.get(f"/runs/{LATEST}/data-docs/index.html").text == "<h1>Data Docs</h1>"
    assert steward.get(f"/runs/{LATEST}/data-docs/../../link/model.json").status_code == 404


def test_audit_log_is_for_admins_only(app, viewer: TestClient, steward: TestClient) -> None:
    assert viewer.get("/audit").status_code == 403
    assert steward.get("/audit").status_code == 403
    with as_user(app, "ada") as admin:
        page = admin.get("/audit")
    assert page.status_code == 200 and "login" in page.text


# ------------------------------------------------------------------------- escaping, reports


@pytest.mark.parametrize("path", [
    "/persons/MPI-0004", "/review/2", "/persons?surname=%3Cscript%3Ealert(1)%3C/script%3E",
    "/consistency/dead_but_pension_active",
])
def test_names_with_html_are_escaped(steward: TestClient, path: str) -> None:
    page = steward.get(path)
    assert page.status_code == 200
    assert XSS not in page.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text


def test_match_report_shows_counts_histogram_model_blocking_quality(steward: TestClient) -> None:
    page = steward.get(f"/runs/{LATEST}").text
    assert 'id="weight-histogram"' in page and "link 4.2" in page   # p=0.95 -> weight 4.25
    assert "civil – national_id" in page                            # per register pair
    assert "jw&gt;=0.88" in page and "+6.13" in page                # model levels
    assert "surname_given_year" in page                             # blocking
    assert "pin_check_digit" in page and "Data Docs" in page        # quality, quarantine


def test_pair_page_shows_sides_and_waterfall(steward: TestClient) -> None:
    page = steward.get("/review/1").text
    assert "Каримов" in page and "Karimov" in page
    assert 'id="waterfall"' in page and "surname: exact" in page and "+6.13" in page


def test_consistency_dashboard_shows_trend(steward: TestClient) -> None:
    page = steward.get("/consistency").text
    assert "dead_but_pension_active" in page and "minor_on_electoral_roll" in page
    assert "<polyline" in page and f"{LATEST}: 3" in page
    rule = steward.get("/consistency/dead_but_pension_active").text
    assert [int(v) for v in re.findall(r'<td class="num">(\d+)</td>', rule.split(
        'id="trend-table"')[1].split("</table>")[0])] == [1, 2, 3]
    assert "MPI-0005" in rule


def test_csv_export_is_safe_against_formula_injection(steward: TestClient) -> None:
    response = steward.get("/consistency/dead_but_pension_active/export.csv")
    assert response.status_code == 200
    rows = list(csv.DictReader(io.StringIO(response.text.lstrip("\ufeff"))))
    by_id = {r["mpi_id"]: r for r in rows}
    assert set(by_id) == {"MPI-0001", "MPI-0004", "MPI-0005"}
    assert by_id["MPI-0005"]["surname"] == "'" + FORMULA
    assert by_id["MPI-0005"]["given_name"] == "'+Bob"
    assert by_id["MPI-0001"]["surname"] == "Каримов"
    for row in rows:
        for value in row.values():
            assert not value.startswith(("=", "+", "-", "@", "\t", "\r")), value


def test_viewer_csv_export_is_masked(viewer: TestClient) -> None:
    text = viewer.get("/consistency/dead_but_pension_active/export.csv").text
    assert "Каримов" not in text and "К***" in text and "1234567890123" not in text


@pytest.mark.parametrize(("func", "value", "expected"), [
    (mask_id, "1234567890123", "***-***-123"),
    (mask_id, "12", "***"),
    (mask_name, "Каримов Алишер", "К*** А***"),
    (mask_date, "1985-03-12", "1985"),
    (csv_safe, "=SUM(A1)", "'=SUM(A1)"),
    (csv_safe, "-5", "'-5"),
    (csv_safe, "@cmd", "'@cmd"),
    (csv_safe, "\tx", "'\tx"),
    (csv_safe, "Karimov", "Karimov"),
])
def test_masking_and_csv_cells(func, value, expected) -> None:
    assert func(value) == expected


def test_password_hash_is_salted_and_verifies() -> None:
    a, b = auth.hash_password("s3cret-password"), auth.hash_password("s3cret-password")
    assert a != b and a.startswith("scrypt$")
    assert auth.verify_password("s3cret-password", a)
    assert not auth.verify_password("s3cret-passwore", a)
    assert not auth.verify_password("x", "garbage")


# ------------------------------------------------------------------------------- users add


def test_users_add_reads_the_password_from_stdin(tmp_path, monkeypatch, capsys) -> None:
    from pipelines.cli import main

    url = f"sqlite:///{tmp_path / 'mpi.sqlite'}"
    upgrade(make_engine(url))
    monkeypatch.setattr("sys.stdin", io.StringIO("a long enough password\n"))
    assert main(["users", "add", "amina", "--role", "steward", "--password-stdin",
                 "--database-url", url]) == 0
    with make_engine(url).connect() as conn:
        row = conn.execute(sa.select(schema.users)).one()
    assert (row.username, row.role) == ("amina", "steward")
    assert auth.verify_password("a long enough password", row.password_hash)
    assert "a long enough password" not in row.password_hash
    # Again without --replace: refused, with what to do.
    monkeypatch.setattr("sys.stdin", io.StringIO("another long password\n"))
    assert main(["users", "add", "amina", "--role", "viewer", "--password-stdin",
                 "--database-url", url]) == 2
    assert "--replace" in capsys.readouterr().err


def test_users_add_refuses_a_short_password(tmp_path, monkeypatch, capsys) -> None:
    from pipelines.cli import main

    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert main(["users", "add", "bob", "--role", "viewer", "--password-stdin",
                 "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "at least 10 characters" in err and "Traceback" not in err
