"""The sync endpoints on the wire: exactly-once push, receipts, field merge,
conflicts, removals and the change feed's pages. (The offline client and the
property-based proofs are in tests/sync.)"""

from __future__ import annotations

import datetime as dt
import itertools
import time
import uuid
from typing import Any

import pytest
from litestar.testing import TestClient

from canvass.ids import new_id
from tests.conftest import Person, Tenant, create_account, create_contact, create_lead, run

_counter = itertools.count()


def hlc(offset_ms: int = 0) -> str:
    return f"{time.time_ns() // 1_000_000 + offset_ms:015d}-{next(_counter) % 99999:05d}-dev"


class RawDevice:
    """The protocol by hand, without the client library."""

    def __init__(self, client: TestClient[Any], who: Person) -> None:
        self.client, self.who = client, who
        self.device_id = f"dev-{uuid.uuid4().hex[:12]}"
        self.seq = 0
        self.cursor = "0"
        response = client.post("/api/v1/sync/devices", json={"device_id": self.device_id}, headers=who.headers)
        assert response.status_code == 201, response.text

    def mutation(
        self, name: str, args: dict[str, Any], base: dict[str, int] | None = None, skew_ms: int = 0
    ) -> dict[str, Any]:
        self.seq += 1
        return {"seq": self.seq, "name": name, "args": args, "hlc": hlc(skew_ms), "base": base or {}}

    def push(self, *mutations: dict[str, Any], expect: int = 200) -> dict[str, Any]:
        response = self.client.post(
            "/api/v1/sync/push",
            json={"device_id": self.device_id, "mutations": list(mutations)},
            headers=self.who.headers,
        )
        assert response.status_code == expect, response.text
        return response.json()

    def pull_all(self, limit: int = 500) -> tuple[dict[tuple[str, str], dict[str, Any]], list[dict[str, Any]]]:
        records: dict[tuple[str, str], dict[str, Any]] = {}
        removals: list[dict[str, Any]] = []
        while True:
            response = self.client.get(
                "/api/v1/sync/pull",
                params={"device_id": self.device_id, "cursor": self.cursor, "limit": limit},
                headers=self.who.headers,
            )
            assert response.status_code == 200, response.text
            page = response.json()
            for change in page["changes"]:
                records[(change["entity"], change["id"])] = change["data"]
            removals.extend(page["removals"])
            self.cursor = page["cursor"]
            if not page["has_more"]:
                return records, removals


def qualified_lead(client: TestClient[Any], who: Person, **fields: Any) -> dict[str, Any]:
    """A lead whose account and contact are known: it may leave prospecting."""
    account = create_account(client, who)
    contact = create_contact(client, who, account["id"])
    return create_lead(client, who, account_id=account["id"], primary_contact_id=contact["id"], **fields)


def count_history(client: TestClient[Any], who: Person, lead_id: str) -> int:
    response = client.get(f"/api/v1/leads/{lead_id}/stage-history", headers=who.headers)
    assert response.status_code == 200, response.text
    return len(response.json())


def test_push_applies_once_and_a_repeat_is_answered_from_receipts(client: TestClient[Any], tenant: Tenant) -> None:
    device = RawDevice(client, tenant.rep_a)
    lead_id, account_id, contact_id = str(new_id()), str(new_id()), str(new_id())
    batch = [
        device.mutation("account.create", {"id": account_id, "name": "Offline account"}),
        device.mutation("contact.create", {"id": contact_id, "account_id": account_id, "name": "Offline contact"}),
        device.mutation(
            "lead.create",
            {
                "id": lead_id,
                "title": "Offline lead",
                "amount": 1000,
                "account_id": account_id,
                "primary_contact_id": contact_id,
            },
        ),
        device.mutation("lead.move_stage", {"id": lead_id, "to_stage": "qualify"}),
        device.mutation("activity.log", {"id": str(new_id()), "kind": "call", "lead_id": lead_id, "notes": "rang"}),
    ]
    first = device.push(*batch)
    assert [r["status"] for r in first["receipts"]] == ["applied"] * 5, first
    assert first["last_applied_seq"] == 5
    again = device.push(*batch)  # the reply was lost; the device retries
    assert again == first
    assert count_history(client, tenant.rep_a, lead_id) == 2  # created + one move, not two
    activities = client.get("/api/v1/activities", params={"lead_id": lead_id}, headers=tenant.rep_a.headers).json()
    assert len(activities["items"]) == 1
    lead = client.get(f"/api/v1/leads/{lead_id}", headers=tenant.rep_a.headers).json()
    assert lead["stage"] == "qualify"
    history = client.get(f"/api/v1/leads/{lead_id}/stage-history", headers=tenant.rep_a.headers).json()
    assert history[-1]["by_device_id"] == device.device_id


