"""Simulated field reps on the reference offline client, against a running server.

Each rep gets its own device (an ``OfflineClient`` with a SQLite replica in a
temporary directory), bootstraps, then plays ``rounds`` rounds: in each it makes a
few random edits of the kind a rep makes in the field (notes, next steps,
amounts, qualification scores, stage moves, calls, visits with check-in and
check-out, objections, new leads), and then either syncs or stays offline
(its outbox grows until a later round). A last round syncs everyone. Reps run in
parallel threads; every loop is bounded.

Used by ``canvass simulate`` for demos and load tests.
"""

from __future__ import annotations

import concurrent.futures
import os
import random
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx
import msgspec

from canvass.clients.http import API, RetryPolicy, SyncApi
from canvass.clients.offline import OfflineClient, SyncReport

STAGES = ("prospecting", "qualify", "approach", "negotiate", "handle_objections", "close", "after_sale")
PHRASES = (
    "Send the quote",
    "Call back after the trade fair",
    "Book a demo with the plant manager",
    "Ask for the purchasing contact",
    "Follow up on pricing",
    "Bring samples next visit",
)


class SimConfig(msgspec.Struct, kw_only=True):
    url: str
    password: str
    reps: int = 5
    rounds: int = 5
    seed: int | None = None
    emails: list[str] = msgspec.field(default_factory=list)  # default: rep users listed by the admin
    admin_email: str = "admin@demo.example"
    offline_probability: float = 0.4
    edits_per_round: tuple[int, int] = (3, 12)
    second_device_probability: float = 0.2
    clock_skew_hours: float = 3.0
    workdir: str | None = None


class SimSummary(msgspec.Struct, kw_only=True):
    reps: int
    devices: int
    rounds: int
    mutations_made: int = 0
    mutations_pushed: int = 0
    pushes: int = 0
    receipts: dict[str, int] = msgspec.field(default_factory=dict)
    rejected_rules: dict[str, int] = msgspec.field(default_factory=dict)
    conflicts_open_visible: int = 0
    pulled_changes: int = 0
    pulled_removals: int = 0
    seq_gaps: int = 0
    retries: int = 0
    sync_seconds: float = 0.0
    wall_seconds: float = 0.0
    pending_left: int = 0
    errors: list[str] = msgspec.field(default_factory=list)

    @property
    def applied(self) -> int:
        return sum(n for status, n in self.receipts.items() if status != "rejected")

    def lines(self) -> list[str]:
        wall = max(self.wall_seconds, 1e-9)
        sync = max(self.sync_seconds, 1e-9)
        receipts = ", ".join(f"{k} {v}" for k, v in sorted(self.receipts.items())) or "none"
        out = [
            f"reps {self.reps}, devices {self.devices}, rounds {self.rounds}",
            f"mutations made {self.mutations_made}, pushed {self.mutations_pushed} in {self.pushes} pushes"
            f" (seq gaps {self.seq_gaps}, retries {self.retries})",
            f"receipts: {receipts}",
            f"conflicts: {self.receipts.get('conflict', 0)} conflict receipts; "
            f"{self.conflicts_open_visible} open conflicts visible to the reps",
            f"pulled: {self.pulled_changes} changes, {self.pulled_removals} removals",
            f"throughput: {self.applied / wall:.1f} applied mutations/s over {self.wall_seconds:.2f} s wall"
            f" ({self.applied / sync:.1f}/s of per-device sync time summed over {self.sync_seconds:.2f} s)",
            f"left in outboxes: {self.pending_left}",
        ]
        if self.rejected_rules:
            top = sorted(self.rejected_rules.items(), key=lambda kv: -kv[1])[:8]
            out.append("rejected by rule: " + ", ".join(f"{rule} {n}" for rule, n in top))
        out.extend(f"error: {e}" for e in self.errors[:20])
        return out


def rep_emails(url: str, admin_email: str, password: str, limit: int, rng: random.Random) -> list[str]:
    """Active reps of the tenant, listed by its admin (GET /api/v1/users, paged)."""
    api = SyncApi(url, email=admin_email, password=password)
    try:
        emails: list[str] = []
        cursor: str | None = None
        for _page in range(200):  # bounded
            params: dict[str, Any] = {"limit": 200}
            if cursor:
                params["cursor"] = cursor
            page = api.call("GET", f"{API}/users", params=params)
            emails.extend(u["email"] for u in page["items"] if u.get("role") == "rep" and u.get("active", True))
            cursor = page.get("next_cursor")
            if not cursor:
                break
    finally:
        api.close()
    emails.sort()
    rng.shuffle(emails)
    return emails[:limit]


