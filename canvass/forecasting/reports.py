"""Assembles reports: runs the queries, hands their aggregates to the maths."""

from __future__ import annotations

import datetime as dt

from sqlalchemy.ext.asyncio import AsyncSession

from canvass.db import utcnow
from canvass.forecasting import funnel, queries, rollup
from canvass.pipeline.scope import Actor
from canvass.pipeline.services import quotas
from canvass.pipeline.services.organizations import pipeline_config

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
    now = now or utcnow()
    flow = await queries.stage_flow(session, actor, cut, period)
    durations = await queries.stage_durations(session, actor, cut, period)
    figures = funnel.stage_figures(flow, durations)
    decided = await queries.outcomes(session, actor, cut, period)
    open_count, open_amount = await queries.open_pipeline(session, actor, cut)
    stuck_total, stuck = await queries.stuck_leads(
        session, actor, cut, funnel.stuck_thresholds(figures, now), limit=STUCK_LIST_LIMIT
    )
    return funnel.build_report(
        period_start=period.start,
        period_end=period.end,
        figures=figures,
        decided=decided,
        open_count=open_count,
        open_amount=open_amount,
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
    )