def test_a_gap_in_seq_is_refused_and_nothing_is_applied(client: TestClient[Any], tenant: Tenant) -> None:
    device = RawDevice(client, tenant.rep_a)
    lead_id = str(new_id())
    device.push(device.mutation("lead.create", {"id": lead_id, "title": "One"}))
    device.seq += 1  # seq 2 lost on the device side
    skipped = device.mutation("lead.update", {"id": lead_id, "fields": {"title": "Three"}})
    problem = device.push(skipped, expect=409)
    assert problem["type"].endswith("/seq-gap")
    assert problem["expected_seq"] == 2
    lead = client.get(f"/api/v1/leads/{lead_id}", headers=tenant.rep_a.headers).json()
    assert lead["title"] == "One"


def test_out_of_order_mutations_in_one_push_are_refused_whole(client: TestClient[Any], tenant: Tenant) -> None:
    device = RawDevice(client, tenant.rep_a)
    a = device.mutation("lead.create", {"id": str(new_id()), "title": "A"})
    b = device.mutation("lead.create", {"id": str(new_id()), "title": "B"})
    problem = device.push(b, a, expect=422)
    assert problem["field"] == "mutations[1].seq"
    assert client.get("/api/v1/leads", headers=tenant.rep_a.headers).json()["items"] == []


def test_devices_belong_to_their_user(client: TestClient[Any], tenant: Tenant) -> None:
    device = RawDevice(client, tenant.rep_a)
    stolen = client.post(
        "/api/v1/sync/push",
        json={"device_id": device.device_id, "mutations": []},
        headers=tenant.rep_b.headers,
    )
    assert stolen.status_code == 403
    again = client.post("/api/v1/sync/devices", json={"device_id": device.device_id}, headers=tenant.rep_b.headers)
    assert again.status_code == 403
    unknown = client.get("/api/v1/sync/pull", params={"device_id": "never-registered"}, headers=tenant.rep_a.headers)
    assert unknown.status_code == 404
    same = client.post("/api/v1/sync/devices", json={"device_id": device.device_id}, headers=tenant.rep_a.headers)
    assert same.status_code == 200


def test_bad_mutations_are_rejected_with_the_rule_and_the_rest_still_applies(
    client: TestClient[Any], tenant: Tenant
) -> None:
    device = RawDevice(client, tenant.rep_a)
    ready = qualified_lead(client, tenant.rep_a)
    lead_id = str(new_id())
    result = device.push(
        device.mutation(
            "lead.create",
            {
                "id": lead_id,
                "title": "Gatekept",
                "account_id": ready["account_id"],
                "primary_contact_id": ready["primary_contact_id"],
            },
        ),
        # qualify -> approach needs scores: the gate refuses, naming itself
        device.mutation("lead.move_stage", {"id": lead_id, "to_stage": "qualify"}),
        device.mutation("lead.move_stage", {"id": lead_id, "to_stage": "approach"}),
        device.mutation("lead.update", {"id": lead_id, "fields": {"amount": "lots"}}),
        device.mutation("lead.update", {"id": lead_id, "fields": {"colour": "red"}}),
        device.mutation("lead.create", {"title": "no id"}),
        device.mutation("lead.update", {"id": lead_id, "fields": {"next_step": "Call"}}),
    )
    statuses = [r["status"] for r in result["receipts"]]
    assert statuses == ["applied", "applied", "rejected", "rejected", "rejected", "rejected", "applied"]
    gate = result["receipts"][2]
    assert gate["rule"].startswith("gate.")
    assert "amount" in result["receipts"][3]["message"]
    assert "colour" in result["receipts"][4]["message"]
    lead = client.get(f"/api/v1/leads/{lead_id}", headers=tenant.rep_a.headers).json()
    assert (lead["stage"], lead["next_step"], lead["amount"]) == ("qualify", "Call", None)


