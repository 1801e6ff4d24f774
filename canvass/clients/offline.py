"""The reference offline client: what a mobile app does to work without a network.

    client = OfflineClient("/data/replica.sqlite", "https://canvass.example", email=..., password=...)
    lead_id = client.create("lead", {"title": "GTX Pro for Acme"})   # works offline
    client.update("lead", lead_id, {"next_step": "Send the quote"})
    client.move_stage(lead_id, "qualify")
    report = client.sync()                                           # when the network is back
    for problem in client.problems(): ...                            # show refused / conflicted edits

How it works (see ``canvass/sync/PROTOCOL.md``):

* every user intent becomes a **mutation** in the SQLite outbox — ``seq``
  strictly increasing from 1, a hybrid-logical-clock timestamp, and ``base``: the
  server version of each record it edits as this device last saw it — and is
  applied at once to the **local view** the app reads (optimistic apply);
* ``sync()`` **pushes** the outbox in batches of at most 1,000 in seq order
  (re-sending from ``expected_seq`` when the server reports a seq gap), stores
  each **receipt** (rejected and conflicted mutations stay listed in
  ``problems()``; they are never dropped), then **pulls** pages until
  ``has_more`` is false, then **rebases**: the local view is rebuilt from the new
  server state with the still-unapplied mutations replayed on top;
* network failures, timeouts and 5xx answers are retried with exponential
  backoff and jitter; re-sending a push is safe because the server applies each
  ``(device_id, seq)`` once and answers repeats from stored receipts.

Dependencies: ``canvass.sync.wire``, ``canvass.sync.hlc``, msgspec, httpx,
tenacity and the stdlib ``sqlite3`` — nothing of the server.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import msgspec

from canvass.clients.http import ProblemError, RetryPolicy, SeqGap, SyncApi
from canvass.clients.ids import uuid7
from canvass.clients.replica import CREATES, Replica, target, utc_text
from canvass.sync.hlc import ClockDrift, HybridClock, Timestamp
from canvass.sync.wire import (
    MAX_MUTATIONS_PER_PUSH,
    DeviceRegistration,
    Entity,
    Mutation,
    MutationName,
    PushRequest,
    PushResponse,
    base_key,
)

ENTITIES = {"account", "contact", "lead"}


class SyncError(Exception):
    """The outbox cannot be pushed as it is (e.g. the server expects a seq this device no longer holds)."""


class SyncReport(msgspec.Struct, kw_only=True):
    pushed: int = 0  # mutations sent (a re-sent one counts again)
    pushes: int = 0  # push requests answered
    receipts: dict[str, int] = msgspec.field(default_factory=dict)  # status → count, this sync
    seq_gaps: int = 0
    pulled_changes: int = 0
    pulled_removals: int = 0
    pull_pages: int = 0
    retries: int = 0
    cursor: str = "0"
    last_applied_seq: int = 0
    pending: int = 0
    seconds: float = 0.0


class Problem(msgspec.Struct, kw_only=True):
    """A mutation the server did not simply apply: the app shows it to the rep."""

    seq: int
    name: str
    args: dict[str, Any]
    status: str  # rejected | conflict | merged
    fields: list[str]
    conflict_id: str | None
    rule: str | None
    message: str | None
    received_at: str


def _jsonable(value: Any) -> Any:
    return msgspec.to_builtins(value)


class OfflineClient:
    """One device of one user, with its replica in a SQLite file.

    ``http`` is a base URL or an ``httpx.Client`` (a Litestar ``TestClient`` in
    tests). ``clock_offset_ms`` shifts this device's wall clock (to simulate a
    device whose clock is wrong); ``now_ms`` replaces the clock entirely.
    """

    def __init__(
        self,
        path: str,
        http: httpx.Client | str,
        *,
        email: str | None = None,
        password: str | None = None,
        access_token: str | None = None,
        device_id: str | None = None,
        device_name: str | None = None,
        platform: str | None = "python-reference",
        clock_offset_ms: int = 0,
        now_ms: Callable[[], int] | None = None,
        retry: RetryPolicy | None = None,
        pull_limit: int | None = None,
        push_batch: int = MAX_MUTATIONS_PER_PUSH,
        timeout: float = 30.0,
    ) -> None:
        self.replica = Replica(path)
        self.api = SyncApi(
            http, email=email, password=password, access_token=access_token, retry=retry, timeout=timeout
        )
        stored = self.replica.get_meta("device_id")
        if stored is None:
            stored = device_id or str(uuid7())
            self.replica.set_meta("device_id", stored)
        elif device_id is not None and device_id != stored:
            raise ValueError(f"this replica belongs to device {stored}, not {device_id}")
        self.device_id = stored
        self.device_name = device_name
        self.platform = platform
        self.clock_offset_ms = clock_offset_ms
        self._physical = now_ms or (lambda: time.time_ns() // 1_000_000)
        self.clock = HybridClock(self.device_id, now_ms=self.now_ms)
        saved = self.replica.get_meta("hlc")
        if saved:
            with contextlib.suppress(ClockDrift):  # never hand out a timestamp below one already used
                self.clock.receive(Timestamp.decode(saved))
        self.pull_limit = pull_limit
        self.push_batch = max(1, min(push_batch, MAX_MUTATIONS_PER_PUSH))
        self.user_id: str | None = self.replica.get_meta("user_id")
        self._closed = False

    # ------------------------------------------------------------ lifecycle

    def now_ms(self) -> int:
        return self._physical() + self.clock_offset_ms

    def now(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.now_ms() / 1000, dt.UTC)

    def close(self) -> None:
        if not self._closed:
            self.replica.close()
            self.api.close()
            self._closed = True

    def __enter__(self) -> OfflineClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @property
    def cursor(self) -> str:
        return self.replica.get_meta("cursor", "0") or "0"

    @property
    def last_applied_seq(self) -> int:
        return self.replica.int_meta("last_applied_seq")

    @property
    def next_seq(self) -> int:
        return self.replica.int_meta("next_seq", 1)

    def register(self) -> int:
        """Register this device to the logged-in user (idempotent: 201 first, 200 after)."""
        status = self.api.register_device(
            DeviceRegistration(device_id=self.device_id, name=self.device_name, platform=self.platform)
        )
        self.replica.set_meta("registered", 1)
        if self.api.user_id:
            self.user_id = self.api.user_id
            self.replica.set_meta("user_id", self.api.user_id)
        return status

    def _ensure_registered(self) -> None:
        if self.replica.get_meta("registered") is None:
            self.register()

    # ------------------------------------------------------------ outbox

    def _base_of(self, entity: str, record_id: str) -> int | None:
        """The version of a record as this device last pulled it (None: never pulled)."""
        held = self.replica.server_record(entity, record_id)
        if held is None:
            return None
        version, data = held
        row_version = data.get("version")
        return int(row_version) if isinstance(row_version, int) else version

    def mutate(self, name: MutationName | str, args: dict[str, Any], base: dict[str, int] | None = None) -> int:
        """Queue one mutation, apply it to the local view; return its seq.

        ``base`` defaults to the pulled version of the record the mutation edits.
        """
        mutation = MutationName(name)
        args = _jsonable(args)
        if base is None:
            base = {}
            found = target(mutation, args)
            if found is not None and mutation not in CREATES:
                version = self._base_of(*found)
                if version is not None:
                    base[base_key(found[0], found[1])] = version
        stamp = self.clock.tick().encode()
        at = utc_text(self.now())
        with self.replica.transaction():
            seq = self.next_seq
            self.replica.enqueue(seq, mutation.value, args, stamp, base, at)
            self.replica.set_meta("next_seq", seq + 1)
            self.replica.set_meta("hlc", stamp)
            self.replica.apply_local(mutation.value, args, at, self.user_id)
        return seq

    # ------------------------------------------------------------ what the app calls

    def create(self, entity: str, fields: dict[str, Any], record_id: str | None = None) -> str:
        """Create an account, contact or lead; returns its id (made here, UUIDv7)."""
        if entity not in ENTITIES:
            raise ValueError(f"create one of {sorted(ENTITIES)}, not {entity!r}")
        new_id = record_id or str(uuid7(self.now_ms()))
        self.mutate(f"{entity}.create", {**fields, "id": new_id})
        return new_id

    def update(self, entity: str, record_id: str, fields: dict[str, Any]) -> int:
        if entity not in ENTITIES:
            raise ValueError(f"update one of {sorted(ENTITIES)}, not {entity!r}")
        return self.mutate(f"{entity}.update", {"id": str(record_id), "fields": fields})

    def delete(self, entity: str, record_id: str) -> int:
        if entity not in ENTITIES:
            raise ValueError(f"delete one of {sorted(ENTITIES)}, not {entity!r}")
        return self.mutate(f"{entity}.delete", {"id": str(record_id)})

    def move_stage(self, lead_id: str, to_stage: str, **fields: Any) -> int:
        """``fields``: note, override_reason, at (default: now on this device)."""
        fields.setdefault("at", self.now())
        return self.mutate(MutationName.LEAD_MOVE_STAGE, {"id": str(lead_id), "to_stage": to_stage, **fields})

    def record_outcome(self, lead_id: str, outcome: str, **fields: Any) -> int:
        """``fields``: amount, loss_reason, competitor, closing_method, closing_signals, note, at."""
        fields.setdefault("at", self.now())
        return self.mutate(MutationName.LEAD_RECORD_OUTCOME, {"id": str(lead_id), "outcome": outcome, **fields})

    def log_activity(self, kind: str, record_id: str | None = None, **fields: Any) -> str:
        """Log a visit, call, note, task… on a lead (``lead_id``) or an account (``account_id``)."""
        new_id = record_id or str(uuid7(self.now_ms()))
        if kind != "task" and "planned_at" not in fields:
            fields.setdefault("occurred_at", self.now())
        self.mutate(MutationName.ACTIVITY_LOG, {"kind": kind, **fields, "id": new_id})
        return new_id

    def check_in(self, activity_id: str, latitude: float, longitude: float, at: dt.datetime | None = None) -> int:
        args = {"id": str(activity_id), "latitude": latitude, "longitude": longitude, "at": at or self.now()}
        return self.mutate(MutationName.ACTIVITY_CHECK_IN, args)

    def check_out(self, activity_id: str, latitude: float, longitude: float, at: dt.datetime | None = None) -> int:
        args = {"id": str(activity_id), "latitude": latitude, "longitude": longitude, "at": at or self.now()}
        return self.mutate(MutationName.ACTIVITY_CHECK_OUT, args)

    def complete(self, activity_id: str, notes: str | None = None, at: dt.datetime | None = None) -> int:
        args: dict[str, Any] = {"id": str(activity_id), "at": at or self.now()}
        if notes is not None:
            args["notes"] = notes
        return self.mutate(MutationName.ACTIVITY_COMPLETE, args)

    def add_objection(
        self, lead_id: str, type: str, statement: str, record_id: str | None = None, **fields: Any
    ) -> str:
        new_id = record_id or str(uuid7(self.now_ms()))
        args = {"lead_id": str(lead_id), "type": type, "statement": statement, **fields, "id": new_id}
        self.mutate(MutationName.OBJECTION_ADD, args)
        return new_id

    def update_objection(self, objection_id: str, fields: dict[str, Any]) -> int:
        return self.mutate(MutationName.OBJECTION_UPDATE, {"id": str(objection_id), "fields": fields})

    def records(self, entity: str | Entity, **where: Any) -> list[dict[str, Any]]:
        """The local view of one kind of record (server state + pending edits).
        ``where`` filters on equal field values, e.g. ``records("activity", lead_id=...)``.
        Each record has ``_pending`` true while an unsynced edit touches it."""
        rows = self.replica.local_records(str(entity))
        wanted = {k: str(v) if isinstance(v, uuid.UUID) else v for k, v in where.items()}
        return [r for r in rows if all(r.get(k) == v for k, v in wanted.items())]

    def record(self, entity: str | Entity, record_id: str) -> dict[str, Any] | None:
        return self.replica.local(str(entity), str(record_id))

    def pending_count(self) -> int:
        return self.replica.pending_count()

    def problems(self, include_merged: bool = False, include_dismissed: bool = False) -> list[Problem]:
        """Mutations the server refused (``rejected``) or could not merge alone
        (``conflict``) — and, on request, ``merged`` ones. Never dropped; the app
        may ``dismiss`` one once the rep has seen it."""
        statuses = ("rejected", "conflict", "merged") if include_merged else ("rejected", "conflict")
        return [
            msgspec.convert(r, Problem) for r in self.replica.receipts(statuses, include_dismissed=include_dismissed)
        ]

    def dismiss(self, seq: int) -> None:
        self.replica.dismiss_receipt(seq)

    def receipts(self) -> list[dict[str, Any]]:
        """Every receipt this device has received, with its mutation."""
        return self.replica.receipts()

    def conflicts(self) -> list[dict[str, Any]]:
        """Conflict records in this user's scope, as pulled."""
        return [data for _e, _i, _v, data in self.replica.server_records("conflict")]

    # ------------------------------------------------------------ sync

    def sync(self, *, pull: bool = True) -> SyncReport:
        """Push everything pending, then pull until up to date, then rebase."""
        started = time.perf_counter()
        retries_before = self.api.retries
        report = SyncReport()
        self._ensure_registered()
        self.push(report)
        if pull:
            self.pull(report)
        report.retries = self.api.retries - retries_before
        report.cursor = self.cursor
        report.last_applied_seq = self.last_applied_seq
        report.pending = self.pending_count()
        report.seconds = time.perf_counter() - started
        return report

    def _oldest_age_s(self) -> int | None:
        oldest = self.replica.oldest_pending()
        if oldest is None:
            return None
        created = dt.datetime.fromisoformat(oldest.replace("Z", "+00:00"))
        return max(0, int((self.now() - created).total_seconds()))

    def build_push(self, from_seq: int | None = None, limit: int | None = None) -> PushRequest:
        """The next push: outbox rows from ``from_seq`` (default: the oldest), in seq order."""
        rows = self.replica.outbox(from_seq or 0, limit or self.push_batch)
        mutations = [
            Mutation(seq=r["seq"], name=r["name"], args=json.loads(r["args"]), hlc=r["hlc"], base=json.loads(r["base"]))
            for r in rows
        ]
        return PushRequest(device_id=self.device_id, mutations=mutations, oldest_pending_age_s=self._oldest_age_s())

    def push(self, report: SyncReport | None = None) -> SyncReport:
        """Push the outbox until it is empty (batches of ≤ ``push_batch``)."""
        report = report or SyncReport()
        self._ensure_registered()
        from_seq: int | None = None
        gaps_in_a_row = 0
        while self.replica.pending_count():
            request = self.build_push(from_seq)
            if not request.mutations:
                raise SyncError(f"the server expects seq {from_seq}, which this device no longer holds")
            self.replica.mark_sent([m.seq for m in request.mutations])
            try:
                response = self.api.push(request)
            except SeqGap as gap:
                report.seq_gaps += 1
                gaps_in_a_row += 1
                expected = gap.expected_seq
                oldest = request.mutations[0].seq
                if gaps_in_a_row > 3 or (expected < oldest and self.replica.outbox_row(expected) is None):
                    raise SyncError(
                        f"seq gap: the server expects seq {expected}, this device's outbox starts at {oldest}"
                    ) from gap
                from_seq = expected if expected < oldest else None
                # expected > oldest: the server applied more than we knew; a resend of
                # the older ones is answered from stored receipts.
                continue
            gaps_in_a_row = 0
            from_seq = None
            report.pushes += 1
            report.pushed += len(request.mutations)
            self.take_receipts(request, response, report)
        return report

    def take_receipts(self, request: PushRequest, response: PushResponse, report: SyncReport | None = None) -> None:
        """Store each receipt with its mutation; answered mutations leave the outbox."""
        received_at = utc_text(self.now())
        with self.replica.transaction():
            for receipt in response.receipts:
                row = self.replica.outbox_row(receipt.seq)
                if row is None:
                    continue  # already answered by an earlier push
                self.replica.store_receipt(row, msgspec.to_builtins(receipt), received_at)
                if report is not None:
                    report.receipts[str(receipt.status)] = report.receipts.get(str(receipt.status), 0) + 1
            if response.last_applied_seq > self.last_applied_seq:
                self.replica.set_meta("last_applied_seq", response.last_applied_seq)

    def pull(self, report: SyncReport | None = None) -> SyncReport:
        """Pull pages until ``has_more`` is false, then rebase the local view."""
        report = report or SyncReport()
        self._ensure_registered()
        while True:
            page = self.api.pull(self.device_id, self.cursor, self.pull_limit)
            with self.replica.transaction():
                for change in page.changes:
                    self.replica.apply_change(change)
                for removal in page.removals:
                    self.replica.apply_removal(removal)
                self.replica.set_meta("cursor", page.cursor)
                if page.last_applied_seq > self.last_applied_seq:
                    self.replica.set_meta("last_applied_seq", page.last_applied_seq)
            report.pull_pages += 1
            report.pulled_changes += len(page.changes)
            report.pulled_removals += len(page.removals)
            if not page.has_more:
                break
        self.rebase()
        return report

    def rebase(self) -> None:
        """Rebuild the local view: pulled server state + mutations the server has not applied yet.

        Mutations with seq ≤ last_applied_seq are already in the server state (their
        receipts may still be owed, after a lost reply: the next push fetches them).
        """
        self.replica.rebuild_view(self.last_applied_seq + 1, self.user_id)

    # ------------------------------------------------------------ conflicts

    def resolve_conflict(self, conflict_id: str, choice: str, value: Any = None) -> dict[str, Any]:
        """Online only: pick ``keep_server``, ``take_device`` or a ``new_value``."""
        return self.api.resolve_conflict(conflict_id, choice, value)


__all__ = ["OfflineClient", "Problem", "ProblemError", "RetryPolicy", "SyncError", "SyncReport"]
