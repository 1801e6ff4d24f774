"""A new API process warms its pools before devices arrive (canvass/sync/warm.py)."""

from __future__ import annotations

from typing import Any

from litestar.testing import TestClient

from canvass.sync import warm
from tests.conftest import run


def test_warming_opens_the_connections_and_returns_them(client: TestClient[Any]) -> None:
    engine = client.app.state.sessionmaker.kw["bind"]
    run(client, warm.warm_connections, engine, 3)
    if engine.dialect.name == "postgresql":
        # Checked out together, so three were opened; all back in the pool, idle.
        assert engine.pool.checkedin() >= 3
        assert engine.pool.checkedout() == 0