def test_unknown_mutation_names_and_oversized_batches_are_refused(client: TestClient[Any], tenant: Tenant) -> None:
    device = RawDevice(client, tenant.rep_a)
    bad = device.mutation("lead.teleport", {"id": str(new_id())})
    problem = device.push(bad, expect=422)
    assert "name" in problem["detail"]
    device.seq = 0
    many = [device.mutation("lead.create", {"id": str(new_id()), "title": f"L{i}"}) for i in range(1001)]
    problem = device.push(*many, expect=413)
    assert problem["type"].endswith("/batch-too-large")
    assert client.get("/api/v1/leads", headers=tenant.rep_a.headers).json()["items"] == []


def _device_with_lead(client: TestClient[Any], who: Person, **fields: Any) -> tuple[RawDevice, str, int]:
    device = RawDevice(client, who)
    lead = qualified_lead(client, who, **fields)
    records, _ = device.pull_all()
    assert records[("lead", lead["id"])]["version"] == lead["version"]
    return device, lead["id"], lead["version"]


def test_different_fields_edited_on_both_sides_both_survive(client: TestClient[Any], tenant: Tenant) -> None:
    device, lead_id, base = _device_with_lead(client, tenant.rep_a)
    online = client.patch(f"/api/v1/leads/{lead_id}", json={"next_step": "Online"}, headers=tenant.manager_a.headers)
    assert online.status_code == 200
    result = device.push(
        device.mutation("lead.update", {"id": lead_id, "fields": {"title": "Offline title"}}, {f"lead:{lead_id}": base})
    )
    assert result["receipts"][0]["status"] == "applied"
    lead = client.get(f"/api/v1/leads/{lead_id}", headers=tenant.rep_a.headers).json()
    assert (lead["title"], lead["next_step"]) == ("Offline title", "Online")


def test_free_text_goes_to_the_later_edit_and_the_loser_is_kept(client: TestClient[Any], tenant: Tenant) -> None:
    device, lead_id, base = _device_with_lead(client, tenant.rep_a)
    # The device edited hours ago (its clock says so), the manager just now.
    early = device.mutation(
        "lead.update", {"id": lead_id, "fields": {"next_step": "Device"}}, {f"lead:{lead_id}": base}, skew_ms=-3_600_000
    )
    client.patch(f"/api/v1/leads/{lead_id}", json={"next_step": "Manager"}, headers=tenant.manager_a.headers)
    result = device.push(early)
    receipt = result["receipts"][0]
    assert (receipt["status"], receipt["fields"]) == ("merged", ["next_step"])
    lead = client.get(f"/api/v1/leads/{lead_id}", headers=tenant.rep_a.headers).json()
    assert lead["next_step"] == "Manager"
    log = client.get("/api/v1/conflicts", headers=tenant.rep_a.headers).json()["items"]
    assert [(c["field"], c["status"], c["winner"], c["device_value"]) for c in log] == [
        ("next_step", "auto_resolved", "server", "Device")
    ]
    # A device edit stamped after the server's edit (hybrid-clock order, not the
    # wall clock: the server's clock has moved past every device time it saw)
    # wins over it.
    server_wall = int(log[0]["server_hlc"].split("-")[0])
    late = device.mutation(
        "lead.update", {"id": lead_id, "fields": {"next_step": "Device later"}}, {f"lead:{lead_id}": base}
    )
    late["hlc"] = f"{server_wall + 1:015d}-00000-dev"
    assert device.push(late)["receipts"][0]["status"] == "merged"
    lead = client.get(f"/api/v1/leads/{lead_id}", headers=tenant.rep_a.headers).json()
    assert lead["next_step"] == "Device later"


def test_money_keeps_the_server_value_until_a_person_decides(client: TestClient[Any], tenant: Tenant) -> None:
    device, lead_id, base = _device_with_lead(client, tenant.rep_a, amount=1000)
    client.patch(f"/api/v1/leads/{lead_id}", json={"amount": 2000}, headers=tenant.manager_a.headers)
    result = device.push(
        device.mutation(
            "lead.update", {"id": lead_id, "fields": {"amount": 1500, "title": "Renamed"}}, {f"lead:{lead_id}": base}
        )
    )
    receipt = result["receipts"][0]
    assert receipt["status"] == "conflict" and receipt["fields"] == ["amount"]
    lead = client.get(f"/api/v1/leads/{lead_id}", headers=tenant.rep_a.headers).json()
    assert (lead["amount"], lead["title"]) == (2000, "Renamed")
    conflict_url = f"/api/v1/conflicts/{receipt['conflict_id']}"
    conflict = client.get(conflict_url, headers=tenant.manager_a.headers).json()
    assert (conflict["server_value"], conflict["device_value"], conflict["status"]) == (2000, 1500, "open")
    # Another team's manager cannot see it.
    assert client.get(conflict_url, headers=tenant.manager_b.headers).status_code == 404
    resolved = client.post(f"{conflict_url}/resolve", json={"choice": "take_device"}, headers=tenant.manager_a.headers)
    assert resolved.status_code == 200, resolved.text
    assert resolved.json()["status"] == "resolved"
    again = client.post(f"{conflict_url}/resolve", json={"choice": "keep_server"}, headers=tenant.manager_a.headers)
    assert again.status_code == 409
    # The resolution flows to the device like any other change.
    records, _ = device.pull_all()
    assert records[("lead", lead_id)]["amount"] == 1500
    assert records[("conflict", receipt["conflict_id"])]["status"] == "resolved"


