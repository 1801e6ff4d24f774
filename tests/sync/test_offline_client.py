"""The reference offline client against the real app (SQLite and PostgreSQL):
registration, offline edits, push/pull/rebase, lost replies, seq gaps, merges,
conflicts, rejections, removals, retries."""

from __future__ import annotations

import ast
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar.testing import TestClient

from canvass.clients.http import ProblemError, SeqGap
from canvass.clients.offline import OfflineClient
from tests.conftest import Tenant, create_account, create_contact, create_lead
from tests.sync.conftest import DeviceFactory, bootstrap_state, replica_state, rest

HOUR_MS = 3_600_000


def _lead_ready_to_leave_prospecting(client: TestClient[Any], tenant: Tenant, who: str = "rep_a") -> dict[str, Any]:
    person = tenant.people[who]
    account = create_account(client, person, name=f"Acme {who}")
    contact = create_contact(client, person, account["id"])
    return create_lead(client, person, account_id=account["id"], primary_contact_id=contact["id"], amount=1000)


def test_client_depends_only_on_the_wire() -> None:
    """The client imports nothing of the server (a mobile team mirrors it)."""
    allowed = {"canvass.sync.wire", "canvass.sync.hlc", "msgspec", "httpx", "tenacity"}
    folder = Path(__file__).resolve().parents[2] / "canvass" / "clients"
    for name in ("offline.py", "http.py", "replica.py", "ids.py", "simulate.py"):
        tree = ast.parse((folder / name).read_text())
        for node in ast.walk(tree):
            modules = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            for module in modules:
                top = module.split(".")[0]
                if module.startswith("canvass.clients") or top in sys.stdlib_module_names or module == "__future__":
                    continue
                assert any(module == a or module.startswith(a + ".") for a in allowed), f"{name} imports {module}"


def test_register_is_idempotent_and_personal(devices: DeviceFactory, tenant: Tenant) -> None:
    phone = devices(tenant.rep_a)
    assert phone.register() == 201
    assert phone.register() == 200
    thief = devices(tenant.rep_b, device_id=phone.device_id)
    with pytest.raises(ProblemError) as refused:
        thief.register()
    assert refused.value.status == 403


def test_offline_work_reaches_the_server_once(client: TestClient[Any], devices: DeviceFactory, tenant: Tenant) -> None:
    phone = devices(tenant.rep_a, clock_offset_ms=-5 * HOUR_MS)
    phone.sync()  # bootstrap (empty)
    account_id = phone.create("account", {"name": "Field Corp"})
    contact_id = phone.create("contact", {"account_id": account_id, "name": "Zhang Min"})
    lead_id = phone.create("lead", {"title": "Offline deal", "account_id": account_id})
    phone.update("lead", lead_id, {"next_step": "Bring samples", "primary_contact_id": contact_id})
    phone.move_stage(lead_id, "qualify")
    visit = phone.log_activity("visit", lead_id=lead_id, subject="First visit")
    phone.check_in(visit, 31.23, 121.47)
    phone.check_out(visit, 31.23, 121.47)
    objection = phone.add_objection(lead_id, "price", "Too expensive")
    phone.update_objection(objection, {"status": "resolved", "handling_method": "compensation"})

    # the local view shows it all before any network
    local = phone.record("lead", lead_id)
    assert local is not None and local["stage"] == "qualify" and local["_pending"]
    assert phone.records("activity", lead_id=lead_id)[0]["check_out_latitude"] == 31.23
    assert phone.pending_count() == 10

    report = phone.sync()
    assert report.pending == 0 and phone.pending_count() == 0
    assert sum(report.receipts.values()) == 10
    assert report.receipts.get("applied") == 10, phone.receipts()
    assert phone.problems() == []

    lead = rest(client, tenant.rep_a, "GET", f"/api/v1/leads/{lead_id}")
    assert lead["stage"] == "qualify" and lead["next_step"] == "Bring samples"
    assert lead["primary_contact_id"] == contact_id
    history = rest(client, tenant.rep_a, "GET", f"/api/v1/leads/{lead_id}/stage-history")
    # (sorted: with this device's clock 5 h slow, the offline move's `at` precedes the
    # creation time the server stamped at push; see the report on clock skew)
    assert sorted(h["to_stage"] for h in history) == ["prospecting", "qualify"]
    assert [h["by_device_id"] for h in history if h["to_stage"] == "qualify"] == [phone.device_id]
    activity = rest(client, tenant.rep_a, "GET", f"/api/v1/activities/{visit}")
    assert activity["check_in_latitude"] == 31.23 and activity["check_out_at"] is not None
    assert rest(client, tenant.rep_a, "GET", f"/api/v1/objections/{objection}")["status"] == "resolved"

    # the replica holds exactly the server's records, as REST shows them
    held = phone.record("lead", lead_id)
    assert held is not None and not held.pop("_pending")
    assert held == lead
    server_copy = phone.replica.server_record("lead", lead_id)
    assert server_copy is not None and server_copy[1] == lead
    # a second device of the same rep bootstraps to the same state
    assert bootstrap_state(client, tenant.rep_a, phone.replica.path + ".fresh") == replica_state(phone)


