"""A REST create or stage move on PostgreSQL commits alone, as one statement
(`canvass.db.write_alone`): it must write exactly what the ORM path writes, keep
the change feed's bookkeeping, and never apply a move judged on a lead that
changed before the write."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import msgspec
import pytest
from litestar.testing import TestClient
from sqlalchemy import Table, bindparam, insert, literal, select
from sqlalchemy.exc import IntegrityError

from canvass.db import alone_writes, write_alone
from canvass.pipeline.models import Lead, LoginDirectory, StageChange
from canvass.pipeline.schemas import LeadCreate, StageMove
from canvass.pipeline.scope import Actor
from canvass.pipeline.services import leads as service
from canvass.sync import feed
from tests.conftest import Person, Tenant, create_account, create_contact, run


def _actor(tenant: Tenant, who: Person) -> Actor:
    return Actor(organization_id=tenant.organization_id, user_id=who.id, role=who.role, team_path=who.team_path)


def test_writes_commit_alone_only_on_postgresql_and_outside_a_transaction(
    client: TestClient[Any], database_url: str
) -> None:
    async def check() -> tuple[bool, bool]:
        async with client.app.state.sessionmaker() as session:
            before = alone_writes(session) is not None
            await session.execute(select(literal(1)))
            return before, alone_writes(session) is not None

    assert run(client, check) == (database_url.startswith("postgresql"), False)


_SKIP = {"id", "organization_id", "created_at", "updated_at", "stage_entered_at", "server_version", "field_versions"}


def _comparable(row: dict[str, Any], skip: set[str]) -> dict[str, Any]:
    # Timestamps differ between two writes; whether each is set must not.
    return {
        k: (v is not None) if isinstance(v, dt.datetime) or k.endswith("_at") else v
        for k, v in row.items()
        if k not in skip
    }


def _versions(row: dict[str, Any]) -> dict[str, tuple[int, Any]]:
    """Per-field versions without their timestamps: (row version, device)."""
    return {name: (entry[0], entry[2]) for name, entry in (row["field_versions"] or {}).items()}


def test_a_create_and_moves_committed_alone_write_what_the_orm_writes(client: TestClient[Any], tenant: Tenant) -> None:
    manager = tenant.manager_a
    account = create_account(client, tenant.rep_a, name="Acme")
    contact = create_contact(client, tenant.rep_a, account["id"])
    fields: dict[str, Any] = {
        "title": "Boiler retrofit",
        "account_id": account["id"],
        "primary_contact_id": contact["id"],
        "owner_id": str(manager.id),
        "source_channel": "referral",
        "amount": 12345.67,
        "currency": "EUR",
        "expected_close_date": "2027-03-31",
        "qualification": {"need": 2, "purchasing_power": 1},
        "next_step": "Call back",
    }
    # A manager may let a lead below the qualify threshold on, with a reason.
    moves = [{"to_stage": "qualify", "note": "first call"}, {"to_stage": "approach", "override_reason": "CEO asked"}]

    created = client.post("/api/v1/leads", json=fields, headers=manager.headers)
    assert created.status_code == 201, created.text
    alone_id = uuid.UUID(created.json()["id"])
    for move in moves:
        moved = client.post(f"/api/v1/leads/{alone_id}/stage-moves", json=move, headers=manager.headers)
        assert moved.status_code == 200, moved.text
    reply = moved.json()

    async def through_the_orm() -> uuid.UUID:
        actor = _actor(tenant, manager)
        async with client.app.state.sessionmaker() as session, session.begin():
            lead = await service.create_lead(session, actor, msgspec.convert(fields, LeadCreate))
        for move in moves:
            async with client.app.state.sessionmaker() as session, session.begin():
                await service.move_stage(session, actor, lead.id, msgspec.convert(move, StageMove))
        return lead.id

    orm_id = run(client, through_the_orm)

    async def rows(lead_id: uuid.UUID) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        async with client.app.state.sessionmaker() as session:
            await feed.publish_pending(session, tenant.organization_id)
            lead = (await session.execute(select(Lead.__table__).where(Lead.id == lead_id))).one()._asdict()
            history = (
                await session.execute(
                    select(StageChange.__table__).where(StageChange.lead_id == lead_id).order_by(StageChange.at)
                )
            ).all()
            return lead, [h._asdict() for h in history]

    alone_lead, alone_history = run(client, rows, alone_id)
    orm_lead, orm_history = run(client, rows, orm_id)

    assert _comparable(alone_lead, _SKIP) == _comparable(orm_lead, _SKIP)
    assert _versions(alone_lead) == _versions(orm_lead)
    assert alone_lead["version"] == 3 and "stage" in alone_lead["field_versions"]
    assert alone_lead["server_version"] is not None  # published like any write
    assert alone_lead["qualification_override_reason"] == "CEO asked"
    skip = {"id", "lead_id", "server_version"}
    assert [_comparable(h, skip) for h in alone_history] == [_comparable(h, skip) for h in orm_history]
    assert [h["to_stage"] for h in alone_history] == ["prospecting", "qualify", "approach"]
    assert all(h["server_version"] is not None for h in alone_history)
    # The reply is the lead as stored.
    assert reply["version"] == alone_lead["version"] and reply["stage"] == "approach"


def _movable_lead(client: TestClient[Any], tenant: Tenant) -> dict[str, Any]:
    """A lead of rep_a that may leave prospecting (its account and contact known)."""
    account = create_account(client, tenant.rep_a, name="Acme")
    contact = create_contact(client, tenant.rep_a, account["id"])
    fields = {"title": "Racing", "account_id": account["id"], "primary_contact_id": contact["id"]}
    created = client.post("/api/v1/leads", json=fields, headers=tenant.rep_a.headers)
    assert created.status_code == 201, created.text
    lead: dict[str, Any] = created.json()
    return lead


def _edit_before_the_write(
    client: TestClient[Any], monkeypatch: pytest.MonkeyPatch, lead_id: str, times: int
) -> list[int]:
    """Make the first ``times`` writes of a move find the lead changed since its
    read: just before each, another transaction edits the lead's title."""
    real = service.write_alone
    calls: list[int] = []

    async def racing(session: Any, statement: Any, params: Any, organization_id: uuid.UUID) -> Any:
        calls.append(1)
        if len(calls) <= times:
            async with client.app.state.sessionmaker() as other, other.begin():
                lead = await other.scalar(select(Lead).where(Lead.id == uuid.UUID(lead_id)))
                assert lead is not None
                lead.title = f"Edited {len(calls)}"
        return await real(session, statement, params, organization_id)

    monkeypatch.setattr(service, "write_alone", racing)
    return calls