def test_new_value_resolution_is_validated(client: TestClient[Any], tenant: Tenant) -> None:
    device, lead_id, base = _device_with_lead(client, tenant.rep_a, amount=10)
    client.patch(f"/api/v1/leads/{lead_id}", json={"amount": 20}, headers=tenant.rep_a.headers)
    receipt = device.push(
        device.mutation("lead.update", {"id": lead_id, "fields": {"amount": 30}}, {f"lead:{lead_id}": base})
    )["receipts"][0]
    url = f"/api/v1/conflicts/{receipt['conflict_id']}/resolve"
    bad = client.post(url, json={"choice": "new_value", "value": -5}, headers=tenant.rep_a.headers)
    assert bad.status_code == 422 and bad.json()["field"] == "value"
    good = client.post(url, json={"choice": "new_value", "value": 25}, headers=tenant.rep_a.headers)
    assert good.status_code == 200
    assert client.get(f"/api/v1/leads/{lead_id}", headers=tenant.rep_a.headers).json()["amount"] == 25


def test_edit_versus_delete_is_a_conflict_not_a_loss(client: TestClient[Any], tenant: Tenant) -> None:
    device, lead_id, base = _device_with_lead(client, tenant.rep_a)
    assert client.delete(f"/api/v1/leads/{lead_id}", headers=tenant.manager_a.headers).status_code == 204
    receipt = device.push(
        device.mutation("lead.update", {"id": lead_id, "fields": {"next_step": "Visit"}}, {f"lead:{lead_id}": base})
    )["receipts"][0]
    assert receipt["status"] == "conflict"
    conflict = client.get(f"/api/v1/conflicts/{receipt['conflict_id']}", headers=tenant.rep_a.headers).json()
    assert conflict["policy"] == "edit_vs_delete" and conflict["device_value"] == {"next_step": "Visit"}
    _, removals = device.pull_all()
    assert {"entity": "lead", "id": lead_id, "reason": "deleted"}.items() <= removals[0].items()
    # Taking the device's side brings the lead back with the edit.
    client.post(
        f"/api/v1/conflicts/{receipt['conflict_id']}/resolve",
        json={"choice": "take_device"},
        headers=tenant.rep_a.headers,
    )
    lead = client.get(f"/api/v1/leads/{lead_id}", headers=tenant.rep_a.headers).json()
    assert lead["next_step"] == "Visit"


def test_delete_of_a_record_edited_meanwhile_is_a_conflict(client: TestClient[Any], tenant: Tenant) -> None:
    device, lead_id, base = _device_with_lead(client, tenant.rep_a)
    client.patch(f"/api/v1/leads/{lead_id}", json={"next_step": "Keep me"}, headers=tenant.manager_a.headers)
    receipt = device.push(device.mutation("lead.delete", {"id": lead_id}, {f"lead:{lead_id}": base}))["receipts"][0]
    assert receipt["status"] == "conflict" and receipt["fields"] == ["next_step"]
    assert client.get(f"/api/v1/leads/{lead_id}", headers=tenant.rep_a.headers).status_code == 200


def test_a_move_is_judged_against_the_current_state(client: TestClient[Any], tenant: Tenant) -> None:
    device, lead_id, _ = _device_with_lead(client, tenant.rep_a)
    client.post(f"/api/v1/leads/{lead_id}/stage-moves", json={"to_stage": "qualify"}, headers=tenant.manager_a.headers)
    receipt = device.push(device.mutation("lead.move_stage", {"id": lead_id, "to_stage": "qualify"}))["receipts"][0]
    assert (receipt["status"], receipt["fields"]) == ("merged", ["stage"])
    assert count_history(client, tenant.rep_a, lead_id) == 2


