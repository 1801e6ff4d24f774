"""Bad input to push and pull: malformed mutations, unknown names, arguments that
fail validation, seq gaps, someone else's device, oversized batches — each
answered by a clear 4xx problem document or a rejected receipt, and nothing
partially applied."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from litestar.testing import TestClient

from canvass.clients.ids import uuid7
from canvass.sync.wire import MAX_MUTATIONS_PER_PUSH
from tests.conftest import Person, Tenant, create_lead
from tests.sync.conftest import rest

HLC = "001764000000000-00000-dev"


def _mutation(seq: int, name: str = "lead.create", **args: Any) -> dict[str, Any]:
    if name == "lead.create" and not args:
        args = {"id": str(uuid7()), "title": f"Lead {seq}"}
    return {"seq": seq, "name": name, "args": args, "hlc": HLC, "base": {}}


def _push(client: TestClient[Any], who: Person, device_id: str, mutations: list[Any], **extra: Any) -> Any:
    return client.post(
        "/api/v1/sync/push", json={"device_id": device_id, "mutations": mutations, **extra}, headers=who.headers
    )


def _problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == status and body["type"] and body["detail"]
    return dict(body)


def _state(client: TestClient[Any], who: Person, device_id: str) -> tuple[list[str], int]:
    """The rep's leads and the device's last applied seq: must not move on a refused push."""
    leads = sorted(lead["id"] for lead in rest(client, who, "GET", "/api/v1/leads", params={"limit": 200})["items"])
    pulled = rest(client, who, "GET", "/api/v1/sync/pull", params={"device_id": device_id, "cursor": "0"})
    return leads, int(pulled["last_applied_seq"])


@pytest.fixture
def device_id(client: TestClient[Any], tenant: Tenant) -> str:
    made = str(uuid7())
    rest(client, tenant.rep_a, "POST", "/api/v1/sync/devices", json={"device_id": made, "name": "test phone"})
    return made


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param({"seq": 1, "name": "lead.teleport", "args": {}, "hlc": HLC}, id="unknown-name"),
        pytest.param({"seq": 0, "name": "lead.create", "args": {}, "hlc": HLC}, id="seq-zero"),
        pytest.param({"seq": 1, "name": "lead.create", "args": {}}, id="no-hlc"),
        pytest.param({"seq": 1, "name": "lead.create", "args": {}, "hlc": "yesterday"}, id="bad-hlc"),
        pytest.param({"seq": 1, "name": "lead.create", "args": [], "hlc": HLC}, id="args-not-object"),
        pytest.param({"seq": 1, "name": "lead.create", "args": {}, "hlc": HLC, "extra": 1}, id="unknown-member"),
        pytest.param({"seq": 1, "name": "lead.create", "args": {}, "hlc": HLC, "base": {"lead:x": 1}}, id="bad-base"),
        pytest.param("lead.create", id="not-an-object"),
    ],
)
def test_malformed_mutation_refuses_the_whole_push(
    client: TestClient[Any], tenant: Tenant, device_id: str, bad: Any
) -> None:
    before = _state(client, tenant.rep_a, device_id)
    # a good mutation first: it must not be applied either
    if isinstance(bad, dict) and bad.get("seq") == 0:
        mutations = [bad]
    else:
        mutations = [_mutation(1), {**bad, "seq": 2} if isinstance(bad, dict) else bad]
    response = _push(client, tenant.rep_a, device_id, mutations)
    body = _problem(response, 422)
    assert "mutations" in response.text or body.get("errors")
    assert _state(client, tenant.rep_a, device_id) == before


def test_malformed_envelope(client: TestClient[Any], tenant: Tenant, device_id: str) -> None:
    for body in ({}, {"device_id": device_id}, {"mutations": []}, {"device_id": "bad id!", "mutations": []}):
        _problem(client.post("/api/v1/sync/push", json=body, headers=tenant.rep_a.headers), 422)
    response = client.post(
        "/api/v1/sync/push", content=b"{not json", headers={**tenant.rep_a.headers, "content-type": "application/json"}
    )
    assert response.status_code in (400, 422), response.text


def test_args_failing_validation_are_rejected_one_by_one(
    client: TestClient[Any], tenant: Tenant, device_id: str
) -> None:
    lead = create_lead(client, tenant.rep_a)
    good_first, good_last = str(uuid7()), str(uuid7())
    mutations = [
        _mutation(1, id=good_first, title="Good one"),
        _mutation(2, "lead.create", id=str(uuid7()), title=""),  # empty title
        _mutation(3, "lead.create", id=str(uuid7()), title="Negative", amount=-5),
        _mutation(4, "lead.create", id=str(uuid7()), title="Unknown field", colour="red"),
        _mutation(5, "lead.update", id=lead["id"], fields={"stage": "close"}),  # stage is not a field
        _mutation(6, "lead.update", id=str(uuid.uuid4()), fields={"title": "Nobody"}),  # no such lead
        _mutation(7, "lead.move_stage", id=lead["id"], to_stage="close"),  # skips stages
        _mutation(8, "lead.record_outcome", id=lead["id"], outcome="won"),  # not in close, no amount
        _mutation(9, "activity.log", id=str(uuid7()), kind="visit"),  # neither lead nor account
        _mutation(10, "objection.add", lead_id=lead["id"], id=str(uuid7()), type="price"),  # no statement
        _mutation(11, "lead.create", title="No id"),  # a device makes its ids
        _mutation(12, "lead.update", fields={"title": "No id"}),
        _mutation(13, id=good_last, title="Good too"),
    ]
    response = _push(client, tenant.rep_a, device_id, mutations)
    assert response.status_code == 200, response.text
    body = response.json()
    statuses = {r["seq"]: r["status"] for r in body["receipts"]}
    assert statuses == {**{n: "rejected" for n in range(2, 13)}, 1: "applied", 13: "applied"}, body
    assert body["last_applied_seq"] == 13  # rejected seqs are consumed, the outbox is not blocked
    for receipt in body["receipts"]:
        if receipt["status"] == "rejected":
            assert receipt.get("rule") and receipt.get("message"), receipt
    rules = {r["seq"]: r["rule"] for r in body["receipts"] if r["status"] == "rejected"}
    assert rules[7] == "stage.order"
    # nothing of a rejected mutation was applied
    leads = {x["id"]: x for x in rest(client, tenant.rep_a, "GET", "/api/v1/leads", params={"limit": 200})["items"]}
    assert set(leads) == {lead["id"], good_first, good_last}
    assert leads[lead["id"]]["stage"] == "prospecting" and leads[lead["id"]]["status"] == "open"
    assert leads[lead["id"]]["version"] == lead["version"]
    assert rest(client, tenant.rep_a, "GET", f"/api/v1/leads/{lead['id']}/objections") == []
    # the push repeated: same receipts, nothing applied again
    again = _push(client, tenant.rep_a, device_id, mutations)
    assert again.status_code == 200 and again.json()["receipts"] == body["receipts"]


def test_seq_gap_and_order(client: TestClient[Any], tenant: Tenant, device_id: str) -> None:
    before = _state(client, tenant.rep_a, device_id)
    body = _problem(_push(client, tenant.rep_a, device_id, [_mutation(3), _mutation(4)]), 409)
    assert body["type"].endswith("seq-gap") and body["expected_seq"] == 1
    body = _problem(_push(client, tenant.rep_a, device_id, [_mutation(1), _mutation(3)]), 422)  # hole inside
    assert "seq" in body["detail"] or "seq" in str(body.get("errors")) or "seq" in str(body.get("field"))
    _problem(_push(client, tenant.rep_a, device_id, [_mutation(2), _mutation(1)]), 422)  # backwards
    _problem(_push(client, tenant.rep_a, device_id, [_mutation(1), _mutation(1)]), 422)  # repeated
    assert _state(client, tenant.rep_a, device_id) == before
    ok = _push(client, tenant.rep_a, device_id, [_mutation(1), _mutation(2)])
    assert ok.status_code == 200 and ok.json()["last_applied_seq"] == 2
    body = _problem(_push(client, tenant.rep_a, device_id, [_mutation(5)]), 409)
    assert body["expected_seq"] == 3
    # already-applied seqs followed by the next new one: fine
    ok = _push(client, tenant.rep_a, device_id, [_mutation(2), _mutation(3)])
    assert ok.status_code == 200, ok.text
    assert [r["seq"] for r in ok.json()["receipts"]] == [2, 3]


def test_device_of_another_user(client: TestClient[Any], tenant: Tenant, device_id: str) -> None:
    body = _problem(_push(client, tenant.rep_b, device_id, [_mutation(1)]), 403)
    assert body["detail"]
    _problem(
        client.get("/api/v1/sync/pull", params={"device_id": device_id, "cursor": "0"}, headers=tenant.rep_b.headers),
        403,
    )
    _problem(
        client.post("/api/v1/sync/devices", json={"device_id": device_id}, headers=tenant.rep_b.headers),
        403,
    )
    # even the rep's own manager cannot push as the rep's device
    _problem(_push(client, tenant.manager_a, device_id, [_mutation(1)]), 403)
    # unregistered
    _problem(_push(client, tenant.rep_a, str(uuid7()), [_mutation(1)]), 404)
    assert _state(client, tenant.rep_a, device_id) == ([], 0)


def test_device_of_another_tenant(
    client: TestClient[Any], tenant: Tenant, other_tenant: Tenant, device_id: str
) -> None:
    response = _push(client, other_tenant.rep_a, device_id, [_mutation(1)])
    assert response.status_code in (403, 404), response.text
    assert _state(client, tenant.rep_a, device_id) == ([], 0)


def test_oversized_batch(client: TestClient[Any], tenant: Tenant, device_id: str) -> None:
    mutations = [
        {"seq": n, "name": "lead.create", "args": {"title": "x"}, "hlc": HLC}
        for n in range(1, MAX_MUTATIONS_PER_PUSH + 2)
    ]
    response = _push(client, tenant.rep_a, device_id, mutations)
    body = _problem(response, 413)
    assert body["detail"]
    assert _state(client, tenant.rep_a, device_id) == ([], 0)


def test_bad_pull_parameters(client: TestClient[Any], tenant: Tenant, device_id: str) -> None:
    headers = tenant.rep_a.headers
    for params in (
        {"device_id": device_id, "cursor": "not-a-cursor"},
        {"device_id": device_id, "cursor": "-1"},
        {"device_id": device_id, "cursor": "0", "limit": "0"},
        {"device_id": device_id, "cursor": "0", "limit": "1000000"},
        {"cursor": "0"},
    ):
        response = client.get("/api/v1/sync/pull", params=params, headers=headers)
        assert 400 <= response.status_code < 500, (params, response.text)
    assert client.get("/api/v1/sync/pull", params={"device_id": device_id, "cursor": "0"}).status_code == 401


def test_devices_registration_input(client: TestClient[Any], tenant: Tenant) -> None:
    headers = tenant.rep_a.headers
    for body in (
        {},
        {"device_id": ""},
        {"device_id": "has space"},
        {"device_id": "x" * 101},
        {"device_id": "a", "x": 1},
    ):
        _problem(client.post("/api/v1/sync/devices", json=body, headers=headers), 422)


def test_oversized_body(client: TestClient[Any], tenant: Tenant, device_id: str) -> None:
    """More than 5 MiB in one push: 413 even with fewer than 1,000 mutations."""
    note = "x" * 19_000
    mutations = [_mutation(n, id=str(uuid7()), title=f"Lead {n}", next_step=note) for n in range(1, 300)]
    body = _problem(_push(client, tenant.rep_a, device_id, mutations), 413)
    assert body["detail"]
    assert _state(client, tenant.rep_a, device_id) == ([], 0)
