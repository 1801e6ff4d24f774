"""ETag / If-Match: a write based on a stale read is refused with 412 and changes nothing."""

from __future__ import annotations

from typing import Any

import pytest
from litestar.testing import TestClient

from tests.conftest import Tenant, create_account, create_contact, create_lead


@pytest.fixture
def urls(client: TestClient[Any], tenant: Tenant) -> dict[str, tuple[str, dict[str, Any]]]:
    rep = tenant.rep_a
    account = create_account(client, rep)
    contact = create_contact(client, rep, account["id"])
    lead = create_lead(client, rep)
    objection = client.post(
        f"/api/v1/leads/{lead['id']}/objections", json={"type": "need", "statement": "Not now"}, headers=rep.headers
    ).json()
    return {
        "lead": (f"/api/v1/leads/{lead['id']}", {"next_step": "call back"}),
        "account": (f"/api/v1/accounts/{account['id']}", {"industry": "retail"}),
        "contact": (f"/api/v1/contacts/{contact['id']}", {"title": "CFO"}),
        "objection": (f"/api/v1/objections/{objection['id']}", {"status": "resolved"}),
    }


@pytest.mark.parametrize("kind", ["lead", "account", "contact", "objection"])
def test_stale_writes_are_refused(
    client: TestClient[Any], tenant: Tenant, urls: dict[str, tuple[str, dict[str, Any]]], kind: str
) -> None:
    h = tenant.rep_a.headers
    url, change = urls[kind]
    first = client.get(url, headers=h)
    etag = first.headers["etag"]
    assert etag == f'"{first.json()["version"]}"'
    updated = client.patch(url, json=change, headers={**h, "If-Match": etag})
    assert updated.status_code == 200
    assert updated.headers["etag"] != etag
    stale = client.patch(url, json=change, headers={**h, "If-Match": etag})
    assert stale.status_code == 412
    assert stale.json()["type"].endswith("/stale-write")
    assert client.get(url, headers=h).json() == updated.json()
    assert client.patch(url, json=change, headers={**h, "If-Match": "*"}).status_code == 200
    assert client.patch(url, json=change, headers={**h, "If-Match": '"not-ours"'}).status_code == 412


def test_stage_moves_honour_if_match(client: TestClient[Any], tenant: Tenant) -> None:
    h = tenant.admin.headers
    settings = client.get("/api/v1/organization/pipeline-settings", headers=h).json()
    settings["gates"]["prospecting"]["enabled"] = False
    client.put("/api/v1/organization/pipeline-settings", json=settings, headers=h)
    lead = create_lead(client, tenant.rep_a)
    url = f"/api/v1/leads/{lead['id']}/stage-moves"
    stale = client.post(url, json={"to_stage": "qualify"}, headers={**h, "If-Match": f'"{lead["version"] + 1}"'})
    assert stale.status_code == 412
    moved = client.post(url, json={"to_stage": "qualify"}, headers={**h, "If-Match": f'"{lead["version"]}"'})
    assert moved.status_code == 200 and moved.json()["version"] == lead["version"] + 1