def test_lost_reply_is_answered_from_receipts(client: TestClient[Any], devices: DeviceFactory, tenant: Tenant) -> None:
    lead = _lead_ready_to_leave_prospecting(client, tenant)
    phone = devices(tenant.rep_a)
    phone.sync()
    phone.move_stage(lead["id"], "qualify")
    activity = phone.log_activity("call", lead_id=lead["id"], subject="Called")
    request = phone.build_push()
    first = phone.api.push_raw(request)  # applied on the server ...
    assert first.status_code == 200, first.text
    del first  # ... but the reply never reaches the device
    assert phone.pending_count() == 2

    phone.pull()  # the pull says seq 2 is applied: the rebase must not replay it
    assert phone.last_applied_seq == 2
    assert phone.record("lead", lead["id"])["stage"] == "qualify"  # type: ignore[index]

    report = phone.sync()  # re-pushes; stored receipts answer
    assert report.receipts == {"applied": 2}
    assert phone.pending_count() == 0
    history = rest(client, tenant.rep_a, "GET", f"/api/v1/leads/{lead['id']}/stage-history")
    assert [h["to_stage"] for h in history] == ["prospecting", "qualify"]
    calls = rest(client, tenant.rep_a, "GET", "/api/v1/activities", params={"lead_id": lead["id"]})["items"]
    assert [c["id"] for c in calls] == [activity]

    # a duplicate of the same push, much later, changes nothing and answers the same
    again = phone.api.push(request)
    assert [(r.seq, str(r.status)) for r in again.receipts] == [(1, "applied"), (2, "applied")]
    assert len(rest(client, tenant.rep_a, "GET", f"/api/v1/leads/{lead['id']}/stage-history")) == 2


def test_reordered_push_is_refused_with_expected_seq(
    client: TestClient[Any], devices: DeviceFactory, tenant: Tenant
) -> None:
    phone = devices(tenant.rep_a)
    phone.sync()
    ids = [phone.create("lead", {"title": f"Lead {n}"}) for n in range(4)]
    later_half = phone.build_push(from_seq=3)
    with pytest.raises(SeqGap) as gap:
        phone.api.push(later_half)
    assert gap.value.status == 409 and gap.value.expected_seq == 1
    # nothing of the refused push was applied
    assert rest(client, tenant.rep_a, "GET", "/api/v1/leads")["items"] == []
    phone.sync()
    titles = sorted(lead["title"] for lead in rest(client, tenant.rep_a, "GET", "/api/v1/leads")["items"])
    assert titles == ["Lead 0", "Lead 1", "Lead 2", "Lead 3"]
    assert {r["id"] for r in phone.records("lead")} == set(ids)


def test_client_resends_from_expected_seq(client: TestClient[Any], devices: DeviceFactory, tenant: Tenant) -> None:
    """A client that starts after a gap (here: forced to) is told where to start and recovers."""
    phone = devices(tenant.rep_a)
    phone.sync()
    for n in range(3):
        phone.create("lead", {"title": f"Lead {n}"})
    real_build = phone.build_push
    calls: list[int | None] = []

    def skip_first(from_seq: int | None = None, limit: int | None = None) -> Any:
        calls.append(from_seq)
        return real_build(from_seq if calls[1:] else 2, limit)

    phone.build_push = skip_first  # type: ignore[method-assign]
    report = phone.push()
    assert report.seq_gaps == 1 and calls[1] == 1
    assert phone.pending_count() == 0 and phone.last_applied_seq == 3


