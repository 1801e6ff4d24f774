"""The change feed hands out server versions in commit order, so a device's
cursor never skips a change (PROTOCOL.md, "Change feed")."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest
from litestar.testing import TestClient
from sqlalchemy import select

from canvass.pipeline.models import Lead
from canvass.pipeline.schemas import LeadUpdate
from canvass.pipeline.scope import Actor
from canvass.pipeline.services import leads
from canvass.pipeline.vocabulary import Role
from canvass.sync import feed
from canvass.sync.pull import pull
from tests.api.test_sync_api import RawDevice
from tests.conftest import Tenant, create_lead, run


def _actor(tenant: Tenant) -> Actor:
    rep = tenant.rep_a
    return Actor(organization_id=tenant.organization_id, user_id=rep.id, role=Role.REP, team_path=rep.team_path)


async def _overlapping_writers(
    sessionmaker: Any, actor: Actor, first: uuid.UUID, second: uuid.UUID, dialect: str, pull: Any
) -> list[str]:
    """Writer A starts first and commits last; writer B starts later and commits
    first; the device pulls between the two commits and after both."""
    cursors: list[str] = []
    async with sessionmaker() as a:
        await leads.update_lead(a, actor, first, LeadUpdate(next_step="A"))
        if dialect == "postgresql":
            # B runs and commits while A is open: under a plain sequence A would
            # hold the smaller number and a pull after B's commit would skip it.
            async with sessionmaker() as b:
                await leads.update_lead(b, actor, second, LeadUpdate(next_step="B"))
                await b.commit()
            cursors.append(await pull())
        await a.commit()
    if dialect != "postgresql":
        # SQLite has one writer at a time (BEGIN IMMEDIATE): B can only follow A.
        cursors.append(await pull())
        async with sessionmaker() as b:
            await leads.update_lead(b, actor, second, LeadUpdate(next_step="B"))
            await b.commit()
    cursors.append(await pull())
    return cursors


def test_a_pull_between_overlapping_commits_skips_neither(
    client: TestClient[Any], tenant: Tenant, database_url: str
) -> None:
    device = RawDevice(client, tenant.rep_a)
    first = create_lead(client, tenant.rep_a, title="A")
    second = create_lead(client, tenant.rep_a, title="B")
    device.pull_all()
    dialect = "sqlite" if database_url.startswith("sqlite") else "postgresql"
    seen: dict[str, str | None] = {}

    async def pull_on_read_engine() -> str:
        cursor = device.cursor
        while True:
            async with client.app.state.read_sessionmaker() as reader:
                page = await pull(reader, _actor(tenant), device.device_id, cursor, 100)
            for change in page.changes:
                if change.entity == "lead":
                    seen[str(change.id)] = change.data["next_step"]
            cursor = page.cursor
            if not page.has_more:
                device.cursor = cursor
                return cursor

    run(
        client,
        _overlapping_writers,
        client.app.state.sessionmaker,
        _actor(tenant),
        uuid.UUID(first["id"]),
        uuid.UUID(second["id"]),
        dialect,
        pull_on_read_engine,
    )
    # A committed after the first pull had moved the cursor past B: a later pull
    # must still bring it (a pull that finds another publication under way
    # leaves it to that one, so it may take one more pull).
    for _ in range(100):
        if seen.get(first["id"]) == "A":
            break
        time.sleep(0.05)
        run(client, pull_on_read_engine)
    assert (seen[first["id"]], seen[second["id"]]) == ("A", "B")


def test_writes_are_published_without_a_pull(client: TestClient[Any], tenant: Tenant) -> None:
    """On PostgreSQL the API process publishes its tenants' writes a moment after
    they commit; on SQLite the write transaction publishes itself."""
    lead = create_lead(client, tenant.rep_a)

    async def version() -> int | None:
        async with client.app.state.read_sessionmaker() as s:
            return await s.scalar(select(Lead.server_version).where(Lead.id == uuid.UUID(lead["id"])))

    deadline = time.monotonic() + 10
    while (published := run(client, version)) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert published is not None and published > 0


async def _pull_between(sessionmaker: Any, actor: Actor, lead_id: uuid.UUID, pull: Any) -> Any:
    """A device pulls while a writer has written but not committed."""
    async with sessionmaker() as writer:
        await leads.update_lead(writer, actor, lead_id, LeadUpdate(next_step="late"))
        seen = await pull()
        await writer.commit()
    return seen


def test_an_uncommitted_write_is_not_skipped_by_a_pull_in_between(client: TestClient[Any], tenant: Tenant) -> None:
    device = RawDevice(client, tenant.rep_a)
    lead = create_lead(client, tenant.rep_a)
    device.pull_all()
    before = device.cursor

    async def pull_on_read_engine() -> str:
        async with client.app.state.read_sessionmaker() as reader:
            page = await pull(reader, _actor(tenant), device.device_id, before, 100)
        return page.cursor

    cursor_during = run(
        client, _pull_between, client.app.state.sessionmaker, _actor(tenant), uuid.UUID(lead["id"]), pull_on_read_engine
    )
    device.cursor = cursor_during
    records, _ = device.pull_all()
    assert records[("lead", lead["id"])]["next_step"] == "late"


def test_a_pull_on_the_read_pool_publishes_on_the_write_pool(
    client: TestClient[Any], tenant: Tenant, database_url: str
) -> None:
    """A pull holds a connection of the read pool; publishing what is pending
    must not wait for a second one from that pool (under load every pull would
    wait on every other). One read connection, no overflow: the pull still works."""
    from sqlalchemy.ext.asyncio import create_async_engine

    from canvass.db import session_factory
    from canvass.settings import to_async_url

    device = RawDevice(client, tenant.rep_a)
    device.pull_all()
    lead = create_lead(client, tenant.rep_a, title="Fresh")  # on PostgreSQL: committed, not yet published

    async def pull_with_one_read_connection() -> set[str]:
        options: dict[str, Any] = {"pool_size": 1, "max_overflow": 0, "pool_timeout": 3}
        if database_url.startswith("sqlite"):
            options = {}
        read = create_async_engine(to_async_url(database_url), isolation_level="AUTOCOMMIT", **options)
        try:
            write = client.app.state.sessionmaker.kw["bind"]
            async with session_factory(read, publish_on=write)() as reader:
                page = await pull(reader, _actor(tenant), device.device_id, device.cursor, 100)
            return {str(change.id) for change in page.changes}
        finally:
            await read.dispose()

    assert lead["id"] in run(client, pull_with_one_read_connection)


def test_a_pull_does_not_queue_behind_a_publication_under_way(
    client: TestClient[Any], tenant: Tenant, database_url: str
) -> None:
    """While another publication holds the tenant's clock, a pull answers at once
    (what is pending comes with a later pull), and nothing is skipped."""
    from sqlalchemy import text

    from canvass.pipeline.schemas import LeadCreate

    device = RawDevice(client, tenant.rep_a)
    create_lead(client, tenant.rep_a, title="Published first")  # the tenant's clock row exists from here
    device.pull_all()

    async def pull_while_the_clock_is_held() -> tuple[str, float]:
        write = client.app.state.sessionmaker.kw["bind"]
        async with write.connect() as holder:
            if database_url.startswith("postgresql"):
                lock = "SELECT version FROM sync_clocks WHERE organization_id = :org FOR UPDATE"
                await holder.execute(text(lock), {"org": tenant.organization_id})
            async with client.app.state.sessionmaker() as writer:  # committed, not published (PostgreSQL)
                lead = await leads.create_lead(writer, _actor(tenant), LeadCreate(title="Behind a publication"))
                await writer.commit()
            started = time.monotonic()
            async with client.app.state.read_sessionmaker() as reader:
                await asyncio.wait_for(pull(reader, _actor(tenant), device.device_id, device.cursor, 100), timeout=10)
            took = time.monotonic() - started
            await holder.rollback()
        return str(lead.id), took

    lead_id, took = run(client, pull_while_the_clock_is_held)
    assert took < 5  # did not wait for the held clock
    records, _ = device.pull_all()  # the clock is free again: published now, not skipped
    assert ("lead", lead_id) in records


def test_a_push_answers_once_its_writes_are_published(client: TestClient[Any], tenant: Tenant) -> None:
    """The device's next pull must find its own changes: a push answers after
    what it wrote has a version (PostgreSQL: by the process's publisher, woken
    for it; SQLite: inside the writing transaction)."""
    device = RawDevice(client, tenant.rep_a)
    lead = create_lead(client, tenant.rep_a, title="Pushed to")
    device.pull_all()
    update = device.mutation("lead.update", {"id": lead["id"], "fields": {"next_step": "Call back"}})
    assert device.push(update)["receipts"][0]["status"] == "applied"

    async def version() -> int | None:
        async with client.app.state.read_sessionmaker() as s:
            return await s.scalar(select(Lead.server_version).where(Lead.id == uuid.UUID(lead["id"])))

    assert run(client, version) is not None


def test_a_backlog_is_published_in_chunks_and_pulled_whole(
    client: TestClient[Any], tenant: Tenant, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A backlog larger than a publication's chunk (a large import; here 25 leads
    written in one transaction, chunks of 7) is published whole by one call —
    on PostgreSQL in transactions of its own, each chunk a version, so no write
    waits behind the whole backlog's locks — and a device pulls every lead once."""
    from canvass.pipeline.schemas import LeadCreate

    monkeypatch.setattr(feed, "PUBLISH_CHUNK", 7)
    device = RawDevice(client, tenant.rep_a)
    device.pull_all()

    async def backlog() -> list[tuple[uuid.UUID, int | None]]:
        async with client.app.state.sessionmaker() as writer:
            made = [
                await leads.create_lead(writer, _actor(tenant), LeadCreate(title=f"Imported {i}")) for i in range(25)
            ]
            await writer.commit()
        ids = [lead.id for lead in made]
        async with client.app.state.read_sessionmaker() as reader:
            await feed.publish_pending(reader, tenant.organization_id)
            rows = await reader.execute(select(Lead.id, Lead.server_version).where(Lead.id.in_(ids)))
            return [(row[0], row[1]) for row in rows]

    published = run(client, backlog)
    versions = [version for _, version in published]
    assert len(published) == 25 and None not in versions
    # PostgreSQL: 7 + 7 + 7 + 4 (the process's publisher may take some of the
    # chunks; they are the same size). SQLite: the writing transaction's one.
    assert len(set(versions)) == (4 if database_url.startswith("postgresql") else 1)
    seen: list[str] = []
    for _ in range(50):  # pages of 5 cut across the chunks
        page = client.get(
            "/api/v1/sync/pull",
            params={"device_id": device.device_id, "cursor": device.cursor, "limit": 5},
            headers=tenant.rep_a.headers,
        ).json()
        seen += [change["id"] for change in page["changes"] if change["entity"] == "lead"]
        device.cursor = page["cursor"]
        if not page["has_more"]:
            break
    assert sorted(seen) == sorted(str(lead_id) for lead_id, _ in published)


