"""Assembles reports: runs the queries, hands their aggregates to the maths."""

from __future__ import annotations

import datetime as dt
import functools
import uuid
from collections.abc import Sequence

import anyio.to_thread
import msgspec
from sqlalchemy import and_, select, true
from sqlalchemy.ext.asyncio import AsyncSession

from canvass.db import utcnow
from canvass.errors import NotFound
from canvass.forecasting import funnel, history_cache, queries, rollup
from canvass.forecasting.backtest import BacktestReport, run_backtest
from canvass.forecasting.baselines import Forecast, WeightedPipelineConfig, naive_last_h, weighted_pipeline
from canvass.forecasting.history import LeadHistory, as_date
from canvass.forecasting.learned import learned_many
from canvass.ids import new_id
from canvass.pipeline.config import PipelineConfig
from canvass.pipeline.models import ForecastSnapshot, Team, User
from canvass.pipeline.scope import Actor, may_assign_to, visible_owner
from canvass.pipeline.services import quotas
from canvass.pipeline.services.organizations import pipeline_config
from canvass.pipeline.vocabulary import Role

STUCK_LIST_LIMIT = 100


async def funnel_report(
    session: AsyncSession,
    actor: Actor,
    cut: queries.FunnelCut,
    period: queries.Period,
    *,
    quota: float | None = None,
    now: dt.datetime | None = None,
) -> funnel.FunnelReport:
    """Three statements over the leads of the cut: the days in stage, then the stuck leads
    (the days' p90 sets the thresholds); and one pass for the flow, the outcomes and the open
    pipeline. On PostgreSQL that pass runs at the same time on a second connection of the
    session's engine when its pool has one to spare (each statement reads committed rows at
    its own snapshot, as every read here does at READ COMMITTED; rows the session wrote and
    has not committed are not seen by the second connection)."""
    now = now or utcnow()

    async def days_and_stuck(s: AsyncSession) -> tuple[queries.StageDurations, int, list[queries.OpenLead]]:
        durations = await queries.stage_durations(s, actor, cut, period)
        total, stuck = await queries.stuck_leads(
            s, actor, cut, funnel.stuck_thresholds(durations, now), limit=STUCK_LIST_LIMIT
        )
        return durations, total, stuck

    async def lead_figures(s: AsyncSession) -> queries.LeadPass:
        return await queries.lead_pass(s, actor, cut, period)

    async with queries.analytic_settings(session):
        (durations, stuck_total, stuck), leads = await queries.side_by_side(session, days_and_stuck, lead_figures)
    return funnel.build_report(
        period_start=period.start,
        period_end=period.end,
        figures=funnel.stage_figures(leads.flow, durations),
        decided=leads.decided,
        open_count=leads.open_count,
        open_amount=leads.open_amount,
        quota=quota,
        stuck_total=stuck_total,
        stuck=stuck,
        now=now,
    )


async def forecast_rollup(
    session: AsyncSession,
    actor: Actor,
    period: queries.Period,
    *,
    freshness_hours: int = 72,
    silent_owners: set[uuid.UUID] | None = None,
    now: dt.datetime | None = None,
) -> rollup.ForecastRollup:
    now = now or utcnow()
    config = await pipeline_config(session, actor.organization_id)
    probabilities = {stage.value: p for stage, p in config.probabilities().items()}
    start, end = period.start.date(), period.end.date()
    people, teams = await queries.people_and_teams(session, actor)
    calls = await quotas.latest_calls(session, actor, start, end)
    return rollup.roll_up(
        period_start=start,
        period_end=end,
        people=people,
        teams=teams,
        open_deals=await queries.pipeline_by_owner(
            session, actor, period, probabilities, now - dt.timedelta(hours=freshness_hours)
        ),
        won=await queries.won_by_owner(session, actor, period),
        quotas=await quotas.quotas_for(session, actor, start, end),
        calls={key: s.commit_amount for key, s in calls.items()},
        freshness_hours=freshness_hours,
        silent_owners=silent_owners,
    )


class RevenueForecast(msgspec.Struct, kw_only=True):
    """Won revenue (and deals) expected in [as_of, as_of + h) by every method."""

    as_of: str
    leads_in_history: int
    forecasts: list[Forecast]
    # The tenant's change-feed version the history reflects (at least): writes committed up to it are in.
    history_version: int | None = None


FORECAST_METHODS = ("learned", "weighted_pipeline", "naive_last_h")


def _weighted_config(config: PipelineConfig) -> WeightedPipelineConfig:
    return WeightedPipelineConfig(stage_probabilities={s.value: p for s, p in config.probabilities().items()})


