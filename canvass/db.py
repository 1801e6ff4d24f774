"""Database engine, session factory and the column types shared by every model.

The same code and the same migrations run on SQLite (embedded default, WAL mode)
and PostgreSQL (production, Citus-ready: every tenant table is keyed by
``organization_id`` first).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Any, Protocol

import asyncpg
import msgspec
from sqlalchemy import JSON, DateTime, MetaData, Table, event
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.pool import NullPool
from sqlalchemy.sql import Select
from sqlalchemy.sql.schema import CallableColumnDefault, ScalarElementColumnDefault
from sqlalchemy.types import TypeDecorator
from sqlalchemy.util import greenlet_spawn

# Deterministic constraint names: Alembic can then alter them on both databases.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Timezone-aware UTC timestamps on both databases (SQLite stores naive ones)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; Canvass stores UTC-aware timestamps only")
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None or value.tzinfo is dt.UTC:  # asyncpg already gives UTC: nothing to do
            return value
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


# JSONB on PostgreSQL (indexable, compact), JSON text on SQLite.
JSONType = JSON().with_variant(JSONB(), "postgresql")


WRITTEN = "canvass.written"


def mark_written(session: Any, organization_id: Any, table: Any, ids: Any) -> None:
    """Note that this transaction wrote these rows of ``table`` for a tenant
    outside the ORM's unit of work (Core bulk inserts). The ORM's own writes are
    noted by the sync layer's flush hook; at commit it publishes both to the
    change feed."""
    written = session.info.setdefault(WRITTEN, {})
    written.setdefault(organization_id, {}).setdefault(table, set()).update(ids)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets readers run beside the single writer; busy_timeout makes writers
    # queue instead of failing with "database is locked" under concurrency.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _no_driver_transactions(dbapi_connection: Any, _record: Any) -> None:
    # The driver's own implicit BEGIN is a deferred one; we issue ours instead.
    dbapi_connection.isolation_level = None


def _begin_immediate(connection: Any) -> None:
    # Take the write lock when the transaction starts. A deferred transaction that
    # reads first and then writes can find another writer ahead of it, and SQLite
    # must then refuse it at once ("database is locked") rather than wait: with
    # BEGIN IMMEDIATE writers queue on busy_timeout instead, and nobody fails.
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def create_engine(async_url: str, *, pool_size: int = 10, autocommit: bool = False) -> AsyncEngine:
    if async_url.startswith("sqlite"):
        in_memory = async_url.rstrip("/").endswith("aiosqlite:") or ":memory:" in async_url
        # aiosqlite runs each connection in its own thread; a small pool of
        # reusable connections avoids re-opening the file per request.
        pooling = {} if in_memory else {"pool_size": pool_size, "max_overflow": 10}
        engine = create_async_engine(async_url, **pooling, **_isolation(autocommit))
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        if not autocommit:
            event.listen(engine.sync_engine, "connect", _no_driver_transactions)
            event.listen(engine.sync_engine, "begin", _begin_immediate)
        return engine
    if async_url.endswith("?pool=null"):
        return create_async_engine(async_url.removesuffix("?pool=null"), poolclass=NullPool, **_isolation(autocommit))
    # An autocommit connection has no transaction to roll back when it returns
    # to the pool: the default reset would cost a round trip on every read.
    reset = {"pool_reset_on_return": None} if autocommit else {}
    # No overflow: a connection opened past the pool's size is closed again when
    # it comes back, so a burst over the size opens and closes a PostgreSQL
    # backend per request (measured under wrk on POST /leads: 300-400 connections
    # in 10 s, p99 75-146 ms; with 24 kept open and no overflow, none and
    # 49-77 ms). A request beyond the size waits for a connection instead.
    return create_async_engine(
        async_url, pool_size=pool_size, max_overflow=0, pool_pre_ping=False, **reset, **_isolation(autocommit)
    )


def _isolation(autocommit: bool) -> dict[str, Any]:
    # msgspec reads and writes the JSON columns: several times faster than the
    # standard library on every row with qualification, tags or custom fields.
    options: dict[str, Any] = {"json_serializer": _json_text, "json_deserializer": msgspec.json.decode}
    if autocommit:
        options["isolation_level"] = "AUTOCOMMIT"
    return options


def _json_text(value: Any) -> str:
    return msgspec.json.encode(value).decode()


# session.info: the engine to publish the change feed on (canvass/sync/feed.py)
# when the session's own is the read pool, so that a read never waits for a
# second connection from the pool it holds one of.
PUBLISH_ENGINE = "canvass.publish_engine"


# session.info: the autocommit PostgreSQL engine whose driver connections
# `read_rows` and `write_alone` may use directly (set by the API).
DRIVER = "canvass.driver"
# session.info: the change-feed bookkeeping for a write that commits on its own
# (`write_alone`), which no session hook sees (set by the API on its write sessions).
ALONE_WRITES = "canvass.alone_writes"


class AloneWrites(Protocol):
    """What the ORM's session hooks do for every write (the sync layer's change
    feed, ``canvass/sync/feed.py``), done by hand for a write that runs as one
    statement and commits by itself. The sync layer provides it and the API wires
    it into its write sessions, so the pipeline never imports the sync layer."""

    def field_versions(
        self, session: AsyncSession, versions: Mapping[str, Any] | None, changed: Iterable[str], next_version: int
    ) -> dict[str, Any]:
        """A record's per-field versions after a write of ``changed`` fields that
        makes its row version ``next_version``."""
        ...

    def committed(self, database: str, organization_id: uuid.UUID) -> None:
        """A write of the tenant's synced rows committed on ``database``."""
        ...