def test_a_reassigned_lead_leaves_the_old_reps_devices_and_reaches_the_new_ones(
    client: TestClient[Any], tenant: Tenant
) -> None:
    old = RawDevice(client, tenant.rep_a)
    new = RawDevice(client, tenant.rep_a2)
    lead = qualified_lead(client, tenant.rep_a)
    client.post(f"/api/v1/leads/{lead['id']}/stage-moves", json={"to_stage": "qualify"}, headers=tenant.rep_a.headers)
    old.pull_all()
    before, _ = new.pull_all()
    assert ("lead", lead["id"]) not in before
    moved = client.patch(
        f"/api/v1/leads/{lead['id']}", json={"owner_id": str(tenant.rep_a2.id)}, headers=tenant.manager_a.headers
    )
    assert moved.status_code == 200, moved.text
    _, removals = old.pull_all()
    assert [(r["entity"], r["id"], r["reason"]) for r in removals] == [("lead", lead["id"], "out_of_scope")]
    after, _ = new.pull_all()
    assert ("lead", lead["id"]) in after
    history = [r for (entity, _), r in after.items() if entity == "stage_change" and r["lead_id"] == lead["id"]]
    assert len(history) == 2  # its history came along


def test_pull_pages_cover_every_change_exactly_once(client: TestClient[Any], tenant: Tenant) -> None:
    device = RawDevice(client, tenant.rep_a)
    ids = [str(new_id()) for _ in range(23)]
    # One push publishes all of them under a single server version: pages must split inside it.
    device.push(*[device.mutation("lead.create", {"id": i, "title": f"Lead {n}"}) for n, i in enumerate(ids)])
    seen: list[tuple[str, str]] = []
    versions: set[int] = set()
    cursor = "0"
    while True:
        page = client.get(
            "/api/v1/sync/pull",
            params={"device_id": device.device_id, "cursor": cursor, "limit": 5},
            headers=tenant.rep_a.headers,
        ).json()
        assert len(page["changes"]) <= 5
        seen.extend((c["entity"], c["id"]) for c in page["changes"])
        versions.update(c["server_version"] for c in page["changes"])
        cursor = page["cursor"]
        if not page["has_more"]:
            break
    assert len(seen) == len(set(seen)) == 46  # 23 leads + their 23 "created" history rows
    assert {i for e, i in seen if e == "lead"} == set(ids)
    assert len(versions) == 1  # one push, one transaction, one version
    quiet = client.get(
        "/api/v1/sync/pull", params={"device_id": device.device_id, "cursor": cursor}, headers=tenant.rep_a.headers
    ).json()
    assert quiet["changes"] == [] and quiet["has_more"] is False and quiet["cursor"] == cursor
    assert quiet["last_applied_seq"] == 23


def test_pull_respects_scope(client: TestClient[Any], tenant: Tenant, other_tenant: Tenant) -> None:
    mine = create_lead(client, tenant.rep_a)
    theirs = create_lead(client, tenant.rep_b)
    foreign = create_lead(client, other_tenant.rep_a)
    rep, _ = RawDevice(client, tenant.rep_a).pull_all()
    manager, _ = RawDevice(client, tenant.manager_a).pull_all()
    admin, _ = RawDevice(client, tenant.admin).pull_all()
    leads = {
        who: {i for e, i in records if e == "lead"} for who, records in (("rep", rep), ("mgr", manager), ("adm", admin))
    }
    assert leads["rep"] == leads["mgr"] == {mine["id"]}
    assert leads["adm"] == {mine["id"], theirs["id"]}
    assert foreign["id"] not in leads["adm"]


@pytest.mark.parametrize("cursor", ["abc", "-1", "5.9.00000000-0000-0000-0000-000000000000", "1.2.nope"])
def test_a_cursor_we_never_issued_is_a_clear_error(client: TestClient[Any], tenant: Tenant, cursor: str) -> None:
    device = RawDevice(client, tenant.rep_a)
    response = client.get(
        "/api/v1/sync/pull", params={"device_id": device.device_id, "cursor": cursor}, headers=tenant.rep_a.headers
    )
    assert response.status_code in (400, 422), response.text
    assert "cursor" in response.text


