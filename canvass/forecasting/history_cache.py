"""Each tenant's lead history kept in the worker process, refreshed from the change feed.

Reading a tenant's whole history (``queries.lead_history``: every lead and every stage change)
is what a forecast costs at scale — 1,000,000 leads and 5,000,000 changes take tens of seconds
to scan and order, the maths on the arrays a second or two. So the tenant-wide arrays stay in
the process, stamped with the tenant's change-feed version (``sync_clocks``, canvass/sync/feed.py:
every committed write of a lead or a stage change is published with a version, and versions
become visible in order). On each request:

- publish what the tenant's committed writes left unpublished (as a pull does; one index probe
  per feed table when nothing is), then read the tenant's clock (one row); equal to the cached version: the arrays are current;
- ahead: the leads written since (leads and stage changes with ``server_version`` above the
  cached version, by the feed indexes) are re-read whole — the lead row and all of its stage
  changes, through the same statements as ``lead_history`` — and spliced into the arrays in
  place of their old records (a deleted lead just leaves); if every re-read lead's records equal
  its cached ones (the write changed nothing a forecast reads: a title, a note, an activity), the
  arrays and the answers already given on them are kept and only the version moves; past
  ``FULL_REREAD_SHARE`` of the tenant, or if the clock went back (a restored database), everything
  is read again.

The race: the clock is read first, then rows. A transaction committing in between may show in
the rows although the cache is stamped with the older version; the next request re-reads those
leads (their versions are above the stamp), and re-reading a lead whole is idempotent. Nothing
published at or below the stamp can be missed: the clock row is locked from a publication's tick
to its commit, so a version is visible only once every smaller one is; and a write still
unpublished gets a version above the clock.

The result is the same arrays a fresh ``lead_history`` read gives (tests compare them after
random writes through the services, on SQLite and PostgreSQL). A rep's or manager's forecast
masks the tenant's arrays by owner: the owners the caller sees come from one query built on
``scope.visible_owner``, the same rule ``lead_scope`` applies in SQL.

Memory: per 1,000,000 leads with 5,000,000 stage changes, the ``LeadHistory`` holds ~37 B a lead
(created, closed, both start indexes as int64, owner int32, status int8) and 17 B a stage change
(lead and day int64, stage int8) plus ~1.8 amount records a lead at 24 B; the cache adds the lead
ids (16 B a lead on PostgreSQL, 32 B as SQLite's hex text) and owner codes (4 B). Measured on the
1,000,000-lead scale tenant (5,007,228 changes, 1,780,550 amount records): 185 MB. At most
``MAX_TENANTS`` tenants and ``MAX_CACHED_LEADS`` leads in all are kept per process, least recently
used first out. A refresh builds new arrays beside the old ones (the old are dropped once the new
are stored), so a refresh of the largest tenant briefly needs twice its figure; the peak of a
server process stays the cold read's (~780-860 MiB at 1,000,000 leads, under the 1 GiB bar).

Cold start: a tenant of ``SNAPSHOT_MIN_LEADS`` or more is also written to a snapshot file (see
"Snapshots" below); a process without the tenant in memory loads it and takes the refresh path above
from the file's version, so only a tenant's first read ever (or one past ``FULL_REREAD_SHARE`` of
writes since the file) reads everything: at 1,000,000 leads the load and a splice of a few hundred
leads take ~0.6 s against 5-27 s for the whole read. ``warm`` does that at start-up, and reads
a tenant of ``WARM_READ_MIN_LEADS`` or more with no snapshot yet (a bulk import, a new machine)
whole then, so that no request pays for it; the processes of one machine take turns for a
whole read, so the others load the snapshot the first one writes.

Concurrency: the cache is read and replaced on the event loop; one ``asyncio.Lock`` per tenant
makes a second request wait for the first one's refresh instead of reading everything again. An
entry is never modified once stored (a refresh builds a new one), so maths running in worker
threads on an older entry's arrays is unaffected.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import tempfile
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Hashable
from dataclasses import dataclass, field
from typing import Any

import anyio.to_thread
import numpy as np
from sqlalchemy import func, select, text, union
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from canvass.forecasting import queries
from canvass.forecasting.history import LeadHistory
from canvass.pipeline.models import Lead, Organization, StageChange, User
from canvass.pipeline.scope import Actor, visible_owner
from canvass.settings import get_settings
from canvass.sync import feed
from canvass.sync.models import SyncClock

log = logging.getLogger(__name__)

MAX_TENANTS = 4  # tenants cached per process
MAX_CACHED_LEADS = 1_500_000  # leads cached per process, all tenants: ~280 MB, + a cold 1M read stays < 1 GiB
FULL_REREAD_SHARE = 0.05  # more leads written than this share of the tenant since the cached version: read all


@dataclass(frozen=True, eq=False)
class TenantHistory:
    """One tenant's cached history: never modified once built."""

    version: int  # the tenant's change-feed version the arrays reflect (at least)
    history: LeadHistory  # every lead not deleted, in id order; owners numbered tenant-wide
    ids: np.ndarray  # per lead, its id as sortable bytes (PostgreSQL: raw, S16; SQLite: hex, S32)
    owner_code: np.ndarray  # per lead, int32 index into ``owners``
    owners: np.ndarray  # owner ids as sortable bytes, in the order first met (codes only grow)
    raw: bool  # ids as raw bytes (PostgreSQL's binary COPY), else as hex text
    refresh: str  # how this entry was made: "full" or "patch:<leads re-read>"
    # Answers computed from these arrays, per scope (None: the tenant; else the visible owners'
    # codes) and the caller's key: the maths is deterministic, so the same question on the same
    # version has the same answer. Dropped with the entry when a write moves the version on.
    results: dict[tuple[int, ...] | None, dict[Hashable, Any]] = field(default_factory=dict, repr=False)
    snapshot_lag: int = 0  # leads re-read since the arrays were last written to or loaded from a snapshot

    @property
    def n_leads(self) -> int:
        return int(self.ids.size)


