"""The leads' stage summary (entered/exited time of each stage's first visit and the
furthest stage reached) that funnel reports read instead of the history: kept on
write by the service, filled by the history import, rebuilt by migration 0004 —
and always what the stage changes say."""

from __future__ import annotations

import datetime as dt
import importlib.util
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from litestar.testing import TestClient
from sqlalchemy import Uuid, bindparam, select, text, update

from canvass.errors import RuleViolation
from canvass.pipeline.models import Lead, StageChange
from canvass.pipeline.schemas import LeadCreate, OutcomeRecord, Reopen, StageMove
from canvass.pipeline.scope import Actor
from canvass.pipeline.services import leads as lead_service
from canvass.pipeline.services.imports import HistoryEntry, LeadImportRow, import_leads
from canvass.pipeline.stage_summary import STAGE_INDEX, STAGES, SUMMARY_COLUMNS, entered_column, exited_column
from canvass.pipeline.vocabulary import LeadStatus, Outcome, Role, Stage
from tests.conftest import Tenant, run

T0 = dt.datetime(2025, 1, 6, 9, tzinfo=dt.UTC)
MIGRATION = Path(__file__).resolve().parents[2] / "canvass/migrations/versions/0004_lead_stage_summary.py"


def _migration() -> ModuleType:
    spec = importlib.util.spec_from_file_location("migration_0004", MIGRATION)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _reference(changes: list[tuple[str | None, str, str, dt.datetime, dt.datetime | None]]) -> dict[str, Any]:
    """The summary straight from the definition, over a lead's stage changes
    (from_stage, to_stage, status, at, from_stage_entered_at), in any order."""
    advancing = [c for c in changes if c[2] in ("open", "won") and (c[0] is None or c[0] != c[1])]
    summary: dict[str, Any] = dict.fromkeys(SUMMARY_COLUMNS)
    for stage in STAGES:
        entries = [c[3] for c in advancing if c[1] == stage]
        if not entries:
            continue
        entered = min(entries)
        summary[entered_column(stage)] = entered
        leaves = [c[3] for c in changes if c[0] == stage and c[1] != stage and (c[4] or c[3]) >= entered]
        summary[exited_column(stage)] = min(leaves) if leaves else None
    if advancing:
        summary["reached_stage"] = max(STAGE_INDEX[c[1]] for c in advancing)
    return summary


async def _summaries(sessionmaker: Any, org: uuid.UUID, lead_ids: list[uuid.UUID]) -> dict[uuid.UUID, dict[str, Any]]:
    async with sessionmaker() as session:
        rows = await session.execute(
            select(Lead.id, *(getattr(Lead, name) for name in SUMMARY_COLUMNS)).where(
                Lead.organization_id == org, Lead.id.in_(lead_ids)
            )
        )
        return {r[0]: dict(zip(SUMMARY_COLUMNS, r[1:], strict=True)) for r in rows}


async def _recomputed(sessionmaker: Any, org: uuid.UUID, lead_ids: list[uuid.UUID]) -> dict[uuid.UUID, dict[str, Any]]:
    async with sessionmaker() as session:
        rows = await session.execute(
            select(
                StageChange.lead_id,
                StageChange.from_stage,
                StageChange.to_stage,
                StageChange.status,
                StageChange.at,
                StageChange.from_stage_entered_at,
            ).where(StageChange.organization_id == org, StageChange.lead_id.in_(lead_ids))
        )
        history: dict[uuid.UUID, list[Any]] = {lead_id: [] for lead_id in lead_ids}
        for r in rows:
            history[r[0]].append(tuple(r[1:]))
        return {lead_id: _reference(changes) for lead_id, changes in history.items()}


async def _backfill(sessionmaker: Any, org: uuid.UUID) -> None:
    """Null the tenant's summaries and rebuild them with the migration's statement."""
    statement = text(_migration().backfill_sql(one_tenant=True)).bindparams(bindparam("organization_id", type_=Uuid))
    async with sessionmaker() as session, session.begin():
        await session.execute(
            update(Lead).where(Lead.organization_id == org).values(dict.fromkeys(SUMMARY_COLUMNS)),
            execution_options={"synchronize_session": False},
        )
        await session.execute(statement, {"organization_id": org})


@pytest.fixture
def gates_off(client: TestClient[Any], tenant: Tenant) -> Tenant:
    config = client.get("/api/v1/organization/pipeline-settings", headers=tenant.admin.headers).json()
    for gate in config["gates"].values():
        gate["enabled"] = False
    response = client.put("/api/v1/organization/pipeline-settings", json=config, headers=tenant.admin.headers)
    assert response.status_code == 200, response.text
    return tenant


