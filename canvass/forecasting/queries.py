"""The small query layer between the pipeline tables and the maths.

Every function aggregates in SQL and hands back compact rows or numpy arrays:
never one Python object per lead. Each query pins the tenant and the caller's
scope (``canvass.pipeline.scope``) and then narrows to the report's cut.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import msgspec
import numpy as np
from sqlalchemy import ColumnElement, Integer, and_, case, cast, distinct, false, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from canvass.forecasting.history import STATUSES, LeadHistory
from canvass.pipeline.models import Account, Lead, StageChange, Team, User
from canvass.pipeline.scope import Actor, lead_scope, subtree_members, visible_owner
from canvass.pipeline.vocabulary import STAGE_ORDER, LeadStatus

STAGE_INDEX = {stage.value: i for i, stage in enumerate(STAGE_ORDER)}


class FunnelCut(msgspec.Struct, kw_only=True, frozen=True):
    """Which leads a report covers, within the caller's scope."""

    owner_id: uuid.UUID | None = None
    team_id: uuid.UUID | None = None  # the team and its whole subtree
    territory_id: uuid.UUID | None = None
    product: str | None = None
    source_channel: str | None = None


class Period(msgspec.Struct, frozen=True):
    """A half-open interval [start, end) of business time."""

    start: dt.datetime
    end: dt.datetime


async def _cut_condition(session: AsyncSession, actor: Actor, cut: FunnelCut) -> ColumnElement[bool]:
    conditions: list[ColumnElement[bool]] = [lead_scope(actor)]
    if cut.owner_id:
        conditions.append(Lead.owner_id == cut.owner_id)
    if cut.team_id:
        team_path = await session.scalar(
            select(Team.path).where(Team.organization_id == actor.organization_id, Team.id == cut.team_id)
        )
        if team_path is None:
            conditions.append(false())  # no such team: an empty report, not an error
        else:
            conditions.append(Lead.owner_id.in_(subtree_members(actor.organization_id, team_path)))
    if cut.territory_id:
        accounts = select(Account.id).where(
            Account.organization_id == actor.organization_id, Account.territory_id == cut.territory_id
        )
        conditions.append(Lead.account_id.in_(accounts))
    if cut.product:
        conditions.append(Lead.product_interest == cut.product)
    if cut.source_channel:
        conditions.append(Lead.source_channel == cut.source_channel)
    return and_(*conditions)


def _stage_index(column: Any) -> Any:
    return case(STAGE_INDEX, value=column, else_=-1)


def _days(dialect: str, later: Any, earlier: Any) -> Any:
    """Fractional days between two timestamp columns, per dialect."""
    if dialect == "postgresql":
        return func.extract("epoch", later - earlier) / 86400.0
    return func.julianday(later) - func.julianday(earlier)


def _whole_days(dialect: str, days: Any) -> Any:
    return cast(func.floor(days), Integer) if dialect == "postgresql" else cast(days, Integer)


class StageFlow(msgspec.Struct, kw_only=True):
    """Leads that entered stages in the period, grouped by which stages they entered
    then (bit mask), the furthest stage they have reached since, and their status."""

    entered_mask: np.ndarray
    furthest_stage: np.ndarray
    status: list[str]
    leads: np.ndarray
    amount: np.ndarray


