"""Page timings of the steward console on a large index in PostgreSQL.

Seeds a throwaway PostgreSQL database with a synthetic published index (persons with
Cyrillic and Latin names, their records, a run's review band and links, events, consistency
figures over 30 runs, decisions, audit entries) through COPY, writes the newest run's
folder (pairs.parquet with millions of scored pairs, report, model, validation summary),
serves the console with uvicorn in this process and times every page over HTTP with httpx.

    .venv/bin/python bench/console.py --persons 1000000
    .venv/bin/python bench/console.py --persons 1000000 --reuse     # keep the seeded DB

Targets (issue 7): every page under 300 ms; person lookup by name and birth date under
100 ms. The figures are written to bench/results/console_<persons>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import psycopg2
import sqlalchemy as sa

from matching.translit import name_key
from pipelines.store import make_engine, schema, upgrade
from pipelines.store import repository as repo
from pipelines.web import auth, create_app

ROOT = Path(__file__).resolve().parent
PASSWORD = "bench-password-1"
RULES = ("dead_but_pension_active", "dead_on_electoral_roll", "minor_on_electoral_roll",
         "id_without_birth_record", "birth_date_conflict", "twice_on_electoral_roll",
         "no_national_id")
REGISTERS = ("civil", "national_id", "electoral", "pension", "health")

SURNAME_ROOTS = ["Karim", "Rahim", "Nazar", "Sharif", "Rustam", "Davlat", "Safar", "Hasan",
                 "Husein", "Jur", "Ismoil", "Yusuf", "Mirzo", "Olim", "Sobir", "Umar", "Zafar",
                 "Latif", "Qodir", "Salim", "Aziz", "Bakhtiyor", "Farhod", "Jamshed", "Sherali",
                 "Firuz", "Daler", "Shahrom", "Muhammad", "Abdullo", "Nemat", "Ikrom", "Asror",
                 "Ravshan", "Bahodur", "Navruz", "Ekub", "Mahmud", "Faridun", "Suhrob"]
CYR = {"Karim": "Карим", "Rahim": "Раҳим", "Nazar": "Назар", "Sharif": "Шариф",
       "Rustam": "Рустам", "Davlat": "Давлат", "Safar": "Сафар", "Hasan": "Ҳасан",
       "Husein": "Ҳусейн", "Jur": "Ҷӯр", "Yusuf": "Юсуф", "Olim": "Олим", "Umar": "Умар"}
GIVEN = ["Alisher", "Алишер", "Nodira", "Нодира", "Muhammad Ali", "Farrukh", "Фаррух",
         "Zarina", "Зарина", "Daler", "Далер", "Madina", "Мадина", "Shahlo", "Рустам", "Firuz",
         "Gulnora", "Sitora", "Ситора", "Behruz", "Manuchehr", "Parvina", "Tahmina", "Umed"]


def surname_pool() -> list[str]:
    pool = []
    for root in SURNAME_ROOTS:
        for suffix in ("ov", "ova", "zoda", "i"):
            pool.append(root + suffix)
        if root in CYR:
            pool += [CYR[root] + "ов", CYR[root] + "ова", CYR[root] + "зода"]
    return pool


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def create_database(admin_url: str, name: str, reuse: bool) -> tuple[str, bool]:
    admin = psycopg2.connect(admin_url)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
        exists = cur.fetchone() is not None
        if exists and not reuse:
            cur.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        if not exists or not reuse:
            cur.execute(f'CREATE DATABASE "{name}"')
    admin.close()
    base = admin_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg2://", 1)
    return f"{base}/{name}", exists and reuse


def seed(url: str, n: int, seed_value: int = 42) -> dict:
    rng = np.random.default_rng(seed_value)
    engine = make_engine(url)
    upgrade(engine)
    t0 = datetime(2026, 10, 1, 1, tzinfo=UTC)
    run_ids = [(t0 + timedelta(days=i)).strftime("%Y%m%dT%H%M%SZ") for i in range(30)]
    latest = run_ids[-1]
    timings = {}

    t = time.perf_counter()
    surnames = np.array(surname_pool(), dtype=object)
    given = np.array(GIVEN, dtype=object)
    s_idx = rng.integers(0, len(surnames), n)
    g_idx = rng.integers(0, len(given), n)
    skeys = np.array([name_key(s) for s in surnames], dtype=object)
    gkeys = np.array([name_key(g) for g in given], dtype=object)
    days = rng.integers(0, 365 * 90, n)
    birth = (np.datetime64("1930-01-01") + days.astype("timedelta64[D]")).astype(str)
    mpi = np.char.add("P", np.char.zfill(np.arange(n).astype(str), 10)).astype(object)
    pins = rng.integers(10**12, 10**13 - 1, n).astype(str).astype(object)
    persons = pd.DataFrame({
        "mpi_id": mpi, "status": "active", "pin": pins, "surname": surnames[s_idx],
        "given_name": given[g_idx], "patronymic": "Rustamovich", "sex": "M",
        "birth_date": birth, "birth_date_quality": "exact", "region": "Sughd",
        "district": "Khujand", "locality": "Khujand", "address": "kuch. Borbad 9",
        "phone": None, "surname_key": skeys[s_idx], "given_key": gkeys[g_idx],
        "provenance": [{"surname": {"register": "civil", "record_id": "B-1"}}] * n,
        "created_run": run_ids[0], "updated_run": latest,
    })
    per_person = rng.integers(1, 5, n)
    rec_mpi = np.repeat(mpi, per_person)
    rec_reg = np.array(REGISTERS, dtype=object)[
        np.concatenate([np.arange(k) for k in per_person])]
    records = pd.DataFrame({
        "register": rec_reg, "record_id": np.char.add("R", np.arange(len(rec_mpi)).astype(str))
        .astype(object), "mpi_id": rec_mpi, "match_probability": 0.99, "link_basis": "model",
        "linked_run": latest, "first_seen_run": run_ids[0]})
    timings["generate_s"] = time.perf_counter() - t

    t = time.perf_counter()
    with engine.begin() as conn:
        for i, run_id in enumerate(run_ids):
            repo.start_run(conn, run_id, seed=42, config_hash="bench")
            conn.execute(sa.update(schema.runs).where(schema.runs.c.run_id == run_id).values(
                started_at=t0 + timedelta(days=i)))
            repo.finish_run(conn, run_id, "published", {"persons": n,
                                                        "records": int(len(records))})
        repo.bulk_insert(conn, schema.persons, persons)
        repo.bulk_insert(conn, schema.person_records, records)
    timings["persons_records_s"] = time.perf_counter() - t

    t = time.perf_counter()
    n_review, n_linked = 50_000, 200_000
    left = rng.integers(0, len(records), n_review + n_linked)
    right = np.minimum(left + 1, len(records) - 1)
    w = np.concatenate([rng.uniform(0, 4.2, n_review), rng.uniform(4.3, 40, n_linked)])
    explanation = [{"surname": {"level": 4, "weight": 7.1},
                    "birth_date": {"level": 6, "weight": round(float(x) - 7.1 + 11.8, 2)}}
                   for x in w[:n_review]] + [None] * n_linked
    rid = records["record_id"].to_numpy()
    reg = records["register"].to_numpy()
    pairs = pd.DataFrame({
        "run_id": latest, "register_l": reg[left], "record_id_l": rid[left],
        "register_r": reg[right], "record_id_r": rid[right], "match_weight": w,
        "match_probability": 1 / (1 + 2.0 ** -w),
        "status": ["review"] * n_review + ["linked"] * n_linked, "explanation": explanation})
    pairs = pairs.drop_duplicates(["register_l", "record_id_l", "register_r", "record_id_r"])
    events = pd.DataFrame({"run_id": run_ids[0], "event_type": "new", "mpi_id": mpi,
                           "other_mpi_id": None, "reason": None, "details": None,
                           "created_at": t0})
    findings, metrics = [], []
    for r_i, rule in enumerate(RULES):
        who = rng.choice(n, min(5_000, n // 2), replace=False)
        findings.append(pd.DataFrame({
            "run_id": latest, "rule": rule, "mpi_id": mpi[who], "register": "pension",
            "record_ids": [[{"register": "pension", "record_id": "R1"}]] * len(who),
            "details": [{"death_date": "2020-01-01"}] * len(who), "created_at": t0}))
        for i, run_id in enumerate(run_ids):
            count = 5_000 + int(200 * np.sin(i / 3 + r_i))
            metrics.append({"run_id": run_id, "rule": rule, "register": "all", "count": count,
                            "denominator": n, "rate": count / n})
    decisions = pairs.iloc[:10_000][["register_l", "record_id_l", "register_r",
                                     "record_id_r"]].assign(
        decision="cannot_link", author="stan", reason="bench", decided_at=t0, run_id=latest)
    n_audit = min(100_000, n)
    audit = pd.DataFrame({"at": [t0 + timedelta(seconds=i) for i in range(n_audit)],
                          "username": "stan", "action": "view_person", "target": mpi[:n_audit],
                          "details": None})
    quarantine = pd.DataFrame({
        "run_id": latest, "register": "civil", "record_id": [f"Q{i}" for i in range(10_000)],
        "source_file": "civil.csv", "source_row": np.arange(10_000) + 1,
        "rule": "pin_check_digit", "column_name": "pin", "value": "123", "severity": "error",
        "created_at": t0})
    with engine.begin() as conn:
        repo.bulk_insert(conn, schema.match_pairs, pairs)
        repo.bulk_insert(conn, schema.mpi_events, events)
        repo.bulk_insert(conn, schema.consistency_findings, pd.concat(findings))
        repo.bulk_insert(conn, schema.consistency_metrics, metrics)
        repo.bulk_insert(conn, schema.review_decisions, decisions)
        repo.bulk_insert(conn, schema.audit_log, audit)
        repo.bulk_insert(conn, schema.quarantine, quarantine)
        auth.add_user(conn, "stan", PASSWORD, "admin")
    with engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql("ANALYZE")
    timings["rest_s"] = time.perf_counter() - t
    engine.dispose()
    return {"latest": latest, "persons": n, "records": int(len(records)),
            "pairs": int(len(pairs)), "seconds": {k: round(v, 1) for k, v in timings.items()}}


def write_run_folder(data_dir: Path, run_id: str, n_pairs: int) -> None:
    rng = np.random.default_rng(7)
    link = data_dir / "runs" / run_id / "link"
    validate = data_dir / "runs" / run_id / "validate"
    link.mkdir(parents=True, exist_ok=True)
    validate.mkdir(parents=True, exist_ok=True)
    regs = np.array(REGISTERS)
    w = np.concatenate([rng.normal(22, 6, n_pairs - n_pairs // 20),
                        rng.uniform(-1, 5, n_pairs // 20)]).astype(np.float32)
    pd.DataFrame({
        "register_l": pd.Categorical(regs[rng.integers(0, 5, n_pairs)]),
        "register_r": pd.Categorical(regs[rng.integers(0, 5, n_pairs)]),
        "match_weight": w, "match_probability": (1 / (1 + 2.0 ** -w)).astype(np.float32),
    }).to_parquet(link / "pairs.parquet")
    sample = Path("/tmp/h12run/runs/r1/link")
    for name in ("model.json", "report.json"):
        if (sample / name).is_file():
            shutil.copy(sample / name, link / name)
    if not (link / "report.json").is_file():
        (link / "report.json").write_text(json.dumps({"thresholds": {"link": 0.95,
                                                                     "review": 0.5}}))
    (validate / "summary.json").write_text(json.dumps({"status": "passed", "registers": {
        r: {"extracted": 1_000_000, "passed": 999_000, "quarantined": 1000, "flagged": 10,
            "checks": []} for r in REGISTERS}}))


def time_pages(url: str, data_dir: Path, latest: str, repeat: int) -> dict:
    import httpx
    import uvicorn

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(url, data_dir), host="127.0.0.1",
                                           port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    base = f"http://127.0.0.1:{port}"
    engine = make_engine(url)
    with engine.connect() as conn:
        pair_id = conn.execute(sa.select(schema.match_pairs.c.id).where(
            schema.match_pairs.c.status == "review").limit(1)).scalar_one()
        person = conn.execute(sa.select(schema.persons).where(
            schema.persons.c.surname == "Каримов").limit(1)).one()
    engine.dispose()
    pages = {
        "runs": "/runs",
        "match report": f"/runs/{latest}",
        "quarantine": f"/runs/{latest}/quarantine",
        "review queue": "/review",
        "pair": f"/review/{pair_id}",
        "lookup name+birth (Cyrillic)": f"/persons?surname=Каримов&birth={person.birth_date}",
        "lookup name+birth (Latin)": f"/persons?surname=Karimov&given=Alisher"
                                     f"&birth={person.birth_date}",
        "lookup name+year": f"/persons?surname=Karimov&birth={person.birth_date[:4]}",
        "lookup PIN": f"/persons?id={person.pin}",
        "person": f"/persons/{person.mpi_id}",
        "consistency": "/consistency",
        "rule drill-down": f"/consistency/{RULES[0]}",
        "rule drill-down page 50": f"/consistency/{RULES[0]}?page=50",
        "CSV export (5,000 findings)": f"/consistency/{RULES[0]}/export.csv",
        "audit log": "/audit",
    }
    results = {}
    with httpx.Client(base_url=base, timeout=60) as client:
        page = client.get("/login")
        token = page.text.split('name="csrf_token" value="')[1].split('"')[0]
        client.post("/login", data={"username": "stan", "password": PASSWORD,
                                    "csrf_token": token, "next": "/runs"})
        for name, path in pages.items():
            follow = "id=" in path
            t = time.perf_counter()
            r = client.get(path, follow_redirects=follow)
            first = (time.perf_counter() - t) * 1000
            assert r.status_code in (200, 303), (name, r.status_code, r.text[:500])
            samples = []
            for _ in range(repeat):
                t = time.perf_counter()
                r = client.get(path, follow_redirects=follow)
                samples.append((time.perf_counter() - t) * 1000)
            samples.sort()
            results[name] = {
                "first_ms": round(first, 1), "median_ms": round(statistics.median(samples), 1),
                "p95_ms": round(samples[int(0.95 * (len(samples) - 1))], 1),
                "max_ms": round(samples[-1], 1), "bytes": len(r.content)}
            print(f"{name:32s} first {first:7.1f}  median {results[name]['median_ms']:7.1f}  "
                  f"p95 {results[name]['p95_ms']:7.1f}  max {results[name]['max_ms']:7.1f} ms")
    server.should_exit = True
    thread.join(timeout=10)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--persons", type=int, default=1_000_000)
    parser.add_argument("--pairs-in-file", type=int, default=3_000_000,
                        help="scored pairs in the run's pairs.parquet (default 3,000,000)")
    parser.add_argument("--pg-url", default=os.environ.get(
        "REGLINK_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres"))
    parser.add_argument("--reuse", action="store_true",
                        help="reuse the seeded database of an earlier run of this benchmark")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--work", type=Path, default=ROOT / "work" / "console")
    args = parser.parse_args()

    name = f"reglink_console_bench_{args.persons}"
    url, reused = create_database(args.pg_url, name, args.reuse)
    meta_path = args.work / "seed.json"
    if reused and meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        print(f"reusing {name}: {meta}")
    else:
        t = time.perf_counter()
        meta = seed(url, args.persons)
        print(f"seeded {meta} in {time.perf_counter() - t:.0f} s")
        args.work.mkdir(parents=True, exist_ok=True)
        meta_path.write_text(json.dumps(meta))
    write_run_folder(args.work, meta["latest"], args.pairs_in_file)
    results = time_pages(url, args.work, meta["latest"], args.repeat)
    out = ROOT / "results" / f"console_{args.persons}.json"
    out.write_text(json.dumps({"persons": args.persons, "seed": meta,
                               "pairs_in_file": args.pairs_in_file, "repeat": args.repeat,
                               "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
                               "pages": results}, indent=2, ensure_ascii=False))
    print(f"wrote {out}")
    from report import refresh_readme  # bench/ is sys.path[0] when run as a script

    refresh_readme()  # README shows the latest figures


if __name__ == "__main__":
    main()
