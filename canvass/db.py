"""Database engine, session factory and the column types shared by every model.

The same code and the same migrations run on SQLite (embedded default, WAL mode)
and PostgreSQL (production, Citus-ready: every tenant table is keyed by
``organization_id`` first).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import msgspec
from sqlalchemy import JSON, DateTime, MetaData, event
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.pool import NullPool
from sqlalchemy.types import TypeDecorator

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


def session_factory(engine: AsyncEngine, *, publish_on: AsyncEngine | None = None) -> async_sessionmaker[AsyncSession]:
    info = {PUBLISH_ENGINE: publish_on} if publish_on is not None else None
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False, info=info)