class WriteTurns:
    """The order in which this process's write transactions use the database.

    SQLite has one writer at a time. Left to SQLite, waiting writers poll its
    lock in the busy handler, sleeping longer at each try (up to 100 ms), so a
    late writer often passes an early one: measured, `POST /leads` from 32
    connections had a p99 of 2.4–2.9 s. Here the process's writers take turns in
    the order they came (an asyncio lock) and only the one whose turn it is asks
    SQLite (p99 95 ms, same run); the busy timeout still covers other processes.
    PostgreSQL's writers run side by side: nothing to hold."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._lock = asyncio.Lock() if engine.dialect.name == "sqlite" else None

    @contextlib.asynccontextmanager
    async def turn(self, session: AsyncSession) -> AsyncIterator[None]:
        """Wait for this session's turn, and hold it until its transaction ends
        (commit or rollback) or the block does, whichever is first: a handler
        that commits and then waits (a sync push, for its publication) lets the
        next writer in."""
        lock = self._lock
        if lock is None:
            yield
            return
        await lock.acquire()
        held = True

        def end(_session: Any = None, transaction: Any = None) -> None:
            nonlocal held
            if held and (transaction is None or transaction.parent is None):  # a savepoint is not the end
                held = False
                lock.release()

        event.listen(session.sync_session, "after_transaction_end", end)
        try:
            yield
        finally:
            event.remove(session.sync_session, "after_transaction_end", end)
            end()


def session_factory(
    engine: AsyncEngine,
    *,
    publish_on: AsyncEngine | None = None,
    driver: AsyncEngine | None = None,
    alone_writes: AloneWrites | None = None,
) -> async_sessionmaker[AsyncSession]:
    """Sessions on ``engine``. ``driver``: an autocommit PostgreSQL pool whose
    connections `read_rows` may use directly (ignored elsewhere); with
    ``alone_writes`` too, `write_alone` may commit single statements on it."""
    info: dict[str, Any] = {}
    if publish_on is not None:
        info[PUBLISH_ENGINE] = publish_on
    if driver is not None and driver.dialect.name == "postgresql":
        info[DRIVER] = driver
        if alone_writes is not None:
            info[ALONE_WRITES] = alone_writes
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False, info=info or None)


async def read_rows(
    session: AsyncSession, statement: Select[Any], params: Mapping[str, Any] | None = None
) -> Sequence[Sequence[Any]]:
    """The rows of a SELECT built once (values as named bind parameters), for a
    read that must be cheap: one lead, a page of leads.

    On the API's PostgreSQL sessions the statement runs straight on a driver
    connection of the autocommit pool (each statement is its own snapshot, as
    at READ COMMITTED anyway), compiled once, and each value goes through the
    same result conversion SQLAlchemy would apply. Measured on a GET of one
    lead: ~0.1 ms of CPU instead of ~0.55 ms through a session, and that
    difference was most of the request. Everywhere else (SQLite, a session
    inside a write transaction, whose uncommitted rows another connection would
    not see) it is an ordinary execute on the session's connection."""
    engine = session.info.get(DRIVER)
    if engine is None or (session.in_transaction() and session.bind is not engine):
        return (await (await session.connection()).execute(statement, params)).all()
    return await _on_driver(engine, statement, params or {})


def alone_writes(session: AsyncSession) -> AloneWrites | None:
    """The change-feed bookkeeping, if a write through this session can run now
    as one statement that commits by itself (`write_alone`): a PostgreSQL
    session wired for it by the API, with no transaction open (its reads or
    writes would not be part of the statement's). None: write through the ORM."""
    hooks: AloneWrites | None = session.info.get(ALONE_WRITES)
    return None if hooks is None or session.in_transaction() else hooks


async def write_alone(
    session: AsyncSession, statement: Select[Any], params: Mapping[str, Any], organization_id: uuid.UUID
) -> Sequence[Sequence[Any]]:
    """Run a write built once as one statement (data-modifying CTEs: several
    rows of several tables, all or none) in a transaction of its own on a driver
    connection, and return its rows. Only when `alone_writes` says it may.

    Why: a REST create or stage move through the session is BEGIN, the ORM's
    flush (a round trip per row), COMMIT — 4–5 round trips and the unit of work.
    As one statement it is one round trip, and PostgreSQL commits it before
    answering. The caller computes every column (`with_column_defaults`) and the
    bookkeeping the session hooks would add (``AloneWrites.field_versions``)."""
    engine = session.info[DRIVER]
    rows = await _on_driver(engine, statement, params)
    session.info[ALONE_WRITES].committed(str(engine.url), organization_id)
    return rows