def test_concurrent_edits_merge_by_field(client: TestClient[Any], devices: DeviceFactory, tenant: Tenant) -> None:
    lead = create_lead(client, tenant.rep_a, amount=1000, next_step="Call")
    phone = devices(tenant.rep_a, clock_offset_ms=2 * HOUR_MS)  # fast clock: its free text wins
    slow = devices(tenant.rep_a, clock_offset_ms=-3 * HOUR_MS)
    phone.sync()
    slow.sync()
    # online, the manager edits the title and the amount
    rest(client, tenant.manager_a, "PATCH", f"/api/v1/leads/{lead['id']}", json={"title": "Renamed", "amount": 2000})
    # offline, the rep edits another field and the amount
    phone.update("lead", lead["id"], {"next_step": "Send quote", "amount": 1500})
    report = phone.sync()
    assert report.receipts == {"conflict": 1}, phone.receipts()
    problem = phone.problems()[0]
    assert problem.status == "conflict" and problem.conflict_id and "amount" in problem.fields
    server = rest(client, tenant.rep_a, "GET", f"/api/v1/leads/{lead['id']}")
    assert server["title"] == "Renamed" and server["next_step"] == "Send quote"  # different fields both survive
    assert server["amount"] == 2000  # money: the server keeps its value ...
    conflict = rest(client, tenant.rep_a, "GET", f"/api/v1/conflicts/{problem.conflict_id}")
    assert conflict["field"] == "amount" and conflict["device_value"] == 1500  # ... and the loser is kept
    listed = rest(client, tenant.rep_a, "GET", "/api/v1/conflicts", params={"status": "open"})
    items = listed["items"] if isinstance(listed, dict) else listed
    assert problem.conflict_id in {c["id"] for c in items}
    assert phone.record("lead", lead["id"])["amount"] == 2000  # type: ignore[index]  # rebased on the server

    # a slow-clocked device's free-text edit of the same field loses to the later HLC, kept in the log
    slow.update("lead", lead["id"], {"next_step": "Old idea"})
    report = slow.sync()
    assert report.receipts == {"merged": 1}, slow.receipts()
    assert rest(client, tenant.rep_a, "GET", f"/api/v1/leads/{lead['id']}")["next_step"] == "Send quote"

    # resolving takes the device's amount; the resolution flows to devices
    rest(
        client, tenant.rep_a, "POST", f"/api/v1/conflicts/{problem.conflict_id}/resolve", json={"choice": "take_device"}
    )
    phone.sync()
    assert phone.record("lead", lead["id"])["amount"] == 1500  # type: ignore[index]
    assert rest(client, tenant.rep_a, "GET", f"/api/v1/leads/{lead['id']}")["amount"] == 1500


def test_rule_refusal_is_a_rejected_receipt_never_dropped(
    client: TestClient[Any], devices: DeviceFactory, tenant: Tenant
) -> None:
    lead = create_lead(client, tenant.rep_a)  # no account, no contact: cannot leave prospecting
    phone = devices(tenant.rep_a)
    phone.sync()
    phone.move_stage(lead["id"], "qualify")
    phone.update("lead", lead["id"], {"next_step": "Find the buyer"})
    assert phone.record("lead", lead["id"])["stage"] == "qualify"  # type: ignore[index]  # optimistic
    report = phone.sync()
    assert report.receipts == {"rejected": 1, "applied": 1}
    [problem] = phone.problems()
    assert problem.seq == 1 and problem.name == "lead.move_stage" and problem.args["to_stage"] == "qualify"
    assert problem.rule == "gate.prospecting.account_and_contact" and problem.message
    local = phone.record("lead", lead["id"])
    assert local is not None and local["stage"] == "prospecting" and local["next_step"] == "Find the buyer"
    phone.dismiss(problem.seq)
    assert phone.problems() == [] and len(phone.problems(include_dismissed=True)) == 1


def test_pending_edits_rebase_on_pulled_state(client: TestClient[Any], devices: DeviceFactory, tenant: Tenant) -> None:
    lead = create_lead(client, tenant.rep_a)
    phone = devices(tenant.rep_a)
    phone.sync()
    phone.update("lead", lead["id"], {"next_step": "Mine"})
    rest(client, tenant.manager_a, "PATCH", f"/api/v1/leads/{lead['id']}", json={"title": "Theirs"})
    phone.pull()  # pull only: the edit is still pending
    local = phone.record("lead", lead["id"])
    assert local is not None and local["title"] == "Theirs" and local["next_step"] == "Mine"
    assert phone.pending_count() == 1


def test_reassigned_lead_leaves_the_replica(client: TestClient[Any], devices: DeviceFactory, tenant: Tenant) -> None:
    lead = create_lead(client, tenant.rep_a)
    rest(client, tenant.rep_a, "POST", "/api/v1/activities", json={"kind": "call", "lead_id": lead["id"]})
    phone = devices(tenant.rep_a)
    phone.sync()
    assert len(phone.records("activity", lead_id=lead["id"])) == 1
    rest(client, tenant.manager_a, "PATCH", f"/api/v1/leads/{lead['id']}", json={"owner_id": str(tenant.rep_a2.id)})
    report = phone.sync()
    assert report.pulled_removals >= 1
    assert phone.record("lead", lead["id"]) is None
    assert phone.records("activity", lead_id=lead["id"]) == []
    other = devices(tenant.rep_a2)
    other.sync()
    assert other.record("lead", lead["id"]) is not None