class _Cache:
    def __init__(self) -> None:
        self.entries: collections.OrderedDict[tuple[str, uuid.UUID], TenantHistory] = collections.OrderedDict()
        # Locks belong to an event loop: one table per loop (tests run several loops in one process).
        self.locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[str, uuid.UUID], asyncio.Lock]]
        self.locks = weakref.WeakKeyDictionary()

    def lock(self, key: tuple[str, uuid.UUID]) -> asyncio.Lock:
        table = self.locks.setdefault(asyncio.get_running_loop(), {})
        return table.setdefault(key, asyncio.Lock())

    def get(self, key: tuple[str, uuid.UUID]) -> TenantHistory | None:
        entry = self.entries.get(key)
        if entry is not None:
            self.entries.move_to_end(key)
        return entry

    def put(self, key: tuple[str, uuid.UUID], entry: TenantHistory) -> None:
        self.entries.pop(key, None)  # the old arrays go before the next ones are counted
        self.entries[key] = entry
        while len(self.entries) > 1 and (
            len(self.entries) > MAX_TENANTS or sum(e.n_leads for e in self.entries.values()) > MAX_CACHED_LEADS
        ):
            self.entries.popitem(last=False)


_cache = _Cache()


def clear() -> None:
    """Forget every cached history (tests; a restored database)."""
    _cache.entries.clear()


async def tenant_history(session: AsyncSession, organization_id: uuid.UUID) -> TenantHistory:
    """The tenant's whole history as of (at least) its current change-feed version."""
    key = (_database(session), organization_id)
    async with _cache.lock(key):
        entry = _cache.get(key)
        if entry is not None:
            return await _refreshed(session, key, entry)
        # A new or restarted process: the snapshot another one left, if any. One process of
        # the machine at a time, so that the others load the snapshot the first one writes
        # instead of each reading everything (``canvass serve --workers N`` starting together).
        async with _machine_turn(key) as turn:
            return await _refreshed(session, key, await _load_snapshot(session, key), turn)


def _database(session: AsyncSession) -> str:
    """The database part of a cache key (and of a snapshot's header)."""
    return session.get_bind().engine.url.render_as_string(hide_password=True)


async def _refreshed(
    session: AsyncSession, key: tuple[str, uuid.UUID], entry: TenantHistory | None, turn: _Turn | None = None
) -> TenantHistory:
    organization_id = key[1]
    clock = await _clock(session, organization_id)
    if entry is not None and entry.version == clock:
        if _cache.entries.get(key) is not entry:  # just loaded from its snapshot
            _cache.put(key, entry)
        return entry
    fresh: TenantHistory | None = None
    if entry is not None and entry.version < clock:
        limit = max(int(FULL_REREAD_SHARE * entry.n_leads), 1)
        written = await _written_leads(session, organization_id, entry.version, limit)
        if written is not None:
            leads, changes = await queries.history_columns(session, organization_id, lead_ids=written)
            fresh = await anyio.to_thread.run_sync(_patched, entry, clock, written, leads, changes)
    if fresh is None:
        leads, changes = await queries.history_columns(session, organization_id)
        raw = session.get_bind().dialect.name == "postgresql"
        fresh = await anyio.to_thread.run_sync(_built, clock, raw, leads, changes)
    del entry
    _cache.put(key, fresh)
    if fresh.n_leads >= SNAPSHOT_MIN_LEADS and (
        fresh.refresh == "full" or fresh.snapshot_lag > SNAPSHOT_REWRITE_SHARE * fresh.n_leads
    ):
        await _save_snapshot(session, key, fresh, turn)
        if fresh.snapshot_lag:
            fresh = dataclasses.replace(fresh, snapshot_lag=0)
            _cache.put(key, fresh)
    return fresh


