"""The API's write transactions take turns on SQLite (`canvass.db.WriteTurns`):
in arrival order, each turn ending with its transaction — not with a savepoint,
and not later than the commit — and on PostgreSQL nobody waits."""

from __future__ import annotations

import asyncio
from typing import Any

from litestar.testing import TestClient
from sqlalchemy import literal, select

from canvass.db import WriteTurns
from tests.conftest import run


async def _started(task: asyncio.Task[Any], entered: asyncio.Event) -> bool:
    """Whether ``task`` got its turn within a short wait."""
    try:
        await asyncio.wait_for(asyncio.shield(entered.wait()), 0.2)
    except TimeoutError:
        return False
    return not task.done() or task.exception() is None


def test_writers_wait_for_the_transaction_before_theirs_on_sqlite_only(
    client: TestClient[Any], database_url: str
) -> None:
    sqlite = database_url.startswith("sqlite")

    async def scenario() -> list[str]:
        sessionmaker = client.app.state.sessionmaker
        turns = WriteTurns(sessionmaker.kw["bind"])
        log: list[str] = []
        entered = {name: asyncio.Event() for name in ("second", "third")}

        async def writer(name: str) -> None:
            async with sessionmaker() as session, turns.turn(session):
                log.append(f"{name} in")
                entered[name].set()
                await session.execute(select(literal(1)))
                await session.commit()

        async with sessionmaker() as first, turns.turn(first):
            await first.execute(select(literal(1)))  # a transaction is open
            savepoint = await first.begin_nested()
            second = asyncio.create_task(writer("second"))
            await asyncio.sleep(0)
            third = asyncio.create_task(writer("third"))
            await savepoint.rollback()  # the end of a savepoint is not the end of the turn
            if await _started(second, entered["second"]) != (not sqlite):
                log.append("second: wrong wait before the commit")
            await first.commit()  # the turn ends here, before the block does
            log.append("first committed")
            if not await _started(second, entered["second"]):
                log.append("second: still waiting after the commit")
            await asyncio.gather(second, third)
        return log

    log = run(client, lambda: asyncio.wait_for(scenario(), 10))  # a turn never ended: TimeoutError
    if sqlite:
        assert log == ["first committed", "second in", "third in"]
    else:
        assert log[:2] == ["second in", "third in"] and log[-1] == "first committed"


def test_a_turn_ends_when_the_block_ends_without_a_transaction(client: TestClient[Any]) -> None:
    async def scenario() -> bool:
        sessionmaker = client.app.state.sessionmaker
        turns = WriteTurns(sessionmaker.kw["bind"])
        async with sessionmaker() as session, turns.turn(session):
            pass  # nothing written: no transaction ever began
        async with sessionmaker() as session, turns.turn(session):  # waits for ever if the first turn held on
            return True

    assert run(client, lambda: asyncio.wait_for(scenario(), 2)) is True  # else TimeoutError
