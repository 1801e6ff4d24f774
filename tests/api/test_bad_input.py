"""Bad input gets a clear 4xx problem document naming the field or rule — never a
500 — and changes nothing."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from litestar.testing import TestClient

from tests.conftest import Tenant, create_lead

PROBLEM = "application/problem+json"


def _problem(response: Any, status: int, type_suffix: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body = response.json()
    assert body["type"] == f"https://canvass.dev/problems/{type_suffix}"
    assert body["status"] == status and body["title"] and body["detail"]
    return body


def _lead_count(client: TestClient[Any], tenant: Tenant) -> int:
    return len(client.get("/api/v1/leads", params={"limit": 200}, headers=tenant.admin.headers).json()["items"])


def test_malformed_json_is_400(client: TestClient[Any], tenant: Tenant) -> None:
    before = _lead_count(client, tenant)
    r = client.post(
        "/api/v1/leads",
        content=b'{"title": "half',
        headers={**tenant.rep_a.headers, "content-type": "application/json"},
    )
    _problem(r, 400, "malformed-body")
    assert _lead_count(client, tenant) == before


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"title": "x", "colour": "red"}, "body.colour"),
        ({"title": 42}, "body.title"),
        ({"title": "x", "amount": -5}, "body.amount"),
        ({"title": "x", "amount": "lots"}, "body.amount"),
        ({"title": "x", "source_channel": "carrier pigeon"}, "body.source_channel"),
        ({"title": "x", "currency": "dollars"}, "body.currency"),
        ({"title": "nul \u0000 inside"}, "body.title"),
        ({"title": ""}, "body.title"),
        ({"title": "x", "qualification": {"need": 9}}, "body.qualification.need"),
        ({"title": "x", "owner_id": "not-a-uuid"}, "body.owner_id"),
        ({"title": "x", "expected_close_date": "31/12/2026"}, "body.expected_close_date"),
    ],
)
def test_invalid_fields_are_422_naming_the_field(
    client: TestClient[Any], tenant: Tenant, body: dict[str, Any], field: str
) -> None:
    before = _lead_count(client, tenant)
    problem = _problem(client.post("/api/v1/leads", json=body, headers=tenant.rep_a.headers), 422, "validation-failed")
    assert field in [e["field"] for e in problem["errors"]], problem
    assert _lead_count(client, tenant) == before


def test_dates_outside_business_time_are_refused(client: TestClient[Any], tenant: Tenant) -> None:
    r = client.post(
        "/api/v1/leads", json={"title": "x", "expected_close_date": "9999-12-31"}, headers=tenant.rep_a.headers
    )
    assert "1900 and 2200" in _problem(r, 422, "validation-failed")["detail"]
    lead = create_lead(client, tenant.rep_a)
    move = {"to_stage": "qualify", "at": "2026-01-01T10:00:00"}  # no time zone
    r = client.post(f"/api/v1/leads/{lead['id']}/stage-moves", json=move, headers=tenant.rep_a.headers)
    _problem(r, 422, "validation-failed")


def test_invalid_path_and_query_values(client: TestClient[Any], tenant: Tenant) -> None:
    h = tenant.rep_a.headers
    assert client.get("/api/v1/leads/not-a-uuid", headers=h).status_code in (404, 422)
    problem = _problem(client.get("/api/v1/leads", params={"limit": 0}, headers=h), 422, "validation-failed")
    assert problem["errors"][0]["field"] == "query.limit"
    _problem(client.get("/api/v1/leads", params={"stage": "heaven"}, headers=h), 422, "validation-failed")
    problem = _problem(client.get("/api/v1/leads", params={"cursor": "!!!"}, headers=h), 422, "invalid-value")
    assert problem["field"] == "cursor"
    _problem(client.get("/api/v1/leads", params={"q": "a\u0000b"}, headers=h), 422, "validation-failed")


def test_oversized_body_is_413(client: TestClient[Any], tenant: Tenant) -> None:
    before = _lead_count(client, tenant)
    r = client.post("/api/v1/leads", json={"title": "x", "next_step": "y" * 70_000}, headers=tenant.rep_a.headers)
    _problem(r, 413, "body-too-large")
    assert _lead_count(client, tenant) == before


def test_invalid_stage_jump_names_the_rule(client: TestClient[Any], tenant: Tenant) -> None:
    lead = create_lead(client, tenant.rep_a)
    r = client.post(f"/api/v1/leads/{lead['id']}/stage-moves", json={"to_stage": "close"}, headers=tenant.rep_a.headers)
    assert _problem(r, 409, "rule-violation")["rule"] == "stage.order"
    history = client.get(f"/api/v1/leads/{lead['id']}/stage-history", headers=tenant.rep_a.headers).json()
    assert [c["to_stage"] for c in history] == ["prospecting"]


def test_a_client_chosen_id_that_exists_is_409(client: TestClient[Any], tenant: Tenant) -> None:
    chosen = str(uuid.uuid4())
    create_lead(client, tenant.rep_a, id=chosen, title="first")
    r = client.post("/api/v1/leads", json={"id": chosen, "title": "second"}, headers=tenant.rep_a.headers)
    _problem(r, 409, "already-exists")
    assert client.get(f"/api/v1/leads/{chosen}", headers=tenant.rep_a.headers).json()["title"] == "first"


def test_unknown_routes_methods_and_media_types(client: TestClient[Any], tenant: Tenant) -> None:
    h = tenant.rep_a.headers
    _problem(client.get("/api/v1/nothing-here", headers=h), 404, "not-found")
    _problem(client.put("/api/v1/leads", json={}, headers=h), 405, "method-not-allowed")
    r = client.post("/api/v1/leads", content=b"title=x", headers={**h, "content-type": "text/plain"})
    assert 400 <= r.status_code < 500 and r.headers["content-type"].startswith(PROBLEM)


def test_missing_or_bad_tokens_are_401(client: TestClient[Any]) -> None:
    _problem(client.get("/api/v1/leads"), 401, "unauthorized")
    _problem(client.get("/api/v1/leads", headers={"Authorization": "Bearer nonsense"}), 401, "unauthorized")