# Snapshots: a large tenant's arrays in a file, so that a new or restarted process (every worker
# of ``canvass serve --workers N`` has its own cache) loads them and splices the leads written
# since, instead of reading the whole history. One file per database and tenant, in the
# ``history_snapshot_dir`` setting; written (in a worker thread, the request does not wait) after a
# full read and after ``SNAPSHOT_REWRITE_SHARE`` of the tenant was spliced in since; a temporary
# file renamed over the old one, so a reader (another process) sees the old file or the new one.
# A file records the database it was read from (PostgreSQL: the database's oid; SQLite: the file's
# inode) and the tenant's creation time: a database dropped and created again under the same name
# does not match. At most ``MAX_SNAPSHOTS`` files and ``MAX_SNAPSHOT_BYTES`` in the directory, the
# least recently used removed first.
SNAPSHOT_MIN_LEADS = 50_000  # smaller tenants are read whole in well under a second: no file
# A tenant this large with no snapshot is read whole at a worker's start (``warm``): its first
# forecast would otherwise pass the 3 s bar (PostgreSQL, idle machine: 5.2-5.8 s for 1,000,000 leads,
# the read in proportion to the leads). Smaller ones are left to their first forecast: a start-up
# read costs the requests of the process's first seconds (SQLite, one worker, 100,000 leads read
# at start: GET p99 over the first 13 s 721-788 ms against 68-89 ms without).
WARM_READ_MIN_LEADS = 250_000
SNAPSHOT_REWRITE_SHARE = 0.01
MAX_SNAPSHOTS = 8
MAX_SNAPSHOT_BYTES = 4 << 30
_FROM_SETTINGS = "<settings>"
SNAPSHOT_DIR: str | None = _FROM_SETTINGS  # tests point it elsewhere; None: no snapshots
_SNAPSHOT_FORMAT = 1
_SNAPSHOT_MAGIC = b"CANVASS-HISTORY\n"
_HISTORY_FIELDS = tuple(f.name for f in dataclasses.fields(LeadHistory) if f.name != "_cache")
_STALE_TEMP_SECONDS = 3600
_writes: set[asyncio.Future[None]] = set()


def _snapshot_dir() -> str | None:
    return get_settings().history_snapshot_dir if SNAPSHOT_DIR == _FROM_SETTINGS else SNAPSHOT_DIR


def _snapshot_path(directory: str, key: tuple[str, uuid.UUID]) -> str:
    digest = hashlib.sha256(f"{key[0]}|{key[1]}".encode()).hexdigest()[:40]
    return os.path.join(directory, f"history-{digest}.bin")


async def _database_identity(session: AsyncSession, organization_id: uuid.UUID) -> str | None:
    """What a snapshot must have been read from: this database (not another one created since
    under the same name or path) and this tenant. None: no snapshot (an in-memory database)."""
    bind = session.get_bind()
    if bind.dialect.name == "postgresql":
        oid = await session.scalar(text("SELECT oid FROM pg_database WHERE datname = current_database()"))
        where = f"postgresql:{oid}"
    else:
        path = bind.engine.url.database
        if not path or path == ":memory:" or not os.path.exists(path):
            return None
        stat = os.stat(path)
        where = f"{bind.dialect.name}:{stat.st_dev}:{stat.st_ino}"
    created = await session.scalar(select(Organization.created_at).where(Organization.id == organization_id))
    return None if created is None else f"{where}:{organization_id}:{created.isoformat()}"


async def _load_snapshot(session: AsyncSession, key: tuple[str, uuid.UUID]) -> TenantHistory | None:
    directory = _snapshot_dir()
    if directory is None:
        return None
    path = _snapshot_path(directory, key)
    if not os.path.exists(path):
        return None
    identity = await _database_identity(session, key[1])
    if identity is None:
        return None
    return await anyio.to_thread.run_sync(_read_snapshot, path, identity)