async def stage_flow(session: AsyncSession, actor: Actor, cut: FunnelCut, period: Period) -> StageFlow:
    """One pass over the history of the leads that entered any stage in the period.

    Only moves that keep the deal alive count as reaching a stage: a lost deal
    that jumps to `close` has not reached `close`.
    """
    in_cut = await _cut_condition(session, actor, cut)
    org = actor.organization_id
    advancing = and_(
        StageChange.status.in_((LeadStatus.OPEN.value, LeadStatus.WON.value)),
        (StageChange.from_stage.is_(None)) | (StageChange.from_stage != StageChange.to_stage),
    )
    cohort = (
        select(StageChange.lead_id)
        .join(Lead, and_(Lead.organization_id == StageChange.organization_id, Lead.id == StageChange.lead_id))
        .where(
            StageChange.organization_id == org,
            StageChange.at >= period.start,
            StageChange.at < period.end,
            advancing,
            in_cut,
        )
        .distinct()
        .subquery()
    )
    in_period = and_(StageChange.at >= period.start, StageChange.at < period.end)
    entered_bit = case(
        *((and_(in_period, StageChange.to_stage == stage), 1 << i) for stage, i in STAGE_INDEX.items()), else_=0
    )
    per_lead = (
        select(
            StageChange.lead_id.label("lead_id"),
            # A sum of distinct powers of two is their bitwise OR, on every database.
            func.sum(distinct(entered_bit)).label("entered_mask"),
            func.max(_stage_index(StageChange.to_stage)).label("furthest_stage"),
        )
        .where(StageChange.organization_id == org, StageChange.lead_id.in_(select(cohort.c.lead_id)), advancing)
        .group_by(StageChange.lead_id)
        .subquery()
    )
    rows = (
        await session.execute(
            select(
                per_lead.c.entered_mask,
                per_lead.c.furthest_stage,
                Lead.status,
                func.count(),
                func.coalesce(func.sum(Lead.amount), 0.0),
            )
            .join(Lead, and_(Lead.organization_id == org, Lead.id == per_lead.c.lead_id))
            .group_by(per_lead.c.entered_mask, per_lead.c.furthest_stage, Lead.status)
        )
    ).all()
    return StageFlow(
        entered_mask=np.array([int(r[0] or 0) for r in rows], dtype=np.int64),
        furthest_stage=np.array([int(r[1]) for r in rows], dtype=np.int64),
        status=[r[2] for r in rows],
        leads=np.array([int(r[3]) for r in rows], dtype=np.int64),
        amount=np.array([float(r[4]) for r in rows], dtype=np.float64),
    )


class StageDurations(msgspec.Struct, kw_only=True):
    """Days spent in each stage by visits that ended in the period, as a histogram
    in whole days (enough for medians and percentiles at day resolution), with the
    exact sums for means."""

    stage: np.ndarray
    day: np.ndarray
    visits: np.ndarray
    total_days: np.ndarray


async def stage_durations(session: AsyncSession, actor: Actor, cut: FunnelCut, period: Period) -> StageDurations:
    dialect = session.get_bind().dialect.name
    in_cut = await _cut_condition(session, actor, cut)
    days = _days(dialect, StageChange.at, StageChange.from_stage_entered_at)
    whole = _whole_days(dialect, days)
    stage = _stage_index(StageChange.from_stage)
    rows = (
        await session.execute(
            select(stage, whole, func.count(), func.sum(days))
            .join(Lead, and_(Lead.organization_id == StageChange.organization_id, Lead.id == StageChange.lead_id))
            .where(
                StageChange.organization_id == actor.organization_id,
                StageChange.at >= period.start,
                StageChange.at < period.end,
                StageChange.from_stage.is_not(None),
                StageChange.from_stage != StageChange.to_stage,
                StageChange.from_stage_entered_at.is_not(None),
                in_cut,
            )
            .group_by(stage, whole)
        )
    ).all()
    return StageDurations(
        stage=np.array([int(r[0]) for r in rows], dtype=np.int64),
        day=np.array([max(int(r[1]), 0) for r in rows], dtype=np.int64),
        visits=np.array([int(r[2]) for r in rows], dtype=np.int64),
        total_days=np.array([float(r[3] or 0.0) for r in rows], dtype=np.float64),
    )


class Outcomes(msgspec.Struct, kw_only=True):
    """Deals decided in the period: counts and amounts by status, and the sales
    cycle (created → won) of each won deal as a day histogram."""

    won: int
    won_amount: float
    lost: int
    lost_amount: float
    disqualified: int
    cycle_day: np.ndarray
    cycle_deals: np.ndarray
    cycle_total_days: float


async def outcomes(session: AsyncSession, actor: Actor, cut: FunnelCut, period: Period) -> Outcomes:
    dialect = session.get_bind().dialect.name
    in_cut = await _cut_condition(session, actor, cut)
    decided = and_(Lead.closed_at >= period.start, Lead.closed_at < period.end, in_cut)
    counts = {
        status: (int(n), float(amount or 0.0))
        for status, n, amount in (
            await session.execute(
                select(Lead.status, func.count(), func.sum(Lead.amount)).where(decided).group_by(Lead.status)
            )
        ).all()
    }
    cycle = _days(dialect, Lead.closed_at, Lead.created_at)
    whole = _whole_days(dialect, cycle)
    hist = (
        await session.execute(
            select(whole, func.count(), func.sum(cycle))
            .where(decided, Lead.status == LeadStatus.WON.value)
            .group_by(whole)
        )
    ).all()
    return Outcomes(
        won=counts.get("won", (0, 0.0))[0],
        won_amount=counts.get("won", (0, 0.0))[1],
        lost=counts.get("lost", (0, 0.0))[0],
        lost_amount=counts.get("lost", (0, 0.0))[1],
        disqualified=counts.get("disqualified", (0, 0.0))[0],
        cycle_day=np.array([max(int(r[0]), 0) for r in hist], dtype=np.int64),
        cycle_deals=np.array([int(r[1]) for r in hist], dtype=np.int64),
        cycle_total_days=float(sum(float(r[2] or 0.0) for r in hist)),
    )


