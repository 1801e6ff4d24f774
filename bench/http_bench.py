"""HTTP throughput and latency of the pipeline API, served as in production.

For each database: a fresh database at the head migration, a tenant seeded with
100,000 leads (with history) through the bulk importer, `canvass serve --workers 2`
as a subprocess, a manager's token from the login endpoint, then wrk (32
connections, 2 threads) against four operations: GET one lead, the first page of
50 leads, create a lead, and a stage move. Prints a table and writes
bench/results/http_<db>.json. Loopback only; every loop is bounded; the server is
always stopped.

    python bench/http_bench.py                 # PostgreSQL and SQLite
    python bench/http_bench.py --db postgresql --duration 20
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from canvass.db import create_engine, session_factory  # noqa: E402
from canvass.pipeline.schemas import AccountCreate, ContactCreate, TeamCreate, UserCreate  # noqa: E402
from canvass.pipeline.scope import Actor  # noqa: E402
from canvass.pipeline.services import accounts, imports, people  # noqa: E402
from canvass.pipeline.services.imports import HistoryEntry, LeadImportRow  # noqa: E402
from canvass.pipeline.vocabulary import LeadStatus, Role, Stage  # noqa: E402
from canvass.settings import to_async_url  # noqa: E402
from canvass.sync import feed  # noqa: E402  (seeded rows join the change feed, as in the server)

PG_ADMIN = os.environ.get("CANVASS_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
PASSWORD = "bench-password-1"
MANAGER = "manager@bench.example"
WRK = ROOT / "bench" / "wrk"
BARS = {  # operation: (minimum req/s, p99 ceiling in ms) for PostgreSQL, from the issue
    "get_lead": (2500, 50),
    "list_50": (500, 250),
    "create_lead": (1000, 50),
    "stage_move": (600, 50),
}


async def seed(url: str, leads: int) -> tuple[list[str], list[str]]:
    """A tenant: a manager with 10 reps in scope, 10 reps of another team, 100
    accounts with a contact each, and `leads` leads spread over all 20 reps.
    Returns (ids in the manager's scope, ids in scope still in prospecting)."""
    engine = create_engine(to_async_url(url))
    rng = random.Random(7)
    password_hash = people.hash_password(PASSWORD)
    async with session_factory(engine)() as session, session.begin():
        org = await people.create_organization(session, "Bench Co", "bench")
        admin_id = uuid.uuid4()
        boot = Actor(organization_id=org.id, user_id=admin_id, role=Role.ADMIN)
        root = await people.create_team(session, boot, TeamCreate(name="Sales"))
        await people.create_user(
            session,
            boot,
            UserCreate(
                id=admin_id,
                email="admin@bench.example",
                name="Admin",
                role=Role.ADMIN,
                team_id=root.id,
                password=PASSWORD,
            ),
            password_hash=password_hash,
        )
        mine = await people.create_team(session, boot, TeamCreate(name="Mine", parent_id=root.id))
        other = await people.create_team(session, boot, TeamCreate(name="Other", parent_id=root.id))
        await people.create_user(
            session,
            boot,
            UserCreate(email=MANAGER, name="Manager", role=Role.MANAGER, team_id=mine.id, password=PASSWORD),
            password_hash=password_hash,
        )
        reps = []
        for i in range(20):
            team = mine if i < 10 else other
            user = await people.create_user(
                session,
                boot,
                UserCreate(
                    email=f"rep{i}@bench.example", name=f"Rep {i}", role=Role.REP, team_id=team.id, password=PASSWORD
                ),
                password_hash=password_hash,
            )
            reps.append(user)
        customers = []
        for i in range(100):
            account = await accounts.create_account(
                session, boot, AccountCreate(name=f"Customer {i:03d}", owner_id=reps[i % 20].id)
            )
            contact = await accounts.create_contact(
                session, boot, ContactCreate(account_id=account.id, name=f"Buyer {i}")
            )
            customers.append((account.id, contact.id))
        start = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
        rows = []
        for i in range(leads):
            account_id, contact_id = customers[i % 100]
            created = start + dt.timedelta(minutes=rng.randrange(0, 60 * 24 * 700))
            history = [HistoryEntry(to_stage=Stage.PROSPECTING, at=created)]
            kind = rng.random()
            if kind >= 0.7:  # 30 % further along, some decided
                history.append(HistoryEntry(to_stage=Stage.QUALIFY, at=created + dt.timedelta(days=3)))
                history.append(HistoryEntry(to_stage=Stage.APPROACH, at=created + dt.timedelta(days=9)))
                if kind >= 0.85:
                    status = LeadStatus.WON if kind >= 0.93 else LeadStatus.LOST
                    history.append(
                        HistoryEntry(to_stage=Stage.CLOSE, status=status, at=created + dt.timedelta(days=40))
                    )
            rows.append(
                LeadImportRow(
                    external_ref=f"bench-{i}",
                    title=f"Deal {i}",
                    owner_id=reps[i % 20].id,
                    account_id=account_id,
                    primary_contact_id=contact_id,
                    amount=float(rng.randrange(500, 50_000)),
                    history=history,
                )
            )
        report = await imports.import_leads(session, boot, rows)
        assert not report.rejected, report.rejected[:3]
    # On PostgreSQL a write is published to the change feed just after its
    # commit, by the writing server's publisher; this process has none, so it
    # publishes the seed itself. Left unpublished, the server would publish it
    # during the first seconds of the load, and the figures would measure that
    # (before publications came in chunks, one transaction held every seeded
    # row's lock for seconds: moves stalled behind it, the 4.6 s p99 of earlier runs).
    async with session_factory(engine)() as session:
        await feed.publish_pending(session, org.id)
    # Ids for the load: leads of the manager's reps (the first 10).
    from sqlalchemy import select

    from canvass.pipeline.models import Lead

    in_scope = [r.id for r in reps[:10]]
    async with session_factory(engine)() as session:
        scoped = (
            await session.execute(
                select(Lead.id, Lead.stage).where(Lead.organization_id == org.id, Lead.owner_id.in_(in_scope))
            )
        ).all()
    await engine.dispose()
    everything = [str(r[0]) for r in scoped]
    prospecting = [str(r[0]) for r in scoped if r[1] == "prospecting"]
    rng.shuffle(everything)
    rng.shuffle(prospecting)
    return everything, prospecting


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_json(url: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())  # type: ignore[no-any-return]


def wait_until_up(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("the server did not start")


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
    return float(number) * _UNITS[unit]


def parse_wrk(output: str) -> dict[str, Any]:
    latency = dict(re.findall(r"^\s+(50|75|90|99)%\s+(\S+)\s*$", output, re.M))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    failed = int(non_2xx.group(1)) if non_2xx else 0
    kinds = ("connect", "read", "write", "timeout")
    dropped = dict(zip(kinds, map(int, socket_errors.groups()), strict=True)) if socket_errors else {}
    return {
        "requests_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1)),  # type: ignore[union-attr]
        "requests": int(re.search(r"(\d+) requests in", output).group(1)),  # type: ignore[union-attr]
        "p50_ms": _ms(latency["50"]),
        "p99_ms": _ms(latency["99"]),
        "errors": failed + sum(dropped.values()),
        "non_2xx": failed,
        "socket_errors": dropped,  # "timeout": no answer within wrk's --timeout (5 s)
    }


def run_wrk(port: int, script: str | Path, args: list[str], duration: int) -> dict[str, Any]:
    """wrk as the bars ask (32 connections, 2 threads); ``script``: a file of
    bench/wrk, or a path."""
    load_before = os.getloadavg()[0]
    command = [
        "wrk", "-t2", "-c32", f"-d{duration}s", "--latency", "--timeout", "5s",
        "-s", str(WRK / script), f"http://127.0.0.1:{port}", "--", *args,
    ]  # fmt: skip
    done = subprocess.run(command, check=True, capture_output=True, text=True, timeout=duration + 60)
    try:
        result = parse_wrk(done.stdout)
    except (KeyError, AttributeError) as exc:
        raise RuntimeError(f"unexpected wrk output for {script}:\n{done.stdout}\n{done.stderr}") from exc
    # The 1-minute load average around the run: on a shared 2-core machine it shows
    # how much else competed with server, database and wrk for the cores.
    result["load_1min"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    return result


def machine() -> dict[str, Any]:
    """Conditions of the run, stored with its figures."""
    meminfo = Path("/proc/meminfo").read_text() if Path("/proc/meminfo").exists() else ""
    mem = re.search(r"MemTotal:\s+(\d+) kB", meminfo)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return {
        "cpus": os.cpu_count(),
        "memory_gib": round(int(mem.group(1)) / 2**20, 1) if mem else None,
        "commit": commit.stdout.strip() or None,
        "started_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def bench_database(db: str, leads: int, duration: int, workers: int) -> dict[str, Any]:
    conditions = machine()
    name = f"canvass_bench_{uuid.uuid4().hex[:8]}"
    tmp = Path(tempfile.mkdtemp(prefix="canvass-bench-"))
    if db == "postgresql":
        asyncio.run(_pg(f'CREATE DATABASE "{name}"'))
        url = PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    else:
        url = f"sqlite:///{tmp / 'bench.db'}"
    env = {**os.environ, "CANVASS_DATABASE_URL": url, "CANVASS_SECRET_KEY": "bench-" + uuid.uuid4().hex}
    server = None
    try:
        subprocess.run(
            [sys.executable, "-m", "canvass.cli", "db", "upgrade"], env=env, check=True, cwd=ROOT, capture_output=True
        )
        started = time.monotonic()
        scoped, prospecting = asyncio.run(seed(url, leads))
        seeded_s = time.monotonic() - started
        if db == "postgresql":
            # A database in service has planner statistics and its dead rows
            # cleared (autovacuum does both after a bulk load and its
            # publication); a freshly loaded one has neither until it runs.
            asyncio.run(_pg("VACUUM (ANALYZE)", database=name))
        (tmp / "ids.txt").write_text("\n".join(scoped[:20_000]) + "\n")
        (tmp / "moves.txt").write_text("\n".join(prospecting) + "\n")
        port = free_port()
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "canvass.cli",
                "serve",
                "--port",
                str(port),
                "--workers",
                str(workers),
                "--log-level",
                "warning",
            ],
            env=env,
            cwd=ROOT,
            start_new_session=True,
        )
        wait_until_up(port)
        token = http_json(f"http://127.0.0.1:{port}/api/v1/auth/login", {"email": MANAGER, "password": PASSWORD})[
            "access_token"
        ]
        ids, moves = str(tmp / "ids.txt"), str(tmp / "moves.txt")
        run_wrk(port, "get.lua", [ids, token], 3)  # warm-up: caches, pools, JIT-free Python
        results = {
            "get_lead": run_wrk(port, "get.lua", [ids, token], duration),
            "list_50": run_wrk(port, "list.lua", ["-", token], duration),
            "create_lead": run_wrk(port, "create.lua", ["-", token], duration),
            "stage_move": run_wrk(port, "move.lua", [moves, token], duration),
        }
        if results["stage_move"]["requests"] > len(prospecting):
            raise RuntimeError("the stage-move pool ran out: raise --leads or lower --duration")
        return {
            "machine": conditions,
            "database": db,
            "leads": leads,
            "seed_seconds": round(seeded_s, 1),
            "workers": workers,
            "results": results,
        }
    finally:
        if server is not None:
            stop(server)
        if db == "postgresql":
            asyncio.run(_pg(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def stop(server: subprocess.Popen[bytes]) -> None:
    """Stop a server started in a session of its own, workers and all."""
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)


async def _pg(statement: str, database: str | None = None) -> None:
    conn = await asyncpg.connect(PG_ADMIN.rsplit("/", 1)[0] + f"/{database}" if database else PG_ADMIN)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


def table(report: dict[str, Any]) -> str:
    lines = [
        f"{report['database']}: {report['leads']:,} leads (seeded in {report['seed_seconds']} s), {report['workers']} workers",
        f"{'operation':<12} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} {'load':>10}   bar (PostgreSQL)",
    ]
    for op, r in report["results"].items():
        rate, p99 = BARS[op]
        ok = r["requests_per_s"] >= rate and r["p99_ms"] < p99 and r["errors"] == 0
        lines.append(
            f"{op:<12} {r['requests_per_s']:>8.0f} {r['p50_ms']:>8.1f} {r['p99_ms']:>8.1f} {r['errors']:>7} "
            f"{'→'.join(f'{x:.1f}' for x in r['load_1min']):>10}   "
            f"≥{rate}/s, p99<{p99} ms: {'met' if ok else 'NOT met'}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", action="append", choices=["postgresql", "sqlite"])
    parser.add_argument("--leads", type=int, default=100_000)
    parser.add_argument("--duration", type=int, default=15, help="seconds per operation")
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="server processes (default: 2 for PostgreSQL, 1 for SQLite's single writer)",
    )
    args = parser.parse_args()
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    for db in args.db or ["postgresql", "sqlite"]:
        workers = args.workers or (2 if db == "postgresql" else 1)
        report = bench_database(db, args.leads, args.duration, workers)
        (out / f"http_{db}.json").write_text(json.dumps(report, indent=2) + "\n")
        print(table(report), flush=True)


if __name__ == "__main__":
    main()