class _Rep:
    def __init__(self, email: str, clients: list[OfflineClient], rng: random.Random) -> None:
        self.email = email
        self.clients = clients
        self.rng = rng
        self.made = 0
        self.reports: list[SyncReport] = []

    def edit(self, device: OfflineClient) -> None:
        rng = self.rng
        leads = [r for r in device.records("lead") if r.get("status") == "open"]
        choice = rng.random()
        if not leads or choice < 0.08:
            accounts = device.records("account")
            fields: dict[str, Any] = {
                "title": f"Simulated deal {rng.randrange(10**6)}",
                "amount": rng.randrange(1, 50) * 500,
            }
            if accounts:
                fields["account_id"] = rng.choice(accounts)["id"]
            device.create("lead", fields)
        else:
            lead = rng.choice(leads)
            lead_id = lead["id"]
            if choice < 0.30:
                device.update("lead", lead_id, {"next_step": rng.choice(PHRASES)})
            elif choice < 0.40:
                device.update("lead", lead_id, {"amount": rng.randrange(1, 100) * 250})
            elif choice < 0.50:
                scores = {
                    k: rng.randint(3, 5) for k in ("need", "purchasing_power", "decision_authority", "creditworthiness")
                }
                device.update("lead", lead_id, {"qualification": scores})
            elif choice < 0.62:
                stage = lead.get("stage") or "prospecting"
                i = STAGES.index(stage) if stage in STAGES else 0
                if i + 1 < len(STAGES) - 1:
                    device.move_stage(lead_id, STAGES[i + 1], note="moved in the field")
            elif choice < 0.75:
                device.log_activity(rng.choice(["call", "note", "email"]), lead_id=lead_id, subject="Touch point")
            elif choice < 0.87:
                visit = device.log_activity("visit", lead_id=lead_id, subject="On-site visit")
                lat, lon = rng.uniform(-60, 60), rng.uniform(-170, 170)
                device.check_in(visit, lat, lon)
                if rng.random() < 0.8:
                    device.check_out(visit, lat, lon)
            elif choice < 0.95:
                device.add_objection(lead_id, rng.choice(["price", "timing", "need"]), "Too expensive for this quarter")
            else:
                objections = device.records("objection", lead_id=lead_id, status="open")
                if objections:
                    device.update_objection(objections[0]["id"], {"status": "resolved", "handling_method": "inquiry"})
                else:
                    device.record_outcome(lead_id, "lost", loss_reason="Budget frozen", competitor="Other")
        self.made += 1

    def play(self, rounds: int, offline_probability: float, edits: tuple[int, int]) -> None:
        for device in self.clients:
            self.reports.append(device.sync())  # bootstrap
        for _round in range(rounds):
            for device in self.clients:
                for _ in range(self.rng.randint(*edits)):
                    self.edit(device)
                if self.rng.random() >= offline_probability:
                    self.reports.append(device.sync())
        for device in self.clients:  # everyone comes back online at the end
            self.reports.append(device.sync())


def run_simulation(config: SimConfig, echo: Callable[[str], None] = print) -> SimSummary:
    rng = random.Random(config.seed)
    emails = config.emails or rep_emails(config.url, config.admin_email, config.password, config.reps, rng)
    emails = emails[: config.reps]
    if not emails:
        raise RuntimeError("no rep users to simulate (pass --email or check the admin's credentials)")
    workdir = config.workdir or tempfile.mkdtemp(prefix="canvass-sim-")
    os.makedirs(workdir, exist_ok=True)
    skew_ms = int(config.clock_skew_hours * 3_600_000)
    reps: list[_Rep] = []
    http_clients: list[httpx.Client] = []
    for n, email in enumerate(emails):
        devices = 2 if rng.random() < config.second_device_probability else 1
        clients = []
        for d in range(devices):
            http = httpx.Client(base_url=config.url, timeout=60)
            http_clients.append(http)
            clients.append(
                OfflineClient(
                    os.path.join(workdir, f"rep{n:03d}-device{d}.sqlite"),
                    http,
                    email=email,
                    password=config.password,
                    device_name=f"simulated device {d} of {email}",
                    platform="simulator",
                    clock_offset_ms=rng.randint(-skew_ms, skew_ms) if skew_ms else 0,
                    retry=RetryPolicy(attempts=8, initial=0.2, max_wait=5.0),
                )
            )
        reps.append(_Rep(email, clients, random.Random(rng.random())))
    summary = SimSummary(reps=len(reps), devices=sum(len(r.clients) for r in reps), rounds=config.rounds)
    echo(f"simulating {summary.reps} reps on {summary.devices} devices, {config.rounds} rounds; replicas in {workdir}")
    lock = threading.Lock()
    started = time.perf_counter()

    def play(rep: _Rep) -> None:
        try:
            rep.play(config.rounds, config.offline_probability, config.edits_per_round)
        except Exception as exc:
            with lock:
                summary.errors.append(f"{rep.email}: {type(exc).__name__}: {exc}")

    with concurrent.futures.ThreadPoolExecutor(max_workers=min(64, len(reps))) as pool:
        list(pool.map(play, reps))
    summary.wall_seconds = time.perf_counter() - started
    receipts: Counter[str] = Counter()
    open_conflicts: set[str] = set()
    for rep in reps:
        summary.mutations_made += sum(device.next_seq - 1 for device in rep.clients)
        for report in rep.reports:
            summary.mutations_pushed += report.pushed
            summary.pushes += report.pushes
            receipts.update(report.receipts)
            summary.pulled_changes += report.pulled_changes
            summary.pulled_removals += report.pulled_removals
            summary.seq_gaps += report.seq_gaps
            summary.retries += report.retries
            summary.sync_seconds += report.seconds
        rules: Counter[str] = Counter()
        for device in rep.clients:
            summary.pending_left += device.pending_count()
            rules.update(str(p.rule) for p in device.problems(include_dismissed=True) if p.status == "rejected")
            open_conflicts.update(str(c.get("id")) for c in device.conflicts() if c.get("status") == "open")
        for rule, n in rules.items():
            summary.rejected_rules[rule] = summary.rejected_rules.get(rule, 0) + n
    summary.receipts = dict(receipts)
    summary.conflicts_open_visible = len(open_conflicts)
    for rep in reps:
        for device in rep.clients:
            device.close()
    for http in http_clients:
        http.close()
    return summary