def test_managers_see_how_fresh_each_device_is(client: TestClient[Any], tenant: Tenant) -> None:
    device = RawDevice(client, tenant.rep_a)
    response = client.post(
        "/api/v1/sync/push",
        json={"device_id": device.device_id, "mutations": [], "oldest_pending_age_s": 5400},
        headers=tenant.rep_a.headers,
    )
    assert response.status_code == 200
    RawDevice(client, tenant.rep_b)
    seen = client.get("/api/v1/sync/devices", headers=tenant.manager_a.headers).json()
    assert [(d["device_id"], d["oldest_pending_age_s"]) for d in seen] == [(device.device_id, 5400)]
    assert seen[0]["last_push_at"] is not None
    assert len(client.get("/api/v1/sync/devices", headers=tenant.admin.headers).json()) == 2


async def _silence(sessionmaker: Any, organization_id: uuid.UUID, device_id: str, hours: int) -> None:
    """Make a device look as if it last synced `hours` ago."""
    from sqlalchemy import update

    from canvass.sync.models import Device

    past = dt.datetime.now(dt.UTC) - dt.timedelta(hours=hours)
    async with sessionmaker() as session, session.begin():
        await session.execute(
            update(Device)
            .where(Device.organization_id == organization_id, Device.device_id == device_id)
            .values(registered_at=past, last_push_at=past, last_pull_at=past)
        )


def test_the_forecast_says_whose_devices_have_been_silent(client: TestClient[Any], tenant: Tenant) -> None:
    close = (dt.date.today() + dt.timedelta(days=1)).isoformat()
    create_lead(client, tenant.rep_a, amount=3000, expected_close_date=close)
    create_lead(client, tenant.rep_a2, amount=1000, expected_close_date=close)
    body = client.get("/api/v1/forecasts", headers=tenant.manager_a.headers).json()
    assert body["silent_device_share"] is None  # nobody syncs from a device yet
    silent, fresh = RawDevice(client, tenant.rep_a), RawDevice(client, tenant.rep_a2)
    fresh.pull_all()
    run(client, _silence, client.app.state.sessionmaker, tenant.organization_id, silent.device_id, 100)
    body = client.get("/api/v1/forecasts", params={"freshness_hours": 72}, headers=tenant.manager_a.headers).json()
    assert body["silent_reps"] == [str(tenant.rep_a.id)]
    assert body["silent_device_share"] == pytest.approx(0.75)
    assert "75%" in body["freshness"]
    wide = client.get("/api/v1/forecasts", params={"freshness_hours": 200}, headers=tenant.manager_a.headers).json()
    assert wide["silent_reps"] == [] and wide["silent_device_share"] == 0


def test_a_device_clock_days_ahead_is_applied_but_not_trusted(client: TestClient[Any], tenant: Tenant) -> None:
    device, lead_id, base = _device_with_lead(client, tenant.rep_a)
    two_days = 2 * 24 * 3_600_000
    fast = device.mutation(
        "lead.update", {"id": lead_id, "fields": {"next_step": "From the future"}}, {f"lead:{lead_id}": base}, two_days
    )
    assert device.push(fast)["receipts"][0]["status"] == "applied"
    # Its timestamp was replaced by the server's, so a later online edit and a
    # later device edit still order correctly against it.
    client.patch(f"/api/v1/leads/{lead_id}", json={"next_step": "Online, later"}, headers=tenant.manager_a.headers)
    stale = device.mutation(
        "lead.update", {"id": lead_id, "fields": {"next_step": "Again"}}, {f"lead:{lead_id}": base}, two_days
    )
    assert device.push(stale)["receipts"][0]["status"] == "merged"
    lead = client.get(f"/api/v1/leads/{lead_id}", headers=tenant.rep_a.headers).json()
    assert lead["next_step"] == "Again"  # a device edit pushed after the online one is the later


def test_a_move_dated_before_the_stage_began_is_dated_at_its_start(client: TestClient[Any], tenant: Tenant) -> None:
    device, lead_id, _ = _device_with_lead(client, tenant.rep_a)
    slow_clock = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=5)).isoformat()
    receipt = device.push(device.mutation("lead.move_stage", {"id": lead_id, "to_stage": "qualify", "at": slow_clock}))
    assert receipt["receipts"][0]["status"] == "applied"
    history = client.get(f"/api/v1/leads/{lead_id}/stage-history", headers=tenant.rep_a.headers).json()
    move = history[-1]
    assert move["at"] == move["from_stage_entered_at"]  # zero days in prospecting, not minus five hours
