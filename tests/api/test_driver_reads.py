"""Reads straight on the driver (`canvass.db.read_rows`) answer exactly what the
ordinary SQLAlchemy path answers, and fail the same way."""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

import msgspec
import pytest
from litestar.testing import TestClient
from sqlalchemy import literal, literal_column, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import create_async_engine

from canvass.db import DRIVER, read_rows, session_factory
from canvass.pipeline.models import Lead
from canvass.pipeline.services import leads as service
from canvass.settings import Settings
from tests.conftest import Tenant, create_account, create_contact, create_lead, run


def _driver_reads_on(client: TestClient[Any]) -> bool:
    return DRIVER in (client.app.state.read_sessionmaker.kw.get("info") or {})


def test_the_read_sessions_use_the_driver_on_postgresql_only(client: TestClient[Any], database_url: str) -> None:
    assert _driver_reads_on(client) is database_url.startswith("postgresql")


@pytest.mark.parametrize("filled", [True, False], ids=["every-field", "bare"])
def test_a_lead_read_on_the_driver_equals_the_orm_read(client: TestClient[Any], tenant: Tenant, filled: bool) -> None:
    fields: dict[str, Any] = {}
    if filled:
        account = create_account(client, tenant.rep_a, name="Acme")
        contact = create_contact(client, tenant.rep_a, account["id"])
        fields = {
            "external_ref": "crm-42",
            "account_id": account["id"],
            "primary_contact_id": contact["id"],
            "source_channel": "referral",
            "product_interest": "GTX Pro",
            "amount": 12345.67,
            "currency": "EUR",
            "expected_close_date": "2027-03-31",
            "probability_override": 0.35,
            "qualification": {"need": 4, "purchasing_power": 3, "budget": 9000.5, "timing": "Q1"},
            "visit_plan": {"planned_date": "2027-01-15", "goal": "demo", "approach_method": "site visit"},
            "next_step": "Send the quote — ünïcode too",
        }
    lead_id = uuid.UUID(create_lead(client, tenant.rep_a, **fields)["id"])

    got = client.get(f"/api/v1/leads/{lead_id}", headers=tenant.manager_a.headers)
    assert got.status_code == 200, got.text

    async def through_the_orm() -> bytes:
        async with client.app.state.sessionmaker() as session:
            lead = await session.get(Lead, (tenant.organization_id, lead_id))
            assert lead is not None
            return msgspec.json.encode(service.to_lead_out(lead))

    assert got.json() == msgspec.json.decode(run(client, through_the_orm))
    assert got.headers["etag"] == f'"{got.json()["version"]}"'


def test_a_lead_out_of_scope_is_not_found_on_the_driver_too(client: TestClient[Any], tenant: Tenant) -> None:
    lead = create_lead(client, tenant.rep_a)
    assert client.get(f"/api/v1/leads/{lead['id']}", headers=tenant.manager_b.headers).status_code == 404
    assert client.get(f"/api/v1/leads/{lead['id']}", headers=tenant.rep_b.headers).status_code == 404


def test_a_database_error_on_the_driver_is_the_sessions_error_type(client: TestClient[Any]) -> None:
    failing = select(literal_column("no_such_column"))

    async def read() -> None:
        async with client.app.state.read_sessionmaker() as session:
            await read_rows(session, failing)

    with pytest.raises(DBAPIError):
        run(client, read)

    async def still_serves() -> Any:
        async with client.app.state.read_sessionmaker() as session:
            return await read_rows(session, select(literal(7)))

    assert [tuple(row) for row in run(client, still_serves)] == [(7,)]


def test_connections_beyond_the_pool_are_closed_cleanly_after_a_driver_read(
    client: TestClient[Any], settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    # One pooled connection and two of overflow (the API's pools have none, a
    # deployment's may): three reads at once open three, and two must be closed
    # when handed back (the pool has room for one).
    engine = create_async_engine(settings.async_database_url, pool_size=1, max_overflow=2, isolation_level="AUTOCOMMIT")
    reads = session_factory(engine, publish_on=engine, driver=engine)

    async def three_at_once() -> list[Any]:
        async def one(n: int) -> Any:
            async with reads() as session:
                return (await read_rows(session, select(literal(n))))[0][0]

        try:
            values = await asyncio.gather(*(one(n) for n in range(3)))
            return [values, engine.pool.checkedout()]  # type: ignore[attr-defined]
        finally:
            await engine.dispose()

    with caplog.at_level(logging.ERROR, logger="sqlalchemy.pool"):
        values, checked_out = run(client, three_at_once)
    assert values == [0, 1, 2]
    assert checked_out == 0
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
