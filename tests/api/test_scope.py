"""Who sees what: rep (own), manager (team subtree), admin (tenant), and nobody
across tenants — for reads, lists and writes of every record kind."""

from __future__ import annotations

from typing import Any

import pytest
from litestar.testing import TestClient

from tests.conftest import Tenant, create_account, create_contact, create_lead

# viewer → may they see rep_a's records?
VISIBILITY = {
    "rep_a": True,
    "rep_a2": False,  # same team, another rep
    "rep_a1": False,  # sub-team rep
    "manager_a": True,  # rep_a's manager
    "manager_b": False,  # another team's manager
    "admin": True,
}


@pytest.fixture
def records(client: TestClient[Any], tenant: Tenant) -> dict[str, str]:
    rep = tenant.rep_a
    account = create_account(client, rep, name="Scoped Ltd")
    contact = create_contact(client, rep, account["id"])
    lead = create_lead(client, rep, account_id=account["id"], primary_contact_id=contact["id"])
    activity = client.post("/api/v1/activities", json={"kind": "call", "lead_id": lead["id"]}, headers=rep.headers)
    objection = client.post(
        f"/api/v1/leads/{lead['id']}/objections", json={"type": "timing", "statement": "Next year"}, headers=rep.headers
    )
    assert activity.status_code == objection.status_code == 201
    return {
        "lead": f"/api/v1/leads/{lead['id']}",
        "history": f"/api/v1/leads/{lead['id']}/stage-history",
        "objections": f"/api/v1/leads/{lead['id']}/objections",
        "account": f"/api/v1/accounts/{account['id']}",
        "contact": f"/api/v1/contacts/{contact['id']}",
        "activity": f"/api/v1/activities/{activity.json()['id']}",
        "objection": f"/api/v1/objections/{objection.json()['id']}",
    }


@pytest.mark.parametrize("viewer", list(VISIBILITY))
def test_reads_follow_the_scope(client: TestClient[Any], tenant: Tenant, records: dict[str, str], viewer: str) -> None:
    headers = tenant.people[viewer].headers
    expected = 200 if VISIBILITY[viewer] else 404
    for kind, url in records.items():
        assert client.get(url, headers=headers).status_code == expected, (viewer, kind)


def test_nothing_crosses_tenants(
    client: TestClient[Any], tenant: Tenant, other_tenant: Tenant, records: dict[str, str]
) -> None:
    outsider = other_tenant.admin.headers
    for kind, url in records.items():
        assert client.get(url, headers=outsider).status_code == 404, kind
    for listing in ("/api/v1/leads", "/api/v1/accounts", "/api/v1/contacts", "/api/v1/activities", "/api/v1/users"):
        items = client.get(listing, headers=outsider).json()["items"]
        ids = {i["id"] for i in items}
        assert not ids & {url.rsplit("/", 1)[1] for url in records.values()}, listing
    assert client.patch(records["lead"], json={"title": "hijacked"}, headers=outsider).status_code == 404


@pytest.mark.parametrize("viewer", list(VISIBILITY))
def test_writes_follow_the_scope(client: TestClient[Any], tenant: Tenant, records: dict[str, str], viewer: str) -> None:
    headers = tenant.people[viewer].headers
    expected = 200 if VISIBILITY[viewer] else 404
    assert client.patch(records["lead"], json={"next_step": f"by {viewer}"}, headers=headers).status_code == expected
    assert client.patch(records["account"], json={"industry": viewer}, headers=headers).status_code == expected
    assert client.patch(records["contact"], json={"title": viewer}, headers=headers).status_code == expected
    assert client.patch(records["objection"], json={"response": viewer}, headers=headers).status_code == expected


def test_lists_hold_exactly_the_scope(client: TestClient[Any], tenant: Tenant) -> None:
    leads = {who: create_lead(client, tenant.people[who])["id"] for who in ("rep_a", "rep_a1", "rep_a2", "rep_b")}

    def listed(who: str) -> set[str]:
        return {i["id"] for i in client.get("/api/v1/leads", headers=tenant.people[who].headers).json()["items"]}

    assert listed("rep_a") == {leads["rep_a"]}
    assert listed("manager_a") == {leads["rep_a"], leads["rep_a1"], leads["rep_a2"]}
    assert listed("manager_b") == {leads["rep_b"]}
    assert listed("admin") == set(leads.values())


@pytest.mark.parametrize(
    ("assigner", "owner", "status"),
    [
        ("rep_a", "rep_a", 201),
        ("rep_a", "rep_a2", 403),
        ("manager_a", "rep_a1", 201),  # a sub-team is in the subtree
        ("manager_a", "rep_b", 403),
        ("manager_b", "rep_a", 403),
        ("admin", "rep_b", 201),
    ],
)
def test_who_may_assign_a_lead_to_whom(
    client: TestClient[Any], tenant: Tenant, assigner: str, owner: str, status: int
) -> None:
    body = {"title": "assigned", "owner_id": str(tenant.people[owner].id)}
    response = client.post("/api/v1/leads", json=body, headers=tenant.people[assigner].headers)
    assert response.status_code == status, response.text
    if status == 403:
        assert response.json()["field"] == "owner_id"


def test_reassigning_moves_the_lead_out_of_the_old_owners_scope(client: TestClient[Any], tenant: Tenant) -> None:
    lead = create_lead(client, tenant.rep_a)
    url = f"/api/v1/leads/{lead['id']}"
    moved = client.patch(url, json={"owner_id": str(tenant.rep_a2.id)}, headers=tenant.manager_a.headers)
    assert moved.status_code == 200
    assert client.get(url, headers=tenant.rep_a.headers).status_code == 404
    assert client.get(url, headers=tenant.rep_a2.headers).status_code == 200
    unknown = client.patch(url, json={"owner_id": str(tenant.organization_id)}, headers=tenant.admin.headers)
    assert unknown.status_code == 422
