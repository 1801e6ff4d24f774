"""The device's SQLite replica: server state as pulled, the outbox, receipts, and
the local view the app reads (server state with pending mutations replayed on top).

Tables
------
``meta``            key/value: device_id, cursor, next_seq, last_applied_seq, hlc, …
``server_records``  (entity, id) → server_version, data: records exactly as pulled
``outbox``          seq → name, args, hlc, base, created_at, state (pending | sent)
``receipts``        seq → the server's answer for every pushed mutation, with the
                    mutation itself, so rejected and conflicted intents stay visible
``local_records``   (entity, id) → data: what the app shows; rebuilt by ``rebase``

Everything here is stdlib ``sqlite3`` and JSON; nothing knows the server's ORM.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import sqlite3
from collections.abc import Iterator
from typing import Any

from canvass.sync.wire import Change, MutationName, Removal

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS server_records (
    entity TEXT NOT NULL,
    id TEXT NOT NULL,
    server_version INTEGER NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (entity, id)
);
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    args TEXT NOT NULL,
    hlc TEXT NOT NULL,
    base TEXT NOT NULL,
    created_at TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'sent')),
    attempts INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS receipts (
    seq INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    args TEXT NOT NULL,
    hlc TEXT NOT NULL,
    status TEXT NOT NULL,
    fields TEXT NOT NULL DEFAULT '[]',
    conflict_id TEXT,
    rule TEXT,
    message TEXT,
    received_at TEXT NOT NULL,
    dismissed INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS local_records (
    entity TEXT NOT NULL,
    id TEXT NOT NULL,
    data TEXT NOT NULL,
    pending INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (entity, id)
);
"""

# A removed lead takes these with it (see wire.Removal).
LEAD_CHILDREN = ("stage_change", "activity", "objection")

# mutation name → (entity, kind of change)
CREATES = {
    MutationName.ACCOUNT_CREATE: "account",
    MutationName.CONTACT_CREATE: "contact",
    MutationName.LEAD_CREATE: "lead",
    MutationName.ACTIVITY_LOG: "activity",
    MutationName.OBJECTION_ADD: "objection",
}
UPDATES = {
    MutationName.ACCOUNT_UPDATE: "account",
    MutationName.CONTACT_UPDATE: "contact",
    MutationName.LEAD_UPDATE: "lead",
    MutationName.OBJECTION_UPDATE: "objection",
}
DELETES = {
    MutationName.ACCOUNT_DELETE: "account",
    MutationName.CONTACT_DELETE: "contact",
    MutationName.LEAD_DELETE: "lead",
}
ACTIVITY_STEPS = {MutationName.ACTIVITY_CHECK_IN, MutationName.ACTIVITY_CHECK_OUT, MutationName.ACTIVITY_COMPLETE}
LEAD_STEPS = {MutationName.LEAD_MOVE_STAGE, MutationName.LEAD_RECORD_OUTCOME}


def target(name: str, args: dict[str, Any]) -> tuple[str, str] | None:
    """The (entity, id) a mutation writes."""
    mutation = MutationName(name)
    record_id = args.get("id")
    if record_id is None:
        return None
    for table in (CREATES, UPDATES, DELETES):
        if mutation in table:
            return table[mutation], str(record_id)
    if mutation in LEAD_STEPS:
        return "lead", str(record_id)
    if mutation in ACTIVITY_STEPS:
        return "activity", str(record_id)
    return None