def test_a_publisher_serves_a_backlog_past_its_cap_in_later_rounds(
    client: TestClient[Any], tenant: Tenant, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One publisher call stops after ``_MOST_CHUNKS`` chunks and says that more
    waits (the publisher then serves its other tenants and comes back); the
    calls after it finish the backlog. Here: 25 leads left pending, chunks of 3,
    at most 2 a call — 6 leads a call, 5 calls."""
    from sqlalchemy import func, update

    for i in range(25):
        create_lead(client, tenant.rep_a, title=f"Backlog {i}")
    publisher = feed.Publisher(client.app.state.sessionmaker)
    org = tenant.organization_id

    async def pending() -> int:
        async with client.app.state.read_sessionmaker() as s:
            where = (Lead.organization_id == org) & Lead.server_version.is_(None)
            return int(await s.scalar(select(func.count()).select_from(Lead).where(where)) or 0)

    if not database_url.startswith("postgresql"):
        # SQLite: each writing transaction published its own rows; no backlog forms.
        assert run(client, pending) == 0 and run(client, publisher._publish, org) is False
        return

    async def backlog() -> None:
        await client.app.state.publisher.publish_now()  # what the creates left, published as shipped
        # Pending, and no publisher told (as after a process died before publishing).
        async with publisher.engine.begin() as connection:
            await connection.execute(
                update(Lead.__table__).where(Lead.organization_id == org).values(server_version=None)
            )

    run(client, backlog)
    monkeypatch.setattr(feed, "PUBLISH_CHUNK", 3)
    monkeypatch.setattr(feed, "_MOST_CHUNKS", 2)
    assert run(client, pending) == 25
    answers = []
    for _ in range(10):
        answers.append(run(client, publisher._publish, org))
        if not answers[-1]:
            break
    assert answers == [True, True, True, True, False]
    assert run(client, pending) == 0


def test_publishing_on_a_session_bound_to_one_connection_stays_in_its_transaction(
    client: TestClient[Any], tenant: Tenant, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A session bound to one connection (not an engine) publishes in that
    connection's transaction, every chunk of it, and leaves the commit to its
    owner: other connections see nothing published until then."""
    from sqlalchemy import func, update
    from sqlalchemy.ext.asyncio import AsyncSession

    for i in range(10):
        create_lead(client, tenant.rep_a, title=f"Bound {i}")
    org = tenant.organization_id
    unpublished = (
        select(func.count()).select_from(Lead).where(Lead.organization_id == org, Lead.server_version.is_(None))
    )

    async def publish_bound() -> tuple[int, int, int]:
        await client.app.state.publisher.publish_now()
        engine = client.app.state.sessionmaker.kw["bind"]
        async with engine.begin() as connection:  # pending, and no publisher told
            await connection.execute(
                update(Lead.__table__).where(Lead.organization_id == org).values(server_version=None)
            )
        # The owner's transaction, committed when the block ends.
        async with engine.connect() as connection, connection.begin(), AsyncSession(bind=connection) as session:
            await feed.publish_pending(session, org)
            mine = int(await session.scalar(unpublished) or 0)
            async with client.app.state.read_sessionmaker() as other:
                theirs = int(await other.scalar(unpublished) or 0)
        async with client.app.state.read_sessionmaker() as other:
            return mine, theirs, int(await other.scalar(unpublished) or 0)

    monkeypatch.setattr(feed, "PUBLISH_CHUNK", 3)
    if database_url.startswith("postgresql"):
        assert run(client, publish_bound) == (0, 10, 0)  # four chunks, one transaction
    else:
        # SQLite publishes in the writing transaction: the Core update above is a
        # write no session noted, so nothing publishes it; publish_pending has nothing to do.
        assert run(client, publish_bound) == (10, 10, 10)
