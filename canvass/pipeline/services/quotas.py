"""Quotas and forecast submissions: the people's side of the forecast.

Reps submit their own call for a period (``commit``); managers adjust the call
of anyone in their subtree (``adjustment``). Submissions are append-only, so the
history of what each person said is kept for accuracy and bias measurement.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence

import msgspec
from sqlalchemy import and_, select
from sqlalchemy.ext.asyncio import AsyncSession

from canvass.db import utcnow
from canvass.errors import Forbidden, InvalidValue
from canvass.pipeline.models import ForecastSubmission, Quota
from canvass.pipeline.schemas import Input, LongText, Money
from canvass.pipeline.scope import Actor, visible_owner
from canvass.pipeline.services.common import check_owner
from canvass.pipeline.vocabulary import Role


class QuotaSet(Input, kw_only=True):
    user_id: uuid.UUID
    period_start: dt.date
    period_end: dt.date  # exclusive
    amount: Money


class QuotaOut(msgspec.Struct, kw_only=True):
    id: uuid.UUID
    user_id: uuid.UUID
    period_start: dt.date
    period_end: dt.date
    amount: float
    version: int


class SubmissionCreate(Input, kw_only=True):
    user_id: uuid.UUID | None = None  # default: the caller's own forecast
    period_start: dt.date
    period_end: dt.date
    commit_amount: Money
    best_case_amount: Money | None = None
    note: LongText | None = None


class SubmissionOut(msgspec.Struct, kw_only=True):
    id: uuid.UUID
    user_id: uuid.UUID
    submitted_by_id: uuid.UUID
    kind: str
    period_start: dt.date
    period_end: dt.date
    commit_amount: float
    best_case_amount: float | None
    note: str | None
    submitted_at: dt.datetime


def _check_period(start: dt.date, end: dt.date) -> None:
    if not start < end or (end - start).days > 366:
        raise InvalidValue(
            "A period runs from `period_start` to a later `period_end`, at most a year.", field="period_end"
        )


async def set_quota(session: AsyncSession, actor: Actor, data: QuotaSet) -> Quota:
    """Create or replace the quota of a person in the actor's scope."""
    if actor.role is Role.REP:
        raise Forbidden("Quotas are set by managers and admins.")
    _check_period(data.period_start, data.period_end)
    await check_owner(session, actor, data.user_id)
    quota = await session.scalar(
        select(Quota).where(
            Quota.organization_id == actor.organization_id,
            Quota.user_id == data.user_id,
            Quota.period_start == data.period_start,
            Quota.period_end == data.period_end,
        )
    )
    if quota is None:
        now = utcnow()
        quota = Quota(
            organization_id=actor.organization_id,
            user_id=data.user_id,
            period_start=data.period_start,
            period_end=data.period_end,
            amount=data.amount,
            created_at=now,
            updated_at=now,
        )
        session.add(quota)
    else:
        quota.amount = data.amount
    await session.flush()
    return quota


async def list_quotas(
    session: AsyncSession, actor: Actor, *, period_start: dt.date | None, period_end: dt.date | None
) -> Sequence[Quota]:
    stmt = select(Quota).where(Quota.organization_id == actor.organization_id, visible_owner(actor, Quota.user_id))
    if period_start:
        stmt = stmt.where(Quota.period_end > period_start)
    if period_end:
        stmt = stmt.where(Quota.period_start < period_end)
    return (await session.scalars(stmt.order_by(Quota.period_start, Quota.user_id))).all()


async def submit_forecast(session: AsyncSession, actor: Actor, data: SubmissionCreate) -> ForecastSubmission:
    _check_period(data.period_start, data.period_end)
    user_id = data.user_id or actor.user_id
    if user_id != actor.user_id:
        if actor.role is Role.REP:
            raise Forbidden("A rep submits only their own forecast.", field="user_id")
        await check_owner(session, actor, user_id)
    submission = ForecastSubmission(
        organization_id=actor.organization_id,
        user_id=user_id,
        submitted_by_id=actor.user_id,
        kind="commit" if user_id == actor.user_id else "adjustment",
        period_start=data.period_start,
        period_end=data.period_end,
        commit_amount=data.commit_amount,
        best_case_amount=data.best_case_amount,
        note=data.note,
        submitted_at=utcnow(),
    )
    session.add(submission)
    await session.flush()
    return submission


async def list_submissions(
    session: AsyncSession, actor: Actor, *, period_start: dt.date | None, period_end: dt.date | None
) -> Sequence[ForecastSubmission]:
    stmt = select(ForecastSubmission).where(
        ForecastSubmission.organization_id == actor.organization_id, visible_owner(actor, ForecastSubmission.user_id)
    )
    if period_start:
        stmt = stmt.where(ForecastSubmission.period_end > period_start)
    if period_end:
        stmt = stmt.where(ForecastSubmission.period_start < period_end)
    return (await session.scalars(stmt.order_by(ForecastSubmission.submitted_at, ForecastSubmission.id))).all()


async def latest_calls(
    session: AsyncSession, actor: Actor, period_start: dt.date, period_end: dt.date
) -> dict[tuple[uuid.UUID, str], ForecastSubmission]:
    """The latest commit and adjustment per person for exactly this period."""
    rows = (
        await session.scalars(
            select(ForecastSubmission)
            .where(
                ForecastSubmission.organization_id == actor.organization_id,
                ForecastSubmission.period_start == period_start,
                ForecastSubmission.period_end == period_end,
                visible_owner(actor, ForecastSubmission.user_id),
            )
            .order_by(ForecastSubmission.submitted_at, ForecastSubmission.id)
        )
    ).all()
    return {(s.user_id, s.kind): s for s in rows}  # later rows overwrite earlier ones


async def quotas_for(
    session: AsyncSession, actor: Actor, period_start: dt.date, period_end: dt.date
) -> dict[uuid.UUID, float]:
    rows = await session.execute(
        select(Quota.user_id, Quota.amount).where(
            and_(
                Quota.organization_id == actor.organization_id,
                Quota.period_start == period_start,
                Quota.period_end == period_end,
                visible_owner(actor, Quota.user_id),
            )
        )
    )
    return {user_id: float(amount) for user_id, amount in rows}
