"""Funnel reports for managers (JSON or CSV)."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Literal

from litestar import Controller, Response, get
from litestar.params import Parameter, QueryParameter

from canvass.api.deps import CurrentActor, Db
from canvass.api.problems import PROBLEM_RESPONSES
from canvass.errors import InvalidValue
from canvass.forecasting import funnel
from canvass.forecasting.queries import FunnelCut, Period
from canvass.forecasting.reports import funnel_report
from canvass.pipeline.vocabulary import SourceChannel


def _period(start: dt.date | None, end: dt.date | None) -> Period:
    today = dt.datetime.now(dt.UTC).date()
    end = end or today + dt.timedelta(days=1)
    start = start or end - dt.timedelta(days=365)
    if not dt.date(1900, 1, 1) <= start < end <= dt.date(2200, 1, 1):
        raise InvalidValue("The period needs `from` before `to`, both between 1900 and 2200.", field="query.from")
    return Period(
        dt.datetime.combine(start, dt.time(), dt.UTC),
        dt.datetime.combine(end, dt.time(), dt.UTC),
    )


class ReportController(Controller):
    path = "/api/v1/reports"
    tags = ["reports"]

    @get("/funnel", operation_id="getFunnelReport", responses=PROBLEM_RESPONSES)
    async def funnel(
        self,
        db: Db,
        actor: CurrentActor,
        period_from: Annotated[dt.date | None, QueryParameter(name="from", required=False)] = None,
        period_to: Annotated[dt.date | None, QueryParameter(name="to", required=False)] = None,
        owner_id: uuid.UUID | None = None,
        team_id: uuid.UUID | None = None,
        territory_id: uuid.UUID | None = None,
        product: Annotated[str | None, Parameter(max_length=200, required=False)] = None,
        source_channel: SourceChannel | None = None,
        quota: Annotated[float | None, Parameter(ge=0, le=1e12, required=False)] = None,
        format: Literal["json", "csv"] = "json",
    ) -> Response[funnel.FunnelReport]:
        """Leads entering each stage in [from, to), cohort conversion to the next
        stage, days in stage (mean, median, P90), win rate, sales cycle, open
        pipeline and its coverage of `quota`, and leads stuck beyond the P90 of their
        stage. Any cut: rep, team subtree, territory, product, source channel —
        always within the caller's own scope."""
        cut = FunnelCut(
            owner_id=owner_id,
            team_id=team_id,
            territory_id=territory_id,
            product=product,
            source_channel=source_channel.value if source_channel else None,
        )
        report = await funnel_report(db, actor, cut, _period(period_from, period_to), quota=quota)
        if format == "csv":
            return Response(funnel.report_csv(report), media_type="text/csv")  # type: ignore[arg-type]
        return Response(report)
