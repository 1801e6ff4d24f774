"""Funnel report figures, checked against a pipeline whose history the test wrote."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from litestar.testing import TestClient
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

from canvass.db import create_engine
from canvass.forecasting.queries import FunnelCut, Period, stuck_leads
from canvass.forecasting.reports import funnel_report
from canvass.pipeline.scope import Actor
from canvass.pipeline.vocabulary import Stage
from canvass.settings import Settings
from tests.conftest import Person, Tenant, create_account, create_contact, create_lead, run

DAY = dt.timedelta(days=1)


def _at(base: dt.datetime, days: float) -> str:
    return (base + days * DAY).isoformat()


def _move(client: TestClient[Any], who: Person, lead_id: str, to: str, at: str) -> None:
    r = client.post(f"/api/v1/leads/{lead_id}/stage-moves", json={"to_stage": to, "at": at}, headers=who.headers)
    assert r.status_code == 200, r.text


def _outcome(client: TestClient[Any], who: Person, lead_id: str, at: str, **body: Any) -> None:
    r = client.post(f"/api/v1/leads/{lead_id}/outcome", json={"at": at, **body}, headers=who.headers)
    assert r.status_code == 200, r.text


@pytest.fixture
def history(client: TestClient[Any], tenant: Tenant) -> dt.datetime:
    """Three deals of rep_a and one of rep_b, gates off so only history matters."""
    settings = client.get("/api/v1/organization/pipeline-settings", headers=tenant.admin.headers).json()
    for gate in settings["gates"].values():
        gate["enabled"] = False
    assert (
        client.put("/api/v1/organization/pipeline-settings", json=settings, headers=tenant.admin.headers).status_code
        == 200
    )
    t0 = dt.datetime.now(dt.UTC)
    rep = tenant.rep_a
    account = create_account(client, rep)
    contact = create_contact(client, rep, account["id"])
    refs = {"account_id": account["id"], "primary_contact_id": contact["id"], "amount": 1000.0}
    open_deal = create_lead(client, rep, title="stays open", **refs)["id"]
    lost_deal = create_lead(client, rep, title="lost early", **refs)["id"]
    won_deal = create_lead(client, rep, title="won", product_interest="GTX Pro", **refs)["id"]
    _move(client, rep, open_deal, "qualify", _at(t0, 1))
    _move(client, rep, open_deal, "approach", _at(t0, 3))
    _move(client, rep, lost_deal, "qualify", _at(t0, 1))
    _outcome(client, rep, lost_deal, _at(t0, 2), outcome="lost", loss_reason="no budget", competitor="Zeta")
    _move(client, rep, won_deal, "qualify", _at(t0, 1))
    _move(client, rep, won_deal, "approach", _at(t0, 2))
    _move(client, rep, won_deal, "negotiate", _at(t0, 5))
    _move(client, rep, won_deal, "close", _at(t0, 6))
    _outcome(client, rep, won_deal, _at(t0, 7), outcome="won", amount=1200.0)
    other = create_lead(client, tenant.rep_b, title="team B")["id"]
    _move(client, tenant.rep_b, other, "qualify", _at(t0, 1))
    return t0


def _report(client: TestClient[Any], who: Person, t0: dt.datetime, **params: Any) -> dict[str, Any]:
    query = {"from": (t0 - DAY).date().isoformat(), "to": (t0 + 30 * DAY).date().isoformat(), **params}
    r = client.get("/api/v1/reports/funnel", params=query, headers=who.headers)
    assert r.status_code == 200, r.text
    return r.json()


def test_funnel_counts_entries_conversions_and_days_in_stage(
    client: TestClient[Any], tenant: Tenant, history: dt.datetime
) -> None:
    report = _report(client, tenant.manager_a, history)
    stages = {s["stage"]: s for s in report["stages"]}
    assert [s["stage"] for s in report["stages"]] == [s.value for s in Stage]
    assert {k: stages[k]["entered"] for k in stages} == {
        "prospecting": 3, "qualify": 3, "approach": 2, "negotiate": 1,
        "handle_objections": 0, "close": 1, "after_sale": 0,
    }  # fmt: skip
    # Cohort conversion: the lost deal never advanced past qualify; close converts by winning.
    assert stages["qualify"]["advanced"] == 2
    assert stages["qualify"]["conversion_rate"] == pytest.approx(2 / 3)
    assert stages["approach"]["conversion_rate"] == pytest.approx(1 / 2)
    assert stages["close"]["conversion_rate"] == pytest.approx(1.0)
    # Days in qualify: 2 (open deal), 1 (lost deal), 1 (won deal).
    assert stages["qualify"]["visits_ended"] == 3
    assert stages["qualify"]["days_mean"] == pytest.approx(4 / 3, abs=1e-3)
    assert stages["qualify"]["days_median"] == 1
    assert stages["negotiate"]["days_mean"] == pytest.approx(1.0, abs=1e-3)
    assert (report["won"], report["lost"], report["win_rate"]) == (1, 1, 0.5)
    assert report["won_amount"] == pytest.approx(1200.0)
    assert report["open_pipeline"] == 1


def test_funnel_respects_scope_and_cuts(client: TestClient[Any], tenant: Tenant, history: dt.datetime) -> None:
    everyone = _report(client, tenant.admin, history)
    assert everyone["stages"][0]["entered"] == 4  # admin also sees team B's lead
    mine_b = _report(client, tenant.manager_b, history)
    assert mine_b["stages"][0]["entered"] == 1
    product = _report(client, tenant.admin, history, product="GTX Pro")
    assert product["stages"][0]["entered"] == 1 and product["won"] == 1
    by_rep = _report(client, tenant.admin, history, owner_id=str(tenant.rep_b.id))
    assert by_rep["stages"][1]["entered"] == 1 and by_rep["won"] == 0


def test_funnel_as_csv_has_a_row_per_stage(client: TestClient[Any], tenant: Tenant, history: dt.datetime) -> None:
    query = {"from": (history - DAY).date().isoformat(), "to": (history + 30 * DAY).date().isoformat()}
    r = client.get("/api/v1/reports/funnel/csv", params=query, headers=tenant.manager_a.headers)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/csv")
    rows = [line for line in r.text.splitlines() if line and not line.startswith("#")]
    assert rows[0].startswith("stage,entered")
    assert [row.split(",")[0] for row in rows[1:]] == [
        "prospecting", "qualify", "approach", "negotiate", "handle_objections", "close", "after_sale",
    ]  # fmt: skip
    assert rows[2].split(",")[1] == "3"


@pytest.mark.parametrize("kind", ["funnel", "durations"])
def test_funnel_charts_are_png_images(client: TestClient[Any], tenant: Tenant, history: dt.datetime, kind: str) -> None:
    query = {"from": (history - DAY).date().isoformat(), "to": (history + 30 * DAY).date().isoformat(), "kind": kind}
    r = client.get("/api/v1/reports/funnel/chart", params=query, headers=tenant.manager_a.headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    assert r.content.startswith(b"\x89PNG\r\n\x1a\n") and len(r.content) > 5000


def test_funnel_refuses_an_empty_period(client: TestClient[Any], tenant: Tenant) -> None:
    r = client.get(
        "/api/v1/reports/funnel", params={"from": "2026-05-01", "to": "2026-04-01"}, headers=tenant.admin.headers
    )
    assert r.status_code == 422
    assert r.json()["field"] == "query.from"


async def _funnel_as_of(sessionmaker: Any, who: Person, tenant: Tenant, t0: dt.datetime, now: dt.datetime) -> Any:
    actor = Actor(organization_id=tenant.organization_id, user_id=who.id, role=who.role, team_path=who.team_path)
    period = Period(t0 - DAY, t0 + 30 * DAY)
    async with sessionmaker() as session:
        return await funnel_report(session, actor, FunnelCut(), period, now=now)


def test_funnel_outcomes_open_pipeline_and_stuck_leads(
    client: TestClient[Any], tenant: Tenant, history: dt.datetime
) -> None:
    """The figures of the one lead-level pass: outcomes, sales cycle, open pipeline, and the
    stuck count against thresholds set by the days in stage (at least ten visits)."""
    t0, rep = history, tenant.rep_a
    # Eight more deals through qualify in a day: eleven qualify visits (p90 one day) and twelve of
    # prospecting (p90 under a day); one deal left in prospecting, one disqualified.
    for n in range(8):
        lead = create_lead(client, rep, title=f"moved {n}", amount=10.0)["id"]
        _move(client, rep, lead, "qualify", _at(t0, 1))
        _move(client, rep, lead, "approach", _at(t0, 2))
    create_lead(client, rep, title="never moved", amount=5.0)
    dropped = create_lead(client, rep, title="dropped", amount=7.0)["id"]
    _outcome(client, rep, dropped, _at(t0, 3), outcome="disqualified", loss_reason="spam")
    now = t0 + 60 * DAY
    report = run(client, _funnel_as_of, client.app.state.sessionmaker, tenant.admin, tenant, t0, now)
    assert (report.won, report.lost, report.disqualified) == (1, 1, 1)
    assert report.won_amount == pytest.approx(1200.0) and report.lost_amount == pytest.approx(1000.0)
    assert report.sales_cycle_days_median == 6  # created just after t0, won at t0 + 7 days
    assert report.sales_cycle_days_mean == pytest.approx(7.0, abs=0.01)
    # Open: "stays open" (1000), the eight (10 each), "never moved" (5), team B's lead (no amount).
    assert report.open_pipeline == 11 and report.open_pipeline_amount == pytest.approx(1085.0)
    # Stuck 60 days on: team B's lead in qualify (p90 1 day) and "never moved" in prospecting;
    # approach has too few finished visits for a threshold, so the eight and "stays open" are not.
    assert report.stuck_total == 2
    assert sorted(s.title for s in report.stuck) == ["never moved", "team B"]
    assert {s.stage: s.threshold_days for s in report.stuck} == {"prospecting": 0.0, "qualify": 1.0}
    mine = run(client, _funnel_as_of, client.app.state.sessionmaker, tenant.manager_a, tenant, t0, now)
    assert mine.stuck_total == 1 and [s.title for s in mine.stuck] == ["never moved"]
    assert mine.open_pipeline == 10 and mine.disqualified == 1
    # Today nobody is stuck: every stage was entered less than its threshold ago.
    assert run(client, _funnel_as_of, client.app.state.sessionmaker, tenant.admin, tenant, t0, t0).stuck_total == 0
    # The list is the longest stuck first, across stages, and the count is taken before the limit:
    # the whole tenant (read per stage from the open-leads index) and an owner cut (one statement).
    thresholds = {"prospecting": now - DAY, "qualify": now - 2 * DAY}
    assert [s.title for s in report.stuck] == ["never moved", "team B"]
    whole = run(client, _stuck_leads, client.app.state.sessionmaker, tenant, FunnelCut(), thresholds)
    assert whole == (2, ["never moved"])
    rep_b = run(
        client, _stuck_leads, client.app.state.sessionmaker, tenant, FunnelCut(owner_id=tenant.rep_b.id), thresholds
    )
    assert rep_b == (1, ["team B"])


async def _stuck_leads(
    sessionmaker: Any, tenant: Tenant, cut: FunnelCut, thresholds: dict[str, dt.datetime]
) -> tuple[int, list[str]]:
    admin = tenant.admin
    actor = Actor(organization_id=tenant.organization_id, user_id=admin.id, role=admin.role)
    async with sessionmaker() as session:
        total, stuck = await stuck_leads(session, actor, cut, thresholds, limit=1)
    return total, [s.title for s in stuck]


def test_funnel_with_no_spare_connection_runs_in_turn(
    client: TestClient[Any], tenant: Tenant, history: dt.datetime, settings: Settings
) -> None:
    """A report holding the only connection of its pool does not wait for a second one."""

    async def report() -> Any:
        url = settings.async_database_url
        engine = (
            create_async_engine(url, pool_size=1, max_overflow=0, pool_timeout=3)
            if url.startswith("postgresql")
            else create_engine(url, pool_size=1)
        )
        try:
            admin = tenant.admin
            actor = Actor(organization_id=tenant.organization_id, user_id=admin.id, role=admin.role)
            async with AsyncSession(engine) as session:
                await session.execute(select(1))  # the session holds the pool's connection
                return await funnel_report(session, actor, FunnelCut(), Period(history - DAY, history + 30 * DAY))
        finally:
            await engine.dispose()

    result = run(client, report)
    assert (result.won, result.lost, result.open_pipeline) == (1, 1, 2)
    assert result.stages[0].entered == 4
