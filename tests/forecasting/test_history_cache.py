"""The per-process history cache gives exactly what a fresh ``lead_history`` read gives.

Random writes through the services (create, stage move, outcome, amount edit, delete,
reassign) between reads; after each round the cache is refreshed from the change feed
(spliced, or read again past the threshold) and every array is compared with a fresh read,
for the tenant and for each person's scope. A rep's forecast from the cache equals the one
computed from a scoped fresh read.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
import os
import random
import uuid
from typing import Any

import numpy as np
import pytest
from litestar.testing import TestClient
from sqlalchemy import func, select

from canvass.errors import CanvassError
from canvass.forecasting import history_cache
from canvass.forecasting.history import LeadHistory
from canvass.forecasting.queries import lead_history
from canvass.forecasting.reports import _all_methods, _weighted_config, backtest, revenue_forecast
from canvass.pipeline.models import Lead
from canvass.pipeline.schemas import LeadCreate, LeadUpdate, OutcomeRecord, StageMove
from canvass.pipeline.scope import Actor, lead_scope
from canvass.pipeline.services import leads as lead_service
from canvass.pipeline.services.imports import import_leads
from canvass.pipeline.services.organizations import pipeline_config
from canvass.pipeline.vocabulary import Outcome, Stage
from canvass.sync import feed
from tests.conftest import Tenant, run
from tests.forecasting.test_forecast_scale_paths import _rows

ARRAYS = (
    "created", "owner", "status", "closed", "amount_lead", "amount_day", "amount",
    "stage_lead", "stage_day", "stage_to", "amount_start", "stage_start",
)  # fmt: skip
PEOPLE = ("admin", "manager_a", "rep_a", "rep_a1", "rep_b")


def _actor(tenant: Tenant, who: str) -> Actor:
    person = tenant.people[who]
    return Actor(
        organization_id=tenant.organization_id, user_id=person.id, role=person.role, team_path=person.team_path
    )


def _assert_same(got: LeadHistory, expected: LeadHistory, label: Any) -> None:
    for name in ARRAYS:
        a, b = getattr(got, name), getattr(expected, name)
        assert a.dtype == b.dtype and np.array_equal(a, b), (label, name)


async def _load(client: TestClient[Any], tenant: Tenant) -> None:
    async with client.app.state.sessionmaker() as session, session.begin():
        report = await import_leads(session, _actor(tenant, "admin"), _rows(tenant))
        assert not report.rejected


async def _random_writes(client: TestClient[Any], tenant: Tenant, rng: random.Random, count: int) -> list[str]:
    """``count`` random writes through the services, one transaction; the ones the rules refuse
    are rolled back to their savepoint. Returns what was done."""
    admin = _actor(tenant, "admin")
    reps = [tenant.people[r].id for r in ("rep_a", "rep_a2", "rep_a1", "rep_b")]
    done = []
    async with client.app.state.sessionmaker() as session, session.begin():
        ids = list(
            (
                await session.scalars(
                    select(Lead.id)
                    .where(Lead.organization_id == admin.organization_id, Lead.deleted_at.is_(None))
                    # A fixed order for the loaded leads (distinct creation times), so a seed's
                    # first picks repeat from run to run; PostgreSQL's unordered scan varies.
                    # Leads created by earlier rounds may tie on title, then fall to their ids.
                    .order_by(Lead.created_at, Lead.title, Lead.id)
                )
            ).all()
        )
        for _ in range(count):
            op = rng.choice(("create", "move", "move", "outcome", "amount", "delete", "reassign"))
            lead_id = rng.choice(ids)
            try:
                async with session.begin_nested():
                    if op == "create":
                        lead = await lead_service.create_lead(
                            session, admin, LeadCreate(title="New", owner_id=rng.choice(reps), amount=500.0)
                        )
                        ids.append(lead.id)
                    elif op == "move":
                        current = await lead_service.get_lead(session, admin, lead_id)
                        order = list(Stage)
                        target = order[min(order.index(Stage(current.stage)) + 1, len(order) - 1)]
                        await lead_service.move_stage(
                            session, admin, lead_id, StageMove(to_stage=target, override_reason="test")
                        )
                    elif op == "outcome":
                        outcome = rng.choice((Outcome.WON, Outcome.LOST, Outcome.LOST, Outcome.DISQUALIFIED))
                        await lead_service.record_outcome(
                            session,
                            admin,
                            lead_id,
                            OutcomeRecord(outcome=outcome, amount=1234.0, loss_reason="price"),
                        )
                    elif op == "amount":
                        await lead_service.update_lead(
                            session, admin, lead_id, LeadUpdate(amount=float(rng.randint(1, 9)) * 1000)
                        )
                    elif op == "delete":
                        await lead_service.delete_lead(session, admin, lead_id)
                        ids.remove(lead_id)
                    else:
                        await lead_service.update_lead(session, admin, lead_id, LeadUpdate(owner_id=rng.choice(reps)))
                done.append(op)
            except CanvassError:
                done.append(f"{op} refused")
    return done


async def _compare(client: TestClient[Any], tenant: Tenant) -> history_cache.TenantHistory:
    async with client.app.state.sessionmaker() as session:
        entry = await history_cache.tenant_history(session, tenant.organization_id)
        _assert_same(entry.history, await lead_history(session, tenant.organization_id), "tenant")
        for who in PEOPLE:
            actor = _actor(tenant, who)
            scoped = await history_cache.history_for(session, actor)
            got = scoped.history
            assert scoped.version == entry.version
            expected = await lead_history(session, tenant.organization_id, scope=lead_scope(actor))
            _assert_same(got, expected, who)
    return entry


def test_patched_history_equals_a_fresh_read_after_random_writes(
    client: TestClient[Any], tenant: Tenant, monkeypatch: pytest.MonkeyPatch
) -> None:
    run(client, _load, client, tenant)
    first = run(client, _compare, client, tenant)
    assert first.refresh == "full" and first.n_leads == 40
    # The tenant is small: let every round's writes be spliced in, whatever their share; and read
    # the written leads in chunks of two ids (SQLite joins the statements' rows).
    monkeypatch.setattr(history_cache, "FULL_REREAD_SHARE", 1.0)
    monkeypatch.setattr(history_cache.queries, "_IDS_PER_STATEMENT", 2)
    rng = random.Random(6)
    refreshes, ops = [], []
    for _ in range(10):
        ops += run(client, _random_writes, client, tenant, rng, rng.randint(2, 8))
        entry = run(client, _compare, client, tenant)
        refreshes.append(entry.refresh)
    assert all(r.startswith(("patch:", "unchanged:")) for r in refreshes), refreshes
    patches = [int(r.split(":")[1]) for r in refreshes if r.startswith("patch:")]
    assert len(patches) >= 5 and max(patches) > 2, refreshes  # some read in several chunks
    for op in ("create", "move", "outcome", "amount", "delete", "reassign"):
        assert op in ops, (op, ops)
    # Nothing written: the cached entry itself, no read.
    again = run(client, _compare, client, tenant)
    assert again is entry
    # Past the threshold: everything is read again, with the same result.
    monkeypatch.setattr(history_cache, "FULL_REREAD_SHARE", 0.01)
    run(client, _random_writes, client, tenant, rng, 3)
    assert run(client, _compare, client, tenant).refresh == "full"


def test_a_reps_forecast_from_the_cache_equals_one_from_a_scoped_read(client: TestClient[Any], tenant: Tenant) -> None:
    run(client, _load, client, tenant)
    run(client, _random_writes, client, tenant, random.Random(2), 5)
    as_of = dt.date(2024, 9, 1)

    async def both(who: str) -> tuple[Any, Any]:
        actor = _actor(tenant, who)
        async with client.app.state.sessionmaker() as session:
            cached = await revenue_forecast(session, actor, [30, 90], as_of=as_of)
            fresh = await lead_history(session, tenant.organization_id, scope=lead_scope(actor))
            weighted = _weighted_config(await pipeline_config(session, tenant.organization_id))
        return cached, _all_methods(fresh, as_of, [30, 90], weighted)

    for who in ("rep_a", "manager_a"):
        cached, expected = run(client, both, who)
        assert cached.history_version is not None and cached.history_version > 0
        assert 0 < cached.leads_in_history < 40
        assert [f.revenue for f in cached.forecasts] == [f.revenue for f in expected], who
        assert cached.forecasts == expected, who


def test_lru_keeps_at_most_the_configured_tenants(
    client: TestClient[Any], tenant: Tenant, other_tenant: Tenant, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(history_cache, "MAX_TENANTS", 1)

    async def read(org: uuid.UUID) -> None:
        async with client.app.state.sessionmaker() as session:
            await history_cache.tenant_history(session, org)

    run(client, read, tenant.organization_id)
    run(client, read, other_tenant.organization_id)
    orgs = [org for _, org in history_cache._cache.entries]
    assert orgs == [other_tenant.organization_id]
    # The lead budget: a 40-lead tenant over a budget of 39 stays while it is the newest, and goes
    # when another tenant is stored.
    history_cache.clear()
    monkeypatch.setattr(history_cache, "MAX_TENANTS", 4)
    monkeypatch.setattr(history_cache, "MAX_CACHED_LEADS", 39)
    run(client, _load, client, tenant)
    run(client, read, tenant.organization_id)
    assert [org for _, org in history_cache._cache.entries] == [tenant.organization_id]
    run(client, read, other_tenant.organization_id)
    assert [org for _, org in history_cache._cache.entries] == [other_tenant.organization_id]


def test_an_answer_is_reused_only_on_the_same_version_and_scope(client: TestClient[Any], tenant: Tenant) -> None:
    run(client, _load, client, tenant)
    as_of = dt.date(2024, 9, 1)

    async def forecast(who: str) -> tuple[Any, int]:
        actor = _actor(tenant, who)
        async with client.app.state.sessionmaker() as session:
            result = await revenue_forecast(session, actor, [30], as_of=as_of)
            scoped = await history_cache.history_for(session, actor)
        return result, len(scoped.results)

    first, memo = run(client, forecast, "admin")
    assert memo == 1
    again, _ = run(client, forecast, "admin")
    assert again == first
    rep, _ = run(client, forecast, "rep_a")
    assert rep.leads_in_history < first.leads_in_history and rep.forecasts != first.forecasts
    run(client, _random_writes, client, tenant, random.Random(4), 4)
    after, memo = run(client, forecast, "admin")
    assert after.history_version is not None and first.history_version is not None
    assert after.history_version > first.history_version and memo == 1


def test_concurrent_requests_for_one_tenant_read_once(
    client: TestClient[Any], tenant: Tenant, monkeypatch: pytest.MonkeyPatch
) -> None:
    run(client, _load, client, tenant)
    reads: list[bool] = []
    real = history_cache.queries.history_columns

    async def counted(session: Any, organization_id: uuid.UUID, *args: Any, **kwargs: Any) -> Any:
        reads.append(kwargs.get("lead_ids") is not None)
        await asyncio.sleep(0.05)  # the others arrive while this read is under way
        return await real(session, organization_id, *args, **kwargs)

    monkeypatch.setattr(history_cache.queries, "history_columns", counted)

    async def four() -> list[int]:
        async def one() -> int:
            async with client.app.state.sessionmaker() as session:
                return (await history_cache.tenant_history(session, tenant.organization_id)).n_leads

        return list(await asyncio.gather(*(one() for _ in range(4))))

    assert run(client, four) == [40] * 4
    assert reads == [False]  # one full read, the other three waited for it
    monkeypatch.setattr(history_cache, "FULL_REREAD_SHARE", 1.0)

    async def one_write() -> None:  # a create: no rule can refuse it, so there is a change to splice
        async with client.app.state.sessionmaker() as session, session.begin():
            await lead_service.create_lead(
                session, _actor(tenant, "admin"), LeadCreate(title="New", owner_id=tenant.rep_a.id, amount=500.0)
            )

    run(client, one_write)

    async def published() -> None:  # the writes have their versions before the four ask
        async with client.app.state.sessionmaker() as session:
            await feed.publish_pending(session, tenant.organization_id)

    run(client, published)
    run(client, four)
    assert reads == [False, True]  # one splice


def test_from_no_leads_to_one_and_back(
    client: TestClient[Any], other_tenant: Tenant, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(history_cache, "FULL_REREAD_SHARE", 1.0)
    admin = _actor(other_tenant, "admin")
    assert run(client, _compare, client, other_tenant).n_leads == 0

    async def create() -> uuid.UUID:
        async with client.app.state.sessionmaker() as session, session.begin():
            lead = await lead_service.create_lead(
                session, admin, LeadCreate(title="Only", owner_id=other_tenant.rep_b.id, amount=10.0)
            )
            return lead.id

    async def delete(lead_id: uuid.UUID) -> None:
        async with client.app.state.sessionmaker() as session, session.begin():
            await lead_service.delete_lead(session, admin, lead_id)

    lead_id = run(client, create)
    one = run(client, _compare, client, other_tenant)
    assert (one.n_leads, one.refresh) == (1, "patch:1")
    run(client, delete, lead_id)
    none = run(client, _compare, client, other_tenant)
    assert (none.n_leads, none.refresh) == (0, "patch:1")


def test_a_write_the_forecast_does_not_read_keeps_the_arrays_and_the_answers(
    client: TestClient[Any], tenant: Tenant
) -> None:
    run(client, _load, client, tenant)
    admin = _actor(tenant, "admin")

    async def forecast() -> tuple[Any, history_cache.TenantHistory]:
        async with client.app.state.sessionmaker() as session:
            result = await revenue_forecast(session, admin, [30], as_of=dt.date(2024, 9, 1))
            return result, await history_cache.tenant_history(session, tenant.organization_id)

    async def edit(patch: LeadUpdate) -> None:
        async with client.app.state.sessionmaker() as session, session.begin():
            lead_id = await session.scalar(
                select(Lead.id).where(Lead.organization_id == tenant.organization_id).order_by(Lead.id)
            )
            await lead_service.update_lead(session, admin, lead_id, patch)

    first, before = run(client, forecast)
    run(client, edit, LeadUpdate(title="Renamed", amount=777.0))  # the lead's own fields, not its history
    second, after = run(client, forecast)
    assert after.refresh == "unchanged:1" and after.version > before.version
    assert after.history is before.history and after.results is before.results
    assert second.forecasts == first.forecasts and second.history_version == after.version
    assert run(client, _compare, client, tenant) is after

    async def reassign() -> None:
        async with client.app.state.sessionmaker() as session, session.begin():
            lead = (
                await session.scalars(
                    select(Lead).where(Lead.organization_id == tenant.organization_id).order_by(Lead.id).limit(1)
                )
            ).one()
            to = tenant.rep_b.id if lead.owner_id != tenant.rep_b.id else tenant.rep_a.id
            await lead_service.update_lead(session, admin, lead.id, LeadUpdate(owner_id=to))

    run(client, reassign)  # a reassignment is read
    _, moved = run(client, forecast)
    assert moved.refresh == "patch:1" and moved.history is not after.history
    run(client, _compare, client, tenant)


def test_a_backtest_is_reused_on_the_same_version_only(client: TestClient[Any], tenant: Tenant) -> None:
    run(client, _load, client, tenant)
    admin = _actor(tenant, "admin")

    async def replay() -> Any:
        async with client.app.state.sessionmaker() as session:
            return await backtest(session, admin, [30], from_date=dt.date(2024, 6, 1), to_date=dt.date(2024, 9, 1))

    first = run(client, replay)
    assert first.results and run(client, replay) is first

    async def a_new_lead() -> None:
        # A write that always changes the history (random ones may all be refused or no-ops).
        async with client.app.state.sessionmaker() as session, session.begin():
            await lead_service.create_lead(session, admin, LeadCreate(title="New", amount=500.0))

    run(client, a_new_lead)
    again = run(client, replay)
    assert again is not first


def _snapshots(directory: Any) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if not p.name.endswith(".lock"))  # the turns' files stay


def test_a_new_process_loads_the_snapshot_and_splices_the_writes_since(
    client: TestClient[Any], tenant: Tenant, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    monkeypatch.setattr(history_cache, "SNAPSHOT_DIR", str(tmp_path))
    monkeypatch.setattr(history_cache, "SNAPSHOT_MIN_LEADS", 1)
    monkeypatch.setattr(history_cache, "SNAPSHOT_REWRITE_SHARE", 10.0)  # no rewrite until said
    monkeypatch.setattr(history_cache, "FULL_REREAD_SHARE", 1.0)
    run(client, _load, client, tenant)
    full_reads: list[bool] = []
    built = history_cache._built

    def counted(*args: Any) -> history_cache.TenantHistory:
        full_reads.append(True)
        return built(*args)

    monkeypatch.setattr(history_cache, "_built", counted)  # the cache's whole reads
    first = run(client, _compare, client, tenant)
    run(client, history_cache.snapshots_written)
    assert first.refresh == "full" and full_reads == [True]
    [name] = _snapshots(tmp_path)
    assert name.startswith("history-") and name.endswith(".bin")
    assert (tmp_path / name).stat().st_mode & 0o077 == 0  # the tenant's data: the owner's only

    # A new process (the cache forgotten): the file, no read, the same arrays.
    history_cache.clear()
    loaded = run(client, _compare, client, tenant)
    assert loaded.refresh == "snapshot" and loaded.version == first.version and full_reads == [True]
    assert loaded.history is not first.history and np.array_equal(loaded.ids, first.ids)
    assert np.array_equal(loaded.owners, first.owners) and np.array_equal(loaded.owner_code, first.owner_code)

    # Writes after the snapshot: a new process loads it and splices the written leads in.
    rng = random.Random(11)
    for _ in range(3):
        run(client, _random_writes, client, tenant, rng, rng.randint(3, 6))
        history_cache.clear()
        spliced = run(client, _compare, client, tenant)
        assert spliced.refresh.startswith(("patch:", "unchanged:")) and spliced.version > first.version
        assert full_reads == [True], full_reads
    assert _snapshots(tmp_path) == [name]  # unchanged: the lag is under the rewrite share

    # Past the rewrite share, the spliced arrays are written again: the next process needs no splice.
    monkeypatch.setattr(history_cache, "SNAPSHOT_REWRITE_SHARE", 0.0)
    run(client, _random_writes, client, tenant, rng, 3)
    rewritten = run(client, _compare, client, tenant)
    run(client, history_cache.snapshots_written)
    assert rewritten.snapshot_lag == 0
    history_cache.clear()
    again = run(client, _compare, client, tenant)
    assert (again.refresh, again.version) == ("snapshot", rewritten.version)
    assert full_reads == [True]


def test_a_snapshot_of_another_database_or_a_damaged_one_is_not_used(
    client: TestClient[Any], tenant: Tenant, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    monkeypatch.setattr(history_cache, "SNAPSHOT_DIR", str(tmp_path))
    monkeypatch.setattr(history_cache, "SNAPSHOT_MIN_LEADS", 1)
    run(client, _load, client, tenant)
    first = run(client, _compare, client, tenant)
    run(client, history_cache.snapshots_written)
    [name] = _snapshots(tmp_path)
    real = history_cache._database_identity

    async def elsewhere(session: Any, organization_id: uuid.UUID) -> str | None:
        return f"{await real(session, organization_id)}-recreated"

    # The same URL and tenant id, but another database (dropped and created again): read again.
    monkeypatch.setattr(history_cache, "_database_identity", elsewhere)
    history_cache.clear()
    assert run(client, _compare, client, tenant).refresh == "full"
    run(client, history_cache.snapshots_written)
    monkeypatch.setattr(history_cache, "_database_identity", real)
    # Cut short (a full disk, a copy in progress): read again, and written whole again.
    data = (tmp_path / name).read_bytes()
    (tmp_path / name).write_bytes(data[: len(data) // 2])
    history_cache.clear()
    assert run(client, _compare, client, tenant).refresh == "full"
    run(client, history_cache.snapshots_written)
    history_cache.clear()
    loaded = run(client, _compare, client, tenant)
    assert loaded.refresh == "snapshot" and loaded.version == first.version


def test_snapshots_are_bounded_and_written_whole_by_racing_writers(
    client: TestClient[Any], tenant: Tenant, other_tenant: Tenant, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    monkeypatch.setattr(history_cache, "SNAPSHOT_DIR", str(tmp_path))
    monkeypatch.setattr(history_cache, "SNAPSHOT_MIN_LEADS", 1)
    run(client, _load, client, tenant)
    run(client, _load, client, other_tenant)
    entry = run(client, _compare, client, tenant)
    run(client, history_cache.snapshots_written)
    [name] = _snapshots(tmp_path)
    stale = tmp_path / ".tmp-history-killed.bin"  # a writer killed mid-write long ago
    stale.write_bytes(b"x")
    os.utime(stale, (0, 0))
    monkeypatch.setattr(history_cache, "MAX_SNAPSHOTS", 1)
    other = run(client, _compare, client, other_tenant)
    run(client, history_cache.snapshots_written)
    [kept] = _snapshots(tmp_path)  # the least recently used tenant's file and the stale one went
    assert kept != name
    # Two processes writing the same tenant's snapshot at once: each renames a whole file of its own.
    path = str(tmp_path / kept)
    identity = "the same database"
    key = ("the database", other_tenant.organization_id)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: history_cache._write_snapshot(str(tmp_path), key, path, identity, other), range(8)))
    assert _snapshots(tmp_path) == [kept]
    read = history_cache._read_snapshot(path, identity)
    assert read is not None and read.version == other.version
    _assert_same(read.history, other.history, "raced")
    assert history_cache._read_snapshot(path, "another database") is None
    assert entry.n_leads == 40


def test_a_starting_process_warms_the_tenants_of_its_database_from_their_snapshots(
    client: TestClient[Any], tenant: Tenant, other_tenant: Tenant, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    monkeypatch.setattr(history_cache, "SNAPSHOT_DIR", str(tmp_path))
    monkeypatch.setattr(history_cache, "SNAPSHOT_MIN_LEADS", 1)
    monkeypatch.setattr(history_cache, "FULL_REREAD_SHARE", 1.0)
    run(client, _load, client, tenant)
    first = run(client, _compare, client, tenant)
    run(client, history_cache.snapshots_written)
    (tmp_path / "history-of-another-database.bin").write_bytes(b"not a snapshot")
    run(client, _random_writes, client, tenant, random.Random(5), 4)
    built: list[bool] = []
    real = history_cache._built
    monkeypatch.setattr(history_cache, "_built", lambda *args: built.append(True) or real(*args))
    history_cache.clear()
    monkeypatch.setattr(history_cache, "WARM_READ_MIN_LEADS", 10**9)  # no tenant to read whole: snapshots only
    run(client, history_cache.warm, client.app.state.read_sessionmaker)
    [(_, organization)] = list(history_cache._cache.entries)  # this tenant only: no snapshot of the other
    assert organization == tenant.organization_id and built == []
    entry = run(client, _compare, client, tenant)  # the warmed entry is current: the same arrays as a read
    assert entry.refresh.startswith(("patch:", "unchanged:")) and entry.version > first.version and built == []


def test_a_starting_process_reads_a_large_tenant_without_a_snapshot_and_writes_one(
    client: TestClient[Any], tenant: Tenant, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    monkeypatch.setattr(history_cache, "SNAPSHOT_DIR", str(tmp_path))
    monkeypatch.setattr(history_cache, "MAX_TENANTS", 10_000)  # every tenant of the shared test database fits
    monkeypatch.setattr(history_cache, "MAX_CACHED_LEADS", 10**9)
    run(client, _load, client, tenant)
    monkeypatch.setattr(history_cache, "SNAPSHOT_MIN_LEADS", 40)  # this tenant's leads: it is large
    monkeypatch.setattr(history_cache, "WARM_READ_MIN_LEADS", 40)

    async def large() -> list[tuple[uuid.UUID, int]]:
        async with client.app.state.read_sessionmaker() as session:
            found = await history_cache._large_tenants(session)
            counts = [
                await session.scalar(select(func.count()).select_from(Lead).where(Lead.organization_id == org))
                for org in found
            ]
        return list(zip(found, counts, strict=True))

    found = run(client, large)
    assert tenant.organization_id in [org for org, _ in found]
    assert all(n >= 40 for _, n in found) and [n for _, n in found] == sorted((n for _, n in found), reverse=True)

    key = (
        client.app.state.read_sessionmaker.kw["bind"].url.render_as_string(hide_password=True),
        tenant.organization_id,
    )
    history_cache.clear()
    run(client, history_cache.warm, client.app.state.read_sessionmaker)  # waits for the snapshots it writes
    warmed = history_cache._cache.entries[key]
    assert warmed.refresh == "full" and os.path.exists(history_cache._snapshot_path(str(tmp_path), key))
    assert run(client, _compare, client, tenant) is warmed  # current: the request reads nothing

    history_cache.clear()  # the next process of the machine
    run(client, history_cache.warm, client.app.state.read_sessionmaker)
    assert history_cache._cache.entries[key].refresh == "snapshot"


def test_the_processes_of_a_machine_take_turns_to_read_a_tenant_whole(
    client: TestClient[Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """An exclusive flock per open file: two turns in one process exclude each other as two
    processes' would. A turn handed to a snapshot write ends when the write does."""
    monkeypatch.setattr(history_cache, "SNAPSHOT_DIR", str(tmp_path))
    key = ("postgresql://somewhere/db", uuid.uuid4())

    async def scenario() -> list[str]:
        log: list[str] = []
        write: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def second() -> None:
            async with history_cache._machine_turn(key) as turn:
                assert turn is not None
                log.append("second")

        async with history_cache._machine_turn(key) as turn:
            assert turn is not None
            waiting = asyncio.create_task(second())
            await asyncio.sleep(0.3)
            log.append("first read")
            turn.until(write)
        await asyncio.sleep(0.3)
        log.append("first left, writing")
        write.set_result(None)
        await asyncio.wait_for(waiting, 5)
        return log

    assert run(client, scenario) == ["first read", "first left, writing", "second"]
