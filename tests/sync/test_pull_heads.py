"""A pull first reads, in one statement, the device, whether anything waits to
be published and each kind's highest published version; it then queries only
the kinds with something past the cursor (PROTOCOL.md, "Pull")."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from litestar.testing import TestClient
from sqlalchemy import event

from canvass.pipeline.schemas import AccountCreate, ContactCreate, LeadCreate, LeadUpdate
from canvass.pipeline.scope import Actor
from canvass.pipeline.services import accounts, leads
from canvass.pipeline.vocabulary import Role
from canvass.sync.pull import pull
from canvass.sync.wire import PullResponse
from tests.api.test_sync_api import RawDevice
from tests.conftest import Tenant, create_lead, run

# A kind's page query: SELECT … FROM <table> WHERE … ORDER BY <table>.server_version
_KIND_QUERY = re.compile(r"ORDER BY (\w+)\.server_version")


def _actor(tenant: Tenant) -> Actor:
    rep = tenant.rep_a
    return Actor(organization_id=tenant.organization_id, user_id=rep.id, role=Role.REP, team_path=rep.team_path)


@contextmanager
def _statements(client: TestClient[Any]) -> Iterator[list[str]]:
    engine = client.app.state.sessionmaker.kw["bind"].sync_engine
    seen: list[str] = []

    def note(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if not statement.lstrip().upper().startswith("BEGIN"):  # SQLite's BEGIN IMMEDIATE
            seen.append(statement)

    event.listen(engine, "before_cursor_execute", note)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", note)


def _pull(client: TestClient[Any], tenant: Tenant, device: RawDevice, cursor: str, limit: int = 500) -> PullResponse:
    async def go() -> PullResponse:
        async with client.app.state.sessionmaker() as session, session.begin():
            return await pull(session, _actor(tenant), device.device_id, cursor, limit)

    return run(client, go)


def _kinds_queried(statements: list[str]) -> list[str]:
    return [m.group(1) for s in statements if (m := _KIND_QUERY.search(" ".join(s.split())))]


def test_an_empty_pull_is_one_statement(client: TestClient[Any], tenant: Tenant) -> None:
    device = RawDevice(client, tenant.rep_a)
    create_lead(client, tenant.rep_a, title="Known")
    device.pull_all()  # stamps last_pull_at: the next pulls within the minute write nothing
    with _statements(client) as seen:
        page = _pull(client, tenant, device, device.cursor)
    assert (page.changes, page.removals, page.has_more) == ([], [], False)
    assert page.cursor == device.cursor
    assert len(seen) == 1, seen


def test_a_pull_queries_only_the_kinds_that_changed(client: TestClient[Any], tenant: Tenant) -> None:
    device = RawDevice(client, tenant.rep_a)
    lead = create_lead(client, tenant.rep_a, title="Before")
    device.pull_all()
    response = client.patch(f"/api/v1/leads/{lead['id']}", json={"title": "After"}, headers=tenant.rep_a.headers)
    assert response.status_code == 200, response.text
    with _statements(client) as seen:
        page = _pull(client, tenant, device, device.cursor)
    assert [(c.entity.value, str(c.id), c.data["title"]) for c in page.changes] == [("lead", lead["id"], "After")]
    assert _kinds_queried(seen) == ["leads"]


def test_pages_inside_one_version_skip_nothing(client: TestClient[Any], tenant: Tenant) -> None:
    """Records of several kinds published under one version, read a record per
    page: a cursor inside the version must not make a later kind look behind."""
    device = RawDevice(client, tenant.rep_a)
    device.pull_all()
    actor = _actor(tenant)

    async def write_together() -> set[str]:
        async with client.app.state.sessionmaker() as session, session.begin():
            account = await accounts.create_account(session, actor, AccountCreate(name="One version"))
            contact = await accounts.create_contact(session, actor, ContactCreate(account_id=account.id, name="Buyer"))
            lead = await leads.create_lead(
                session, actor, LeadCreate(title="Together", account_id=account.id, primary_contact_id=contact.id)
            )
            await session.flush()
            await leads.update_lead(session, actor, lead.id, LeadUpdate(next_step="Call"))
            return {str(account.id), str(contact.id), str(lead.id)}

    written = run(client, write_together)
    whole = _pull(client, tenant, device, device.cursor)
    assert written <= {str(c.id) for c in whole.changes}
    assert len({c.server_version for c in whole.changes}) == 1  # one transaction, one version
    paged: list[tuple[str, str]] = []
    cursor = device.cursor
    for _ in range(50):
        page = _pull(client, tenant, device, cursor, limit=1)
        paged.extend((c.entity.value, str(c.id)) for c in page.changes)
        cursor = page.cursor
        if not page.has_more:
            break
    assert paged == [(c.entity.value, str(c.id)) for c in whole.changes]
    assert cursor == whole.cursor
