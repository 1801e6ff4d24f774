"""Bulk import of leads with history: good rows land with their past, bad rows are
reported by row and field and leave nothing behind."""

from __future__ import annotations

import datetime as dt
from typing import Any

from litestar.testing import TestClient
from sqlalchemy import func, select

from canvass.pipeline.models import Lead, StageChange
from canvass.pipeline.scope import Actor
from canvass.pipeline.services.imports import HistoryEntry, ImportReport, LeadImportRow, import_leads
from canvass.pipeline.vocabulary import LeadStatus, Role, Stage
from tests.conftest import Tenant, create_account, run

T0 = dt.datetime(2025, 3, 1, 9, tzinfo=dt.UTC)


def _at(days: int) -> dt.datetime:
    return T0 + dt.timedelta(days=days)


async def _import(sessionmaker: Any, actor: Actor, rows: list[LeadImportRow]) -> ImportReport:
    async with sessionmaker() as session, session.begin():
        return await import_leads(session, actor, rows)


async def _history(sessionmaker: Any, org: Any, ref: str) -> list[tuple[str | None, str, str, dt.datetime, bool]]:
    async with sessionmaker() as session:
        lead_id = await session.scalar(select(Lead.id).where(Lead.organization_id == org, Lead.external_ref == ref))
        rows = await session.execute(
            select(
                StageChange.from_stage, StageChange.to_stage, StageChange.status, StageChange.at, StageChange.imported
            )
            .where(StageChange.organization_id == org, StageChange.lead_id == lead_id)
            .order_by(StageChange.at, StageChange.id)
        )
        return [tuple(r) for r in rows]  # type: ignore[misc]


async def _count(sessionmaker: Any, org: Any) -> tuple[int, int]:
    async with sessionmaker() as session:
        leads = await session.scalar(select(func.count()).select_from(Lead).where(Lead.organization_id == org))
        changes = await session.scalar(
            select(func.count()).select_from(StageChange).where(StageChange.organization_id == org)
        )
        return int(leads or 0), int(changes or 0)


def _row(ref: str, **fields: Any) -> LeadImportRow:
    base: dict[str, Any] = {
        "external_ref": ref,
        "title": f"deal {ref}",
        "amount": 1000.0,
        "history": [
            HistoryEntry(to_stage=Stage.PROSPECTING, at=_at(0)),
            HistoryEntry(to_stage=Stage.QUALIFY, at=_at(3)),
            HistoryEntry(to_stage=Stage.CLOSE, status=LeadStatus.WON, at=_at(20), amount=1200.0),
        ],
    }
    base.update(fields)
    return LeadImportRow(**base)


def test_good_rows_land_with_their_history_and_bad_rows_are_reported(client: TestClient[Any], tenant: Tenant) -> None:
    sessionmaker = client.app.state.sessionmaker
    admin = Actor(organization_id=tenant.organization_id, user_id=tenant.admin.id, role=Role.ADMIN)
    account = create_account(client, tenant.rep_a, name="Imported Industries")
    rows = [
        _row("ok-1", owner_email=tenant.rep_a.email, account_name="imported industries"),
        _row("bad-owner", owner_email="nobody@nowhere.example"),
        _row(
            "bad-order",
            history=[HistoryEntry(to_stage=Stage.QUALIFY, at=_at(5)), HistoryEntry(to_stage=Stage.APPROACH, at=_at(1))],
        ),
        _row("bad-account", account_name="No Such Account"),
        _row("ok-1"),  # the same reference twice in one batch
        _row("ok-2", owner_id=tenant.rep_b.id, history=[HistoryEntry(to_stage=Stage.APPROACH, at=_at(2))]),
        _row(
            "won-no-amount", amount=None, history=[HistoryEntry(to_stage=Stage.CLOSE, status=LeadStatus.WON, at=_at(1))]
        ),
    ]
    report = run(client, _import, sessionmaker, admin, rows)
    assert report.accepted == 2
    assert report.stage_changes == 4
    assert [(r.row, r.external_ref, r.field) for r in report.rejected] == [
        (2, "bad-owner", "owner_email"),
        (3, "bad-order", "history[1].at"),
        (4, "bad-account", "account_name"),
        (5, "ok-1", "external_ref"),
        (7, "won-no-amount", "amount"),
    ]
    assert run(client, _count, sessionmaker, tenant.organization_id) == (2, 4)

    history = run(client, _history, sessionmaker, tenant.organization_id, "ok-1")
    assert [(h[0], h[1], h[2]) for h in history] == [
        (None, "prospecting", "open"),
        ("prospecting", "qualify", "open"),
        ("qualify", "close", "won"),
    ]
    assert [h[3] for h in history] == [_at(0), _at(3), _at(20)]
    assert all(h[4] for h in history)

    lead = client.get("/api/v1/leads", params={"q": "deal ok-1"}, headers=tenant.rep_a.headers).json()["items"][0]
    assert (lead["stage"], lead["status"], lead["amount"], lead["account_id"]) == (
        "close",
        "won",
        1200.0,
        account["id"],
    )
    assert lead["created_at"].startswith("2025-03-01") and lead["closed_at"].startswith("2025-03-21")

    again = run(client, _import, sessionmaker, admin, [_row("ok-1")])
    assert again.accepted == 0 and again.rejected[0].field == "external_ref"


def test_a_rep_may_import_only_their_own_leads(client: TestClient[Any], tenant: Tenant) -> None:
    rep = Actor(organization_id=tenant.organization_id, user_id=tenant.rep_a.id, role=Role.REP)
    report = run(
        client,
        _import,
        client.app.state.sessionmaker,
        rep,
        [_row("mine"), _row("theirs", owner_id=tenant.rep_b.id)],
    )
    assert report.accepted == 1
    assert [(r.external_ref, r.field) for r in report.rejected] == [("theirs", "owner_id")]


def test_stage_status_and_dates_given_on_the_row_must_agree_with_the_history(
    client: TestClient[Any], tenant: Tenant
) -> None:
    admin = Actor(organization_id=tenant.organization_id, user_id=tenant.admin.id, role=Role.ADMIN)
    rows = [
        _row("agrees", stage=Stage.CLOSE, status=LeadStatus.WON, created_at=_at(-2), closed_at=_at(20)),
        _row("wrong-stage", stage=Stage.QUALIFY),
        _row("wrong-status", status=LeadStatus.LOST),
        _row("created-late", created_at=_at(1)),
        _row("closed-elsewhen", closed_at=_at(19)),
    ]
    report = run(client, _import, client.app.state.sessionmaker, admin, rows)
    assert report.accepted == 1
    assert [(r.external_ref, r.field) for r in report.rejected] == [
        ("wrong-stage", "stage"),
        ("wrong-status", "status"),
        ("created-late", "created_at"),
        ("closed-elsewhen", "closed_at"),
    ]
