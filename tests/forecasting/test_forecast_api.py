"""Revenue forecasts over the caller's scope, snapshots, and their accuracy."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from litestar.testing import TestClient

from canvass.forecasting.reports import take_snapshot
from canvass.pipeline.scope import Actor
from canvass.pipeline.services.imports import HistoryEntry, LeadImportRow, import_leads
from canvass.pipeline.vocabulary import LeadStatus, Role, Stage
from tests.conftest import Tenant, run


async def _won_deals(sessionmaker: Any, actor: Actor, owner: Any, days_ago: list[int], amount: float) -> None:
    today = dt.datetime.now(dt.UTC).replace(hour=9, minute=0, second=0, microsecond=0)
    rows = [
        LeadImportRow(
            title=f"won {d}",
            owner_id=owner,
            amount=amount,
            history=[
                HistoryEntry(to_stage=Stage.PROSPECTING, at=today - dt.timedelta(days=d + 30)),
                HistoryEntry(
                    to_stage=Stage.CLOSE, status=LeadStatus.WON, at=today - dt.timedelta(days=d), amount=amount
                ),
            ],
        )
        for d in days_ago
    ]
    async with sessionmaker() as session, session.begin():
        report = await import_leads(session, actor, rows)
        assert not report.rejected


async def _snapshot(sessionmaker: Any, actor: Actor, as_of: dt.date) -> int:
    async with sessionmaker() as session, session.begin():
        return len(await take_snapshot(session, actor, [30], as_of=as_of))


def test_revenue_forecast_says_when_history_is_too_short(client: TestClient[Any], tenant: Tenant) -> None:
    empty = client.get("/api/v1/forecasts/revenue", headers=tenant.rep_a.headers)
    assert empty.status_code == 200
    assert {f["method"] for f in empty.json()["forecasts"]} == {"learned", "weighted_pipeline", "naive_last_h"}
    assert all("no_history" in f["flags"] for f in empty.json()["forecasts"])
    admin = Actor(organization_id=tenant.organization_id, user_id=tenant.admin.id, role=Role.ADMIN)
    run(client, _won_deals, client.app.state.sessionmaker, admin, tenant.rep_a.id, [5, 12, 20], 1000.0)
    body = client.get("/api/v1/forecasts/revenue", params={"horizons": [30, 60]}, headers=tenant.rep_a.headers).json()
    assert body["leads_in_history"] == 3
    learned = [f for f in body["forecasts"] if f["method"] == "learned"]
    assert [f["horizon_days"] for f in learned] == [30, 60]
    assert all(f["flags"] for f in learned)  # three closes are not enough to learn from: it says so
    naive30 = next(f for f in body["forecasts"] if f["method"] == "naive_last_h" and f["horizon_days"] == 30)
    assert naive30["revenue"] == 3000.0
    for f in body["forecasts"]:
        assert f["p10"] <= f["p50"] <= f["p90"]
    # Another rep's scope has none of it.
    other = client.get("/api/v1/forecasts/revenue", headers=tenant.rep_b.headers).json()
    assert other["leads_in_history"] == 0


def test_snapshots_are_scored_once_their_window_closes(client: TestClient[Any], tenant: Tenant) -> None:
    sessionmaker = client.app.state.sessionmaker
    admin = Actor(organization_id=tenant.organization_id, user_id=tenant.admin.id, role=Role.ADMIN)
    run(client, _won_deals, sessionmaker, admin, tenant.rep_a.id, [50, 45, 10], 500.0)
    rep = Actor(organization_id=tenant.organization_id, user_id=tenant.rep_a.id, role=Role.REP)
    as_of = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=60)
    assert run(client, _snapshot, sessionmaker, rep, as_of) == 3  # one per method
    taken = client.post("/api/v1/forecast-snapshots", json={"horizons": [30]}, headers=tenant.rep_a.headers)
    assert taken.status_code == 201 and len(taken.json()) == 3
    accuracy = client.get("/api/v1/forecast-snapshots/accuracy", headers=tenant.rep_a.headers).json()
    scored = accuracy["snapshots"]
    assert len(scored) == 3  # today's snapshots are not due yet
    assert {s["actual"] for s in scored} == {1000.0}  # the deals won 50 and 45 days ago
    for s in scored:
        assert s["error"] == s["forecast"] - s["actual"]
    summary = {s["method"]: s for s in accuracy["summaries"]}
    assert summary["naive_last_h"]["bias"] == -1.0  # it forecast nothing: the window before held no wins
    assert client.get("/api/v1/forecast-snapshots/accuracy", headers=tenant.rep_b.headers).json()["snapshots"] == []


def test_a_person_s_forecast_for_those_who_see_them(client: TestClient[Any], tenant: Tenant) -> None:
    """`user_id` forecasts one person's leads (a rep's own; a manager's subtree):
    for their manager and an admin, not for another team's manager or another rep."""
    admin = Actor(organization_id=tenant.organization_id, user_id=tenant.admin.id, role=Role.ADMIN)
    run(client, _won_deals, client.app.state.sessionmaker, admin, tenant.rep_a1.id, [5, 12], 1000.0)
    run(client, _won_deals, client.app.state.sessionmaker, admin, tenant.rep_b.id, [7], 500.0)

    def leads(who: Any, user_id: uuid.UUID) -> int | None:
        reply = client.get("/api/v1/forecasts/revenue", params={"user_id": str(user_id)}, headers=who.headers)
        if reply.status_code == 404:
            return None
        assert reply.status_code == 200, reply.text
        count: int = reply.json()["leads_in_history"]
        return count

    assert leads(tenant.manager_a, tenant.rep_a1.id) == 2  # in manager A's subtree (team A1)
    assert leads(tenant.admin, tenant.rep_b.id) == 1
    assert leads(tenant.admin, tenant.manager_a.id) == 2  # a manager's forecast covers their subtree
    assert leads(tenant.rep_a1, tenant.rep_a1.id) == 2  # oneself
    assert leads(tenant.manager_b, tenant.rep_a1.id) is None  # another team's rep
    assert leads(tenant.rep_a, tenant.rep_a1.id) is None  # another rep
    assert leads(tenant.admin, uuid.uuid4()) is None  # nobody
