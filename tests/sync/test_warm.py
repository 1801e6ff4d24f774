"""A new API process warms its pools before devices arrive (canvass/sync/warm.py)."""

from __future__ import annotations

from typing import Any

from litestar.testing import TestClient

from canvass.db import create_engine
from canvass.settings import Settings
from canvass.sync import warm
from tests.conftest import run


def test_warming_opens_the_connections_and_returns_them(client: TestClient[Any], settings: Settings) -> None:
    # An engine of its own: the app's pools are in use by its publisher meanwhile.
    engine = create_engine(settings.async_database_url, pool_size=4)

    async def warm_then_count() -> tuple[int, int]:
        try:
            await warm.warm_connections(engine, 3)
            return engine.pool.checkedin(), engine.pool.checkedout()  # type: ignore[attr-defined]
        finally:
            await engine.dispose()

    idle, busy = run(client, warm_then_count)
    # PostgreSQL: checked out together, so three were opened; all back in the
    # pool, idle. SQLite has nothing to warm and opens nothing.
    assert (idle, busy) == ((3, 0) if engine.dialect.name == "postgresql" else (0, 0))
