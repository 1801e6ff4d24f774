"""The sync guarantees as a hypothesis state machine (issue "Offline sync", Proof).

Six devices — rep_a with two, rep_a2, rep_b with two, and their manager_a — edit
offline on skewed clocks (hours either way) while people edit the same records
online through REST. Steps interleave offline edits, syncs, pushes whose reply
is lost, duplicated pushes, pushes sent out of order, online edits and
reassignments. After everyone syncs:

1. every device's replica equals what a brand-new device of the same user gets
   from a bootstrap pull, and its local view equals its replica (nothing pending);
2. every mutation has a receipt, and its effect is in the final state, or was
   superseded by a later write of the same field, or is kept in the conflict log,
   or the mutation was rejected (with a rule);
3. nothing was applied twice: one stage-history row per applied move, one
   activity per logged id, duplicates and re-sends answered from receipts.
"""

from __future__ import annotations

import itertools
import tempfile
from pathlib import Path
from typing import Any

import msgspec
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)
from litestar.testing import TestClient

from canvass.clients.http import SeqGap
from canvass.clients.offline import OfflineClient
from canvass.sync.wire import PushRequest
from tests.conftest import Person, Tenant, _build_tenant, create_account, create_contact, run
from tests.sync.conftest import make_device, replica_state, rest

HOUR_MS = 3_600_000
STAGES = ("prospecting", "qualify", "approach", "negotiate", "handle_objections", "close", "after_sale")
DEVICES = (("rep_a", 0), ("rep_a", 1), ("rep_a2", 0), ("rep_b", 0), ("rep_b", 1), ("manager_a", 0))
TEXT_FIELDS = ("next_step", "title", "product_interest")
MONEY_FIELDS = ("amount",)
words = st.sampled_from(["Call back", "Send quote", "Demo Tuesday", "Visit plant", "Ask CFO", "Wait"])


class Write(msgspec.Struct, kw_only=True):
    """One attempt to set a field: a device mutation or an online REST edit."""

    record: str
    field: str
    value: Any
    order: tuple[int, int]  # (step it reached the server, seq within the step)
    device_id: str | None = None
    seq: int | None = None


