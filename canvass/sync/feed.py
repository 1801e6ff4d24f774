"""The change feed: every committed write of a synced record gets a server
version of its tenant, and versions become visible in the order they are handed
out, so a device's cursor never skips a change (PROTOCOL.md, "Change feed").

Nothing in the pipeline services knows about it. Session hooks do the work for
every writer — REST handlers, sync pushes, the importer, the demo loader — and
``ALONE_WRITES`` does the same by hand for the writes no session sees (a REST
create or stage move committed as one statement, ``canvass.db.write_alone``):

- at flush, note which tenant tables were written, keep the per-field versions
  the three-way merge needs, and record owner changes (departures);
- every write leaves the row's ``server_version`` NULL ("written, not yet
  published"; the column's on-update value), which no pull can mistake for a
  published version;
- *publishing* advances the tenant's clock (one row, locked until the publishing
  transaction commits) and stamps that version on the unpublished rows.

When it publishes depends on the database. SQLite has one writer at a time, so
the writing transaction publishes its own rows just before it commits: the clock
lock costs nothing there. On PostgreSQL that would make the clock row a lock
that every write transaction of a tenant queues on through its commit — a
tenant's writes would be serialised on one fsync after another. There a write
commits unpublished, and its rows are published a moment later, by whoever
comes first: this process's ``Publisher`` (a fraction of a second after the
commit) or any pull (which publishes what is pending before it reads). A
publisher skips rows that a writer holds locked — they are published once it
commits — so publishing never waits for a writer nor a writer for a publisher's
long work, and the two cannot deadlock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import uuid
from collections.abc import Iterable, Mapping
from functools import cache
from typing import Any

from sqlalchemy import Table, Uuid, bindparam, event, exists, func, inspect, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session

from canvass.db import PUBLISH_ENGINE, WRITTEN, Base
from canvass.pipeline.models import (
    Account,
    Activity,
    Contact,
    FieldVersioned,
    Lead,
    Objection,
    StageChange,
    Synced,
)
from canvass.pipeline.stage_summary import SUMMARY_COLUMNS
from canvass.sync.hlc import HybridClock
from canvass.sync.models import SyncClock, SyncDeparture

# The hybrid clock of this server process: REST edits get a timestamp from it,
# and it advances past every device timestamp it receives, so an edit made after
# seeing a device's edit sorts after it even when the device's clock runs fast.
server_clock = HybridClock(node=f"server.{os.getpid()}")

HLC = "canvass.sync.hlc"  # session.info: the timestamp of the mutation being applied
DEVICE = "canvass.sync.device"  # session.info: the device whose mutation is being applied
# session.info: when one flush writes the changes of several mutations (a push
# puts its flushes off), the timestamp of the mutation that changed each record,
# by identity key; consumed by the flush that writes it.
HLC_OF = "canvass.sync.hlc_of"
_REASSIGNED = "canvass.sync.reassigned"
_COMMITTING = "canvass.sync.committing"  # session.info: tenants whose writes this commit leaves unpublished

# Tenants this process has written and not yet published (PostgreSQL), by
# database (a process may hold engines on several: the tests do). Each
# database's Publisher drains its own set; losing it (a crash) loses nothing,
# since any pull publishes what is pending first.
PENDING: dict[str, set[uuid.UUID]] = {}


def _pending_tenants(database: str) -> set[uuid.UUID]:
    return PENDING.setdefault(database, set())


log = logging.getLogger(__name__)

# Columns that are bookkeeping, not something a person edits (the lead's stage
# summary is derived by the server from its history; devices never send it).
_NOT_FIELDS = frozenset(
    {"id", "organization_id", "created_at", "updated_at", "version", "server_version", "field_versions"}
) | frozenset(SUMMARY_COLUMNS)
# Owner changes make a record leave someone's scope: devices must hear of it.
_OWNED = {Lead: "lead", Account: "account"}


Written = dict[uuid.UUID, dict[Table, set[uuid.UUID]]]  # tenant -> table -> ids


def _written(session: Session) -> Written:
    written: Written = session.info.setdefault(WRITTEN, {})
    return written


def _note(written: Written, obj: Any) -> None:
    written.setdefault(obj.organization_id, {}).setdefault(type(obj).__table__, set()).add(obj.id)


def current_hlc(session: Session) -> str:
    hlc: str | None = session.info.get(HLC)
    return hlc if hlc is not None else server_clock.tick().encode()


@event.listens_for(Session, "after_flush")
def _note_writes(session: Session, _context: Any) -> None:
    # After the flush every new row has its id (defaults are applied by then);
    # the new/dirty collections still describe what this flush wrote.
    written = _written(session)
    for obj in session.new:
        if isinstance(obj, Synced):
            _note(written, obj)
    for obj in session.dirty:
        if isinstance(obj, Synced) and session.is_modified(obj):
            _note(written, obj)


@event.listens_for(Session, "before_flush")
def _version_fields(session: Session, _context: Any, _instances: Any) -> None:
    hlc: str | None = None
    hlc_of: dict[Any, str] = session.info.get(HLC_OF) or {}
    for obj in session.dirty:
        if not isinstance(obj, Synced) or not session.is_modified(obj):
            continue
        state = inspect(obj)
        # Only attributes set since the load can have changed (committed_state
        # keeps their loaded values): a handful, not every column of the row.
        attrs = state.attrs
        changed = [k for k in state.committed_state if k not in _NOT_FIELDS and attrs[k].history.has_changes()]
        if isinstance(obj, FieldVersioned) and changed:
            hlc = hlc or current_hlc(session)
            written_at = hlc_of.pop(state.key, hlc)
            next_version = obj.version + 1  # type: ignore[attr-defined]  # the version this UPDATE writes
            obj.field_versions = _stamped(
                obj.field_versions, changed, next_version, written_at, session.info.get(DEVICE)
            )
        entity = _OWNED.get(type(obj))
        if entity is not None and "owner_id" in changed:
            _depart(session, obj.organization_id, entity, obj.id, _before(state, "owner_id"))
            if isinstance(obj, Lead):
                session.info.setdefault(_REASSIGNED, []).append(obj)
        if isinstance(obj, Lead) and _LEAD_SEES_ACCOUNT.intersection(changed):
            # Reps see an account through their lead on it: when the lead moves
            # to someone else, to another account or is deleted, the account
            # may leave the former owner's scope.
            account_id = _before(state, "account_id")
            if account_id is not None:
                _depart(session, obj.organization_id, "account", account_id, _before(state, "owner_id"))


def _stamped(
    versions: Mapping[str, Any] | None, changed: Iterable[str], next_version: int, written_at: str, device: Any
) -> dict[str, Any]:
    """Per-field versions after a write of ``changed``: each gets the row version
    the write makes, its timestamp and the device that wrote it."""
    stamped = dict(versions or {})
    for name in changed:
        stamped[name] = [next_version, written_at, device]
    return stamped


class _AloneWrites:
    """The bookkeeping above for a write that commits on its own, outside any
    session (``canvass.db.write_alone``: a REST create or stage move on
    PostgreSQL). Its rows are written unpublished (NULL), like every write."""

    def field_versions(
        self, session: Any, versions: Mapping[str, Any] | None, changed: Iterable[str], next_version: int
    ) -> dict[str, Any]:
        fields = [name for name in changed if name not in _NOT_FIELDS]
        if not fields:
            return dict(versions or {})
        return _stamped(versions, fields, next_version, current_hlc(session), session.info.get(DEVICE))

    def committed(self, database: str, organization_id: uuid.UUID) -> None:
        # As after a session's commit: this process's publisher publishes it.
        _pending_tenants(database).add(organization_id)


ALONE_WRITES = _AloneWrites()


_LEAD_SEES_ACCOUNT = frozenset({"owner_id", "account_id", "deleted_at"})


def _before(state: Any, name: str) -> Any:
    """An attribute's value before this flush's change (its value if unchanged)."""
    history = state.attrs[name].history
    if history.deleted:
        return history.deleted[0]
    return history.unchanged[0] if history.unchanged else None


def _depart(session: Session, organization_id: uuid.UUID, entity: str, record_id: uuid.UUID, owner: Any) -> None:
    if owner is None:
        return
    session.add(SyncDeparture(organization_id=organization_id, entity=entity, record_id=record_id, from_owner_id=owner))


# A reassigned lead brings its history, activities and objections to its new
# owner's devices: they are re-published with the lead.
_CHILDREN: tuple[Table, ...] = tuple(m.__table__ for m in (StageChange, Activity, Objection))  # type: ignore[misc]
_ACCOUNTS: Table = Account.__table__  # type: ignore[assignment]
_CONTACTS: Table = Contact.__table__  # type: ignore[assignment]


def _clock_tick(dialect: str, organization_id: uuid.UUID) -> Any:
    """Advance the tenant's clock (creating it on the first write) and return it."""
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    return (
        insert(SyncClock)
        .values(organization_id=organization_id, version=1)
        .on_conflict_do_update(index_elements=[SyncClock.organization_id], set_={"version": SyncClock.version + 1})
        .returning(SyncClock.version)
    )