def _read_snapshot(path: str, identity: str) -> TenantHistory | None:
    try:
        with open(path, "rb", buffering=0) as file:
            data = bytearray(os.fstat(file.fileno()).st_size)  # one read, the arrays are views of it
            if file.readinto(data) != len(data) or data[: len(_SNAPSHOT_MAGIC)] != _SNAPSHOT_MAGIC:
                return None
        start = len(_SNAPSHOT_MAGIC) + 8
        size = int.from_bytes(data[start - 8 : start], "little")
        header = json.loads(bytes(data[start : start + size]))
        base = _aligned(start + size)
        if header.get("format") != _SNAPSHOT_FORMAT or header.get("identity") != identity:
            return None
        arrays: dict[str, np.ndarray] = {}
        for name, dtype, shape, offset in header["arrays"]:
            kind = np.dtype(dtype)
            count = int(np.prod(shape))
            if base + offset + count * kind.itemsize > len(data):
                return None
            arrays[name] = np.frombuffer(data, kind, count, base + offset).reshape(shape)
        fields: dict[str, Any] = {name: arrays[f"h_{name}"] for name in _HISTORY_FIELDS}
        history = LeadHistory(**fields)
        entry = TenantHistory(
            version=int(header["version"]),
            history=history,
            ids=arrays["ids"],
            owner_code=arrays["owner_code"],
            owners=arrays["owners"],
            raw=bool(header["raw"]),
            refresh="snapshot",
        )
        n = entry.n_leads
        per_lead = ("created", "owner", "status", "closed", "stage_start", "amount_start")
        if entry.owner_code.shape[0] != n or any(getattr(history, name).shape[0] != n for name in per_lead):
            return None
        os.utime(path)  # recently used: pruned last
        return entry
    except (OSError, ValueError, KeyError, TypeError) as error:
        log.warning("history snapshot %s not used: %s", path, error)
        return None


async def _save_snapshot(
    session: AsyncSession, key: tuple[str, uuid.UUID], entry: TenantHistory, turn: _Turn | None = None
) -> None:
    """Write the entry's snapshot in a worker thread; the request does not wait for it. The
    machine's turn, if held, is handed to the write and ends when the file is in place."""
    directory = _snapshot_dir()
    if directory is None:
        return
    identity = await _database_identity(session, key[1])
    if identity is None:
        return
    future = asyncio.get_running_loop().run_in_executor(
        None, _write_snapshot, directory, key, _snapshot_path(directory, key), identity, entry
    )
    _writes.add(future)
    future.add_done_callback(_writes.discard)
    if turn is not None:
        turn.until(future)


async def snapshots_written() -> None:
    """Wait for the snapshot writes under way (tests, benchmarks)."""
    await asyncio.gather(*list(_writes))


def _write_snapshot(directory: str, key: tuple[str, uuid.UUID], path: str, identity: str, entry: TenantHistory) -> None:
    arrays = {f"h_{name}": getattr(entry.history, name) for name in _HISTORY_FIELDS}
    arrays.update(ids=entry.ids, owner_code=entry.owner_code, owners=entry.owners)
    layout: list[tuple[str, str, list[int], int]] = []
    offset = 0
    for name, array in arrays.items():  # offsets from the data's start, each array 64-byte aligned
        layout.append((name, array.dtype.str, list(array.shape), offset))
        offset += _aligned(array.nbytes)
    header = json.dumps(
        {
            "format": _SNAPSHOT_FORMAT,
            "database": key[0],
            "organization": str(key[1]),
            "version": entry.version,
            "raw": entry.raw,
            "identity": identity,
            "arrays": layout,
        }
    ).encode()
    base = _aligned(len(_SNAPSHOT_MAGIC) + 8 + len(header))
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=".tmp-history-", suffix=".bin", dir=directory)  # mode 0600
        try:
            with os.fdopen(handle, "wb") as file:
                file.write(_SNAPSHOT_MAGIC + len(header).to_bytes(8, "little") + header)
                for (_, _, _, at), array in zip(layout, arrays.values(), strict=True):
                    file.write(b"\0" * (base + at - file.tell()))
                    file.write(np.ascontiguousarray(array).view(np.uint8).reshape(-1).data)
            os.replace(temporary, path)  # atomic: another process reads the old file or this one
        except BaseException:
            os.unlink(temporary)
            raise
        _prune(directory)
    except OSError as error:  # a full disk or a read-only directory costs the next cold start, no more
        log.warning("history snapshot %s not written: %s", path, error)


