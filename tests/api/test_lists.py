"""List endpoints: keyset pages walk every record exactly once, in every sort
order, and filters select exactly what they say."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from litestar.testing import TestClient

from tests.conftest import Person, Tenant, create_account, create_lead


def _walk(client: TestClient[Any], who: Person, **params: Any) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = None
    for _ in range(100):
        page = client.get(
            "/api/v1/leads", params={**params, **({"cursor": cursor} if cursor else {})}, headers=who.headers
        )
        assert page.status_code == 200, page.text
        body = page.json()
        items += body["items"]
        cursor = body["next_cursor"]
        if cursor is None:
            return items
    raise AssertionError("pagination did not end")


@pytest.mark.parametrize("sort", ["created_at", "-created_at", "updated_at", "-updated_at", "title", "-title"])
def test_pages_cover_every_lead_once_in_order(client: TestClient[Any], tenant: Tenant, sort: str) -> None:
    rep = tenant.rep_a
    # Repeated titles make ties that only the id breaks.
    made = {create_lead(client, rep, title=f"Deal {i % 7}")["id"] for i in range(23)}
    walked = _walk(client, rep, limit=5, sort=sort)
    ids = [lead["id"] for lead in walked]
    assert len(ids) == len(set(ids)) == 23 and set(ids) == made
    key = sort.lstrip("-")
    values = [(lead[key], lead["id"]) for lead in walked]
    assert values == sorted(values, reverse=sort.startswith("-"))


def test_filters(client: TestClient[Any], tenant: Tenant) -> None:
    rep, manager = tenant.rep_a, tenant.manager_a
    acme = create_account(client, rep, name="Acme Tooling")
    create_account(client, rep, name="Globex")
    on_acme = create_lead(client, rep, title="Lathe upgrade", account_id=acme["id"])
    plain = create_lead(client, rep, title="Forklift lease")
    other = create_lead(client, tenant.rep_a2, title="Forklift service")
    lost = create_lead(client, rep, title="Old deal")
    client.post(
        f"/api/v1/leads/{lost['id']}/outcome", json={"outcome": "lost", "loss_reason": "gone"}, headers=rep.headers
    )

    def ids(**params: Any) -> set[str]:
        return {lead["id"] for lead in _walk(client, manager, **params)}

    assert ids(owner_id=str(tenant.rep_a2.id)) == {other["id"]}
    assert ids(account_id=acme["id"]) == {on_acme["id"]}
    assert ids(q="forklift") == {plain["id"], other["id"]}
    assert ids(q="ACME") == {on_acme["id"]}  # the account's name matches too
    assert ids(q="100%_") == set()  # LIKE wildcards are literal
    literal = create_lead(client, rep, title="Promo 100%_off a/b")
    near_miss = create_lead(client, rep, title="Promo 1000xoff ab")
    assert ids(q="100%_") == {literal["id"]}
    assert ids(q="a/b") == {literal["id"]}  # and so is the escape character
    # Several filters at once, one lead a page.
    assert ids(q="PROMO", owner_id=str(rep.id), status="open", limit=1) == {literal["id"], near_miss["id"]}
    for lead in (literal, near_miss):
        assert client.delete(f"/api/v1/leads/{lead['id']}", headers=rep.headers).status_code == 204
    assert ids(status="lost") == {lost["id"]}
    assert ids(stage="close") == {lost["id"]}
    assert ids(status="open") == {on_acme["id"], plain["id"], other["id"]}
    future = (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).isoformat()
    assert ids(updated_since=future) == set()
    # Without filters: every lead in scope, open and closed.
    assert ids() == {on_acme["id"], plain["id"], other["id"], lost["id"]}


def test_a_cursor_from_another_list_is_refused(client: TestClient[Any], tenant: Tenant) -> None:
    for i in range(3):
        create_lead(client, tenant.rep_a, title=f"t{i}")
    cursor = client.get("/api/v1/leads", params={"limit": 1, "sort": "title"}, headers=tenant.rep_a.headers).json()[
        "next_cursor"
    ]
    wrong = client.get(
        "/api/v1/leads", params={"limit": 1, "sort": "created_at", "cursor": cursor}, headers=tenant.rep_a.headers
    )
    assert wrong.status_code == 422 and wrong.json()["field"] == "cursor"


def test_probability_follows_the_organizations_stage_probabilities(client: TestClient[Any], tenant: Tenant) -> None:
    """A lead's probability comes from its stage in the tenant's configuration,
    in a single read and in a page, before and after the admin changes it."""
    lead = create_lead(client, tenant.rep_a, title="Probability check")
    settings = client.get("/api/v1/organization/pipeline-settings", headers=tenant.admin.headers).json()

    def shown() -> tuple[float, float]:
        one = client.get(f"/api/v1/leads/{lead['id']}", headers=tenant.rep_a.headers).json()["probability"]
        page = _walk(client, tenant.rep_a)
        return one, next(item["probability"] for item in page if item["id"] == lead["id"])

    before = settings["stage_probabilities"]["prospecting"]
    assert shown() == (before, before)
    changed = {**settings, "stage_probabilities": {**settings["stage_probabilities"], "prospecting": 0.37}}
    reply = client.put("/api/v1/organization/pipeline-settings", json=changed, headers=tenant.admin.headers)
    assert reply.status_code == 200, reply.text
    assert shown() == (0.37, 0.37)
