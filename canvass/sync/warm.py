"""Warm an API process's connections before devices arrive (PostgreSQL).

A pooled connection is opened on first demand, and a new PostgreSQL backend
loads the catalog entries of every table and index it touches the first time,
while the driver prepares every statement once per connection. Left to the
first load, that work lands on the first requests — under 50 syncing devices,
on the first seconds of every pool's every connection at once (measured: 4-7 %
of the statements prepared again, connections opened during the load).

``warm_connections`` opens a pool's connections at start and runs on each the
sync layer's fixed reads, for a tenant that does not exist: a pull's first
statement (device, pending probe, the clock and every kind's head) and the
publisher's probe. They touch every feed table and its ``(organization_id,
server_version, id)`` index, and they write nothing.
"""

from __future__ import annotations

import asyncio
import uuid

from sqlalchemy.ext.asyncio import AsyncEngine

from canvass.sync import feed, pull

_NOBODY = uuid.UUID(int=0)  # no organization has this id: every read finds nothing


async def _warm_one(engine: AsyncEngine) -> None:
    async with engine.connect() as connection:
        await connection.execute(pull._start("postgresql"), {"org": _NOBODY, "device": ""})
        await connection.execute(pull._heads(), {"org": _NOBODY})
        await connection.execute(feed._pending(), {"org": _NOBODY})
        await connection.rollback()


async def warm_connections(engine: AsyncEngine, connections: int) -> None:
    """Open ``connections`` of the engine's pool (all checked out together, so
    the pool opens that many; at most its size, so none is an overflow
    connection closed on return) and warm each. SQLite: nothing to do."""
    if engine.dialect.name != "postgresql":
        return
    size = getattr(engine.pool, "size", None)
    if callable(size):
        connections = min(connections, size())
    await asyncio.gather(*(_warm_one(engine) for _ in range(connections)))
