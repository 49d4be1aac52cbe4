"""The steward console end to end, in headless Chromium driven by Playwright.

Chromium is Debian's package (``/usr/bin/chromium``; Playwright's own browser download is
never used). Without Playwright or Chromium these tests skip with the reason, except under
``CI=true``, where they fail.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from pipelines.store import make_engine, schema
from pipelines.web import auth, create_app
from tests.test_web_api import LATEST, PASSWORD, XSS, seed_index

CHROMIUM = os.environ.get("REGLINK_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: the browser tests must not skip)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed (it is in requirements.lock)")
    if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
        _unavailable(f"Chromium not found at {CHROMIUM} (apt-get install chromium)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """The console app served by uvicorn in a thread of this process."""

    def __init__(self, url: str, data_dir: Path) -> None:
        import uvicorn

        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(create_app(url, data_dir),
                                                    host="127.0.0.1", port=self.port,
                                                    log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the console did not start within 15 s")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def seeded_e2e(tmp_path_factory) -> tuple[str, Path]:
    data_dir = tmp_path_factory.mktemp("console_e2e")
    url = f"sqlite:///{data_dir / 'mpi.sqlite'}"
    seed_index(url, data_dir)
    return url, data_dir


@pytest.fixture(scope="module")
def server(seeded_e2e) -> Iterator[LiveServer]:
    with LiveServer(*seeded_e2e) as live:
        yield live


@pytest.fixture
def page(browser):
    context = browser.new_context()
    pg = context.new_page()
    dialogs: list[str] = []
    pg.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    pg.dialogs = dialogs
    yield pg
    context.close()


def sign_in(page, base: str, username: str, target: str = "/runs") -> None:
    page.goto(base + target)
    assert "/login" in page.url
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", PASSWORD)
    page.click("form.login button[type=submit]")
    page.wait_for_url(f"**{target.split('?')[0]}*")


def test_log_in_and_open_a_match_report(page, server: LiveServer) -> None:
    sign_in(page, server.base, "stan", f"/runs/{LATEST}")
    assert page.locator("h1").inner_text().startswith(f"Match report · run {LATEST}")
    assert page.locator("#weight-histogram rect.bar").count() > 0
    assert page.locator("#weight-histogram line.threshold").count() == 2
    assert "civil – national_id" in page.locator("#per-pair").inner_text()
    assert "surname_given_year" in page.locator("#blocking").inner_text()


def test_look_up_a_person_by_cyrillic_name(page, server: LiveServer) -> None:
    sign_in(page, server.base, "stan", "/persons")
    page.fill("#by-name input[name=surname]", "Каримов")
    page.fill("#by-name input[name=birth]", "12.03.1985")
    page.click("#by-name button[type=submit]")
    page.wait_for_selector("#results")
    text = page.locator("#results").inner_text()
    assert "MPI-0001" in text and "MPI-0002" in text and "Karimov" in text
    page.click("text=MPI-0002")
    page.wait_for_url("**/persons/MPI-0002")
    assert "electoral" in page.locator("#records").inner_text()


def test_see_a_rules_trend(page, server: LiveServer) -> None:
    sign_in(page, server.base, "stan", "/consistency")
    assert page.locator("#rules svg polyline").count() == 2
    page.click("text=dead_but_pension_active")
    page.wait_for_selector("#trend")
    cells = page.locator("#trend-table tbody td").all_inner_texts()
    assert cells == ["1", "2", "3"]
    assert page.locator("#findings tbody tr").count() == 3


def test_names_with_html_or_script_are_shown_as_text(page, server: LiveServer) -> None:
    sign_in(page, server.base, "stan", "/persons/MPI-0004")
    cell = page.locator("#golden tr", has_text="surname").first.locator("td").first
    assert cell.inner_text() == XSS
    assert page.locator("main script").count() == 0
    page.goto(server.base + "/review/2")
    assert XSS in page.locator("#sides").inner_text()
    page.goto(server.base + "/consistency/dead_but_pension_active")
    assert page.dialogs == []  # alert(1) never ran


def test_unauthenticated_requests_are_refused(page, server: LiveServer) -> None:
    response = page.request.get(server.base + "/api/runs")
    assert response.status == 401
    page.goto(server.base + "/persons/MPI-0001")
    assert "/login" in page.url
    assert "Каримов" not in page.content()


def test_viewer_cannot_decide(page, server: LiveServer, seeded_e2e) -> None:
    sign_in(page, server.base, "vera", "/review/1")
    assert page.locator("#viewer-note").is_visible()
    assert page.locator("#btn-accept").count() == 0
    page.keyboard.press("a")  # the shortcut does nothing without the form
    page.wait_for_timeout(200)
    assert page.url.endswith("/review/1")
    with make_engine(seeded_e2e[0]).connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(schema.review_decisions)
                            .where(schema.review_decisions.c.author == "vera")).scalar() == 0


def test_decide_with_the_keyboard(page, server: LiveServer, seeded_e2e) -> None:
    sign_in(page, server.base, "stan", "/review/2")
    page.keyboard.press("/")
    page.keyboard.type("different persons: birth dates differ")
    page.keyboard.press("Escape")
    page.keyboard.press("r")
    page.wait_for_selector(".flash")
    assert "Pair 2 rejected" in page.locator(".flash").inner_text()
    with make_engine(seeded_e2e[0]).connect() as conn:
        row = conn.execute(sa.select(schema.review_decisions).where(
            schema.review_decisions.c.record_id_l == "B-4",
            schema.review_decisions.c.superseded_by.is_(None))).one()
    assert (row.decision, row.author, row.reason) == (
        "cannot_link", "stan", "different persons: birth dates differ")


# --------------------------------------------------------------- a decision and the next run


def _steps_available() -> bool:
    try:
        from pipelines.mpi import decisions, publish  # noqa: F401
        from pipelines.steps import run_all  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.slow
@pytest.mark.skipif(not _steps_available(), reason="pipelines.steps.run_all is not built yet")
def test_decisions_are_honoured_by_the_next_run(browser, tmp_path: Path) -> None:
    from pipelines.cli import main
    from pipelines.steps import RunContext, run_all

    data_dir = tmp_path / "country"
    assert main(["synth", "--persons", "1500", "--seed", "11",
                 "--out", str(data_dir / "source")]) == 0
    ctx = dict(config_dir=Path("config"), data_dir=data_dir, data_docs=False)
    run_all(RunContext("20261201T010000Z", **ctx))
    url = f"sqlite:///{data_dir / 'mpi.sqlite'}"
    engine = make_engine(url)
    pairs = schema.match_pairs
    records = schema.person_records
    with engine.begin() as conn:
        auth.add_user(conn, "stan", PASSWORD, "steward")
        # A review-band pair whose records are in two persons, and a linked pair.
        pr_l, pr_r = records.alias("l"), records.alias("r")

        def pick(status: str, same: bool):
            cond = pr_l.c.mpi_id == pr_r.c.mpi_id if same else pr_l.c.mpi_id != pr_r.c.mpi_id
            return conn.execute(
                sa.select(pairs.c.id, pairs.c.register_l, pairs.c.record_id_l,
                          pairs.c.register_r, pairs.c.record_id_r)
                .join(pr_l, sa.and_(pr_l.c.register == pairs.c.register_l,
                                    pr_l.c.record_id == pairs.c.record_id_l))
                .join(pr_r, sa.and_(pr_r.c.register == pairs.c.register_r,
                                    pr_r.c.record_id == pairs.c.record_id_r))
                .where(pairs.c.status == status, cond)
                .order_by(pairs.c.match_weight.desc(), pairs.c.id).limit(1)).one()

        review = pick("review", same=False)
        linked = pick("linked", same=True)

    def person_of(conn, register: str, record_id: str) -> str:
        return conn.execute(sa.select(records.c.mpi_id).where(
            records.c.register == register, records.c.record_id == record_id)).scalar_one()

    context = browser.new_context()
    page = context.new_page()
    with LiveServer(url, data_dir) as live:
        sign_in(page, live.base, "stan", f"/review/{review.id}")
        page.fill("#reason", "same person: names transliterated differently")
        page.click("#btn-accept")
        page.wait_for_selector(".flash")
        page.goto(f"{live.base}/review/{linked.id}")
        page.fill("#reason", "different persons: twins")
        page.click("#btn-reject")
        page.wait_for_selector(".flash")
    context.close()

    run_all(RunContext("20261202T010000Z", **ctx))
    with engine.connect() as conn:
        assert person_of(conn, review.register_l, review.record_id_l) == person_of(
            conn, review.register_r, review.record_id_r), "the accepted pair is not linked"
        assert person_of(conn, linked.register_l, linked.record_id_l) != person_of(
            conn, linked.register_r, linked.record_id_r), "the rejected pair is still linked"
    engine.dispose()