def utc_text(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


class Replica:
    """The SQLite file. One connection, used from one thread."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        else:
            self.db.execute("COMMIT")

    # ------------------------------------------------------------ meta

    def get_meta(self, key: str, default: str | None = None) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else str(row[0])

    def set_meta(self, key: str, value: str | int) -> None:
        self.db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, str(value)),
        )

    def int_meta(self, key: str, default: int = 0) -> int:
        return int(self.get_meta(key, str(default)) or default)

    # ------------------------------------------------------------ server state

    def server_record(self, entity: str, record_id: str) -> tuple[int, dict[str, Any]] | None:
        row = self.db.execute(
            "SELECT server_version, data FROM server_records WHERE entity = ? AND id = ?", (entity, record_id)
        ).fetchone()
        return None if row is None else (int(row[0]), json.loads(row[1]))

    def apply_change(self, change: Change) -> None:
        entity, record_id = str(change.entity), str(change.id)
        current = self.db.execute(
            "SELECT server_version FROM server_records WHERE entity = ? AND id = ?", (entity, record_id)
        ).fetchone()
        if current is not None and int(current[0]) > change.server_version:
            return  # we already hold a newer copy
        self.db.execute(
            "INSERT INTO server_records (entity, id, server_version, data) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (entity, id) DO UPDATE SET server_version = excluded.server_version, data = excluded.data",
            (entity, record_id, change.server_version, json.dumps(change.data, sort_keys=True)),
        )

    def apply_removal(self, removal: Removal) -> None:
        entity, record_id = str(removal.entity), str(removal.id)
        current = self.db.execute(
            "SELECT server_version FROM server_records WHERE entity = ? AND id = ?", (entity, record_id)
        ).fetchone()
        if current is not None and int(current[0]) > removal.server_version:
            return  # it came back (e.g. reassigned to us again) after this removal
        self.db.execute("DELETE FROM server_records WHERE entity = ? AND id = ?", (entity, record_id))
        if entity == "lead":
            for child in LEAD_CHILDREN:
                self.db.execute(
                    "DELETE FROM server_records WHERE entity = ? AND json_extract(data, '$.lead_id') = ?",
                    (child, record_id),
                )
        elif entity == "account":  # contacts are seen through their account
            self.db.execute(
                "DELETE FROM server_records WHERE entity = 'contact' AND json_extract(data, '$.account_id') = ?",
                (record_id,),
            )

    def server_records(self, entity: str | None = None) -> list[tuple[str, str, int, dict[str, Any]]]:
        sql = "SELECT entity, id, server_version, data FROM server_records"
        rows = (
            self.db.execute(sql + " WHERE entity = ? ORDER BY id", (entity,))
            if entity
            else self.db.execute(sql + " ORDER BY entity, id")
        )
        return [(r[0], r[1], int(r[2]), json.loads(r[3])) for r in rows]

    # ------------------------------------------------------------ outbox

    def enqueue(self, seq: int, name: str, args: dict[str, Any], hlc: str, base: dict[str, int], at: str) -> None:
        self.db.execute(
            "INSERT INTO outbox (seq, name, args, hlc, base, created_at) VALUES (?, ?, ?, ?, ?, ?)",
            (seq, name, json.dumps(args, sort_keys=True), hlc, json.dumps(base, sort_keys=True), at),
        )

    def outbox(self, from_seq: int = 0, limit: int | None = None) -> list[sqlite3.Row]:
        sql = "SELECT * FROM outbox WHERE seq >= ? ORDER BY seq"
        if limit is not None:
            return list(self.db.execute(sql + " LIMIT ?", (from_seq, limit)))
        return list(self.db.execute(sql, (from_seq,)))

    def outbox_row(self, seq: int) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self.db.execute("SELECT * FROM outbox WHERE seq = ?", (seq,)).fetchone()
        return row

    def mark_sent(self, seqs: list[int]) -> None:
        self.db.executemany(
            "UPDATE outbox SET state = 'sent', attempts = attempts + 1 WHERE seq = ?", [(s,) for s in seqs]
        )

    def pending_count(self) -> int:
        return int(self.db.execute("SELECT count(*) FROM outbox").fetchone()[0])

    def oldest_pending(self) -> str | None:
        row = self.db.execute("SELECT min(created_at) FROM outbox").fetchone()
        return None if row is None or row[0] is None else str(row[0])

    # ------------------------------------------------------------ receipts

    def store_receipt(self, row: sqlite3.Row, receipt: dict[str, Any], received_at: str) -> None:
        """Keep the server's answer with the mutation it answers; the mutation leaves the outbox."""
        self.db.execute(
            "INSERT INTO receipts (seq, name, args, hlc, status, fields, conflict_id, rule, message, received_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (seq) DO NOTHING",
            (
                row["seq"],
                row["name"],
                row["args"],
                row["hlc"],
                receipt["status"],
                json.dumps(receipt.get("fields") or []),
                None if receipt.get("conflict_id") is None else str(receipt["conflict_id"]),
                receipt.get("rule"),
                receipt.get("message"),
                received_at,
            ),
        )
        self.db.execute("DELETE FROM outbox WHERE seq = ?", (row["seq"],))

    def receipts(self, statuses: tuple[str, ...] | None = None, include_dismissed: bool = True) -> list[dict[str, Any]]:
        sql = "SELECT * FROM receipts"
        clauses: list[str] = []
        params: list[Any] = []
        if statuses:
            clauses.append(f"status IN ({', '.join('?' for _ in statuses)})")
            params.extend(statuses)
        if not include_dismissed:
            clauses.append("dismissed = 0")
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        out = []
        for r in self.db.execute(sql + " ORDER BY seq", params):
            item = dict(r)
            item["args"] = json.loads(item["args"])
            item["fields"] = json.loads(item["fields"])
            item["dismissed"] = bool(item["dismissed"])
            out.append(item)
        return out

    def dismiss_receipt(self, seq: int) -> None:
        self.db.execute("UPDATE receipts SET dismissed = 1 WHERE seq = ?", (seq,))

    # ------------------------------------------------------------ local view

    def rebuild_view(self, from_seq: int, me: str | None) -> None:
        """Local view = server state + the outbox's mutations from ``from_seq`` replayed in order."""
        with self.transaction() as db:
            db.execute("DELETE FROM local_records")
            db.execute(
                "INSERT INTO local_records (entity, id, data, pending) SELECT entity, id, data, 0 FROM server_records"
            )
            for row in db.execute("SELECT * FROM outbox WHERE seq >= ? ORDER BY seq", (from_seq,)).fetchall():
                self.apply_local(row["name"], json.loads(row["args"]), row["created_at"], me)

    def local(self, entity: str, record_id: str) -> dict[str, Any] | None:
        row = self.db.execute(
            "SELECT data, pending FROM local_records WHERE entity = ? AND id = ?", (entity, record_id)
        ).fetchone()
        if row is None:
            return None
        item = dict(json.loads(row[0]))
        item["_pending"] = bool(row[1])
        return item

    def local_records(self, entity: str) -> list[dict[str, Any]]:
        rows = self.db.execute("SELECT data, pending FROM local_records WHERE entity = ? ORDER BY id", (entity,))
        out = []
        for data, pending in rows:
            item = json.loads(data)
            item["_pending"] = bool(pending)
            out.append(item)
        return out

    def _put_local(self, entity: str, record_id: str, data: dict[str, Any]) -> None:
        self.db.execute(
            "INSERT INTO local_records (entity, id, data, pending) VALUES (?, ?, ?, 1) "
            "ON CONFLICT (entity, id) DO UPDATE SET data = excluded.data, pending = 1",
            (entity, record_id, json.dumps({k: v for k, v in data.items() if k != "_pending"}, sort_keys=True)),
        )

    def apply_local(self, name: str, args: dict[str, Any], at: str, me: str | None) -> None:
        """Apply one mutation optimistically to the local view (the server decides later)."""
        mutation = MutationName(name)
        if mutation in CREATES:
            entity = CREATES[mutation]
            record = {k: v for k, v in args.items()}
            record.setdefault("created_at", at)
            record["updated_at"] = at
            record.setdefault("version", None)
            if entity == "lead":
                record.update(stage="prospecting", status="open", stage_entered_at=at)
                record.setdefault("owner_id", me)
            elif entity in ("account", "activity"):
                record.setdefault("owner_id", me)
            elif entity == "objection":
                record.setdefault("status", "open")
                record.setdefault("raised_by_id", me)
            existing = self.local(entity, str(args["id"]))
            self._put_local(entity, str(args["id"]), {**(existing or {}), **record})
            return
        found = target(name, args)
        if found is None:
            return
        entity, record_id = found
        current = self.local(entity, record_id)
        if mutation in DELETES:
            self.db.execute("DELETE FROM local_records WHERE entity = ? AND id = ?", (entity, record_id))
            if entity == "lead":
                for child in LEAD_CHILDREN:
                    self.db.execute(
                        "DELETE FROM local_records WHERE entity = ? AND json_extract(data, '$.lead_id') = ?",
                        (child, record_id),
                    )
            elif entity == "account":
                self.db.execute(
                    "DELETE FROM local_records WHERE entity = 'contact' AND json_extract(data, '$.account_id') = ?",
                    (record_id,),
                )
            return
        if current is None:
            return  # edits a record this device no longer holds; the server will answer
        current["updated_at"] = at
        if mutation in UPDATES:
            current.update(args.get("fields") or {})
        elif mutation is MutationName.LEAD_MOVE_STAGE:
            if current.get("stage") != args["to_stage"]:
                current["stage_entered_at"] = args.get("at") or at
            current["stage"] = args["to_stage"]
        elif mutation is MutationName.LEAD_RECORD_OUTCOME:
            outcome = args["outcome"]
            current["status"] = outcome
            current["closed_at"] = args.get("at") or at
            if outcome == "won":
                if args.get("amount") is not None:
                    current["amount"] = args["amount"]
                current["forecast_category"] = "closed"
            else:
                current["loss_reason"] = args.get("loss_reason")
                current["competitor"] = args.get("competitor")
                current["forecast_category"] = "omitted"
                if outcome == "lost":
                    current["lost_at_stage"] = current.get("stage")
                    current["stage"] = "close"
        elif mutation is MutationName.ACTIVITY_CHECK_IN:
            when = args.get("at") or at
            current.update(check_in_at=when, check_in_latitude=args["latitude"], check_in_longitude=args["longitude"])
            current["occurred_at"] = current.get("occurred_at") or when
        elif mutation is MutationName.ACTIVITY_CHECK_OUT:
            when = args.get("at") or at
            current.update(
                check_out_at=when, check_out_latitude=args["latitude"], check_out_longitude=args["longitude"]
            )
            current["completed_at"] = current.get("completed_at") or when
        elif mutation is MutationName.ACTIVITY_COMPLETE:
            current["completed_at"] = args.get("at") or at
            if args.get("notes"):
                current["notes"] = f"{current['notes']}\n{args['notes']}" if current.get("notes") else args["notes"]
        self._put_local(entity, record_id, current)