def with_column_defaults(table: Table, row: Mapping[str, Any]) -> dict[str, Any]:
    """Every column of ``table``: the values given, and for the others what an
    INSERT through SQLAlchemy would write (the column's Python-side default, or
    NULL) — for a statement built once that binds every column."""
    full = dict(row)
    for column in table.columns:
        if column.key in full:
            continue
        default = column.default
        if default is None:
            full[column.key] = None
        elif isinstance(default, ScalarElementColumnDefault):
            full[column.key] = default.arg
        elif isinstance(default, CallableColumnDefault):  # ids, timestamps, empty documents
            # SQLAlchemy wraps it to take an execution context, which ours ignore.
            full[column.key] = default.arg(None)  # type: ignore[arg-type]
        else:
            raise TypeError(f"{table.name}.{column.key}: a default only the database can compute")
    return full


async def _on_driver(engine: AsyncEngine, statement: Select[Any], params: Mapping[str, Any]) -> Sequence[Sequence[Any]]:
    prepared = _driver_statement(statement, engine.dialect)
    args = prepared.arguments(params)
    pooled = await engine.raw_connection()
    broken: BaseException | None = None
    try:
        driver: Any = pooled.driver_connection
        if prepared.converters is None:
            # The first run: the driver's description of the result picks each
            # column's converter, and the statement it described runs at once.
            described = await driver.prepare(prepared.sql)
            prepared.converters = prepared.result_converters(described.get_attributes(), engine.dialect)
            records = await described.fetch(*args)
        else:
            records = await driver.fetch(prepared.sql, *args)
    except asyncpg.PostgresError as exc:
        # The server's answer (the connection is fine): the error type a session
        # would raise, which the problem handlers read (a duplicate id: 409).
        error = IntegrityError if isinstance(exc, asyncpg.IntegrityConstraintViolationError) else DBAPIError
        raise error(prepared.sql, args, exc) from exc
    except BaseException as exc:
        # Cancelled or cut off mid-statement: the connection's state is unknown,
        # so it is closed rather than handed to the next request.
        broken = exc
        raise
    finally:
        # Handing the connection back may close it (an overflow connection, or
        # a broken one): the pool's close is I/O it runs through SQLAlchemy's
        # greenlet bridge, like every other pool operation.
        await greenlet_spawn(_give_back, pooled, broken)
    converters = prepared.converters
    if not any(converters):
        return [tuple(record) for record in records]
    return [
        tuple(value if convert is None else convert(value) for value, convert in zip(record, converters, strict=True))
        for record in records
    ]


def _give_back(pooled: Any, broken: BaseException | None) -> None:
    if broken is not None:
        pooled.invalidate(broken if isinstance(broken, Exception) else None)
    pooled.close()


class _DriverStatement:
    """A statement compiled for the driver: its SQL text, the order of its
    positional parameters, and (after the first run, from the driver's own
    description of the result) one value converter per column."""

    __slots__ = ("binds", "converters", "fixed", "order", "sql", "types")

    def __init__(self, statement: Select[Any], dialect: Dialect) -> None:
        compiled = statement.compile(dialect=dialect)
        if "POSTCOMPILE" in compiled.string:
            # An IN list a session would expand at execution: not run as compiled.
            raise ValueError("a statement for the driver cannot hold an expanding IN (…); compare with = ANY(array)")
        self.sql = compiled.string
        self.order: tuple[str, ...] = tuple(compiled.positiontup or ())
        # The values the statement itself carries (the tenant, the caller...).
        self.fixed = {name: bind.effective_value for name, bind in compiled.binds.items()}
        # SQLAlchemy's own conversion of parameter values for this driver (most need none).
        self.binds: list[Any] = [compiled._bind_processors.get(name) for name in self.order]
        self.types = [column.type for column in statement.selected_columns]
        self.converters: list[Any] | None = None

    def arguments(self, params: Mapping[str, Any]) -> list[Any]:
        values = [params[name] if name in params else self.fixed[name] for name in self.order]
        return [v if bind is None or v is None else bind(v) for v, bind in zip(values, self.binds, strict=True)]

    def result_converters(self, columns: Sequence[Any], dialect: Dialect) -> list[Any]:
        return [
            # SQLAlchemy's own conversion of this column type for this driver.
            type_._cached_result_processor(dialect, column.type.oid)
            for type_, column in zip(self.types, columns, strict=True)
        ]


@functools.lru_cache(maxsize=2048)
def _driver_statement(statement: Select[Any], dialect: Dialect) -> _DriverStatement:
    # Keyed by the statement object: callers build each statement once (per
    # caller and shape) and keep it, so its compiled form is kept beside it.
    return _DriverStatement(statement, dialect)