# What a rep or manager does next to a lead: each with the days since the previous step.
ACTIONS = st.lists(
    st.tuples(
        st.sampled_from(["next", "next", "next", "skip_to_close", "lost", "won", "disqualified", "reopen", "after"]),
        st.sampled_from([0.0, 0.5, 1.0, 3.0, 10.0]),
    ),
    max_size=12,
)


async def _play(sessionmaker: Any, actor: Actor, steps: list[tuple[str, float]]) -> uuid.UUID:
    """Create a lead and try each step through the service; steps the rules refuse are skipped."""
    at = T0
    async with sessionmaker() as session, session.begin():
        lead = await lead_service.create_lead(session, actor, LeadCreate(title="walk", amount=500.0), at=at)
        lead_id = lead.id
    for action, gap in steps:
        at += dt.timedelta(days=gap)
        try:
            async with sessionmaker() as session, session.begin():
                current = await lead_service.get_lead(session, actor, lead_id)
                stage = Stage(current.stage)
                if action in ("next", "skip_to_close"):
                    target = Stage.CLOSE if action == "skip_to_close" else _next(stage)
                    await lead_service.move_stage(session, actor, lead_id, StageMove(to_stage=target, at=at))
                elif action == "after":
                    await lead_service.move_stage(session, actor, lead_id, StageMove(to_stage=Stage.AFTER_SALE, at=at))
                elif action == "reopen":
                    await lead_service.reopen_lead(session, actor, lead_id, Reopen())
                else:
                    record = OutcomeRecord(outcome=Outcome(action), amount=900.0, loss_reason="budget", at=at)
                    await lead_service.record_outcome(session, actor, lead_id, record)
        except RuleViolation:
            continue
    return lead_id


def _next(stage: Stage) -> Stage:
    order = list(Stage)
    return order[min(order.index(stage) + 1, len(order) - 1)]


def test_the_service_keeps_the_summary_the_history_defines(client: TestClient[Any], gates_off: Tenant) -> None:
    sessionmaker = client.app.state.sessionmaker
    manager = Actor(organization_id=gates_off.organization_id, user_id=gates_off.admin.id, role=Role.ADMIN)
    org = gates_off.organization_id
    written: list[uuid.UUID] = []

    @settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(steps=ACTIONS)
    def walk(steps: list[tuple[str, float]]) -> None:
        lead_id = run(client, _play, sessionmaker, manager, steps)
        written.append(lead_id)
        kept = run(client, _summaries, sessionmaker, org, [lead_id])
        assert kept == run(client, _recomputed, sessionmaker, org, [lead_id]), steps

    walk()
    # A fixed walk through loss, reopen and re-advance, so the interesting case is always there.
    lead_id = run(
        client,
        _play,
        sessionmaker,
        manager,
        [
            ("next", 1),
            ("next", 1),
            ("lost", 2),
            ("reopen", 0),
            ("next", 0),
            ("next", 1),
            ("next", 1),
            ("won", 1),
            ("after", 1),
        ],
    )
    written.append(lead_id)
    kept = run(client, _summaries, sessionmaker, org, [lead_id])[lead_id]
    assert kept == run(client, _recomputed, sessionmaker, org, [lead_id])[lead_id]
    assert kept["reached_stage"] == STAGE_INDEX["after_sale"]
    assert kept["entered_approach_at"] == T0 + dt.timedelta(days=2)
    assert kept["exited_approach_at"] == T0 + dt.timedelta(days=4)  # left by the loss
    assert kept["entered_close_at"] is not None and kept["entered_close_at"] > kept["exited_approach_at"]
    assert kept["exited_close_at"] is not None and kept["entered_after_sale_at"] == kept["exited_close_at"]

    # The migration's backfill rebuilds exactly what the service kept.
    before = run(client, _summaries, sessionmaker, org, written)
    assert any(s["exited_close_at"] for s in before.values())
    run(client, _backfill, sessionmaker, org)
    assert run(client, _summaries, sessionmaker, org, written) == before


