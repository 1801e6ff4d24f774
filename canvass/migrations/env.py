"""Alembic environment: runs the same migrations on SQLite and PostgreSQL through
the async drivers the service uses."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

from canvass.db import Base, create_engine
from canvass.pipeline import models  # noqa: F401  (registers the tables)
from canvass.settings import get_settings, to_async_url
from canvass.sync import models as sync_models  # noqa: F401

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    return to_async_url(config.get_main_option("sqlalchemy.url") or get_settings().database_url)


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things in place; batch mode recreates tables.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_online() -> None:
    engine = create_engine(_url(), pool_size=1)
    async with engine.connect() as connection:
        await connection.run_sync(_configure)
    await engine.dispose()


if context.is_offline_mode():
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    asyncio.run(_run_online())
