"""The forecast roll-up: categories, weighted pipeline, calls, quotas, team subtrees."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from litestar.testing import TestClient

from canvass.api.controllers.forecasts import calendar_period
from canvass.pipeline.config import DEFAULT_STAGE_PROBABILITIES
from canvass.pipeline.vocabulary import Stage
from tests.conftest import Person, Tenant, create_lead


@pytest.mark.parametrize(
    ("kind", "offset", "today", "start", "end"),
    [
        ("quarter", 0, dt.date(2026, 11, 24), dt.date(2026, 10, 1), dt.date(2027, 1, 1)),
        ("quarter", 1, dt.date(2026, 11, 24), dt.date(2027, 1, 1), dt.date(2027, 4, 1)),
        ("month", 1, dt.date(2026, 12, 31), dt.date(2027, 1, 1), dt.date(2027, 2, 1)),
        ("month", 0, dt.date(2026, 1, 1), dt.date(2026, 1, 1), dt.date(2026, 2, 1)),
    ],
)
def test_calendar_periods(kind: str, offset: int, today: dt.date, start: dt.date, end: dt.date) -> None:
    period = calendar_period(kind, offset, today)
    assert (period.start.date(), period.end.date()) == (start, end)


def _win(client: TestClient[Any], who: Person, lead_id: str, amount: float) -> None:
    for stage in ("qualify", "approach", "negotiate", "close"):
        r = client.post(f"/api/v1/leads/{lead_id}/stage-moves", json={"to_stage": stage}, headers=who.headers)
        assert r.status_code == 200, r.text
    r = client.post(f"/api/v1/leads/{lead_id}/outcome", json={"outcome": "won", "amount": amount}, headers=who.headers)
    assert r.status_code == 200, r.text


@pytest.fixture
def quarter(client: TestClient[Any], tenant: Tenant) -> dict[str, Any]:
    settings = client.get("/api/v1/organization/pipeline-settings", headers=tenant.admin.headers).json()
    for gate in settings["gates"].values():
        gate["enabled"] = False
    assert (
        client.put("/api/v1/organization/pipeline-settings", json=settings, headers=tenant.admin.headers).status_code
        == 200
    )
    period = calendar_period("quarter", 0)
    close = (period.start.date() + dt.timedelta(days=20)).isoformat()
    later = (period.end.date() + dt.timedelta(days=20)).isoformat()
    a, a1, b = tenant.rep_a, tenant.rep_a1, tenant.rep_b
    create_lead(client, a, amount=1000.0, expected_close_date=close, forecast_category="commit")
    create_lead(client, a, amount=500.0, expected_close_date=close, forecast_category="best_case")
    create_lead(client, a, amount=700.0, expected_close_date=later)  # next quarter: not counted
    create_lead(client, a1, amount=300.0, expected_close_date=close, probability_override=0.5)
    create_lead(client, b, amount=9000.0, expected_close_date=close)
    _win(client, a, create_lead(client, a, amount=100.0)["id"], 2000.0)
    return {"start": period.start.date().isoformat(), "end": period.end.date().isoformat()}


def _lines(client: TestClient[Any], who: Person) -> dict[str, dict[str, Any]]:
    r = client.get("/api/v1/forecasts", params={"period": "quarter"}, headers=who.headers)
    assert r.status_code == 200, r.text
    body = r.json()
    assert "hours" in body["freshness"]
    return {f"{line['kind']}:{line['name']}": line for line in body["lines"]}


def test_rollup_per_rep_and_team_subtree(client: TestClient[Any], tenant: Tenant, quarter: dict[str, Any]) -> None:
    prob = DEFAULT_STAGE_PROBABILITIES[Stage.PROSPECTING]
    manager = tenant.manager_a
    r = client.put(
        "/api/v1/quotas",
        json={
            "user_id": str(tenant.rep_a.id),
            "period_start": quarter["start"],
            "period_end": quarter["end"],
            "amount": 8000,
        },
        headers=manager.headers,
    )
    assert r.status_code == 200, r.text
    lines = _lines(client, manager)
    rep = lines["rep:Rep A"]
    assert (rep["won"], rep["won_deals"]) == (2000.0, 1)
    assert (rep["commit"], rep["best_case"], rep["pipeline"]) == (1000.0, 500.0, 0.0)
    assert rep["weighted_pipeline"] == pytest.approx(1500.0 * prob)
    assert rep["attainment"] == pytest.approx(2000 / 8000)
    assert lines["rep:Rep A1"]["weighted_pipeline"] == pytest.approx(150.0)  # the rep's own probability
    team = lines["team:Team A"]
    assert team["won"] == 2000.0
    assert team["weighted_pipeline"] == pytest.approx(1500.0 * prob + 150.0)
    assert "rep:Rep B" not in lines and "team:Team B" not in lines
    admin_lines = _lines(client, tenant.admin)
    assert admin_lines["team:Sales"]["pipeline"] == pytest.approx(300.0 + 9000.0)


def test_manager_adjustment_overrides_the_rep_commit(
    client: TestClient[Any], tenant: Tenant, quarter: dict[str, Any]
) -> None:
    period = {"period_start": quarter["start"], "period_end": quarter["end"]}
    own = client.post(
        "/api/v1/forecast-submissions", json={**period, "commit_amount": 2500}, headers=tenant.rep_a.headers
    )
    assert own.status_code == 201 and own.json()["kind"] == "commit"
    assert _lines(client, tenant.rep_a)["rep:Rep A"]["call"] == 2500.0
    not_mine = client.post(
        "/api/v1/forecast-submissions",
        json={**period, "commit_amount": 1, "user_id": str(tenant.rep_a2.id)},
        headers=tenant.rep_a.headers,
    )
    assert not_mine.status_code == 403
    adjusted = client.post(
        "/api/v1/forecast-submissions",
        json={**period, "commit_amount": 2200, "user_id": str(tenant.rep_a.id), "note": "discount risk"},
        headers=tenant.manager_a.headers,
    )
    assert adjusted.status_code == 201 and adjusted.json()["kind"] == "adjustment"
    lines = _lines(client, tenant.manager_a)
    assert (lines["rep:Rep A"]["call"], lines["rep:Rep A"]["call_source"]) == (2200.0, "adjustment")
    assert (lines["team:Team A"]["call"], lines["team:Team A"]["call_source"]) == (2200.0, "sum_of_members")
    other_team = client.post(
        "/api/v1/forecast-submissions",
        json={**period, "commit_amount": 1, "user_id": str(tenant.rep_b.id)},
        headers=tenant.manager_a.headers,
    )
    assert other_team.status_code == 403
    history = client.get("/api/v1/forecast-submissions", headers=tenant.manager_a.headers).json()
    assert [s["commit_amount"] for s in history] == [2500.0, 2200.0]


def test_reps_cannot_set_quotas(client: TestClient[Any], tenant: Tenant) -> None:
    body = {"user_id": str(tenant.rep_a.id), "period_start": "2026-10-01", "period_end": "2027-01-01", "amount": 1}
    assert client.put("/api/v1/quotas", json=body, headers=tenant.rep_a.headers).status_code == 403