def _stamp(table: Table, organization_id: uuid.UUID, version: Any, where: Any) -> Any:
    values: dict[str, Any] = {"server_version": version}
    if "updated_at" in table.c:
        values["updated_at"] = table.c.updated_at  # publishing is not an edit
    return update(table).where(table.c.organization_id == organization_id, where).values(values)


@cache
def feed_tables() -> tuple[Table, ...]:
    """Every table whose rows devices replicate (the ``Synced`` models)."""
    tables = {m.local_table for m in Base.registry.mappers if issubclass(m.class_, Synced)}
    return tuple(sorted(tables, key=lambda t: t.name))  # type: ignore[arg-type, attr-defined]


# Rows of one table a publication stamps at most (PostgreSQL). A publication
# holds its rows locked until it commits, and a write to one of them waits: a
# backlog (a large import, a process that died before publishing) is published
# in transactions of this size, each with its own version, so no write waits
# for more than one of them (measured: ~45-95 us per lead row, 2 cores).
PUBLISH_CHUNK = 1000
# A publisher or pull stops after this many transactions even if writers keep
# the tenant busy; what is left waits for the next round (nothing is lost).
_MOST_CHUNKS = 200


def _unpublished(table: Table, organization_id: uuid.UUID, name: str) -> Any:
    """The first ``PUBLISH_CHUNK`` rows written and committed but not yet
    published, locked, except those a writer holds locked right now (published
    after it commits). A materialized CTE, read once: as a subquery of the
    UPDATE, PostgreSQL may run it again for each row (a plain SubPlan on a small
    table), and each run skips the rows the UPDATE has just stamped and locks
    the next ``PUBLISH_CHUNK`` — the whole backlog in one go."""
    return (
        select(table.c.id)
        .where(table.c.organization_id == organization_id, table.c.server_version.is_(None))
        .limit(PUBLISH_CHUNK)
        .with_for_update(skip_locked=True)
        .cte(name)
        .prefix_with("MATERIALIZED")
    )