async def warm(sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    """Have this database's large tenants (at most ``MAX_TENANTS``) in memory before the first
    forecast asks, so that a started process (``canvass serve``) answers it with the maths
    alone: first those with a snapshot, the most recently used first (load it, splice the
    writes since), then tenants of ``WARM_READ_MIN_LEADS`` or more leads with none, the largest
    first — a bulk import, a restored database or a new machine: read whole once, which writes
    their snapshot (at 1,000,000 leads 5-10 s, in the background; a tenant's first forecast
    otherwise paid it). A request arriving meanwhile waits for the same read (the tenant's
    lock), it does not start another; other processes of the machine wait for the snapshot."""
    directory = _snapshot_dir()
    if directory is None:
        return
    async with sessionmaker() as session:
        database = _database(session)
        try:
            large = [str(organization) for organization in await _large_tenants(session)]
        except Exception:  # e.g. a database not migrated yet: nothing to warm, the server still starts
            log.warning("could not list the tenants to warm", exc_info=True)
            large = []
    headers = await anyio.to_thread.run_sync(_snapshot_headers, directory) if os.path.isdir(directory) else []
    snapshotted = [h["organization"] for h in headers if h.get("database") == database and "organization" in h]
    tenants = list(dict.fromkeys(snapshotted + large))
    for organization in tenants[:MAX_TENANTS]:
        started = time.monotonic()
        try:
            async with sessionmaker() as session, queries.analytic_settings(session):
                entry = await tenant_history(session, uuid.UUID(organization))
            await snapshots_written()  # one tenant's arrays at a time in the writer's hands
            log.info(
                "history of tenant %s warm: %d leads, %s, %.1f s",
                organization,
                entry.n_leads,
                entry.refresh,
                time.monotonic() - started,
            )
        except Exception:  # the first forecast will try again and report what fails
            log.warning("warming the history of tenant %s failed", organization, exc_info=True)


async def _large_tenants(session: AsyncSession) -> list[uuid.UUID]:
    """Tenants with at least ``WARM_READ_MIN_LEADS`` leads, the largest first, as many as the
    cache holds: one grouped count of the leads per worker start."""
    count = func.count()
    rows = await session.execute(
        select(Lead.organization_id)
        .group_by(Lead.organization_id)
        .having(count >= WARM_READ_MIN_LEADS)
        .order_by(count.desc())
        .limit(MAX_TENANTS)
    )
    return list(rows.scalars())


class _Turn:
    """One process of the machine at a time reads a tenant whole: an exclusive ``flock`` on
    a file beside the snapshots, held until the snapshot that read writes is in place. Polled,
    not waited for in a thread, so a cancelled request leaves no thread to take the lock
    later; past ``TURN_WAIT_SECONDS`` a process reads without it (a stuck holder costs one
    read more, no more). Released by the kernel if the holder dies."""

    def __init__(self, handle: int) -> None:
        self._handle: int | None = handle
        self._pending: asyncio.Future[None] | None = None

    def until(self, write: asyncio.Future[None]) -> None:
        """Hold the turn until ``write`` is done."""
        self._pending = write

    def end(self) -> None:
        handle, self._handle = self._handle, None  # once: the write's callback or the block's end
        if handle is not None:
            os.close(handle)  # releases the flock


TURN_WAIT_SECONDS = 120.0
_TURN_POLL_SECONDS = 0.05


@contextlib.asynccontextmanager
async def _machine_turn(key: tuple[str, uuid.UUID]) -> AsyncIterator[_Turn | None]:
    directory = _snapshot_dir()
    if directory is None:
        yield None
        return
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        handle = os.open(_snapshot_path(directory, key)[: -len(".bin")] + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as error:
        log.warning("no machine-wide turn for the history read: %s", error)
        yield None
        return
    turn = _Turn(handle)
    try:
        deadline = time.monotonic() + TURN_WAIT_SECONDS
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    log.warning(
                        "history read of tenant %s without the machine's turn: waited %.0f s", key[1], TURN_WAIT_SECONDS
                    )
                    break
                await asyncio.sleep(_TURN_POLL_SECONDS)
        yield turn
    finally:
        pending = turn._pending
        if pending is None or pending.done():
            turn.end()
        else:
            pending.add_done_callback(lambda _: turn.end())


def _snapshot_headers(directory: str) -> list[dict[str, Any]]:
    """The headers of the snapshot files, the most recently used first."""
    found = []
    for item in os.scandir(directory):
        if not (item.name.startswith("history-") and item.name.endswith(".bin")):
            continue
        try:
            with open(item.path, "rb") as file:
                start = file.read(len(_SNAPSHOT_MAGIC) + 8)
                if start[: len(_SNAPSHOT_MAGIC)] != _SNAPSHOT_MAGIC:
                    continue
                header = json.loads(file.read(int.from_bytes(start[len(_SNAPSHOT_MAGIC) :], "little")))
            found.append((item.stat().st_mtime, header))
        except (OSError, ValueError):
            continue
    found.sort(key=lambda pair: -pair[0])
    return [header for _, header in found]


def _aligned(size: int) -> int:
    return -(-size // 64) * 64


def _prune(directory: str) -> None:
    """Least recently used snapshots out past the bounds; temporary files a killed writer left."""
    now = time.time()
    files = []
    for item in os.scandir(directory):
        try:
            stat = item.stat()
        except FileNotFoundError:
            continue
        if item.name.startswith(".tmp-history-"):
            if now - stat.st_mtime > _STALE_TEMP_SECONDS:
                _unlink(item.path)
        elif item.name.startswith("history-") and item.name.endswith(".bin"):
            files.append((stat.st_mtime, stat.st_size, item.path))
    files.sort(reverse=True)
    total = 0
    for count, (_, size, path) in enumerate(files, 1):
        total += size
        if count > MAX_SNAPSHOTS or total > MAX_SNAPSHOT_BYTES:
            _unlink(path)


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):  # another process pruned it first
        os.unlink(path)


@dataclass(frozen=True, eq=False)
class ScopedHistory:
    """The leads an actor sees, from the tenant's cached history."""

    history: LeadHistory
    version: int  # the tenant's change-feed version it reflects (at least)
    results: dict[Hashable, Any]  # answers already computed for this scope and version (see TenantHistory)


MAX_RESULTS = 64  # answers kept per scope and version


async def history_for(session: AsyncSession, actor: Actor) -> ScopedHistory:
    """The history of the leads the actor sees (an admin: the tenant's; anyone else: the leads
    owned by someone they see), and the feed version it reflects."""
    entry = await tenant_history(session, actor.organization_id)
    if actor.is_admin:
        history, scope = entry.history, None
    else:
        visible = (
            await session.scalars(
                select(User.id).where(User.organization_id == actor.organization_id, visible_owner(actor, User.id))
            )
        ).all()
        codes = _owner_codes(entry, list(visible))
        history, scope = await anyio.to_thread.run_sync(subset_owned, entry, codes), tuple(codes.tolist())
    results = entry.results.setdefault(scope, {})
    if len(results) > MAX_RESULTS:
        results.clear()
    if len(entry.results) > MAX_RESULTS:
        entry.results.clear()
        results = entry.results.setdefault(scope, {})
    return ScopedHistory(history=history, version=entry.version, results=results)


async def _clock(session: AsyncSession, organization_id: uuid.UUID) -> int:
    await feed.publish_pending(session, organization_id)  # every committed write gets a version first
    version = await session.scalar(select(SyncClock.version).where(SyncClock.organization_id == organization_id))
    return int(version or 0)  # no clock row: nothing was ever written through the feed


async def _written_leads(
    session: AsyncSession, organization_id: uuid.UUID, since: int, limit: int
) -> list[uuid.UUID] | None:
    """Ids of the leads written after version ``since`` (the lead row or one of its stage changes);
    None when there are more than ``limit`` (read everything instead)."""
    stmt = union(
        select(Lead.id).where(Lead.organization_id == organization_id, Lead.server_version > since),
        select(StageChange.lead_id).where(
            StageChange.organization_id == organization_id, StageChange.server_version > since
        ),
    ).limit(limit + 1)
    ids = list((await session.scalars(select(stmt.subquery().c[0]))).all())
    return None if len(ids) > limit else ids


def _keys(ids: np.ndarray, raw: bool) -> np.ndarray:
    """Id columns as sortable bytes (an empty column comes typed as the hex text even on PostgreSQL)."""
    return queries._sortable(ids).astype("S16" if raw else "S32")


def _uuid_keys(ids: list[uuid.UUID], raw: bool) -> np.ndarray:
    """UUIDs as the sortable bytes the history columns use (raw on PostgreSQL, hex text on SQLite)."""
    if raw:
        return np.array(sorted(u.bytes for u in ids), dtype="S16")
    return np.array(sorted(u.hex for u in ids), dtype="S32")


def _built(version: int, raw: bool, leads: queries._Columns, changes: queries._Columns) -> TenantHistory:
    history = queries._history_from_columns(leads, changes)
    owners, first, code = queries.unique_ids(_keys(leads.data["owner"], raw))
    order = np.argsort(first, kind="stable")  # codes in the order owners are first met
    rank = np.empty(order.size, np.int32)
    rank[order] = np.arange(order.size, dtype=np.int32)
    return TenantHistory(
        version=version,
        history=history,
        ids=_keys(leads.data["id"], raw),
        owner_code=rank[code.reshape(-1)],
        owners=owners[order],
        raw=raw,
        refresh="full",
    )


def _owner_numbers(codes: np.ndarray) -> np.ndarray:
    """Owners numbered in the order they first appear among the leads (as ``lead_history`` does).
    Codes are small (one per owner): each one's first position in O(leads), no sort of the leads."""
    if codes.size == 0:
        return np.zeros(0, np.int32)
    none = np.iinfo(np.int64).max
    first = np.full(int(codes.max()) + 1, none, np.int64)
    np.minimum.at(first, codes, np.arange(codes.size))
    present = np.flatnonzero(first < none)
    rank = np.zeros(first.size, np.int32)
    rank[present[np.argsort(first[present])]] = np.arange(present.size, dtype=np.int32)
    return rank[codes]


def _patched(
    old: TenantHistory, version: int, written: list[uuid.UUID], leads: queries._Columns, changes: queries._Columns
) -> TenantHistory:
    """``old`` with every written lead's records replaced by its re-read ones (``leads``/``changes``:
    the rows of those of them that are not deleted)."""
    part = queries._history_from_columns(leads, changes)  # the same per-lead normalisation as a full read
    part_ids = _keys(leads.data["id"], old.raw)
    # The part's owners, coded in the tenant's table (new owners appended).
    owners = old.owners
    index = {key: code for code, key in enumerate(owners.tolist())}
    part_owner_keys = _keys(leads.data["owner"], old.raw).tolist()
    new_owners = [k for k in dict.fromkeys(part_owner_keys) if k not in index]
    if new_owners:
        index.update({k: len(index) + i for i, k in enumerate(new_owners)})
        owners = np.concatenate([owners, np.array(new_owners, dtype=owners.dtype)])
    part_codes = np.array([index[k] for k in part_owner_keys], np.int32)

    # Which old leads go (every written one still there), where the part's leads go.
    n = old.n_leads
    written_keys = _uuid_keys(written, old.raw)
    keep = np.ones(n, bool)
    dropped = np.zeros(0, np.int64)
    if n and written_keys.size:
        pos = np.minimum(np.searchsorted(old.ids, written_keys), n - 1)
        dropped = pos[old.ids[pos] == written_keys]
        keep[dropped] = False
    if _same_records(old, part, part_ids, part_codes, dropped):
        # Most writes do not touch what a forecast reads (a title, a note, an activity, the lead's
        # own amount field): same arrays, and the answers already given on them stand.
        return dataclasses.replace(
            old,
            version=version,
            owners=owners,
            refresh=f"unchanged:{len(written)}",
            snapshot_lag=old.snapshot_lag + len(written),
        )
    kept_old = np.flatnonzero(keep)
    kept_ids = old.ids[kept_old]
    at = np.searchsorted(kept_ids, part_ids)  # the part's ids are all written ones: never among the kept
    ids = np.insert(kept_ids, at, part_ids)
    m = ids.size
    is_part = np.zeros(m, bool)
    is_part[at + np.arange(part_ids.size)] = True
    # Each new lead's source: its old index (kept) or its index in the part. Runs of new leads whose
    # records lie one after another on one side are copied as one slice: a few slices per written
    # lead instead of masks over every record.
    source = np.empty(m, np.int64)
    source[~is_part] = kept_old
    source[is_part] = np.arange(part_ids.size)
    begins = np.ones(m, bool)
    begins[1:] = (is_part[1:] != is_part[:-1]) | (source[1:] != source[:-1] + 1)
    first = np.flatnonzero(begins)
    last = (np.append(first[1:], m) - 1)[: first.size]
    runs = list(zip(is_part[first].tolist(), source[first].tolist(), source[last].tolist(), strict=True))

    h, p = old.history, part

    def per_lead(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.insert(a[kept_old], at, b.astype(a.dtype, copy=False))

    def records(
        old_start: np.ndarray,
        old_total: int,
        part_start: np.ndarray,
        part_total: int,
        columns: list[tuple[np.ndarray, np.ndarray]],
    ) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
        """Per new lead its records' start, every record's lead, and each column spliced."""
        old_end = np.append(old_start[1:], old_total)
        part_end = np.append(part_start[1:], part_total)
        counts = np.empty(m, np.int64)
        counts[~is_part] = (old_end - old_start)[kept_old]
        counts[is_part] = part_end - part_start
        start = np.zeros(m, np.int64)
        np.cumsum(counts[:-1], out=start[1:])
        bounds = [
            (True, int(part_start[a]), int(part_end[b])) if from_part else (False, int(old_start[a]), int(old_end[b]))
            for from_part, a, b in runs
        ]
        spliced = []
        for a, b in columns:
            b = b.astype(a.dtype, copy=False)
            pieces = [(b if from_part else a)[lo:hi] for from_part, lo, hi in bounds]
            spliced.append(np.concatenate(pieces) if pieces else a[:0].copy())
        return start, np.repeat(np.arange(m, dtype=np.int64), counts), spliced

    stage_start, stage_lead, (stage_day, stage_to) = records(
        h.stage_start, h.stage_lead.size, p.stage_start, p.stage_lead.size,
        [(h.stage_day, p.stage_day), (h.stage_to, p.stage_to)],
    )  # fmt: skip
    amount_start, amount_lead, (amount_day, amount) = records(
        h.amount_start, h.amount_lead.size, p.amount_start, p.amount_lead.size,
        [(h.amount_day, p.amount_day), (h.amount, p.amount)],
    )  # fmt: skip
    owner_code = per_lead(old.owner_code, part_codes)
    history = LeadHistory(
        created=per_lead(h.created, p.created),
        owner=_owner_numbers(owner_code),
        status=per_lead(h.status, p.status),
        closed=per_lead(h.closed, p.closed),
        amount_lead=amount_lead,
        amount_day=amount_day,
        amount=amount,
        stage_lead=stage_lead,
        stage_day=stage_day,
        stage_to=stage_to,
        amount_start=amount_start,
        stage_start=stage_start,
    )
    return TenantHistory(
        version=version,
        history=history,
        ids=ids,
        owner_code=owner_code,
        owners=owners,
        raw=old.raw,
        refresh=f"patch:{len(written)}",
        snapshot_lag=old.snapshot_lag + len(written),
    )


def _same_records(
    old: TenantHistory, part: LeadHistory, part_ids: np.ndarray, part_codes: np.ndarray, dropped: np.ndarray
) -> bool:
    """Are the re-read leads exactly the old records of the same leads (``dropped``: their old indexes)?"""
    h, p = old.history, part
    if dropped.size != part_ids.size or not np.array_equal(old.ids[dropped], part_ids):
        return False
    for a, b in ((h.created, p.created), (h.status, p.status), (h.closed, p.closed), (old.owner_code, part_codes)):
        if not np.array_equal(a[dropped], b):
            return False
    for start, total, p_start, p_total, columns in (
        (h.stage_start, h.stage_lead.size, p.stage_start, p.stage_lead.size, ((h.stage_day, p.stage_day), (h.stage_to, p.stage_to))),
        (h.amount_start, h.amount_lead.size, p.amount_start, p.amount_lead.size, ((h.amount_day, p.amount_day), (h.amount, p.amount))),
    ):  # fmt: skip
        counts = (np.append(start[1:], total) - start)[dropped]
        if not np.array_equal(counts, np.diff(np.append(p_start, p_total))):
            return False
        offsets = np.cumsum(counts) - counts
        records = np.repeat(start[dropped] - offsets, counts) + np.arange(int(counts.sum()))
        if any(not np.array_equal(a[records], b) for a, b in columns):
            return False
    return True


def _owner_codes(entry: TenantHistory, owner_ids: list[uuid.UUID]) -> np.ndarray:
    """The codes of those owners that own leads of the tenant."""
    return np.flatnonzero(np.isin(entry.owners, _uuid_keys(owner_ids, entry.raw)))


def subset_owned(entry: TenantHistory, codes: np.ndarray) -> LeadHistory:
    """The tenant history narrowed to the leads of these owners: the same arrays a scoped
    ``lead_history`` read gives (leads in id order, owners numbered as first met among them)."""
    return subset(entry.history, np.isin(entry.owner_code, codes), entry.owner_code)


def subset(history: LeadHistory, mask: np.ndarray, owner_code: np.ndarray) -> LeadHistory:
    """The leads where ``mask`` holds, with their records, renumbered in order."""
    leads = np.flatnonzero(mask)
    m = leads.size
    renumber = np.full(history.n_leads, -1, np.int64)
    renumber[leads] = np.arange(m)
    stage = mask[history.stage_lead]
    amount = mask[history.amount_lead]
    stage_lead = renumber[history.stage_lead[stage]]
    amount_lead = renumber[history.amount_lead[amount]]
    every = np.arange(m)
    return LeadHistory(
        created=history.created[leads],
        owner=_owner_numbers(owner_code[leads]),
        status=history.status[leads],
        closed=history.closed[leads],
        amount_lead=amount_lead,
        amount_day=history.amount_day[amount],
        amount=history.amount[amount],
        stage_lead=stage_lead,
        stage_day=history.stage_day[stage],
        stage_to=history.stage_to[stage],
        amount_start=np.searchsorted(amount_lead, every),
        stage_start=np.searchsorted(stage_lead, every),
    )
