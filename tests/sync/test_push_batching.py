"""A push reads what it names up front and puts the services' flushes off
within a group (canvass/sync/push.py): the result must be what applying the
mutations one by one gives — each mutation's own row version and timestamp per
field, a refusal found at a later flush undoing only its own mutation — with
far fewer statements."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from litestar.testing import TestClient
from sqlalchemy import event, select

from canvass.ids import new_id
from canvass.pipeline.models import Activity, Lead
from canvass.pipeline.services import activities
from tests.api.test_sync_api import RawDevice, qualified_lead
from tests.conftest import Tenant, create_lead, run


async def _leads(sessionmaker: Any, ids: list[str]) -> dict[str, Lead]:
    async with sessionmaker() as session:
        found = await session.scalars(select(Lead).where(Lead.id.in_([uuid.UUID(i) for i in ids])))
        return {str(lead.id): lead for lead in found}


async def _activity(sessionmaker: Any, activity_id: str) -> Activity | None:
    async with sessionmaker() as session:
        found: Activity | None = await session.scalar(select(Activity).where(Activity.id == uuid.UUID(activity_id)))
        return found


@pytest.fixture
def statements(client: TestClient[Any]) -> Iterator[Counter[str]]:
    """The SQL statements the app runs, by their first word; leaving out the
    change feed's publishing, which a background task of the app also runs
    (on PostgreSQL) at any moment."""
    engine = client.app.state.sessionmaker.kw["bind"].sync_engine
    seen: Counter[str] = Counter()

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.startswith(("SELECT (EXISTS", "WITH")) or "sync_clocks" in statement:
            return
        words = statement.split()
        seen[words[0].upper()] += 1
        if statement.startswith("SELECT leads."):  # leads read as records
            seen["SELECT leads"] += 1

    event.listen(engine, "before_cursor_execute", count)
    yield seen
    event.remove(engine, "before_cursor_execute", count)


def test_each_mutation_keeps_its_own_version_and_timestamp_within_a_group(
    client: TestClient[Any], tenant: Tenant
) -> None:
    device = RawDevice(client, tenant.rep_a)
    first, second = qualified_lead(client, tenant.rep_a), create_lead(client, tenant.rep_a)
    records, _ = device.pull_all()
    base = {f"lead:{lead['id']}": records[("lead", lead["id"])]["version"] for lead in (first, second)}
    visit = str(new_id())
    batch = [
        device.mutation("lead.update", {"id": first["id"], "fields": {"next_step": "Call"}}, base, skew_ms=-3000),
        device.mutation("lead.update", {"id": second["id"], "fields": {"next_step": "Mail"}}, base, skew_ms=-2000),
        device.mutation("lead.update", {"id": first["id"], "fields": {"amount": 1234}}, base, skew_ms=-1000),
        device.mutation("activity.log", {"id": visit, "kind": "visit", "lead_id": first["id"], "subject": "Visit"}),
        device.mutation("activity.check_in", {"id": visit, "latitude": 31.2, "longitude": 121.4}),
        device.mutation("activity.check_out", {"id": visit, "latitude": 31.2, "longitude": 121.4}),
        device.mutation("lead.move_stage", {"id": first["id"], "to_stage": "qualify"}),
    ]
    result = device.push(*batch)
    assert [r["status"] for r in result["receipts"]] == ["applied"] * len(batch), result
    leads = run(client, _leads, client.app.state.sessionmaker, [first["id"], second["id"]])
    one, two = leads[first["id"]], leads[second["id"]]
    v1, v2 = base[f"lead:{first['id']}"], base[f"lead:{second['id']}"]
    # One UPDATE per mutation of a lead, as when applied one at a time.
    assert one.version == v1 + 3 and two.version == v2 + 1
    assert one.field_versions["next_step"] == [v1 + 1, batch[0]["hlc"], device.device_id]
    assert one.field_versions["amount"] == [v1 + 2, batch[2]["hlc"], device.device_id]
    assert two.field_versions["next_step"] == [v2 + 1, batch[1]["hlc"], device.device_id]
    assert (one.stage, one.next_step, float(one.amount or 0), two.next_step) == ("qualify", "Call", 1234.0, "Mail")
    logged = run(client, _activity, client.app.state.sessionmaker, visit)
    assert logged is not None and logged.check_in_at is not None and logged.check_out_at is not None
    assert logged.completed_at == logged.check_out_at
    # A device pulling now sees the final state of every record.
    other = RawDevice(client, tenant.rep_a)
    pulled, _ = other.pull_all()
    assert pulled[("activity", visit)]["check_out_at"] is not None
    assert pulled[("lead", first["id"])]["version"] == v1 + 3


def test_a_refusal_found_at_a_later_flush_undoes_only_its_own_mutation(
    client: TestClient[Any], tenant: Tenant, monkeypatch: pytest.MonkeyPatch
) -> None:
    device = RawDevice(client, tenant.rep_a)
    lead = create_lead(client, tenant.rep_a)
    taken = str(new_id())
    device.push(device.mutation("activity.log", {"id": taken, "kind": "call", "lead_id": lead["id"]}))
    records, _ = device.pull_all()
    version = records[("lead", lead["id"])]["version"]

    async def never(*_args: Any) -> bool:
        return False

    # Without the service's duplicate check, the duplicate id surfaces only as
    # an integrity error when the group's writes are flushed.
    monkeypatch.setattr(activities, "exists", never)
    fresh = str(new_id())
    batch = [
        device.mutation("lead.update", {"id": lead["id"], "fields": {"next_step": "Again"}}),
        device.mutation("activity.log", {"id": taken, "kind": "call", "lead_id": lead["id"]}),
        device.mutation("activity.log", {"id": fresh, "kind": "note", "lead_id": lead["id"]}),
    ]
    result = device.push(*batch)
    assert [(r["status"], r.get("rule")) for r in result["receipts"]] == [
        ("applied", None),
        ("rejected", "integrity"),
        ("applied", None),
    ]
    assert result["last_applied_seq"] == batch[-1]["seq"]
    updated = run(client, _leads, client.app.state.sessionmaker, [lead["id"]])[lead["id"]]
    assert (updated.next_step, updated.version) == ("Again", version + 1)  # applied once, after the re-run
    assert run(client, _activity, client.app.state.sessionmaker, fresh) is not None


def test_a_push_reads_each_record_it_names_once(
    client: TestClient[Any], tenant: Tenant, statements: Counter[str]
) -> None:
    device = RawDevice(client, tenant.rep_a)
    leads = [create_lead(client, tenant.rep_a) for _ in range(5)]
    records, _ = device.pull_all()
    batch = []
    for i in range(40):
        lead_id = leads[i % 5]["id"]
        base = {f"lead:{lead_id}": records[("lead", lead_id)]["version"]}
        batch.append(device.mutation("lead.update", {"id": lead_id, "fields": {"next_step": f"Step {i}"}}, base))
        batch.append(device.mutation("activity.log", {"id": str(new_id()), "kind": "call", "lead_id": lead_id}))
    statements.clear()
    result = device.push(*batch)
    assert {r["status"] for r in result["receipts"]} == {"applied"}
    # The leads are read (and locked) once, up front; no SELECT per mutation.
    assert statements["SELECT leads"] == 1, statements
    # One UPDATE per edit, and the calls inserted a flush at a time (a flush
    # only when a lead is edited again): 5 leads, 8 rounds, plus the receipts.
    assert statements["UPDATE"] <= 40 + 3 and statements["INSERT"] <= 10, statements
    assert sum(statements.values()) < len(batch) * 0.8, statements


def test_a_refused_mutation_costs_a_few_savepoints_not_one_per_mutation(
    client: TestClient[Any], tenant: Tenant, statements: Counter[str]
) -> None:
    device = RawDevice(client, tenant.rep_a)
    lead = create_lead(client, tenant.rep_a)
    batch = [
        device.mutation("lead.update", {"id": lead["id"], "fields": {"next_step": f"Step {i}"}}) for i in range(20)
    ]
    missing = str(new_id())
    batch[7] = {**batch[7], "name": "activity.check_in", "args": {"id": missing, "latitude": 1.0, "longitude": 2.0}}
    batch[13] = {**batch[13], "name": "activity.check_out", "args": {"id": missing, "latitude": 1.0, "longitude": 2.0}}
    statements.clear()
    result = device.push(*batch)
    assert [r["status"] for r in result["receipts"]] == ["applied"] * 7 + ["rejected"] + ["applied"] * 5 + [
        "rejected"
    ] + ["applied"] * 6
    assert result["receipts"][7]["rule"] == "not-found"
    # The group, [0:7], [7], [8:20] (refused at 13 again), [8:13], [13], [14:20]:
    # seven savepoints, not twenty-one.
    assert statements["SAVEPOINT"] <= 7, statements
    updated = run(client, _leads, client.app.state.sessionmaker, [lead["id"]])[lead["id"]]
    assert (updated.next_step, updated.version) == ("Step 19", lead["version"] + 18)  # each edit once