class OpenLead(msgspec.Struct, kw_only=True):
    id: uuid.UUID
    title: str
    owner_id: uuid.UUID
    stage: str
    stage_entered_at: dt.datetime
    amount: float | None


async def open_pipeline(session: AsyncSession, actor: Actor, cut: FunnelCut) -> tuple[int, float]:
    """Count and amount of the open pipeline in the cut."""
    in_cut = await _cut_condition(session, actor, cut)
    n, amount = (
        await session.execute(
            select(func.count(), func.coalesce(func.sum(Lead.amount), 0.0)).where(
                in_cut, Lead.status == LeadStatus.OPEN.value
            )
        )
    ).one()
    return int(n), float(amount or 0.0)


async def stuck_leads(
    session: AsyncSession, actor: Actor, cut: FunnelCut, entered_before: dict[str, dt.datetime], *, limit: int
) -> tuple[int, list[OpenLead]]:
    """Open leads that entered their current stage before that stage's threshold."""
    if not entered_before:
        return 0, []
    in_cut = await _cut_condition(session, actor, cut)
    stuck = and_(
        in_cut,
        Lead.status == LeadStatus.OPEN.value,
        case(
            *((Lead.stage == stage, Lead.stage_entered_at < before) for stage, before in entered_before.items()),
            else_=False,
        ),
    )
    total = int(await session.scalar(select(func.count()).where(stuck)) or 0)
    rows = (
        await session.execute(
            select(Lead.id, Lead.title, Lead.owner_id, Lead.stage, Lead.stage_entered_at, Lead.amount)
            .where(stuck)
            .order_by(Lead.stage_entered_at, Lead.id)
            .limit(limit)
        )
    ).all()
    return total, [
        OpenLead(id=r[0], title=r[1], owner_id=r[2], stage=r[3], stage_entered_at=r[4], amount=r[5]) for r in rows
    ]


class OwnerPipeline(msgspec.Struct, kw_only=True):
    """Open deals of one owner expected to close in the period, by category."""

    owner_id: uuid.UUID
    category: str
    deals: int
    amount: float
    weighted: float  # amount × probability (the rep's override, else the stage's)
    stale_amount: float  # amount of deals not touched since the freshness cut-off


async def pipeline_by_owner(
    session: AsyncSession, actor: Actor, period: Period, probabilities: dict[str, float], stale_before: dt.datetime
) -> list[OwnerPipeline]:
    probability = func.coalesce(Lead.probability_override, case(probabilities, value=Lead.stage, else_=0.0))
    amount = func.coalesce(Lead.amount, 0.0)
    rows = (
        await session.execute(
            select(
                Lead.owner_id,
                Lead.forecast_category,
                func.count(),
                func.sum(amount),
                func.sum(amount * probability),
                func.sum(case((Lead.updated_at < stale_before, amount), else_=0.0)),
            )
            .where(
                lead_scope(actor),
                Lead.status == LeadStatus.OPEN.value,
                Lead.expected_close_date >= period.start.date(),
                Lead.expected_close_date < period.end.date(),
            )
            .group_by(Lead.owner_id, Lead.forecast_category)
        )
    ).all()
    return [
        OwnerPipeline(
            owner_id=r[0],
            category=r[1],
            deals=int(r[2]),
            amount=float(r[3] or 0.0),
            weighted=float(r[4] or 0.0),
            stale_amount=float(r[5] or 0.0),
        )
        for r in rows
    ]


