"""The server process is killed (SIGKILL) in the middle of a 1,000-mutation push;
after a restart the client's retry applies everything exactly once, and the
result equals a clean single apply of the same work (SQLite and PostgreSQL).

A real ``canvass serve`` subprocess on the test database; the client is the
reference offline client over real HTTP.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from litestar.testing import TestClient

from canvass.clients.http import RetryPolicy
from canvass.clients.offline import OfflineClient, SyncReport
from canvass.settings import Settings
from tests.conftest import Person, Tenant, create_account, create_contact
from tests.sync.conftest import replica_state

pytestmark = pytest.mark.slow

LEADS = 100  # x 10 mutations = one full push of 1,000
PATIENT = RetryPolicy(attempts=40, initial=0.25, max_wait=3.0)  # outlasts a restart on a busy machine


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, settings: Settings, log: Path) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "CANVASS_DATABASE_URL": settings.database_url,
            "CANVASS_SECRET_KEY": settings.secret_key,  # the fixtures' tokens stay valid
        }
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        canvass = shutil.which("canvass", path=str(Path(sys.executable).parent)) or "canvass"
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [canvass, "serve", "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning"],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert self.process.poll() is None, self.log.read_text()[-3000:]
            time.sleep(0.1)
        raise AssertionError("server did not start: " + self.log.read_text()[-3000:])

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()


def _push_is_applying(database_url: str) -> bool:
    """Is a write transaction open and writing in the test database (the
    server applying the push)? A fixed delay after the request went out misses
    a push that applies faster than the clean run that timed it."""
    if database_url.startswith("sqlite"):
        probe = sqlite3.connect(database_url.split(":///", 1)[1], timeout=0, isolation_level=None)
        try:
            probe.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError:
            return True  # the server's write transaction holds the database
        finally:
            probe.close()  # (a probe that got the lock releases it: it wrote nothing)
        return False
    return asyncio.run(_postgres_writing(database_url))


async def _postgres_writing(database_url: str) -> bool:
    connection = await asyncpg.connect(database_url)
    try:
        writing = await connection.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND pid <> pg_backend_pid() AND backend_type = 'client backend' AND xact_start IS NOT NULL"
            " AND (query ILIKE 'SAVEPOINT%' OR query ILIKE 'RELEASE%' OR query ILIKE 'INSERT%'"
            " OR query ILIKE 'UPDATE%')"
        )
        return bool(writing)
    finally:
        await connection.close()


class Watch:
    """An httpx.Client that tells when a push request is on the wire."""

    def __init__(self, url: str) -> None:
        self.http = httpx.Client(base_url=url, timeout=60)
        self.push_started = threading.Event()
        self.push_attempts = 0

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        if url.endswith("/sync/push"):
            self.push_attempts += 1
            self.push_started.set()
        return self.http.request(method, url, **kwargs)

    def close(self) -> None:
        self.http.close()


def _offline_day(device: OfflineClient, account_id: str, contact_id: str) -> None:
    """A day offline: 100 leads found and worked, ten mutations each."""
    scores = {"need": 5, "purchasing_power": 4, "decision_authority": 4, "creditworthiness": 5}
    for n in range(LEADS):
        lead = device.create("lead", {"title": f"Deal {n}", "account_id": account_id, "primary_contact_id": contact_id})
        device.update("lead", lead, {"next_step": f"Step {n}"})
        device.move_stage(lead, "qualify")
        device.update("lead", lead, {"qualification": scores, "amount": 100.0 * (n + 1)})
        visit = device.log_activity("visit", lead_id=lead, subject="Visit")
        device.check_in(visit, 52.52, 13.40)
        device.check_out(visit, 52.52, 13.40)
        device.move_stage(lead, "approach")
        device.move_stage(lead, "negotiate")
        device.log_activity("call", lead_id=lead, subject="Follow-up")
    assert device.pending_count() == 10 * LEADS


def _prepare(client: TestClient[Any], who: Person) -> tuple[str, str]:
    account = create_account(client, who, name="Fault Corp")
    return account["id"], create_contact(client, who, account["id"])["id"]


def _summary(state: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    """What the work amounts to, independent of ids and times."""
    kinds = Counter(entity for entity, _ in state)
    leads = [d for (e, _), d in state.items() if e == "lead"]
    changes = [d for (e, _), d in state.items() if e == "stage_change"]
    per_lead = Counter(c["lead_id"] for c in changes)
    activities = Counter(d["lead_id"] for (e, _), d in state.items() if e == "activity")
    return {
        "kinds": dict(kinds),
        "stages": Counter(lead["stage"] for lead in leads),
        "history_per_lead": Counter(per_lead.values()),
        "moves": Counter((c["from_stage"], c["to_stage"]) for c in changes),
        "activities_per_lead": Counter(activities.values()),
        "amount_total": sum(lead["amount"] or 0 for lead in leads),
        "checked_out": sum(1 for (e, _), d in state.items() if e == "activity" and d["check_out_at"]),
    }


def test_kill_mid_push_then_retry_equals_clean_apply(
    client: TestClient[Any], settings: Settings, tenant: Tenant, other_tenant: Tenant, tmp_path: Path
) -> None:
    # the clean run, in another tenant, through the in-process app
    clean = OfflineClient(str(tmp_path / "clean.sqlite"), client, access_token=other_tenant.rep_a.token)
    clean.user_id = str(other_tenant.rep_a.id)
    clean.sync()
    started = time.perf_counter()
    _offline_day(clean, *_prepare(client, other_tenant.rep_a))
    offline_s = time.perf_counter() - started
    started = time.perf_counter()
    clean_report = clean.push()
    push_s = time.perf_counter() - started
    clean.pull()
    assert clean_report.receipts == {"applied": 10 * LEADS}
    expected = _summary(replica_state(clean))
    clean.close()

    server = Server(settings, tmp_path / "server.log")
    server.start()
    watch = Watch(server.url)
    try:
        phone = OfflineClient(
            str(tmp_path / "phone.sqlite"),
            watch,  # type: ignore[arg-type]
            access_token=tenant.rep_a.token,
            retry=PATIENT,
            push_batch=1000,
        )
        phone.user_id = str(tenant.rep_a.id)
        phone.sync()  # bootstrap while online
        _offline_day(phone, *_prepare(client, tenant.rep_a))
        watch.push_started.clear()
        outcome: dict[str, Any] = {}

        def sync() -> None:
            try:
                outcome["report"] = phone.sync()
            except Exception as exc:  # surfaced below
                outcome["error"] = exc

        worker = threading.Thread(target=sync)
        worker.start()
        assert watch.push_started.wait(30)
        started = time.monotonic()
        while not _push_is_applying(settings.database_url):  # the push is being applied ...
            assert time.monotonic() - started < 60, "the push never started to write"
            time.sleep(0.005)
        delay = time.monotonic() - started
        killed_at = time.monotonic()
        server.kill()  # ... when the process dies
        # nothing of it was committed
        probe = client.get(
            "/api/v1/sync/pull",
            params={"device_id": phone.device_id, "cursor": phone.cursor, "limit": 1},
            headers=tenant.rep_a.headers,
        )
        assert probe.status_code == 200 and probe.json()["last_applied_seq"] == 0, probe.text
        server.start()  # same port, same database
        restarted_in = time.monotonic() - killed_at
        worker.join(120)
        assert not worker.is_alive()
        assert "error" not in outcome, outcome.get("error")
        report: SyncReport = outcome["report"]
        assert watch.push_attempts >= 2 and report.retries >= 1, (watch.push_attempts, report)
        assert report.receipts == {"applied": 10 * LEADS}, report.receipts
        assert phone.pending_count() == 0 and phone.last_applied_seq == 10 * LEADS

        # a second device of the rep bootstraps to exactly this replica
        second = OfflineClient(str(tmp_path / "second.sqlite"), server.url, access_token=tenant.rep_a.token)
        second.sync()
        assert replica_state(second) == replica_state(phone)
        second.close()
        # and it is the clean run's result: every lead created once, three moves each, two activities
        got = _summary(replica_state(phone))
        assert got == expected, (got, expected)
        assert got["stages"] == {"negotiate": LEADS}
        assert got["history_per_lead"] == {4: LEADS}  # created + 3 moves, none twice
        print(
            f"offline day {offline_s:.1f} s, clean push {push_s:.1f} s; killed {delay:.2f} s into the push,"
            f" restarted in {restarted_in:.2f} s, {watch.push_attempts} push attempts, faulted sync {report.seconds:.1f} s"
        )
        phone.close()
    finally:
        watch.close()
        server.stop()