def test_edit_versus_delete_is_a_conflict(client: TestClient[Any], devices: DeviceFactory, tenant: Tenant) -> None:
    lead = create_lead(client, tenant.rep_a)
    phone = devices(tenant.rep_a)
    phone.sync()
    phone.update("lead", lead["id"], {"next_step": "Still keen"})
    rest(client, tenant.manager_a, "DELETE", f"/api/v1/leads/{lead['id']}")
    report = phone.sync()
    assert report.receipts == {"conflict": 1}, phone.receipts()
    [problem] = phone.problems()
    assert problem.conflict_id
    conflict = rest(client, tenant.rep_a, "GET", f"/api/v1/conflicts/{problem.conflict_id}")
    assert conflict["record_id"] == lead["id"]
    assert phone.record("lead", lead["id"]) is None


class _Flaky:
    """An httpx.Client stand-in that fails the first ``failures`` requests."""

    def __init__(self, inner: Any, failures: list[str]) -> None:
        self.inner = inner
        self.failures = failures
        self.calls = 0

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        self.calls += 1
        if self.failures:
            kind = self.failures.pop(0)
            request = httpx.Request(method, "http://testserver.local" + url)
            if kind == "connect":
                raise httpx.ConnectError("connection refused", request=request)
            if kind == "timeout":
                raise httpx.ReadTimeout("timed out", request=request)
            return httpx.Response(int(kind), request=request, json={"detail": "try later"})
        return self.inner.request(method, url, **kwargs)

    def close(self) -> None:
        pass


def test_transient_failures_are_retried(client: TestClient[Any], tenant: Tenant, tmp_path: Path) -> None:
    from tests.sync.conftest import make_device

    flaky = _Flaky(client, [])
    with make_device(tmp_path / "flaky.sqlite", flaky, tenant.rep_a) as phone:
        phone.sync()
        phone.create("lead", {"title": "Through the storm"})
        flaky.failures[:] = ["connect", "503", "timeout"]
        report = phone.sync()
        assert report.retries == 3 and report.receipts == {"applied": 1}
        flaky.failures[:] = ["connect"] * 10  # more than the policy allows: the error surfaces, nothing is lost
        phone.create("lead", {"title": "Later"})
        with pytest.raises(httpx.ConnectError):
            phone.sync()
        assert phone.pending_count() == 1
        flaky.failures[:] = []
        phone.sync()
        assert phone.pending_count() == 0
    assert len(rest(client, tenant.rep_a, "GET", "/api/v1/leads")["items"]) == 2


def test_replica_survives_restart(client: TestClient[Any], tenant: Tenant, tmp_path: Path) -> None:
    from tests.sync.conftest import make_device

    path = tmp_path / "phone.sqlite"
    with make_device(path, client, tenant.rep_a) as phone:
        phone.sync()
        lead_id = phone.create("lead", {"title": "Before the reboot"})
        device_id = phone.device_id
        stamp = phone.clock.last
    with make_device(path, client, tenant.rep_a, clock_offset_ms=-10 * HOUR_MS) as phone:
        assert phone.device_id == device_id and phone.pending_count() == 1
        assert phone.clock.tick() > stamp  # never goes back, whatever the wall clock says
        assert phone.record("lead", lead_id) is not None
        phone.sync()
        assert phone.pending_count() == 0


def test_problem_errors_are_readable(devices: DeviceFactory, tenant: Tenant) -> None:
    phone: OfflineClient = devices(tenant.rep_a)
    with pytest.raises(ProblemError) as error:
        phone.api.pull("not-registered-device", "0")
    assert error.value.status == 404 and error.value.detail


def test_account_seen_through_a_lead_leaves_with_it(
    client: TestClient[Any], devices: DeviceFactory, tenant: Tenant
) -> None:
    """A rep sees another rep's account and its contacts through a lead in scope;
    when that lead goes back, they leave the rep's scope and so the replica."""
    account = create_account(client, tenant.rep_a2, name="Shared Corp")
    contact = create_contact(client, tenant.rep_a2, account["id"])
    lead = create_lead(client, tenant.rep_a2, account_id=account["id"], primary_contact_id=contact["id"])
    phone = devices(tenant.rep_a)
    phone.sync()
    assert phone.record("account", account["id"]) is None
    path = f"/api/v1/leads/{lead['id']}"
    rest(client, tenant.manager_a, "PATCH", path, json={"owner_id": str(tenant.rep_a.id)})
    phone.sync()
    assert phone.record("lead", lead["id"]) is not None
    assert phone.record("account", account["id"]) is not None  # in scope through the lead
    assert client.get(f"/api/v1/accounts/{account['id']}", headers=tenant.rep_a.headers).status_code == 200
    rest(client, tenant.manager_a, "PATCH", path, json={"owner_id": str(tenant.rep_a2.id)})
    phone.sync()
    assert phone.record("lead", lead["id"]) is None
    assert client.get(f"/api/v1/accounts/{account['id']}", headers=tenant.rep_a.headers).status_code == 404
    assert bootstrap_state(client, tenant.rep_a, phone.replica.path + ".fresh") == replica_state(phone)