def _publish_chunk(connection: Connection, organization_id: uuid.UUID) -> bool:
    """PostgreSQL: the tenant's next version on up to ``PUBLISH_CHUNK`` pending
    rows of every feed table, in one round trip. True if some table had that
    many, so more may be pending."""
    clock = _clock_tick("postgresql", organization_id).cte("clock")
    version = select(clock.c.version).scalar_subquery()
    stamped = []
    for i, table in enumerate(feed_tables()):
        picked = _unpublished(table, organization_id, f"picked_{i}")
        stamp = _stamp(table, organization_id, version, table.c.id.in_(select(picked.c.id)))
        stamped.append(stamp.returning(table.c.id).cte(f"stamp_{i}"))
    counts = [select(func.count()).select_from(cte).scalar_subquery() for cte in stamped]
    _, *rows = connection.execute(select(clock.c.version, *counts).add_cte(*stamped)).one()
    return max(rows) >= PUBLISH_CHUNK


_STAMP_CHUNK = 5000  # ids per statement on SQLite (bound-parameter limits)


def _publish_tenant(session: Session, organization_id: uuid.UUID, stamps: list[tuple[Table, Any]]) -> int:
    """SQLite, in the writing transaction: ``stamps`` are (table, ids written)
    or (table, a condition) to publish. SQLite runs in-process: separate
    statements cost no round trips."""
    tick = _clock_tick(session.get_bind().dialect.name, organization_id)
    number = int(session.execute(tick).scalar_one())
    for table, what in stamps:
        conditions = (
            [table.c.id.in_(chunk) for chunk in _chunks(sorted(what), _STAMP_CHUNK)]
            if isinstance(what, set)
            else [what]
        )
        for condition in conditions:
            session.execute(
                _stamp(table, organization_id, number, condition), execution_options={"synchronize_session": False}
            )
    return number


