"""Offline sync (issue 3): push, concurrent devices, incremental and bootstrap
pulls, bytes on the wire — against `canvass serve`, as in production.

For each database: a fresh database at the head migration and a tenant seeded
through the bulk importer with about 10,000 leads; the server as a subprocess
(`canvass serve --workers 2`; SQLite: one worker, as bench/http_bench.py); devices
speak the protocol by hand over httpx (as tests/api/test_sync_api.py's RawDevice).

At ~10k leads, then again after growing the same database to --leads-large leads
(importer, ~50k rows per transaction, VACUUM (ANALYZE) on PostgreSQL, as autovacuum would: a bulk load publishes every row once, leaving a dead index entry behind each):

1. push: a fresh rep with fresh leads, a fresh device bootstraps, then pushes 1,000
   mutations recorded over the past day (lead.update of free text and amounts with
   `base`, calls and notes, visits with check-in/out, stage moves the gates allow,
   objections); median of --push-runs runs; receipts by status. At the large size
   also with --refused of them refused by the server (check-ins of unknown visits).
2. concurrency: 25 reps x 2 devices, each pushing 50-100 mutations then pulling to
   the end, for --duration seconds; non-rejected receipts per second.
3. incremental pull: a device one push of 100 lead edits behind; median of 20 pulls.
4. bootstrap (large size only): a new device of a rep with ~5,000 records pages
   from cursor 0 with the default limit until has_more is false.
5. bytes on the wire: response bytes per record for 3 and 4, request bytes per
   pushed mutation.

Prints a table and writes bench/results/sync-<db>.json. Loopback only; every loop
is bounded; the server is always stopped and the PostgreSQL database dropped.

    python bench/sync_bench.py --db postgresql --leads-large 100000   # a quick try
    python bench/sync_bench.py                                        # both, 1,000,000 leads
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.http_bench import PASSWORD, PG_ADMIN, _pg, free_port, machine, stop, wait_until_up  # noqa: E402
from canvass.db import create_engine, session_factory  # noqa: E402
from canvass.ids import new_id  # noqa: E402
from canvass.pipeline.schemas import AccountCreate, ContactCreate, TeamCreate, UserCreate  # noqa: E402
from canvass.pipeline.scope import Actor  # noqa: E402
from canvass.pipeline.services import accounts, imports, people  # noqa: E402
from canvass.pipeline.services.imports import HistoryEntry, LeadImportRow  # noqa: E402
from canvass.pipeline.vocabulary import LeadStatus, Role, Stage  # noqa: E402
from canvass.settings import to_async_url  # noqa: E402
from canvass.sync import feed  # noqa: E402  (the importer's rows join the change feed, as in the CLI)

BARS = {  # PostgreSQL, from issue 3
    "push_1000_s": 2.0,
    "concurrent_mutations_per_s": 1000.0,
    "pull_ratio": 1.5,
    "bootstrap_s": 3.0,
}
IMPORT_BATCH = 50_000
BOOT_LEADS = 1_500  # the bootstrap rep's leads, spread over the tenant's whole history
BOOT_ACTIVITIES = 600
PULL_LEADS = 300
LOAD_REPS, LOAD_LEADS = 25, 200
PUSH_LEADS = 150
BULK_REPS = 50
DAY_MS = 86_400_000


# ---------------------------------------------------------------- the tenant


class Tenant:
    def __init__(self, url: str) -> None:
        self.engine = create_engine(to_async_url(url))
        self.rng = random.Random(7)
        self.password_hash = people.hash_password(PASSWORD)
        self.boot: Actor
        self.team: uuid.UUID
        self.customers: list[tuple[uuid.UUID, uuid.UUID]] = []
        self.bulk_reps: list[uuid.UUID] = []
        self.count = 0  # leads imported
        self._users = 0

    async def create(self) -> None:
        async with session_factory(self.engine)() as session, session.begin():
            org = await people.create_organization(session, "Sync Bench Co", "syncbench")
            admin_id = uuid.uuid4()
            self.boot = Actor(organization_id=org.id, user_id=admin_id, role=Role.ADMIN)
            root = await people.create_team(session, self.boot, TeamCreate(name="Sales"))
            await people.create_user(
                session,
                self.boot,
                UserCreate(
                    id=admin_id,
                    email="admin@syncbench.example",
                    name="Admin",
                    role=Role.ADMIN,
                    team_id=root.id,
                    password=PASSWORD,
                ),
                password_hash=self.password_hash,
            )
            field = await people.create_team(session, self.boot, TeamCreate(name="Field", parent_id=root.id))
            other = await people.create_team(session, self.boot, TeamCreate(name="Bulk", parent_id=root.id))
            self.team = field.id
            await people.create_user(
                session,
                self.boot,
                UserCreate(
                    email="manager@syncbench.example",
                    name="Manager",
                    role=Role.MANAGER,
                    team_id=field.id,
                    password=PASSWORD,
                ),
                password_hash=self.password_hash,
            )
        bulk = await self.add_reps("bulk", BULK_REPS, other.id)
        self.bulk_reps = [user_id for user_id, _ in bulk]
        async with session_factory(self.engine)() as session, session.begin():
            for i in range(100):
                account = await accounts.create_account(
                    session, self.boot, AccountCreate(name=f"Customer {i:03d}", owner_id=self.bulk_reps[i % BULK_REPS])
                )
                contact = await accounts.create_contact(
                    session, self.boot, ContactCreate(account_id=account.id, name=f"Buyer {i}")
                )
                self.customers.append((account.id, contact.id))

    async def add_reps(self, prefix: str, n: int, team: uuid.UUID | None = None) -> list[tuple[uuid.UUID, str]]:
        made = []
        async with session_factory(self.engine)() as session, session.begin():
            for _ in range(n):
                self._users += 1
                email = f"{prefix}{self._users}@syncbench.example"
                user = await people.create_user(
                    session,
                    self.boot,
                    UserCreate(
                        email=email,
                        name=f"Rep {self._users}",
                        role=Role.REP,
                        team_id=team or self.team,
                        password=PASSWORD,
                    ),
                    password_hash=self.password_hash,
                )
                made.append((user.id, email))
        return made

    def rows(self, owner: uuid.UUID, n: int, *, open_only: bool) -> list[LeadImportRow]:
        """`n` leads of `owner`, each with an account and contact and its stage
        history. open_only: 60 % prospecting, 25 % qualify, 15 % approach; else
        the bench/http_bench.py mix (30 % further along, some won or lost)."""
        rng = self.rng
        start = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
        made = []
        for _ in range(n):
            self.count += 1
            account_id, contact_id = self.customers[rng.randrange(len(self.customers))]
            created = start + dt.timedelta(minutes=rng.randrange(0, 60 * 24 * 600))
            history = [HistoryEntry(to_stage=Stage.PROSPECTING, at=created)]
            kind = rng.random()
            if open_only:
                if kind >= 0.6:
                    history.append(HistoryEntry(to_stage=Stage.QUALIFY, at=created + dt.timedelta(days=3)))
                if kind >= 0.85:
                    history.append(HistoryEntry(to_stage=Stage.APPROACH, at=created + dt.timedelta(days=9)))
            elif kind >= 0.5:
                history.append(HistoryEntry(to_stage=Stage.QUALIFY, at=created + dt.timedelta(days=3)))
                history.append(HistoryEntry(to_stage=Stage.APPROACH, at=created + dt.timedelta(days=9)))
                if kind >= 0.85:
                    status = LeadStatus.WON if kind >= 0.93 else LeadStatus.LOST
                    history.append(
                        HistoryEntry(to_stage=Stage.CLOSE, status=status, at=created + dt.timedelta(days=40))
                    )
            made.append(
                LeadImportRow(
                    title=f"Deal {self.count}",
                    owner_id=owner,
                    account_id=account_id,
                    primary_contact_id=contact_id,
                    amount=float(rng.randrange(500, 50_000)),
                    history=history,
                )
            )
        return made

    async def load(self, rows: list[LeadImportRow]) -> None:
        """One transaction per IMPORT_BATCH rows, through the bulk importer."""
        for i in range(0, len(rows), IMPORT_BATCH):
            async with session_factory(self.engine)() as session, session.begin():
                report = await imports.import_leads(session, self.boot, rows[i : i + IMPORT_BATCH])
                assert not report.rejected, report.rejected[:3]
            await self.publish()  # batch by batch: one publication of a million rows would take minutes

    async def fill(self, total: int, boot_rep: uuid.UUID, boot_target: int, large: int) -> None:
        """Import bulk leads (and the bootstrap rep's share, in proportion) up to `total`."""
        while self.count < total:
            n = min(IMPORT_BATCH, total - self.count)
            share = round(boot_target * n / large)
            rows = self.rows(boot_rep, share, open_only=False)
            rows += [r for j in range(n - share) for r in self.rows(self.bulk_reps[j % BULK_REPS], 1, open_only=False)]
            await self.load(rows)

    async def publish(self) -> None:
        """Publish what the bulk load wrote (on PostgreSQL a write is published
        after its commit, by the API process that made it or the next pull: the
        bench loads outside any API process, and a measured pull must not pay
        for publishing the whole seed)."""
        async with session_factory(self.engine)() as session:
            await feed.publish_pending(session, self.boot.organization_id)

    async def lead_count(self) -> int:
        from sqlalchemy import func, select

        from canvass.pipeline.models import Lead

        async with session_factory(self.engine)() as session:
            return int(await session.scalar(select(func.count()).select_from(Lead)) or 0)


# ---------------------------------------------------------------- a device, by hand


class Device:
    """The protocol by hand (tests/api/test_sync_api.py's RawDevice), over HTTP."""

    def __init__(self, client: httpx.AsyncClient, token: str, seed: int) -> None:
        self.client = client
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        self.id = f"bench-{uuid.uuid4().hex[:16]}"
        self.rng = random.Random(seed)
        self.seq = 0
        self.cursor = "0"
        self.counter = 0
        self.leads: dict[str, dict[str, Any]] = {}  # id -> the lead's record as last pulled
        self.stage: dict[str, str] = {}  # optimistic local stage
        self.scored: set[str] = set()
        self.visited: set[str] = set()
        self.errors: Counter[str] = Counter()  # pull errors retried

    async def register(self) -> None:
        r = await self.client.post("/api/v1/sync/devices", json={"device_id": self.id}, headers=self.headers)
        assert r.status_code == 201, r.text

    async def pull_all(self, limit: int | None = None) -> dict[str, Any]:
        """Page until has_more is false; the wire bytes, records and time."""
        stats = {"pages": 0, "records": 0, "removals": 0, "bytes": 0, "seconds": 0.0}
        started = time.perf_counter()
        for _ in range(10_000):
            params: dict[str, Any] = {"device_id": self.id, "cursor": self.cursor}
            if limit is not None:
                params["limit"] = limit
            for _attempt in range(5):  # a dropped connection or a server error: ask again
                try:
                    r = await self.client.get("/api/v1/sync/pull", params=params, headers=self.headers)
                except httpx.TransportError as exc:
                    self.errors[type(exc).__name__] += 1
                    continue
                if r.status_code < 500:
                    break
                self.errors[f"pull http {r.status_code}"] += 1
            assert r.status_code == 200, r.text
            stats["bytes"] += r.num_bytes_downloaded
            page = msgspec.json.decode(r.content)
            stats["pages"] += 1
            stats["records"] += len(page["changes"]) + len(page["removals"])
            stats["removals"] += len(page["removals"])
            for change in page["changes"]:
                if change["entity"] == "lead":
                    data = change["data"]
                    self.leads[data["id"]] = data
                    if data["status"] == "open":
                        self.stage[data["id"]] = data["stage"]
                    else:
                        self.stage.pop(data["id"], None)
            for removal in page["removals"]:
                if removal["entity"] == "lead":
                    self.leads.pop(removal["id"], None)
                    self.stage.pop(removal["id"], None)
            self.cursor = page["cursor"]
            if not page["has_more"]:
                break
        stats["seconds"] = time.perf_counter() - started
        return stats

    async def push(self, mutations: list[dict[str, Any]], pending_age_s: int = 0) -> dict[str, Any]:
        """Push; on a dropped connection or a server error, push the same body
        again (the protocol makes that safe), at most 5 times."""
        body = msgspec.json.encode(
            {"device_id": self.id, "mutations": mutations, "oldest_pending_age_s": pending_age_s}
        )
        errors: Counter[str] = Counter()
        started = time.perf_counter()
        for _ in range(5):
            try:
                r = await self.client.post("/api/v1/sync/push", content=body, headers=self.headers)
            except httpx.TransportError as exc:
                errors[type(exc).__name__] += 1
                continue
            if r.status_code >= 500:
                errors[f"http {r.status_code}"] += 1
                continue
            break
        else:
            raise RuntimeError(f"push failed 5 times: {dict(errors)}")
        seconds = time.perf_counter() - started
        assert r.status_code == 200, f"{r.status_code}: {r.text[:2000]}"
        reply = msgspec.json.decode(r.content)
        assert len(reply["receipts"]) == len(mutations)
        return {
            "seconds": seconds,
            "request_bytes": len(body),
            "response_bytes": r.num_bytes_downloaded,
            "statuses": Counter(x["status"] for x in reply["receipts"]),
            "rules": Counter(x.get("rule") for x in reply["receipts"] if x["status"] == "rejected"),
            "errors": errors,
        }

    # ------------------------------------------------ what a rep does in a day

    def _m(self, name: str, args: dict[str, Any], ms: int, base: dict[str, int] | None = None) -> dict[str, Any]:
        self.seq += 1
        self.counter += 1
        hlc = f"{ms:015d}-{self.counter % 99_999:05d}-{self.id}"
        return {"seq": self.seq, "name": name, "args": args, "hlc": hlc, "base": base or {}}

    def _update(self, lead_id: str, fields: dict[str, Any], ms: int) -> dict[str, Any]:
        base = {f"lead:{lead_id}": self.leads[lead_id]["version"]}
        return self._m("lead.update", {"id": lead_id, "fields": fields}, ms, base)

    def _visit(self, lead_id: str, ms: int) -> list[dict[str, Any]]:
        visit = str(new_id())
        lat, lon = 31.2 + self.rng.random() / 10, 121.4 + self.rng.random() / 10
        self.visited.add(lead_id)
        return [
            self._m(
                "activity.log",
                {"id": visit, "kind": "visit", "lead_id": lead_id, "subject": "Site visit", "planned_at": _iso(ms)},
                ms,
            ),
            self._m("activity.check_in", {"id": visit, "latitude": lat, "longitude": lon, "at": _iso(ms + 1)}, ms + 1),
            self._m(
                "activity.check_out",
                {"id": visit, "latitude": lat, "longitude": lon, "at": _iso(ms + 2_400_000)},
                ms + 2,
            ),
        ]

    def _step(self, lead_id: str, ms: int) -> list[dict[str, Any]]:
        """The next stage move the gates allow, with what it needs first."""
        stage, lead = self.stage[lead_id], self.leads[lead_id]
        moves: list[dict[str, Any]] = []
        nxt = {"prospecting": "qualify", "qualify": "approach", "approach": "negotiate"}.get(stage)
        if nxt is None or (stage == "prospecting" and not (lead["account_id"] and lead["primary_contact_id"])):
            return [self._update(lead_id, {"next_step": self._text()}, ms)]
        if stage == "qualify" and lead_id not in self.scored and not lead.get("qualification_score"):
            scores = {"need": 4, "purchasing_power": 4, "decision_authority": 3, "creditworthiness": 4}
            moves.append(self._update(lead_id, {"qualification": scores}, ms))
            self.scored.add(lead_id)
        if stage == "approach" and lead_id not in self.visited:
            moves.extend(self._visit(lead_id, ms))
        moves.append(self._m("lead.move_stage", {"id": lead_id, "to_stage": nxt, "at": _iso(ms + 2_400_001)}, ms + 3))
        self.stage[lead_id] = nxt
        return moves

    def _text(self) -> str:
        return (
            self.rng.choice(
                [
                    "Call back about the quote; the buyer is on leave until Monday",
                    "Send the revised price list and the delivery schedule",
                    "Bring samples of the new range to the next visit",
                    "Ask for the purchasing manager's decision by end of month",
                ]
            )
            + f" ({self.rng.randrange(10_000)})"
        )

    def mutations(self, n: int, first_ms: int, last_ms: int) -> list[dict[str, Any]]:
        """`n` mutations over this device's open leads, with HLCs spread from
        first_ms to last_ms (the hours the device was offline)."""
        rng = self.rng
        open_leads = sorted(self.stage)
        out: list[dict[str, Any]] = []
        step = max(1, (last_ms - first_ms) // max(n, 1))
        while len(out) < n:
            ms = first_ms + len(out) * step
            lead_id = rng.choice(open_leads)
            # Near the batch's end, only intents of one mutation (no cut visits or moves).
            r = rng.random() if n - len(out) >= 6 else rng.choice([0.1, 0.4, 0.9])
            if r < 0.35:
                fields: dict[str, Any] = {"next_step": self._text()}
                if rng.random() < 0.5:
                    fields["amount"] = float(rng.randrange(500, 80_000))
                if rng.random() < 0.2:
                    fields["product_interest"] = rng.choice(["Pumps", "Valves", "Filters", "Service plan"])
                out.append(self._update(lead_id, fields, ms))
            elif r < 0.55:
                kind = rng.choice(["call", "call", "note", "email"])
                args = {
                    "id": str(new_id()),
                    "kind": kind,
                    "lead_id": lead_id,
                    "subject": f"{kind.title()} with the buyer",
                    "notes": self._text(),
                    "occurred_at": _iso(ms),
                }
                if kind in ("call", "email"):
                    args["completed_at"] = _iso(ms)
                out.append(self._m("activity.log", args, ms))
            elif r < 0.70:
                out.extend(self._visit(lead_id, ms))
            elif r < 0.85:
                out.extend(self._step(lead_id, ms))
            else:
                args = {
                    "lead_id": lead_id,
                    "id": str(new_id()),
                    "type": rng.choice(["price", "timing", "product", "need"]),
                    "statement": "The price is higher than the current supplier's",
                }
                out.append(self._m("objection.add", args, ms))
        return out

    def edits(self, n: int, ms: int) -> list[dict[str, Any]]:
        """n free-text edits of n distinct leads (the incremental pull's changes)."""
        chosen = self.rng.sample(sorted(self.leads), n)
        return [self._update(lead_id, {"next_step": self._text()}, ms + i) for i, lead_id in enumerate(chosen)]


def _iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat()


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


async def login(client: httpx.AsyncClient, email: str) -> str:
    r = await client.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
    assert r.status_code == 200, r.text
    return str(r.json()["access_token"])


async def new_device(client: httpx.AsyncClient, email: str, seed: int) -> Device:
    device = Device(client, await login(client, email), seed)
    await device.register()
    return device


def _load() -> float:
    return round(os.getloadavg()[0], 2)


# ---------------------------------------------------------------- the measurements


async def bench_push(tenant: Tenant, client: httpx.AsyncClient, runs: int, refused: int = 0) -> dict[str, Any]:
    """A fresh rep with fresh leads; a device that bootstrapped a day ago pushes
    the 1,000 mutations it recorded since. refused: that many of them replaced
    by a check-in of a visit the server does not know (refused `not-found`; a
    refusal re-runs its group of mutations in parts)."""
    load = [_load()]
    samples = []
    for run in range(runs + 1):  # the first run warms the workers up and is not counted
        ((user_id, email),) = await tenant.add_reps("push", 1)
        await tenant.load(tenant.rows(user_id, PUSH_LEADS, open_only=True))
        device = await new_device(client, email, 1000 + run)
        await device.pull_all()
        now = _now_ms()
        batch = device.mutations(1000, now - DAY_MS, now - 60_000)
        for i in device.rng.sample(range(len(batch)), refused):
            unknown = {"id": str(new_id()), "latitude": 31.2, "longitude": 121.4}
            batch[i] = {**batch[i], "name": "activity.check_in", "args": unknown}
        names = Counter(m["name"] for m in batch)
        result = await device.push(batch, pending_age_s=DAY_MS // 1000)
        if run:
            samples.append({**result, "mutations": names})
    load.append(_load())
    seconds = [s["seconds"] for s in samples]
    statuses: Counter[str] = sum((s["statuses"] for s in samples), Counter())
    errors: Counter[str] = sum((s["errors"] for s in samples), Counter())
    rules: Counter[str] = sum((s["rules"] for s in samples), Counter())
    return {
        "runs": runs,
        "seconds": [round(s, 3) for s in seconds],
        "median_s": round(statistics.median(seconds), 3),
        "receipts_by_status_per_run": {k: v / runs for k, v in sorted(statuses.items())},
        "rejected_rules": dict(rules.most_common()),
        "push_errors_retried": dict(errors),
        "mutations_by_name_per_run": {
            k: v / runs for k, v in sorted(sum((s["mutations"] for s in samples), Counter()).items())
        },
        "request_bytes_per_mutation": round(statistics.mean(s["request_bytes"] for s in samples) / 1000, 1),
        "response_bytes_per_mutation": round(statistics.mean(s["response_bytes"] for s in samples) / 1000, 1),
        "load_1min": load,
    }


async def bench_concurrency(
    tenant: Tenant, client: httpx.AsyncClient, reps: list[str], duration: float, warm_up: float = 0.0
) -> dict[str, Any]:
    """Two devices per rep: push 50-100 mutations, pull to the end, again, for `duration` s
    (after `warm_up` s of the same, not counted)."""
    devices = [await new_device(client, email, 2000 + i * 2 + j) for i, email in enumerate(reps) for j in range(2)]
    await asyncio.gather(*(d.pull_all() for d in devices))  # bootstrap (not timed)
    if warm_up > 0:
        until = time.perf_counter() + warm_up

        async def warm(device: Device) -> None:
            while time.perf_counter() < until:
                now = _now_ms()
                await device.push(device.mutations(device.rng.randint(50, 100), now - 600_000, now), pending_age_s=600)
                await device.pull_all()

        await asyncio.gather(*(warm(d) for d in devices))
    statuses: Counter[str] = Counter()
    rules: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    gave_up: list[str] = []
    push_s: list[float] = []
    pull_s: list[float] = []
    pulled = Counter[str]()
    load = [_load()]
    started = time.perf_counter()
    deadline = started + duration

    async def run(device: Device) -> None:
        for _ in range(100_000):
            if time.perf_counter() >= deadline:
                return
            now = _now_ms()
            batch = device.mutations(device.rng.randint(50, 100), now - 600_000, now)
            try:
                result = await device.push(batch, pending_age_s=600)
            except RuntimeError:  # refused 5 times in a row: this device gives up
                gave_up.append(device.id)
                return
            statuses.update(result["statuses"])
            rules.update(result["rules"])
            errors.update(result["errors"])
            push_s.append(result["seconds"])
            stats = await device.pull_all()
            pull_s.append(stats["seconds"])
            pulled.update(records=stats["records"], bytes=stats["bytes"])

    await asyncio.gather(*(run(d) for d in devices))
    elapsed = time.perf_counter() - started
    for d in devices:
        errors.update(d.errors)
    load.append(_load())
    done = sum(v for k, v in statuses.items() if k != "rejected")
    return {
        "devices": len(devices),
        "reps": len(reps),
        "seconds": round(elapsed, 1),
        "receipts": dict(statuses),
        "rejected_rules": dict(rules.most_common()),
        "errors_retried": dict(errors),
        "devices_gave_up": len(gave_up),  # a push refused by server errors 5 times in a row
        "non_rejected_per_s": round(done / elapsed, 1),
        "applied_status_per_s": round(statuses["applied"] / elapsed, 1),
        "all_receipts_per_s": round(sum(statuses.values()) / elapsed, 1),
        "pushes": len(push_s),
        "push_p50_ms": round(1000 * statistics.median(push_s), 1),
        "push_p95_ms": round(1000 * statistics.quantiles(push_s, n=20)[-1], 1),
        "pull_p50_ms": round(1000 * statistics.median(pull_s), 1),
        "pull_p95_ms": round(1000 * statistics.quantiles(pull_s, n=20)[-1], 1),
        "pulled_records": pulled["records"],
        "pulled_bytes_per_record": round(pulled["bytes"] / max(pulled["records"], 1), 1),
        "load_1min": load,
    }


async def bench_incremental(reader: Device, writer: Device, repetitions: int) -> dict[str, Any]:
    """The reader is one push of 100 lead edits behind; time its pull."""
    first = await reader.pull_all()
    await writer.pull_all()
    assert len(writer.leads) >= 100, (first, len(writer.leads), len(reader.leads))
    load = [_load()]
    samples = []
    for i in range(repetitions + 2):  # two warm-up pulls
        result = await writer.push(writer.edits(100, _now_ms()))
        assert result["statuses"]["rejected"] == 0, result
        stats = await reader.pull_all()
        assert stats["records"] == 100 and stats["pages"] == 1, stats
        await writer.pull_all()
        if i >= 2:
            samples.append(stats)
    load.append(_load())
    ms = [1000 * s["seconds"] for s in samples]
    return {
        "repetitions": repetitions,
        "median_ms": round(statistics.median(ms), 2),
        "p90_ms": round(statistics.quantiles(ms, n=10)[-1], 2),
        "min_ms": round(min(ms), 2),
        "records": samples[0]["records"],
        "bytes_per_record": round(statistics.mean(s["bytes"] for s in samples) / 100, 1),
        "load_1min": load,
    }


async def bench_bootstrap(client: httpx.AsyncClient, email: str, runs: int) -> dict[str, Any]:
    load = [_load()]
    samples = []
    for run in range(runs):
        device = await new_device(client, email, 3000 + run)
        samples.append(await device.pull_all())
    load.append(_load())
    seconds = [s["seconds"] for s in samples]
    last = samples[-1]
    return {
        "runs": runs,
        "seconds": [round(s, 3) for s in seconds],
        "median_s": round(statistics.median(seconds), 3),
        "records": last["records"],
        "pages": last["pages"],
        "bytes": last["bytes"],
        "bytes_per_record": round(last["bytes"] / max(last["records"], 1), 1),
        "load_1min": load,
    }


# ---------------------------------------------------------------- one database


@contextlib.contextmanager
def profiled(directory: Path | None, pid: int, label: str) -> Iterator[None]:
    """py-spy on the server and its workers for the duration of a phase
    (collapsed stacks, for a flame graph or for counting the top frames)."""
    if directory is None:
        yield
        return
    directory.mkdir(parents=True, exist_ok=True)
    command = [str(Path(sys.executable).parent / "py-spy"), "record", "--subprocesses", "--nonblocking", "--rate", "200", "--format", "raw",
               "--pid", str(pid), "-o", str(directory / f"{label}.txt")]  # fmt: skip
    spy = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # attached before the phase starts
    try:
        yield
    finally:
        spy.send_signal(signal.SIGINT)
        try:
            spy.wait(timeout=60)
        except subprocess.TimeoutExpired:
            spy.kill()


def _start_server(env: dict[str, str], workers: int) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    command = [
        sys.executable, "-m", "canvass.cli", "serve", "--port", str(port),
        "--workers", str(workers), "--log-level", "warning",
    ]  # fmt: skip
    server = subprocess.Popen(command, env=env, cwd=ROOT, start_new_session=True)
    wait_until_up(port)
    return server, port


async def measure(args: argparse.Namespace, db: str, url: str, env: dict[str, str], name: str) -> dict[str, Any]:
    workers = args.workers or (2 if db == "postgresql" else 1)
    tenant = Tenant(url)
    started = time.monotonic()
    await tenant.create()
    load_reps = await tenant.add_reps("load", LOAD_REPS)
    ((pull_rep, pull_email),) = await tenant.add_reps("pull", 1)
    ((boot_rep, boot_email),) = await tenant.add_reps("boot", 1)
    rows = [r for user_id, _ in load_reps for r in tenant.rows(user_id, LOAD_LEADS, open_only=True)]
    rows += tenant.rows(pull_rep, PULL_LEADS, open_only=False)
    await tenant.load(rows)
    await tenant.fill(args.leads_small, boot_rep, BOOT_LEADS, args.leads_large)
    await tenant.publish()
    if db == "postgresql":
        await _pg("VACUUM (ANALYZE)", database=name)
    seed_s = time.monotonic() - started
    server, port = _start_server(env, workers)
    report: dict[str, Any] = {
        "workers": workers,
        "pool_size": args.pool_size,
        "seed_seconds": round(seed_s, 1),
        "sizes": {},
    }
    try:
        limits = httpx.Limits(max_connections=120, max_keepalive_connections=120)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=300, limits=limits) as client:
            reader = await new_device(client, pull_email, 1)
            writer = await new_device(client, pull_email, 2)
            for size in ("small", "large"):
                if size == "large":
                    started = time.monotonic()
                    await tenant.fill(args.leads_large, boot_rep, BOOT_LEADS, args.leads_large)
                    # The bootstrap rep's visits and calls, pushed from the field.
                    boot_device = await new_device(client, boot_email, 9)
                    await boot_device.pull_all(limit=5000)
                    now = _now_ms()
                    logs = [
                        boot_device._m(
                            "activity.log",
                            {"id": str(new_id()), "kind": "call", "lead_id": lead_id, "notes": boot_device._text()},
                            now - DAY_MS + i,
                        )
                        for i, lead_id in enumerate(
                            boot_device.rng.choices(sorted(boot_device.stage), k=BOOT_ACTIVITIES)
                        )
                    ]
                    await boot_device.push(logs)
                    await tenant.publish()
                    if db == "postgresql":
                        await _pg("VACUUM (ANALYZE)", database=name)
                    report["grow_seconds"] = round(time.monotonic() - started, 1)
                for device in (reader, writer):  # a fresh token: growing may outlast one
                    device.headers["Authorization"] = f"Bearer {await login(client, pull_email)}"
                leads = await tenant.lead_count()
                print(f"[{db}] {size}: {leads:,} leads, load {_load()}", flush=True)
                figures: dict[str, Any] = {"leads": leads}
                with profiled(args.profile, server.pid, f"{db}-{size}-incremental"):
                    figures["incremental_pull"] = await bench_incremental(reader, writer, args.pull_repetitions)
                print(f"  incremental pull {figures['incremental_pull']}", flush=True)
                if size == "large":
                    with profiled(args.profile, server.pid, f"{db}-{size}-bootstrap"):
                        figures["bootstrap_pull"] = await bench_bootstrap(client, boot_email, args.bootstrap_runs)
                    print(f"  bootstrap {figures['bootstrap_pull']}", flush=True)
                with profiled(args.profile, server.pid, f"{db}-{size}-push"):
                    figures["push_1000"] = await bench_push(tenant, client, args.push_runs)
                print(f"  push {figures['push_1000']}", flush=True)
                if size == "large" and args.refused:
                    with profiled(args.profile, server.pid, f"{db}-{size}-push-refused"):
                        figures["push_1000_refused"] = await bench_push(tenant, client, args.push_runs, args.refused)
                    print(f"  push with {args.refused} refused {figures['push_1000_refused']}", flush=True)
                with profiled(args.profile, server.pid, f"{db}-{size}-concurrency"):
                    figures["concurrency"] = await bench_concurrency(
                        tenant, client, [email for _, email in load_reps], args.duration, args.warm_up
                    )
                print(f"  concurrency {figures['concurrency']}", flush=True)
                figures["leads_after"] = await tenant.lead_count()
                report["sizes"][size] = figures
    finally:
        stop(server)
        await tenant.engine.dispose()
    return report


def bench_database(args: argparse.Namespace, db: str) -> dict[str, Any]:
    conditions = machine()
    conditions["load_1min_at_start"] = _load()
    name = f"canvass_syncbench_{uuid.uuid4().hex[:8]}"
    tmp = Path(tempfile.mkdtemp(prefix="canvass-syncbench-"))
    if db == "postgresql":
        asyncio.run(_pg(f'CREATE DATABASE "{name}"'))
        url = PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    else:
        url = f"sqlite:///{tmp / 'bench.db'}"
    env = {
        **os.environ,
        "CANVASS_DATABASE_URL": url,
        "CANVASS_SECRET_KEY": "bench-" + uuid.uuid4().hex,
        "CANVASS_ACCESS_TOKEN_MINUTES": "600",
        # Each worker has two pools (writes, reads) of pool size + as many
        # overflow: 2 workers x 2 x (10 + 10) = 80 connections stay under
        # PostgreSQL's default max_connections (100) beside the bench's own.
        # With the default (16: 128 connections) the 50 devices ran PostgreSQL
        # out of connections ("too many clients" -> 500).
        "CANVASS_DB_POOL_SIZE": str(args.pool_size),
    }
    try:
        subprocess.run(
            [sys.executable, "-m", "canvass.cli", "db", "upgrade"], env=env, check=True, cwd=ROOT, capture_output=True
        )
        report = asyncio.run(measure(args, db, url, env, name))
    finally:
        if db == "postgresql" and not args.keep:
            asyncio.run(_pg(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        elif db == "postgresql":
            print(f"kept database {name}", flush=True)
        shutil.rmtree(tmp, ignore_errors=True)
    small, large = report["sizes"]["small"], report["sizes"]["large"]
    ratio = large["incremental_pull"]["median_ms"] / small["incremental_pull"]["median_ms"]
    return {
        "machine": conditions,
        "database": db,
        "command": " ".join(["python", "bench/sync_bench.py", *sys.argv[1:]]),
        "leads_small": small["leads"],
        "leads_large": large["leads"],
        **report,
        "pull_ratio_large_over_small": round(ratio, 2),
    }


def table(r: dict[str, Any]) -> str:
    small, large = r["sizes"]["small"], r["sizes"]["large"]
    rows: list[tuple[str, str, str, str]] = []

    def bar(ok: bool) -> str:
        return "met" if ok else "NOT met"

    for label, size in (("10k", small), ("large", large)):
        p = size["push_1000"]
        rows.append(
            (
                f"push 1,000 mutations ({label}: {size['leads']:,} leads)",
                f"{p['median_s']:.2f} s median of {p['runs']}",
                f"< {BARS['push_1000_s']} s: {bar(p['median_s'] < BARS['push_1000_s'])}",
                "→".join(map(str, p["load_1min"])),
            )
        )
        if "push_1000_refused" in size:
            q = size["push_1000_refused"]
            rejected = q["receipts_by_status_per_run"].get("rejected", 0)
            rows.append(
                (
                    f"push 1,000, {rejected:.0f} refused ({label})",
                    f"{q['median_s']:.2f} s median of {q['runs']}",
                    f"< {BARS['push_1000_s']} s: {bar(q['median_s'] < BARS['push_1000_s'])}",
                    "→".join(map(str, q["load_1min"])),
                )
            )
        c = size["concurrency"]
        rows.append(
            (
                f"50 devices, {c['seconds']} s ({label})",
                f"{c['non_rejected_per_s']:.0f} mutations/s",
                f"≥ {BARS['concurrent_mutations_per_s']:.0f}/s: {bar(c['non_rejected_per_s'] >= BARS['concurrent_mutations_per_s'])}",
                "→".join(map(str, c["load_1min"])),
            )
        )
        i = size["incremental_pull"]
        rows.append(
            (
                f"incremental pull, 100 changes ({label})",
                f"{i['median_ms']:.1f} ms median of {i['repetitions']}",
                "",
                "→".join(map(str, i["load_1min"])),
            )
        )
    ratio = r["pull_ratio_large_over_small"]
    rows.append(("incremental pull, large / 10k", f"{ratio:.2f}x", f"≤ {BARS['pull_ratio']}x: {bar(ratio <= 1.5)}", ""))
    b = large["bootstrap_pull"]
    rows.append(
        (
            f"bootstrap pull, {b['records']:,} records, {b['pages']} pages (large)",
            f"{b['median_s']:.2f} s median of {b['runs']}",
            f"< {BARS['bootstrap_s']} s: {bar(b['median_s'] < BARS['bootstrap_s'])}",
            "→".join(map(str, b["load_1min"])),
        )
    )
    rows.append(
        ("bytes/record, incremental pull (large)", f"{large['incremental_pull']['bytes_per_record']:.0f}", "report", "")
    )
    rows.append(("bytes/record, bootstrap pull (large)", f"{b['bytes_per_record']:.0f}", "report", ""))
    rows.append(
        (
            "bytes/mutation, push request (large)",
            f"{large['push_1000']['request_bytes_per_mutation']:.0f}",
            "report",
            "",
        )
    )
    rows.append(
        (
            "bytes/mutation, push response (large)",
            f"{large['push_1000']['response_bytes_per_mutation']:.0f}",
            "report",
            "",
        )
    )
    width = max(len(x[0]) for x in rows)
    lines = [
        f"{r['database']}: {r['leads_small']:,} → {r['leads_large']:,} leads, {r['workers']} worker(s), "
        f"load at start {r['machine']['load_1min_at_start']}",
        f"{'figure':<{width}}  {'result':<24} {'bar (PostgreSQL)':<20} load 1-min",
    ]
    lines += [f"{a:<{width}}  {b_:<24} {c:<20} {d}" for a, b_, c, d in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", choices=["postgresql", "sqlite", "both"], default="both")
    parser.add_argument("--leads-small", type=int, default=10_000)
    parser.add_argument("--leads-large", type=int, default=1_000_000)
    parser.add_argument("--duration", type=float, default=25.0, help="seconds of the 50-device run (≥ 20)")
    parser.add_argument(
        "--warm-up", type=float, default=0.0, help="seconds of the 50-device run before the timed one (not counted)"
    )
    parser.add_argument("--push-runs", type=int, default=3)
    parser.add_argument("--pull-repetitions", type=int, default=20)
    parser.add_argument("--bootstrap-runs", type=int, default=3)
    parser.add_argument(
        "--refused",
        type=int,
        default=20,
        help="large size: also push 1,000 mutations of which this many are refused (0: skip)",
    )
    parser.add_argument("--workers", type=int, default=None, help="default: 2 for PostgreSQL, 1 for SQLite")
    parser.add_argument(
        "--pool-size",
        type=int,
        default=16,
        help="the server's CANVASS_DB_POOL_SIZE (each worker's write pool; its read pool is 1.5x)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the PostgreSQL database (to EXPLAIN it)")
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="directory: py-spy records the server's workers during each phase (slows them; not for the figures)",
    )
    args = parser.parse_args()
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    for db in ["postgresql", "sqlite"] if args.db == "both" else [args.db]:
        report = bench_database(args, db)
        (out / f"sync-{db}.json").write_text(json.dumps(report, indent=2) + "\n")
        print(table(report), flush=True)


if __name__ == "__main__":
    main()
