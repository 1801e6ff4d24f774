"""A rep takes one lead through all seven stages, recording what each needs."""

from __future__ import annotations

import gc
import itertools
from typing import Any

from litestar.testing import TestClient

from tests.conftest import Tenant, create_account, create_contact, create_lead


def test_rep_moves_a_lead_through_every_stage(client: TestClient[Any], tenant: Tenant) -> None:
    rep = tenant.rep_a
    h = rep.headers
    account = create_account(client, rep)
    contact = create_contact(client, rep, account["id"])
    lead = create_lead(
        client, rep, account_id=account["id"], primary_contact_id=contact["id"], source_channel="referral"
    )
    lid = lead["id"]
    assert lead["stage"] == "prospecting"

    def move(to: str, **extra: Any) -> Any:
        return client.post(f"/api/v1/leads/{lid}/stage-moves", json={"to_stage": to, **extra}, headers=h)

    assert move("qualify").status_code == 200
    refused = move("approach")
    assert refused.status_code == 409
    assert refused.json()["rule"] == "gate.qualify.score"
    scores = {"need": 4, "purchasing_power": 4, "decision_authority": 3, "creditworthiness": 4}
    assert client.patch(f"/api/v1/leads/{lid}", json={"qualification": scores}, headers=h).status_code == 200
    assert move("approach").status_code == 200

    assert move("negotiate").json()["rule"] == "gate.approach.visit"
    visit = client.post(
        "/api/v1/activities",
        json={"kind": "visit", "lead_id": lid, "planned_at": "2026-11-25T09:00:00Z", "goal": "demo"},
        headers=h,
    ).json()
    checked = client.post(
        f"/api/v1/activities/{visit['id']}/check-in", json={"latitude": 31.2, "longitude": 121.5}, headers=h
    )
    assert checked.status_code == 200, checked.text
    assert move("negotiate").status_code == 200

    assert move("handle_objections").json()["rule"] == "gate.negotiate.quote"
    assert client.patch(f"/api/v1/leads/{lid}", json={"amount": 4821.0}, headers=h).status_code == 200
    objection = client.post(
        f"/api/v1/leads/{lid}/objections", json={"type": "price", "statement": "Too expensive"}, headers=h
    ).json()
    assert move("close").json()["rule"] == "stage.skip_objections"
    assert move("handle_objections").status_code == 200
    assert move("close").json()["rule"] == "gate.handle_objections.open"
    resolved = client.patch(
        f"/api/v1/objections/{objection['id']}",
        json={"handling_method": "compensation", "status": "resolved"},
        headers=h,
    )
    assert resolved.status_code == 200
    assert move("close").status_code == 200
    assert move("after_sale").json()["rule"] == "gate.close.won"
    won = client.post(
        f"/api/v1/leads/{lid}/outcome", json={"outcome": "won", "amount": 4500, "closing_method": "summary"}, headers=h
    )
    assert won.status_code == 200, won.text
    assert won.json()["status"] == "won"
    assert move("after_sale").status_code == 200

    history = client.get(f"/api/v1/leads/{lid}/stage-history", headers=h).json()
    assert [c["to_stage"] for c in history] == [
        "prospecting",
        "qualify",
        "approach",
        "negotiate",
        "handle_objections",
        "close",
        "close",
        "after_sale",
    ]
    assert history[-2]["status"] == "won"
    # Each move records when the lead entered the stage it leaves (time-in-stage).
    entered = history[0]["at"]
    for before, after in itertools.pairwise(history):
        assert after["from_stage"] == before["to_stage"]
        assert after["from_stage_entered_at"] == entered
        if after["to_stage"] != after["from_stage"]:
            entered = after["at"]


def test_a_started_app_keeps_its_long_lived_objects_out_of_full_collections(client: TestClient[Any]) -> None:
    # Startup objects (routes, models, the OpenAPI schema) are frozen: a full
    # collection under load would otherwise walk them all (a ~0.1 s pause).
    assert client.get("/health").status_code == 200
    assert gc.get_freeze_count() > 50_000
