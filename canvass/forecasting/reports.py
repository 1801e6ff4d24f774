"""Assembles reports: runs the queries, hands their aggregates to the maths."""

from __future__ import annotations

import datetime as dt

from sqlalchemy.ext.asyncio import AsyncSession

from canvass.db import utcnow
from canvass.forecasting import funnel, queries
from canvass.pipeline.scope import Actor

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