@pytest.mark.parametrize("edits", [1, 2], ids=["judged-again", "then-locked"])
def test_a_move_whose_lead_changed_after_its_read_is_judged_again(
    client: TestClient[Any], tenant: Tenant, database_url: str, monkeypatch: pytest.MonkeyPatch, edits: int
) -> None:
    lead = _movable_lead(client, tenant)
    calls = _edit_before_the_write(client, monkeypatch, lead["id"], edits)

    moved = client.post(
        f"/api/v1/leads/{lead['id']}/stage-moves", json={"to_stage": "qualify"}, headers=tenant.rep_a.headers
    )

    assert moved.status_code == 200, moved.text
    body = moved.json()
    history = client.get(f"/api/v1/leads/{lead['id']}/stage-history", headers=tenant.rep_a.headers).json()
    assert [h["to_stage"] for h in history] == ["prospecting", "qualify"]  # one move, written once
    if database_url.startswith("postgresql"):
        # Each interfering edit made one optimistic try miss; one edit: the
        # second try writes; two: the move then waits for the lead's lock (the
        # session's path, no third `write_alone`).
        assert len(calls) == min(edits + 1, service._OPTIMISTIC_TRIES)
        assert body["title"] == f"Edited {edits}"  # the concurrent edit survives
        assert body["version"] == 1 + edits + 1
    else:
        assert calls == []  # SQLite always writes through the session
    assert body["stage"] == "qualify"


def test_a_move_with_if_match_whose_lead_changed_after_its_read_is_refused(
    client: TestClient[Any], tenant: Tenant, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    lead = _movable_lead(client, tenant)
    calls = _edit_before_the_write(client, monkeypatch, lead["id"], 1)

    moved = client.post(
        f"/api/v1/leads/{lead['id']}/stage-moves",
        json={"to_stage": "qualify"},
        headers={**tenant.rep_a.headers, "If-Match": f'"{lead["version"]}"'},
    )

    history = client.get(f"/api/v1/leads/{lead['id']}/stage-history", headers=tenant.rep_a.headers).json()
    if database_url.startswith("postgresql"):
        # The move was judged on version 1; the lead is at 2 when it writes.
        assert moved.status_code == 412, moved.text
        assert [h["to_stage"] for h in history] == ["prospecting"]
    else:
        # SQLite writes through the session, which holds the write lock from
        # its read to its commit: nothing can come between them.
        assert calls == []
        assert moved.status_code == 200, moved.text
        assert [h["to_stage"] for h in history] == ["prospecting", "qualify"]


def test_a_lone_write_breaking_a_constraint_is_the_sessions_integrity_error(
    client: TestClient[Any], tenant: Tenant, database_url: str
) -> None:
    login: Table = LoginDirectory.__table__  # type: ignore[assignment]
    duplicate = insert(login).values(
        email=bindparam("email", type_=login.c.email.type),
        organization_id=bindparam("org", type_=login.c.organization_id.type),
        user_id=bindparam("user", type_=login.c.user_id.type),
    )
    params = {"email": tenant.rep_a.email, "org": tenant.organization_id, "user": tenant.rep_a.id}

    async def write() -> None:
        async with client.app.state.sessionmaker() as session:
            if alone_writes(session) is not None:
                alone = select(literal(1)).add_cte(duplicate.cte("login"))
                await write_alone(session, alone, params, tenant.organization_id)
            else:  # SQLite: the same INSERT through the session
                await session.execute(duplicate, params)

    with pytest.raises(IntegrityError):
        run(client, write)