def _chunks(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


@cache
def _pending() -> Any:
    """Whether any of a tenant's rows are written but unpublished: one index
    probe per feed table. Built once; the tenant is the ``org`` parameter."""
    org = bindparam("org", type_=Uuid)
    return select(
        or_(*(exists().where(t.c.organization_id == org, t.c.server_version.is_(None)) for t in feed_tables()))
    )


def _publish_if_pending(
    connection: Connection, organization_id: uuid.UUID, wait: bool = True, probe: bool = False
) -> bool:
    """Under the tenant's clock lock, publish what is still pending, up to
    ``PUBLISH_CHUNK`` rows a table; True if more may be pending (the caller
    commits and calls again). Checking again under the lock means that of two
    publishers that raced, the second finds the work done and writes nothing
    (no empty version, no WAL flush). ``wait=False``: if another publication
    holds the lock, leave it to that one and the next (a pull must not queue
    behind every other pull). ``probe``: first look whether anything is
    pending at all, without the lock — locking the clock row is itself a
    write, and a commit to flush."""
    if probe and not connection.execute(_pending(), {"org": organization_id}).scalar():
        return False
    clock = select(SyncClock.version).where(SyncClock.organization_id == organization_id)
    if connection.execute(clock.with_for_update(skip_locked=not wait)).first() is None:
        if not wait and connection.execute(clock).first() is not None:
            return False  # being published right now
        insert = postgresql.insert(SyncClock).values(organization_id=organization_id, version=0)
        connection.execute(insert.on_conflict_do_nothing())
        connection.execute(clock.with_for_update())
    if connection.execute(_pending(), {"org": organization_id}).scalar():
        return _publish_chunk(connection, organization_id)
    return False


async def publish_pending(
    session: AsyncSession, organization_id: uuid.UUID, *, probed: bool = False, wait: bool = True
) -> None:
    """Publish what the tenant's committed writes left unpublished (PostgreSQL),
    in short transactions of its own, a chunk each — never the caller's, which
    may run for long or never commit. One probe when nothing is pending (``probed``: the
    caller has just found something pending; it is checked again under the lock).
    ``wait=False``: not if another publication is under way (see
    ``_publish_if_pending``)."""
    if session.get_bind().dialect.name != "postgresql":
        return  # SQLite publishes inside the writing transaction
    if not probed and not await session.scalar(_pending(), {"org": organization_id}):
        return
    engine = session.info.get(PUBLISH_ENGINE) or session.bind
    if not isinstance(engine, AsyncEngine):  # a session bound to one connection: publish in its transaction
        await _publish_in_chunks(await session.connection(), organization_id, wait=wait, commit=False)
        return
    async with engine.connect() as connection:
        # A transaction even on the read pool's autocommit connections: the
        # clock lock must be held from the check to the commit.
        await connection.execution_options(isolation_level="READ COMMITTED")
        await _publish_in_chunks(connection, organization_id, wait=wait)


async def _publish_in_chunks(
    connection: AsyncConnection, organization_id: uuid.UUID, *, wait: bool, probe: bool = False, commit: bool = True
) -> bool:
    """What is pending, a chunk per transaction (``commit=False``: all in the
    connection's transaction, its owner's to end), at most ``_MOST_CHUNKS`` of
    them; True if some may still be pending (writers kept adding, or the cap)."""
    for _ in range(_MOST_CHUNKS):
        more = await connection.run_sync(_publish_if_pending, organization_id, wait, probe)
        if commit:
            await connection.commit()
        if not more:
            return False
    return True


class Publisher:
    """Publishes, a moment after their commit, the writes this process made
    (PostgreSQL), so devices and the forecast see them without waiting for a
    pull to do it. Runs for the life of the API process.

    A push waits for its writes to be published before it answers
    (``published``): it wakes the publisher and waits for the next round, which
    starts after its commit and publishes everything pending of the tenant in
    one statement (a backlog in chunks: ``PUBLISH_CHUNK``). Pushes that commit
    meanwhile share that round — the group commit of publishing — instead of
    each queueing on the tenant's clock."""

    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], interval: float = 0.5) -> None:
        self.sessionmaker = sessionmaker
        self.engine: AsyncEngine = sessionmaker.kw["bind"]
        self.database = str(self.engine.url)
        self.interval = interval
        self._wake = asyncio.Event()
        self._next_round: dict[uuid.UUID, asyncio.Future[None]] = {}

    async def run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)
            self._wake.clear()
            await self.publish_now()

    async def published(self, organization_id: uuid.UUID, timeout: float = 10.0) -> None:
        """Wait until a round that started after now has published the tenant
        (or ``timeout``: then a later round or pull publishes it)."""
        if self.engine.dialect.name != "postgresql":
            return  # SQLite published inside the writing transaction
        done = self._next_round.get(organization_id)
        if done is None:
            done = self._next_round[organization_id] = asyncio.get_running_loop().create_future()
        _pending_tenants(self.database).add(organization_id)
        self._wake.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(done), timeout)

    async def _publish(self, organization_id: uuid.UUID) -> bool:
        """On one connection of the write pool, one transaction per chunk: the
        probe, and if anything is pending, the clock and the stamp
        (``publish_pending`` would probe on a session's connection first and
        publish on a second). True if some may still be pending."""
        if self.engine.dialect.name != "postgresql":
            return False  # SQLite publishes inside the writing transaction
        async with self.engine.connect() as connection:
            return await _publish_in_chunks(connection, organization_id, wait=True, probe=True)

    async def publish_now(self) -> None:
        waiting = _pending_tenants(self.database)
        tenants = sorted(waiting)
        waiting.difference_update(tenants)
        rounds = {org: self._next_round.pop(org) for org in tenants if org in self._next_round}
        for organization_id in tenants:
            try:
                if await self._publish(organization_id):
                    # A backlog past the cap: the other tenants first, then the rest of it.
                    waiting.add(organization_id)
                    self._wake.set()
            except SQLAlchemyError:
                # Nothing is lost: the rows stay unpublished until the next try or pull.
                log.warning("publishing tenant %s failed; will retry", organization_id, exc_info=True)
                waiting.add(organization_id)
            finally:
                done = rounds.get(organization_id)
                if done is not None and not done.done():
                    done.set_result(None)