async def revenue_forecast(
    session: AsyncSession, actor: Actor, horizons: Sequence[int], *, as_of: dt.date | None = None
) -> RevenueForecast:
    """Every method's forecast over the leads the actor sees, from their history."""
    as_of = as_of or utcnow().date()
    async with queries.analytic_settings(session):
        # The tenant's history is kept in the process and refreshed from the change feed
        # (history_cache); the actor's leads are masked from it by owner.
        scoped = await history_cache.history_for(session, actor)
    history, version = scoped.history, scoped.version
    if history.created.size == 0:
        empty = [
            Forecast(
                method=m, as_of=as_of.isoformat(), horizon_days=h, revenue=0.0, p10=0.0, p50=0.0, p90=0.0,
                won_deals=0.0, flags=["no_history"], notes=["No leads in scope yet: nothing to learn from."],
            )
            for m in FORECAST_METHODS
            for h in horizons
        ]  # fmt: skip
        return RevenueForecast(as_of=as_of.isoformat(), leads_in_history=0, forecasts=empty, history_version=version)
    weighted = _weighted_config(await pipeline_config(session, actor.organization_id))
    # The maths is CPU work (seconds at a million leads): off the event loop, as the backtest;
    # deterministic, so an answer already given on this history version is given again.
    key = ("revenue", as_of, tuple(horizons), msgspec.json.encode(weighted))
    if key not in scoped.results:
        scoped.results[key] = await anyio.to_thread.run_sync(_all_methods, history, as_of, list(horizons), weighted)
    forecasts = list(scoped.results[key])
    return RevenueForecast(
        as_of=as_of.isoformat(),
        leads_in_history=int(history.created.size),
        forecasts=forecasts,
        history_version=version,
    )


def _all_methods(
    history: LeadHistory, as_of: dt.date, horizons: list[int], weighted: WeightedPipelineConfig
) -> list[Forecast]:
    forecasts = learned_many(history, as_of, horizons, None, weighted)
    forecasts += [weighted_pipeline(history, as_of, h, weighted) for h in horizons]
    forecasts += [naive_last_h(history, as_of, h) for h in horizons]
    return forecasts


class SnapshotAccuracy(msgspec.Struct, kw_only=True):
    """How a kept forecast compares with what was won once its window closed."""

    snapshot_id: uuid.UUID
    user_id: uuid.UUID | None
    method: str
    as_of: dt.date
    horizon_days: int
    forecast: float
    p10: float | None
    p90: float | None
    actual: float
    error: float  # forecast − actual
    within_p10_p90: bool | None


class AccuracySummary(msgspec.Struct, kw_only=True):
    method: str
    user_id: uuid.UUID | None
    snapshots: int
    wape: float | None
    bias: float | None  # Σ(forecast − actual) / Σ actual: > 0 means optimistic


class ForecastAccuracy(msgspec.Struct, kw_only=True):
    summaries: list[AccuracySummary]
    snapshots: list[SnapshotAccuracy]


async def take_snapshot(
    session: AsyncSession, actor: Actor, horizons: Sequence[int], *, as_of: dt.date | None = None
) -> list[ForecastSnapshot]:
    """Keep the forecasts made as of a day (today by default) for the actor's
    scope, to be scored when their windows close."""
    result = await revenue_forecast(session, actor, horizons, as_of=as_of)
    user_id = None if actor.is_admin else actor.user_id
    rows = [
        ForecastSnapshot(
            organization_id=actor.organization_id,
            id=new_id(),
            taken_at=utcnow(),
            as_of=dt.date.fromisoformat(f.as_of),
            horizon_days=f.horizon_days,
            method=f.method,
            user_id=user_id,
            revenue=f.revenue,
            revenue_p10=f.p10,
            revenue_p50=f.p50,
            revenue_p90=f.p90,
            deals=f.won_deals,
            details={"flags": f.flags, "notes": f.notes},
        )
        for f in result.forecasts
    ]
    session.add_all(rows)
    await session.flush()
    return rows


