"""Funnel reports for managers: JSON, CSV, and charts as PNG."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Literal

import anyio.to_thread
import msgspec
from litestar import Controller, Response, get
from litestar.di import Provide
from litestar.params import Parameter, QueryParameter

from canvass.api.deps import CurrentActor, Db, SearchText
from canvass.api.problems import PROBLEM_RESPONSES
from canvass.errors import InvalidValue
from canvass.forecasting import charts, funnel
from canvass.forecasting.queries import FunnelCut, Period
from canvass.forecasting.reports import funnel_report
from canvass.pipeline.vocabulary import SourceChannel


class FunnelQuery(msgspec.Struct, frozen=True):
    cut: FunnelCut
    period: Period


def _period(start: dt.date | None, end: dt.date | None) -> Period:
    today = dt.datetime.now(dt.UTC).date()
    end = end or today + dt.timedelta(days=1)
    start = start or end - dt.timedelta(days=365)
    if not dt.date(1900, 1, 1) <= start < end <= dt.date(2200, 1, 1):
        raise InvalidValue("The period needs `from` before `to`, both between 1900 and 2200.", field="query.from")
    return Period(dt.datetime.combine(start, dt.time(), dt.UTC), dt.datetime.combine(end, dt.time(), dt.UTC))


def provide_funnel_query(
    period_from: Annotated[dt.date | None, QueryParameter(name="from", required=False)] = None,
    period_to: Annotated[dt.date | None, QueryParameter(name="to", required=False)] = None,
    owner_id: uuid.UUID | None = None,
    team_id: uuid.UUID | None = None,
    territory_id: uuid.UUID | None = None,
    product: SearchText = None,
    source_channel: SourceChannel | None = None,
) -> FunnelQuery:
    """The period [from, to) (default: the last 365 days) and the cut: rep, team
    subtree, territory, product, source channel — always within the caller's scope."""
    cut = FunnelCut(
        owner_id=owner_id,
        team_id=team_id,
        territory_id=territory_id,
        product=product,
        source_channel=source_channel.value if source_channel else None,
    )
    return FunnelQuery(cut=cut, period=_period(period_from, period_to))


class ReportController(Controller):
    path = "/api/v1/reports"
    tags = ["reports"]
    dependencies = {"funnel_query": Provide(provide_funnel_query, sync_to_thread=False)}

    @get("/funnel", operation_id="getFunnelReport", responses=PROBLEM_RESPONSES)
    async def funnel(
        self,
        db: Db,
        actor: CurrentActor,
        funnel_query: FunnelQuery,
        quota: Annotated[float | None, Parameter(ge=0, le=1e12, required=False)] = None,
    ) -> funnel.FunnelReport:
        """Leads entering each stage in the period, cohort conversion to the next
        stage, days in stage (mean, median, P90), win rate, sales cycle, open
        pipeline and its coverage of `quota`, and open leads stuck beyond the P90
        of their stage."""
        return await funnel_report(db, actor, funnel_query.cut, funnel_query.period, quota=quota)

    @get("/funnel/csv", operation_id="getFunnelReportCsv", responses=PROBLEM_RESPONSES, media_type="text/csv")
    async def funnel_csv(
        self,
        db: Db,
        actor: CurrentActor,
        funnel_query: FunnelQuery,
        quota: Annotated[float | None, Parameter(ge=0, le=1e12, required=False)] = None,
    ) -> str:
        """The funnel report as CSV: a row per stage, then the period's totals."""
        report = await funnel_report(db, actor, funnel_query.cut, funnel_query.period, quota=quota)
        return funnel.report_csv(report)

    @get("/funnel/chart", operation_id="getFunnelChart", responses=PROBLEM_RESPONSES, media_type="image/png")
    async def funnel_chart(
        self, db: Db, actor: CurrentActor, funnel_query: FunnelQuery, kind: Literal["funnel", "durations"] = "funnel"
    ) -> Response[bytes]:
        """The same report as a PNG: the funnel with its conversions, or days in stage."""
        report = await funnel_report(db, actor, funnel_query.cut, funnel_query.period)
        draw = charts.funnel_chart if kind == "funnel" else charts.stage_duration_chart
        # Drawing is CPU work; keep it off the event loop.
        return Response(await anyio.to_thread.run_sync(draw, report), media_type="image/png")
