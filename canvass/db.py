"""Database engine, session factory and the column types shared by every model.

The same code and the same migrations run on SQLite (embedded default, WAL mode)
and PostgreSQL (production, Citus-ready: every tenant table is keyed by
``organization_id`` first).
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Mapping, Sequence
from typing import Any

import asyncpg
import msgspec
from sqlalchemy import JSON, DateTime, MetaData, event
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.pool import NullPool
from sqlalchemy.sql import Select
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
    # A little overflow for bursts: each API process has two pools, and
    # PostgreSQL's connection limit (100 by default) is shared by all of them.
    overflow = max(2, pool_size // 4)
    return create_async_engine(
        async_url, pool_size=pool_size, max_overflow=overflow, pool_pre_ping=False, **reset, **_isolation(autocommit)
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
# `read_rows` may use directly (set on the API's read sessions only).
DRIVER_READS = "canvass.driver_reads"


def session_factory(
    engine: AsyncEngine, *, publish_on: AsyncEngine | None = None, driver_reads: bool = False
) -> async_sessionmaker[AsyncSession]:
    """Sessions on ``engine``. ``driver_reads``: the engine is an autocommit read
    pool whose connections `read_rows` may use directly (PostgreSQL only)."""
    info: dict[str, Any] = {}
    if publish_on is not None:
        info[PUBLISH_ENGINE] = publish_on
    if driver_reads and engine.dialect.name == "postgresql":
        info[DRIVER_READS] = engine
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False, info=info or None)


async def read_rows(
    session: AsyncSession, statement: Select[Any], params: Mapping[str, Any] | None = None
) -> Sequence[Sequence[Any]]:
    """The rows of a SELECT built once (values as named bind parameters), for a
    read that must be cheap: one lead, a page of leads.

    On the API's PostgreSQL read sessions (autocommit: each statement is its own
    snapshot anyway) the statement runs straight on the driver's connection from
    the same pool, compiled once, and each value goes through the same result
    conversion SQLAlchemy would apply. Measured on a GET of one lead: ~0.1 ms of
    CPU instead of ~0.55 ms through a session, and that difference was most of
    the request. Everywhere else (SQLite, a session inside a write transaction,
    whose uncommitted rows another connection would not see) it is an ordinary
    execute on the session's connection."""
    engine = session.info.get(DRIVER_READS)
    if engine is None:
        return (await (await session.connection()).execute(statement, params)).all()
    prepared = _driver_statement(statement, engine.dialect)
    args = prepared.arguments(params or {})
    pooled = await engine.raw_connection()
    broken: BaseException | None = None
    try:
        driver = pooled.driver_connection
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
        # would raise, which the problem handlers read.
        raise DBAPIError(prepared.sql, args, exc) from exc
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
    """A SELECT compiled for the driver: its SQL text, the order of its
    positional parameters, and (after the first run, from the driver's own
    description of the result) one value converter per column."""

    __slots__ = ("binds", "converters", "fixed", "order", "sql", "types")

    def __init__(self, statement: Select[Any], dialect: Dialect) -> None:
        compiled = statement.compile(dialect=dialect)
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