class Convergence(RuleBasedStateMachine):
    client: TestClient[Any]

    def __init__(self) -> None:
        super().__init__()
        self.tenant: Tenant = run(
            self.client, _build_tenant, self.client.app.state.sessionmaker, self.client.app.state.jwt_auth
        )
        self.dir = Path(tempfile.mkdtemp(prefix="convergence-"))
        self.paths = itertools.count()
        self.devices: list[OfflineClient] = []
        self.owner: dict[str, str] = {}  # device_id -> person key
        self.step = 0
        self.applied_upto: dict[str, int] = {}  # device_id -> seq known applied (and ordered)
        self.mutations: dict[tuple[str, int], dict[str, Any]] = {}  # (device, seq) -> mutation
        self.order: dict[tuple[str, int], tuple[int, int]] = {}
        self.rest_writes: list[Write] = []
        self.sent: list[tuple[OfflineClient, PushRequest]] = []  # pushes to duplicate later
        self.rest_moves: dict[str, int] = {}  # lead -> stage moves made online
        self.leads: list[str] = []
        self.deleted: dict[str, int] = {}  # lead -> step it was deleted at
        people = self.tenant.people
        # each rep starts with a lead that can leave prospecting and one without an account
        for who in ("rep_a", "rep_a2", "rep_b"):
            account = create_account(self.client, people[who], name=f"{who} account")
            contact = create_contact(self.client, people[who], account["id"])
            body = {"title": f"{who} lead", "account_id": account["id"], "primary_contact_id": contact["id"]}
            self.leads.append(rest(self.client, people[who], "POST", "/api/v1/leads", json=body)["id"])
            lone = rest(self.client, people[who], "POST", "/api/v1/leads", json={"title": f"{who} lone lead"})
            self.leads.append(lone["id"])

    # ------------------------------------------------------------ setup

    def _device(self, who: str, skew_hours: float) -> OfflineClient:
        device = make_device(
            self.dir / f"d{next(self.paths)}.sqlite",
            self.client,
            self.tenant.people[who],
            clock_offset_ms=int(skew_hours * HOUR_MS),
            push_batch=7,  # several batches per sync
            pull_limit=5,  # several pages per pull
        )
        self.owner[device.device_id] = who
        self.applied_upto[device.device_id] = 0
        return device

    def _ensure_devices(self, skews: list[float]) -> None:
        if not self.devices:
            for (who, _n), skew in zip(DEVICES, skews, strict=True):
                device = self._device(who, skew)
                device.sync()
                self.devices.append(device)

    @initialize(skews=st.lists(st.floats(-6, 6), min_size=len(DEVICES), max_size=len(DEVICES)))
    def start(self, skews: list[float]) -> None:
        self._ensure_devices(skews)

    def _pick(self, index: int) -> OfflineClient:
        self._ensure_devices([0.0] * len(DEVICES))
        return self.devices[index % len(self.devices)]

    def _note(self, device: OfflineClient, seq: int) -> None:
        row = device.replica.outbox_row(seq)
        assert row is not None
        self.mutations[(device.device_id, seq)] = {
            "name": row["name"],
            "args": msgspec.json.decode(row["args"]),
            "hlc": row["hlc"],
        }

    def _open_leads(self, device: OfflineClient) -> list[dict[str, Any]]:
        return [r for r in device.records("lead") if r.get("status") == "open"]

    def _mark_applied(self, device: OfflineClient, upto: int) -> None:
        """Seqs up to ``upto`` reached the server now (this step), in seq order."""
        self.step += 1
        for seq in range(self.applied_upto[device.device_id] + 1, upto + 1):
            self.order[(device.device_id, seq)] = (self.step, seq)
        self.applied_upto[device.device_id] = max(self.applied_upto[device.device_id], upto)

    # ------------------------------------------------------------ offline edits

    @rule(
        d=st.integers(0, 99),
        i=st.integers(0, 99),
        field=st.sampled_from(TEXT_FIELDS + MONEY_FIELDS),
        text=words,
        n=st.integers(1, 40),
    )
    def edit_lead(self, d: int, i: int, field: str, text: str, n: int) -> None:
        device = self._pick(d)
        leads = self._open_leads(device)
        if leads:
            value: Any = n * 250.0 if field == "amount" else f"{text} {n}"
            self._note(device, device.update("lead", leads[i % len(leads)]["id"], {field: value}))

    @rule(d=st.integers(0, 99), i=st.integers(0, 99))
    def move_lead(self, d: int, i: int) -> None:
        device = self._pick(d)
        leads = self._open_leads(device)
        if leads:
            lead = leads[i % len(leads)]
            index = STAGES.index(lead["stage"])
            if lead["stage"] == "qualify" or index + 1 >= len(STAGES) - 1:
                # score it so the gate lets it through (or record a loss at the end)
                scores = {"need": 5, "purchasing_power": 4, "decision_authority": 4, "creditworthiness": 4}
                self._note(device, device.update("lead", lead["id"], {"qualification": scores}))
            if index + 1 < len(STAGES) - 1:
                self._note(device, device.move_stage(lead["id"], STAGES[index + 1]))
            else:
                self._note(device, device.record_outcome(lead["id"], "lost", loss_reason="budget"))

    @rule(d=st.integers(0, 99), i=st.integers(0, 99), visit=st.booleans())
    def log_activity(self, d: int, i: int, visit: bool) -> None:
        device = self._pick(d)
        leads = self._open_leads(device)
        if leads:
            lead_id = leads[i % len(leads)]["id"]
            activity = device.log_activity("visit" if visit else "call", lead_id=lead_id, subject="touch")
            self._note(device, device.next_seq - 1)
            if visit:
                self._note(device, device.check_in(activity, 48.1, 11.5))

    @rule(d=st.integers(0, 99), i=st.integers(0, 99))
    def add_objection(self, d: int, i: int) -> None:
        device = self._pick(d)
        leads = self._open_leads(device)
        if leads:
            device.add_objection(leads[i % len(leads)]["id"], "price", "Too dear")
            self._note(device, device.next_seq - 1)

    @rule(d=st.integers(0, 99), title=words)
    def create_lead(self, d: int, title: str) -> None:
        device = self._pick(d)
        device.create("lead", {"title": title})
        self._note(device, device.next_seq - 1)

    @rule(
        i=st.integers(0, 99),
        field=st.sampled_from(TEXT_FIELDS + MONEY_FIELDS),
        n=st.integers(1, 40),
        online_first=st.booleans(),
    )
    def contend(self, i: int, field: str, n: int, online_first: bool) -> None:
        """Everyone edits the same field of one lead: every device holding it offline, a manager online."""
        lead_id = self.leads[i % len(self.leads)]

        def online() -> None:
            self.rest_edit(i % len(self.leads), "manager_a" if n % 2 else "manager_b", field, "contended", n)

        if online_first:
            online()
        for k, device in enumerate(self.devices):
            if device.record("lead", lead_id) is not None:
                value: Any = (n + k) * 250.0 if field == "amount" else f"device {k} says {n}"
                self._note(device, device.update("lead", lead_id, {field: value}))
        if not online_first:
            online()

    # ------------------------------------------------------------ network

    @rule(d=st.integers(0, 99))
    def sync(self, d: int) -> None:
        device = self._pick(d)
        device.sync()
        self._mark_applied(device, device.last_applied_seq)

    @rule(d=st.integers(0, 99))
    def push_reply_lost(self, d: int) -> None:
        device = self._pick(d)
        device._ensure_registered()
        request = device.build_push()
        if not request.mutations:
            return
        response = device.api.push_raw(request)
        if response.status_code == 200:  # applied, but the device never hears of it
            self._mark_applied(device, request.mutations[-1].seq)
            self.sent.append((device, request))
        else:
            assert response.status_code == 409, response.text  # only if an earlier reorder left a gap

    @rule(k=st.integers(0, 99))
    def duplicate_push(self, k: int) -> None:
        if not self.sent:
            return
        device, request = self.sent[k % len(self.sent)]
        answer = device.api.push(request)
        assert [r.seq for r in answer.receipts] == [m.seq for m in request.mutations]
        held = {r["seq"]: r for r in device.receipts()}
        for receipt in answer.receipts:  # answered from the stored receipts
            if receipt.seq in held:
                assert str(receipt.status) == held[receipt.seq]["status"]

    @rule(d=st.integers(0, 99))
    def push_out_of_order(self, d: int) -> None:
        device = self._pick(d)
        device._ensure_registered()
        rows = device.replica.outbox()
        new = [r["seq"] for r in rows if r["seq"] > self.applied_upto[device.device_id]]
        if len(new) < 2:
            return
        later = device.build_push(from_seq=new[1])
        try:
            device.api.push(later)
        except SeqGap as gap:
            assert gap.expected_seq == self.applied_upto[device.device_id] + 1
        else:
            raise AssertionError("a push starting after a hole was accepted")

    # ------------------------------------------------------------ online

    @rule(
        i=st.integers(0, 99),
        who=st.sampled_from(["manager_a", "manager_b", "owner"]),
        field=st.sampled_from(TEXT_FIELDS + MONEY_FIELDS),
        text=words,
        n=st.integers(1, 40),
    )
    def rest_edit(self, i: int, who: str, field: str, text: str, n: int) -> None:
        lead_id = self.leads[i % len(self.leads)]
        person = self._person_for(lead_id, who)
        if person is None:
            return
        value: Any = n * 100.0 if field == "amount" else f"online {text} {n}"
        response = self.client.patch(f"/api/v1/leads/{lead_id}", json={field: value}, headers=person.headers)
        if response.status_code == 200:
            self.step += 1
            self.rest_writes.append(Write(record=lead_id, field=field, value=value, order=(self.step, 0)))
        else:
            assert response.status_code in (403, 404), response.text

    @rule(i=st.integers(0, 99))
    def rest_reassign(self, i: int) -> None:
        """manager_a moves a lead between rep_a and rep_a2: it leaves one's scope, and
        so do its account and contacts when that rep sees them only through it."""
        lead_id = self.leads[i % len(self.leads)]
        lead = self.client.get(f"/api/v1/leads/{lead_id}", headers=self.tenant.manager_a.headers)
        if lead.status_code != 200:
            return
        current = lead.json()["owner_id"]
        a, a2 = str(self.tenant.rep_a.id), str(self.tenant.rep_a2.id)
        if current not in (a, a2):
            return
        target = a2 if current == a else a
        response = self.client.patch(
            f"/api/v1/leads/{lead_id}", json={"owner_id": target}, headers=self.tenant.manager_a.headers
        )
        assert response.status_code == 200, response.text
        self.step += 1
        self.rest_writes.append(Write(record=lead_id, field="owner_id", value=target, order=(self.step, 0)))

    @rule(i=st.integers(0, 99))
    def rest_delete(self, i: int) -> None:
        """A manager deletes a lead online (at most two per run) while devices may still edit it."""
        if len(self.deleted) >= 2:
            return
        lead_id = self.leads[i % len(self.leads)]
        person = self._person_for(lead_id, "owner")
        if lead_id in self.deleted or person is None:
            return
        manager = self.tenant.manager_b if person.email.startswith("rep_b@") else self.tenant.manager_a
        rest(self.client, manager, "DELETE", f"/api/v1/leads/{lead_id}")
        self.step += 1
        self.deleted[lead_id] = self.step

    def _person_for(self, lead_id: str, who: str) -> Person | None:
        if who != "owner":
            return self.tenant.people[who]
        lead = self.client.get(f"/api/v1/leads/{lead_id}", headers=self.tenant.admin.headers)
        if lead.status_code != 200:
            return None
        owner = lead.json()["owner_id"]
        return next((p for p in self.tenant.people.values() if str(p.id) == owner), None)

    @invariant()
    def outboxes_are_ordered(self) -> None:
        for device in self.devices:
            seqs = [r["seq"] for r in device.replica.outbox()]
            assert seqs == sorted(seqs) and len(seqs) == len(set(seqs))

    # ------------------------------------------------------------ the end

    def teardown(self) -> None:
        try:
            if self.devices:
                self.settle_and_check()
        finally:
            for device in self.devices:
                device.close()

    def settle_and_check(self) -> None:
        for _round in range(2):  # a second round pulls what the others pushed last
            for device in self.devices:
                device.sync()
                self._mark_applied(device, device.last_applied_seq)
        self.check_replicas()
        self.check_every_mutation()
        self.check_nothing_twice()

    def check_replicas(self) -> None:
        fresh: dict[str, dict[tuple[str, str], dict[str, Any]]] = {}
        for device in self.devices:
            assert device.pending_count() == 0, device.replica.outbox()
            who = self.owner[device.device_id]
            if who not in fresh:
                with make_device(
                    self.dir / f"fresh{next(self.paths)}.sqlite", self.client, self.tenant.people[who]
                ) as new:
                    new.sync()
                    fresh[who] = replica_state(new)
            mine = replica_state(device)
            assert mine.keys() == fresh[who].keys(), (who, mine.keys() ^ fresh[who].keys())
            for key, data in mine.items():
                assert data == fresh[who][key], key
            local = {
                (e, r["id"]): {k: v for k, v in r.items() if k != "_pending"}
                for e in {k[0] for k in mine}
                for r in device.records(e)
            }
            assert local == mine
            # and the leads are what REST says
            for (entity, record_id), data in mine.items():
                if entity == "lead":
                    assert rest(self.client, self.tenant.people[who], "GET", f"/api/v1/leads/{record_id}") == data

    def _conflicts(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for status in ("open", "auto_resolved", "resolved"):
            body = rest(
                self.client, self.tenant.admin, "GET", "/api/v1/conflicts", params={"status": status, "limit": 200}
            )
            out.extend(body["items"] if isinstance(body, dict) else body)
        return out

    def check_every_mutation(self) -> None:
        receipts: dict[tuple[str, int], dict[str, Any]] = {}
        for device in self.devices:
            for r in device.receipts():
                receipts[(device.device_id, r["seq"])] = r
        missing = set(self.mutations) - set(receipts)
        assert not missing, f"mutations without a receipt: {sorted(missing)}"
        conflicts = self._conflicts()
        by_mutation = {(c["device_id"], c["seq"]) for c in conflicts}
        losers = {(str(c["record_id"]), c.get("field")): [] for c in conflicts}
        for c in conflicts:
            losers[(str(c["record_id"]), c.get("field"))] += [c.get("server_value"), c.get("device_value")]
        writes: list[Write] = list(self.rest_writes)
        for key, mutation in self.mutations.items():
            if mutation["name"] in ("lead.update",) and receipts[key]["status"] != "rejected":
                for field, value in mutation["args"]["fields"].items():
                    writes.append(
                        Write(
                            record=mutation["args"]["id"],
                            field=field,
                            value=value,
                            order=self.order[key],
                            device_id=key[0],
                            seq=key[1],
                        )
                    )
        finals: dict[str, dict[str, Any] | None] = {}
        for w in writes:
            if w.record not in finals:
                got = self.client.get(f"/api/v1/leads/{w.record}", headers=self.tenant.admin.headers)
                finals[w.record] = got.json() if got.status_code == 200 else None
            final = finals[w.record]
            if final is None:
                continue  # deleted: edit-versus-delete is checked by its receipt below
            if final[w.field] == w.value or (
                isinstance(w.value, dict)
                and isinstance(final[w.field], dict)
                and all(final[w.field].get(k) == v for k, v in w.value.items())
            ):
                continue
            later = [o for o in writes if o.record == w.record and o.field == w.field and o.order > w.order]
            if later:
                continue  # superseded by a later write of the same field
            kept = w.value in losers.get((w.record, w.field), [])
            assert kept, f"lost write {w} (final {final[w.field]!r})"
        for key, mutation in self.mutations.items():
            # an edit that reached the server after the lead's deletion is a conflict, never a silent loss
            target = mutation["args"].get("id")
            if (
                mutation["name"] == "lead.update"
                and target in self.deleted
                and self.order[key] > (self.deleted[target], 0)
            ):
                assert receipts[key]["status"] in ("conflict", "rejected"), (mutation, receipts[key])
        for key, receipt in receipts.items():
            if key not in self.mutations:
                continue
            if receipt["status"] == "rejected":
                assert receipt["rule"] and receipt["message"], receipt
            if receipt["status"] == "conflict":
                assert receipt["conflict_id"] and key in by_mutation, receipt

    def check_nothing_twice(self) -> None:
        receipts: dict[tuple[str, int], str] = {}
        for device in self.devices:
            for r in device.receipts():
                receipts[(device.device_id, r["seq"])] = r["status"]
        moves: dict[tuple[str, str, str], int] = {}
        activities: set[str] = set()
        for key, mutation in self.mutations.items():
            status = receipts[key]
            if status == "rejected":
                # a create refused as "already exists" would mean the server tried twice
                assert "already" not in str(mutation), mutation
                continue
            args = mutation["args"]
            if mutation["name"] == "lead.move_stage" and status == "applied":
                k = (args["id"], key[0], args["to_stage"])
                moves[k] = moves.get(k, 0) + 1
            if mutation["name"] == "activity.log" and status == "applied":
                activities.add(args["id"])
        admin = self.tenant.admin
        for lead_id in {k[0] for k in moves}:
            got = self.client.get(f"/api/v1/leads/{lead_id}/stage-history", headers=admin.headers)
            if got.status_code != 200:
                continue
            rows = got.json()
            seen: dict[tuple[str, str, str], int] = {}
            for row in rows:
                if row["by_device_id"]:
                    k = (lead_id, row["by_device_id"], row["to_stage"])
                    seen[k] = seen.get(k, 0) + 1
            for k, n in moves.items():
                if k[0] == lead_id:
                    assert seen.get(k, 0) == n, (k, n, rows)
            pairs = [(r["from_stage"], r["to_stage"], r["status"]) for r in rows]
            assert len(pairs) == len(set(pairs)), rows
        for activity_id in activities:
            got = self.client.get(f"/api/v1/activities/{activity_id}", headers=admin.headers)
            assert got.status_code in (200, 404), got.text  # 404: its lead was deleted
        for lead_id in self.leads:
            listed = self.client.get(
                "/api/v1/activities", params={"lead_id": lead_id, "limit": 200}, headers=admin.headers
            )
            if listed.status_code == 200:
                ids = [a["id"] for a in listed.json()["items"]]
                assert len(ids) == len(set(ids))


def test_devices_converge(client: TestClient[Any]) -> None:
    Convergence.client = client
    run_state_machine_as_test(
        Convergence,
        settings=settings(
            max_examples=8,
            stateful_step_count=40,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            phases=[Phase.explicit, Phase.reuse, Phase.generate],  # shrinking a 30-step run takes minutes
        ),
    )