async def forecast_accuracy(session: AsyncSession, actor: Actor, *, today: dt.date | None = None) -> ForecastAccuracy:
    """Score every kept forecast whose window has closed against what was won in
    the scope it was made for (the person's own, or the tenant's)."""
    today = today or utcnow().date()
    snapshots = (
        await session.scalars(
            select(ForecastSnapshot)
            .where(
                ForecastSnapshot.organization_id == actor.organization_id,
                visible_owner(actor, ForecastSnapshot.user_id) if not actor.is_admin else true(),
            )
            .order_by(ForecastSnapshot.as_of, ForecastSnapshot.id)
        )
    ).all()
    scored: list[SnapshotAccuracy] = []
    actors: dict[uuid.UUID | None, Actor] = {}
    for snap in snapshots:
        end = snap.as_of + dt.timedelta(days=snap.horizon_days)
        if end > today:
            continue
        if snap.user_id not in actors:
            actors[snap.user_id] = await _actor_for(session, actor, snap.user_id)
        window = queries.Period(
            dt.datetime.combine(snap.as_of, dt.time(), dt.UTC), dt.datetime.combine(end, dt.time(), dt.UTC)
        )
        won = await queries.won_by_owner(session, actors[snap.user_id], window)
        actual = float(sum(amount for _, amount in won.values()))
        low, high = snap.revenue_p10, snap.revenue_p90
        scored.append(
            SnapshotAccuracy(
                snapshot_id=snap.id,
                user_id=snap.user_id,
                method=snap.method,
                as_of=snap.as_of,
                horizon_days=snap.horizon_days,
                forecast=snap.revenue,
                p10=low,
                p90=high,
                actual=actual,
                error=snap.revenue - actual,
                within_p10_p90=(low <= actual <= high) if low is not None and high is not None else None,
            )
        )
    groups: dict[tuple[str, uuid.UUID | None], list[SnapshotAccuracy]] = {}
    for s in scored:
        groups.setdefault((s.method, s.user_id), []).append(s)
    summaries = []
    for (method, user_id), rows in sorted(groups.items(), key=lambda kv: (kv[0][0], str(kv[0][1]))):
        total = sum(r.actual for r in rows)
        summaries.append(
            AccuracySummary(
                method=method,
                user_id=user_id,
                snapshots=len(rows),
                wape=sum(abs(r.error) for r in rows) / total if total else None,
                bias=sum(r.error for r in rows) / total if total else None,
            )
        )
    return ForecastAccuracy(summaries=summaries, snapshots=scored)


async def person_scope(session: AsyncSession, caller: Actor, user_id: uuid.UUID | None) -> Actor:
    """Whose leads a forecast covers: the caller's own scope, or that of one person
    the caller sees (a manager: anyone in the subtree; an admin: anyone) — a rep's
    own leads, a manager's whole subtree. Anyone else looks the same as missing."""
    if user_id is None or user_id == caller.user_id:
        return caller
    person = await _person(session, caller.organization_id, user_id)
    if person is None or not may_assign_to(caller, user_id, person.team_path):
        raise NotFound(f"No person {user_id} in your scope.", resource="user", id=str(user_id))
    return person


async def _person(session: AsyncSession, organization_id: uuid.UUID, user_id: uuid.UUID) -> Actor | None:
    """A user of the tenant as an acting scope (role and team path), or None."""
    row = (
        await session.execute(
            select(User.role, Team.path)
            .outerjoin(Team, and_(Team.organization_id == User.organization_id, Team.id == User.team_id))
            .where(User.organization_id == organization_id, User.id == user_id)
        )
    ).first()
    if row is None:
        return None
    return Actor(organization_id=organization_id, user_id=user_id, role=Role(row[0]), team_path=row[1])


async def _actor_for(session: AsyncSession, caller: Actor, user_id: uuid.UUID | None) -> Actor:
    """The scope a snapshot was taken for: a person's, or the whole tenant's."""
    if user_id is None:
        return Actor(organization_id=caller.organization_id, user_id=caller.user_id, role=Role.ADMIN)
    person = await _person(session, caller.organization_id, user_id)
    return person or Actor(organization_id=caller.organization_id, user_id=user_id, role=Role.REP)


async def backtest(
    session: AsyncSession,
    actor: Actor,
    horizons: Sequence[int],
    *,
    from_date: dt.date | None = None,
    to_date: dt.date | None = None,
) -> BacktestReport:
    """Replay the history the actor sees at monthly as-of dates and score every
    method. The maths runs in a worker thread: it is CPU work, not I/O."""
    async with queries.analytic_settings(session):
        scoped = await history_cache.history_for(session, actor)
    history = scoped.history
    if history.created.size == 0:
        return BacktestReport(as_of=[], results=[], origins=[])
    if from_date is None:
        # Without a start, the last two years of the history.
        first = as_date(int(history.created.min()))
        latest = to_date or as_date(int(max(history.created.max(), history.closed.max())) + 1)
        from_date = max(first + dt.timedelta(days=1), latest - dt.timedelta(days=2 * 365))
    weighted = _weighted_config(await pipeline_config(session, actor.organization_id))
    key = ("backtest", tuple(horizons), from_date, to_date, msgspec.json.encode(weighted))
    if key not in scoped.results:  # deterministic: the same question on the same version, the same report
        scoped.results[key] = await anyio.to_thread.run_sync(
            functools.partial(
                run_backtest,
                history,
                horizons=list(horizons),
                from_date=from_date,
                to_date=to_date,
                weighted_config=weighted,
            )
        )
    report: BacktestReport = scoped.results[key]
    return report