@event.listens_for(Session, "before_commit")
def _publish(session: Session) -> None:
    # The hook also fires when a savepoint is released (one per mutation in a
    # push): only the real commit publishes, once, at the very end.
    if session.in_nested_transaction():
        return
    session.flush()  # anything still pending is part of this transaction
    if not session.info.get(WRITTEN):
        return
    written: Written = session.info.pop(WRITTEN)
    reassigned: list[Lead] = session.info.pop(_REASSIGNED, [])
    eager = session.get_bind().dialect.name != "postgresql"
    for organization_id in sorted(written):  # a fixed order: two tenants' clocks never deadlock
        stamps: list[tuple[Table, Any]] = [(t, ids) for t, ids in written[organization_id].items() if ids]
        republish: list[tuple[Table, Any]] = []
        for lead in reassigned:
            if lead.organization_id != organization_id:
                continue
            republish.extend((child, child.c.lead_id == lead.id) for child in _CHILDREN)
            if lead.account_id is not None:
                republish.append((_ACCOUNTS, _ACCOUNTS.c.id == lead.account_id))
                republish.append((_CONTACTS, _CONTACTS.c.account_id == lead.account_id))
        if eager:
            if stamps or republish:
                _publish_tenant(session, organization_id, stamps + republish)
            continue
        # PostgreSQL: rows written here are already unpublished (NULL); what a
        # reassignment brings to the new owner is made so too, then published
        # with them after the commit.
        for table, condition in republish:
            session.execute(
                _stamp(table, organization_id, None, condition), execution_options={"synchronize_session": False}
            )
    if not eager:
        session.info[_COMMITTING] = (str(session.get_bind().engine.url), set(written))


@event.listens_for(Session, "after_commit")
def _hand_to_publisher(session: Session) -> None:
    committing = session.info.pop(_COMMITTING, None)
    if committing:
        database, tenants = committing
        _pending_tenants(database).update(tenants)


@event.listens_for(Session, "after_transaction_end")
def _forget(session: Session, transaction: Any) -> None:
    # Only the outermost transaction: a savepoint rolled back inside a push must
    # not forget what the push's other mutations wrote.
    if transaction.parent is not None or transaction.nested:
        return
    session.info.pop(WRITTEN, None)
    session.info.pop(_REASSIGNED, None)
    session.info.pop(_COMMITTING, None)
