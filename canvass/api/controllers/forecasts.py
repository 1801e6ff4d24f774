"""Forecasts rolled up the team tree, quotas, and the forecasts people submit."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Literal

import msgspec
from litestar import Controller, Response, get, post, put
from litestar.params import JSONBody, Parameter, QueryParameter
from litestar.status_codes import HTTP_201_CREATED

from canvass.api.deps import CurrentActor, Db, to_out
from canvass.api.problems import PROBLEM_RESPONSES
from canvass.db import utcnow
from canvass.errors import InvalidValue
from canvass.forecasting.backtest import BacktestReport
from canvass.forecasting.queries import Period
from canvass.forecasting.reports import (
    ForecastAccuracy,
    RevenueForecast,
    backtest,
    forecast_accuracy,
    forecast_rollup,
    person_scope,
    revenue_forecast,
    take_snapshot,
)
from canvass.forecasting.rollup import ForecastRollup
from canvass.pipeline.services import quotas as service
from canvass.pipeline.services.quotas import QuotaOut, QuotaSet, SubmissionCreate, SubmissionOut
from canvass.sync.devices import silent_owners


def calendar_period(kind: str, offset: int, today: dt.date | None = None) -> Period:
    """This (offset 0) or a following month or quarter, as a half-open period."""
    today = today or dt.datetime.now(dt.UTC).date()
    months = 1 if kind == "month" else 3
    first_month = today.month if kind == "month" else 3 * ((today.month - 1) // 3) + 1
    index = today.year * 12 + (first_month - 1) + offset * months
    start = dt.date(index // 12, index % 12 + 1, 1)
    end_index = index + months
    end = dt.date(end_index // 12, end_index % 12 + 1, 1)
    return Period(dt.datetime.combine(start, dt.time(), dt.UTC), dt.datetime.combine(end, dt.time(), dt.UTC))


PeriodStart = Annotated[dt.date | None, Parameter(required=False)]


Horizons = Annotated[
    list[Annotated[int, msgspec.Meta(ge=1, le=366)]],
    Parameter(max_items=6, description="Forecast windows in days, e.g. horizons=30&horizons=90."),
]


class SnapshotRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    horizons: Annotated[list[Annotated[int, msgspec.Meta(ge=1, le=366)]], msgspec.Meta(min_length=1, max_length=6)] = (
        msgspec.field(default_factory=lambda: [30, 60, 90])
    )


class SnapshotOut(msgspec.Struct, kw_only=True):
    id: uuid.UUID
    as_of: dt.date
    horizon_days: int
    method: str
    user_id: uuid.UUID | None
    revenue: float
    revenue_p10: float | None
    revenue_p50: float | None
    revenue_p90: float | None
    deals: float | None


MAX_BACKTEST_DAYS = 3 * 366


class ForecastController(Controller):
    path = "/api/v1"
    tags = ["forecasts"]

    @get("/forecasts", operation_id="getForecastRollup", responses=PROBLEM_RESPONSES)
    async def rollup(
        self,
        db: Db,
        actor: CurrentActor,
        period: Literal["month", "quarter"] = "quarter",
        offset: Annotated[int, Parameter(ge=0, le=8)] = 0,
        freshness_hours: Annotated[int, Parameter(ge=1, le=24 * 90)] = 72,
    ) -> ForecastRollup:
        """Won so far, open pipeline by forecast category, weighted pipeline, each
        person's call (a manager's adjustment overrides the rep's commit), quota and
        attainment — per rep and for every team subtree in the caller's scope — for
        this (offset 0) or a following month or quarter; with a statement of how
        fresh the open pipeline is."""
        silent = await silent_owners(db, actor, utcnow() - dt.timedelta(hours=freshness_hours))
        return await forecast_rollup(
            db, actor, calendar_period(period, offset), freshness_hours=freshness_hours, silent_owners=silent
        )

    @get("/forecasts/revenue", operation_id="getRevenueForecast", responses=PROBLEM_RESPONSES)
    async def revenue(
        self, db: Db, actor: CurrentActor, horizons: Horizons | None = None, user_id: uuid.UUID | None = None
    ) -> RevenueForecast:
        """Won revenue and deals expected in the next h days over the leads you
        see — or, with `user_id`, over those of one person you see (a rep's own
        leads, a manager's team subtree) — by every method: the model learned
        from your own history (P10/P50/P90 from simulation, flagged and widened
        on a cold start), the weighted pipeline, and the last h days repeated."""
        scope = await person_scope(db, actor, user_id)
        return await revenue_forecast(db, scope, horizons or [30, 60, 90])

    @post(
        "/forecast-snapshots",
        operation_id="takeForecastSnapshot",
        responses=PROBLEM_RESPONSES,
        status_code=HTTP_201_CREATED,
    )
    async def snapshot(self, db: Db, actor: CurrentActor, data: JSONBody[SnapshotRequest]) -> list[SnapshotOut]:
        """Keep today's forecasts for your scope, so their accuracy can be measured
        once the windows close (`canvass forecast snapshot` does this on a schedule)."""
        return [to_out(SnapshotOut, s) for s in await take_snapshot(db, actor, data.horizons)]

    @get("/forecast-snapshots/accuracy", operation_id="getForecastAccuracy", responses=PROBLEM_RESPONSES)
    async def accuracy(self, db: Db, actor: CurrentActor) -> ForecastAccuracy:
        """Every kept forecast whose window has closed, against what was won; WAPE
        and bias per method and per person (bias > 0: optimistic)."""
        return await forecast_accuracy(db, actor)

    @get("/forecasts/backtest", operation_id="backtestForecasts", responses=PROBLEM_RESPONSES)
    async def backtest(
        self,
        db: Db,
        actor: CurrentActor,
        horizons: Horizons | None = None,
        from_date: Annotated[dt.date | None, QueryParameter(name="from", required=False)] = None,
        to_date: Annotated[dt.date | None, QueryParameter(name="to", required=False)] = None,
    ) -> BacktestReport:
        """Replay your own history at monthly as-of dates — using only what was
        knowable then — and score every method per horizon: WAPE, bias, P10–P90
        coverage (the same report as `canvass forecast backtest`)."""
        if from_date and to_date and not dt.date(1900, 1, 1) <= from_date < to_date <= dt.date(2200, 1, 1):
            raise InvalidValue("`from` must come before `to`, both between 1900 and 2200.", field="query.from")
        # Each as-of month refits the model: bound the work one request can ask for.
        if from_date and to_date and (to_date - from_date).days > MAX_BACKTEST_DAYS:
            raise InvalidValue(
                f"A backtest spans at most {MAX_BACKTEST_DAYS // 365} years of as-of dates.", field="query.to"
            )
        return await backtest(db, actor, horizons or [30, 60, 90], from_date=from_date, to_date=to_date)

    @get("/quotas", operation_id="listQuotas", responses=PROBLEM_RESPONSES)
    async def list_quotas(
        self, db: Db, actor: CurrentActor, period_start: PeriodStart = None, period_end: PeriodStart = None
    ) -> list[QuotaOut]:
        rows = await service.list_quotas(db, actor, period_start=period_start, period_end=period_end)
        return [to_out(QuotaOut, q) for q in rows]

    @put("/quotas", operation_id="setQuota", responses=PROBLEM_RESPONSES)
    async def set_quota(self, db: Db, actor: CurrentActor, data: JSONBody[QuotaSet]) -> QuotaOut:
        """Create or replace a person's quota for a period (managers: their subtree)."""
        return to_out(QuotaOut, await service.set_quota(db, actor, data))

    @get("/forecast-submissions", operation_id="listForecastSubmissions", responses=PROBLEM_RESPONSES)
    async def list_submissions(
        self, db: Db, actor: CurrentActor, period_start: PeriodStart = None, period_end: PeriodStart = None
    ) -> list[SubmissionOut]:
        rows = await service.list_submissions(db, actor, period_start=period_start, period_end=period_end)
        return [to_out(SubmissionOut, s) for s in rows]

    @post(
        "/forecast-submissions",
        operation_id="submitForecast",
        responses=PROBLEM_RESPONSES,
        status_code=HTTP_201_CREATED,
    )
    async def submit(self, db: Db, actor: CurrentActor, data: JSONBody[SubmissionCreate]) -> Response[SubmissionOut]:
        """A rep's own call for a period, or a manager's adjustment of someone in
        their subtree (weekly and monthly, e.g. before the 25th)."""
        return Response(to_out(SubmissionOut, await service.submit_forecast(db, actor, data)), status_code=201)