async def won_by_owner(session: AsyncSession, actor: Actor, period: Period) -> dict[uuid.UUID, tuple[int, float]]:
    rows = await session.execute(
        select(Lead.owner_id, func.count(), func.coalesce(func.sum(Lead.amount), 0.0))
        .where(
            lead_scope(actor),
            Lead.status == LeadStatus.WON.value,
            Lead.closed_at >= period.start,
            Lead.closed_at < period.end,
        )
        .group_by(Lead.owner_id)
    )
    return {owner: (int(n), float(amount or 0.0)) for owner, n, amount in rows}


class Person(msgspec.Struct, kw_only=True):
    id: uuid.UUID
    name: str
    role: str
    team_id: uuid.UUID | None


class TeamNode(msgspec.Struct, kw_only=True):
    id: uuid.UUID
    name: str
    path: str
    manager_id: uuid.UUID | None


async def people_and_teams(session: AsyncSession, actor: Actor) -> tuple[list[Person], list[TeamNode]]:
    """The people the actor sees, and the teams of the actor's subtree (all for an admin)."""
    users = (
        await session.execute(
            select(User.id, User.name, User.role, User.team_id).where(
                User.organization_id == actor.organization_id, visible_owner(actor, User.id)
            )
        )
    ).all()
    teams_stmt = select(Team.id, Team.name, Team.path, Team.manager_id).where(
        Team.organization_id == actor.organization_id
    )
    if actor.role.value == "rep":
        return [Person(id=u[0], name=u[1], role=u[2], team_id=u[3]) for u in users], []
    if actor.role.value != "admin":
        if not actor.team_path:
            return [Person(id=u[0], name=u[1], role=u[2], team_id=u[3]) for u in users], []
        teams_stmt = teams_stmt.where(Team.path.startswith(actor.team_path))
    teams = (await session.execute(teams_stmt.order_by(Team.path))).all()
    return (
        [Person(id=u[0], name=u[1], role=u[2], team_id=u[3]) for u in users],
        [TeamNode(id=t[0], name=t[1], path=t[2], manager_id=t[3]) for t in teams],
    )


async def lead_history(
    session: AsyncSession, organization_id: uuid.UUID, scope: ColumnElement[bool] | None = None
) -> LeadHistory:
    """The tenant's whole lead history as the arrays every forecast method reads:
    two narrow queries (leads, stage changes), no per-lead objects.

    Amounts come from the stage history (each change records the amount at that
    moment), so a backtest at an earlier date sees the amount known then.
    ``scope`` narrows the leads (e.g. to what a manager sees).
    """
    leads = (
        await session.execute(
            select(Lead.id, Lead.owner_id, Lead.created_at, Lead.status, Lead.closed_at)
            .where(
                Lead.organization_id == organization_id,
                Lead.deleted_at.is_(None),
                *([scope] if scope is not None else []),
            )
            .order_by(Lead.id)
        )
    ).all()
    index = {row[0]: i for i, row in enumerate(leads)}
    owners: dict[uuid.UUID, int] = {}
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    status_code = {name: code for code, name in enumerate(STATUSES)}
    created = np.array([(r[2] - epoch).days for r in leads], dtype=np.int64)
    closed = np.array([(r[4] - epoch).days if r[4] is not None else -1 for r in leads], dtype=np.int64)
    status = np.array([status_code[r[3]] for r in leads], dtype=np.int8)
    owner = np.array([owners.setdefault(r[1], len(owners)) for r in leads], dtype=np.int32)
    changes = (
        await session.execute(
            select(StageChange.lead_id, StageChange.at, StageChange.to_stage, StageChange.amount)
            .where(StageChange.organization_id == organization_id)
            .order_by(StageChange.lead_id, StageChange.at, StageChange.id)
        )
    ).all()
    kept = [c for c in changes if c[0] in index]
    stage_lead = np.array([index[c[0]] for c in kept], dtype=np.int64)
    stage_day = np.array([(c[1] - epoch).days for c in kept], dtype=np.int64)
    stage_to = np.array([STAGE_INDEX[c[2]] for c in kept], dtype=np.int64)
    priced = [c for c in kept if c[3] is not None]
    return LeadHistory.from_arrays(
        created=created,
        status=status,
        closed=closed,
        owner=owner,
        amount_lead=np.array([index[c[0]] for c in priced], dtype=np.int64),
        amount_day=np.array([(c[1] - epoch).days for c in priced], dtype=np.int64),
        amount=np.array([float(c[3] or 0.0) for c in priced], dtype=np.float64),
        stage_lead=stage_lead,
        stage_day=stage_day,
        stage_to=stage_to,
    )
