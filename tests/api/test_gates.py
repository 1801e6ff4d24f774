"""Gates through the API: a refused move names the rule and changes nothing;
an accepted move appends exactly one stage change; settings are per organization."""

from __future__ import annotations

from typing import Any

import pytest
from litestar.testing import TestClient

from tests.conftest import Person, Tenant, create_account, create_contact, create_lead


def _history(client: TestClient[Any], who: Person, lead_id: str) -> list[dict[str, Any]]:
    return client.get(f"/api/v1/leads/{lead_id}/stage-history", headers=who.headers).json()


def _move(client: TestClient[Any], who: Person, lead_id: str, to: str, **extra: Any) -> Any:
    return client.post(f"/api/v1/leads/{lead_id}/stage-moves", json={"to_stage": to, **extra}, headers=who.headers)


@pytest.fixture
def qualified(client: TestClient[Any], tenant: Tenant) -> dict[str, Any]:
    """A lead of rep_a in `qualify` with an unscored qualification."""
    rep = tenant.rep_a
    account = create_account(client, rep)
    contact = create_contact(client, rep, account["id"])
    lead = create_lead(client, rep, account_id=account["id"], primary_contact_id=contact["id"])
    assert _move(client, rep, lead["id"], "qualify").status_code == 200
    return lead


def test_a_refused_move_changes_nothing(client: TestClient[Any], tenant: Tenant) -> None:
    rep = tenant.rep_a
    lead = create_lead(client, rep)
    before = client.get(f"/api/v1/leads/{lead['id']}", headers=rep.headers).json()
    refused = _move(client, rep, lead["id"], "qualify")
    assert refused.status_code == 409
    body = refused.json()
    assert body["rule"] == "gate.prospecting.account_and_contact"
    assert body["missing"] == ["account_id", "primary_contact_id"]
    assert client.get(f"/api/v1/leads/{lead['id']}", headers=rep.headers).json() == before
    assert len(_history(client, rep, lead["id"])) == 1


def test_manager_override_of_the_qualification_gate(
    client: TestClient[Any], tenant: Tenant, qualified: dict[str, Any]
) -> None:
    lead_id = qualified["id"]
    assert _move(client, tenant.rep_a, lead_id, "approach", override_reason="I know them").json()["rule"] == (
        "gate.qualify.score"
    )
    moved = _move(client, tenant.manager_a, lead_id, "approach", override_reason="Strategic account")
    assert moved.status_code == 200
    assert moved.json()["qualification_override_reason"] == "Strategic account"
    history = _history(client, tenant.rep_a, lead_id)
    assert [c["to_stage"] for c in history] == ["prospecting", "qualify", "approach"]
    assert history[-1]["by_user_id"] == str(tenant.manager_a.id)


def test_a_planned_visit_is_not_a_completed_one(
    client: TestClient[Any], tenant: Tenant, qualified: dict[str, Any]
) -> None:
    rep, lead_id = tenant.rep_a, qualified["id"]
    scores = {"need": 5, "purchasing_power": 5, "decision_authority": 5, "creditworthiness": 5}
    assert (
        client.patch(f"/api/v1/leads/{lead_id}", json={"qualification": scores}, headers=rep.headers).status_code == 200
    )
    assert _move(client, rep, lead_id, "approach").status_code == 200
    planned = client.post(
        "/api/v1/activities",
        json={"kind": "visit", "lead_id": lead_id, "planned_at": "2026-12-01T09:00:00Z"},
        headers=rep.headers,
    ).json()
    assert _move(client, rep, lead_id, "negotiate").json()["rule"] == "gate.approach.visit"
    check_in = {"latitude": 31.23, "longitude": 121.47, "at": "2026-12-01T09:05:00Z"}
    done = client.post(f"/api/v1/activities/{planned['id']}/check-in", json=check_in, headers=rep.headers)
    assert done.json()["check_in_latitude"] == 31.23
    assert _move(client, rep, lead_id, "negotiate").status_code == 200
    early = {"latitude": 31.23, "longitude": 121.47, "at": "2026-12-01T08:00:00Z"}
    out = client.post(f"/api/v1/activities/{planned['id']}/check-out", json=early, headers=rep.headers)
    assert out.json()["rule"] == "visit.check_out_before_check_in"


def test_lost_reopen_and_disqualify(client: TestClient[Any], tenant: Tenant, qualified: dict[str, Any]) -> None:
    rep, lead_id = tenant.rep_a, qualified["id"]
    no_reason = client.post(f"/api/v1/leads/{lead_id}/outcome", json={"outcome": "lost"}, headers=rep.headers)
    assert no_reason.json()["rule"] == "outcome.lost_reason"
    lost = client.post(
        f"/api/v1/leads/{lead_id}/outcome",
        json={"outcome": "lost", "loss_reason": "price", "competitor": "Zeta"},
        headers=rep.headers,
    ).json()
    assert (lost["stage"], lost["status"], lost["lost_at_stage"], lost["competitor"]) == (
        "close",
        "lost",
        "qualify",
        "Zeta",
    )
    assert _move(client, rep, lead_id, "approach").json()["rule"] == "lead.not_open"
    assert client.post(f"/api/v1/leads/{lead_id}/reopen", json={}, headers=rep.headers).json()["rule"] == (
        "reopen.manager_only"
    )
    reopened = client.post(
        f"/api/v1/leads/{lead_id}/reopen", json={"note": "budget back"}, headers=tenant.manager_a.headers
    )
    assert (reopened.json()["stage"], reopened.json()["status"]) == ("qualify", "open")
    assert [(c["to_stage"], c["status"]) for c in _history(client, rep, lead_id)][-2:] == [
        ("close", "lost"),
        ("qualify", "open"),
    ]
    disqualified = client.post(
        f"/api/v1/leads/{lead_id}/outcome",
        json={"outcome": "disqualified", "loss_reason": "no need"},
        headers=rep.headers,
    )
    assert disqualified.json()["status"] == "disqualified"


def test_gate_settings_belong_to_the_organization(
    client: TestClient[Any], tenant: Tenant, other_tenant: Tenant, qualified: dict[str, Any]
) -> None:
    settings = client.get("/api/v1/organization/pipeline-settings", headers=tenant.admin.headers).json()
    assert settings["gates"]["qualify"]["threshold"] == 60
    assert (
        client.put(
            "/api/v1/organization/pipeline-settings", json=settings, headers=tenant.manager_a.headers
        ).status_code
        == 403
    )
    settings["gates"]["qualify"]["enabled"] = False
    saved = client.put("/api/v1/organization/pipeline-settings", json=settings, headers=tenant.admin.headers)
    assert saved.status_code == 200
    assert _move(client, tenant.rep_a, qualified["id"], "approach").status_code == 200
    theirs = client.get("/api/v1/organization/pipeline-settings", headers=other_tenant.admin.headers).json()
    assert theirs["gates"]["qualify"]["enabled"] is True
    settings["gates"]["qualify"]["threshold"] = 101
    assert (
        client.put("/api/v1/organization/pipeline-settings", json=settings, headers=tenant.admin.headers).status_code
        == 422
    )