def test_a_lost_deal_has_not_reached_close_and_a_reopened_one_keeps_its_first_visits(
    client: TestClient[Any], gates_off: Tenant
) -> None:
    sessionmaker = client.app.state.sessionmaker
    admin = Actor(organization_id=gates_off.organization_id, user_id=gates_off.admin.id, role=Role.ADMIN)
    org = gates_off.organization_id
    lead_id = run(client, _play, sessionmaker, admin, [("next", 1), ("lost", 2)])
    kept = run(client, _summaries, sessionmaker, org, [lead_id])[lead_id]
    assert kept["reached_stage"] == STAGE_INDEX["qualify"]
    assert kept["entered_close_at"] is None and kept["exited_close_at"] is None
    assert kept["exited_qualify_at"] == T0 + dt.timedelta(days=3)
    # Reopened back to qualify: not a new first visit; the first visit's exit stays.
    lead_id2 = run(client, _play, sessionmaker, admin, [("next", 1), ("lost", 2), ("reopen", 0), ("next", 1)])
    again = run(client, _summaries, sessionmaker, org, [lead_id2])[lead_id2]
    assert again["entered_qualify_at"] == T0 + dt.timedelta(days=1)
    assert again["exited_qualify_at"] == T0 + dt.timedelta(days=3)
    assert again["entered_approach_at"] is not None and again["reached_stage"] == STAGE_INDEX["approach"]


async def _import(sessionmaker: Any, actor: Actor, rows: list[LeadImportRow]) -> list[uuid.UUID]:
    async with sessionmaker() as session, session.begin():
        report = await import_leads(session, actor, rows)
        assert report.rejected == []
        refs = [r.external_ref for r in rows]
        return list(
            (
                await session.scalars(
                    select(Lead.id).where(Lead.organization_id == actor.organization_id, Lead.external_ref.in_(refs))
                )
            ).all()
        )


def test_the_history_import_fills_the_summary(client: TestClient[Any], tenant: Tenant) -> None:
    sessionmaker = client.app.state.sessionmaker
    admin = Actor(organization_id=tenant.organization_id, user_id=tenant.admin.id, role=Role.ADMIN)
    day = dt.timedelta(days=1)
    rows = [
        LeadImportRow(
            external_ref="won-1",
            title="won",
            amount=100.0,
            history=[
                HistoryEntry(to_stage=Stage.PROSPECTING, at=T0),
                HistoryEntry(to_stage=Stage.QUALIFY, at=T0 + 2 * day),
                HistoryEntry(to_stage=Stage.CLOSE, at=T0 + 5 * day),
                HistoryEntry(to_stage=Stage.CLOSE, status=LeadStatus.WON, at=T0 + 9 * day, amount=120.0),
            ],
        ),
        LeadImportRow(
            external_ref="lost-1",
            title="lost",
            history=[
                HistoryEntry(to_stage=Stage.PROSPECTING, at=T0),
                HistoryEntry(to_stage=Stage.CLOSE, status=LeadStatus.LOST, at=T0 + 4 * day),
            ],
        ),
    ]
    lead_ids = run(client, _import, sessionmaker, admin, rows)
    assert len(lead_ids) == 2
    kept = run(client, _summaries, sessionmaker, tenant.organization_id, lead_ids)
    assert kept == run(client, _recomputed, sessionmaker, tenant.organization_id, lead_ids)
    by_reach = sorted(kept.values(), key=lambda s: s["reached_stage"])
    lost, won = by_reach
    assert lost["reached_stage"] == 0 and lost["exited_prospecting_at"] == T0 + 4 * day
    assert lost["entered_close_at"] is None
    assert won["reached_stage"] == STAGE_INDEX["close"]
    assert won["entered_qualify_at"] == T0 + 2 * day and won["exited_qualify_at"] == T0 + 5 * day
    assert won["entered_close_at"] == T0 + 5 * day and won["exited_close_at"] is None


def test_devices_neither_version_nor_receive_the_summary(client: TestClient[Any], gates_off: Tenant) -> None:
    """Server-derived: a move records no field version for the summary columns, and the lead a
    device pulls (LeadOut) has none of them."""
    sessionmaker = client.app.state.sessionmaker
    admin = Actor(organization_id=gates_off.organization_id, user_id=gates_off.admin.id, role=Role.ADMIN)
    lead_id = run(client, _play, sessionmaker, admin, [("next", 1), ("next", 1)])

    async def read() -> tuple[dict[str, Any], Any]:
        async with sessionmaker() as session:
            lead = await lead_service.get_lead(session, admin, lead_id)
            return dict(lead.field_versions or {}), lead_service.to_lead_out(lead)

    versions, out = run(client, read)
    assert "stage" in versions  # the move itself is versioned
    assert not set(versions) & set(SUMMARY_COLUMNS)
    assert not set(type(out).__struct_fields__) & set(SUMMARY_COLUMNS)
