"""Activities (the append-only log of what reps did) and objections (异议)."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence

import msgspec
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from canvass.db import utcnow
from canvass.errors import AlreadyExists, InvalidReference, NotFound, RuleViolation
from canvass.pipeline.models import Activity, Contact, Objection
from canvass.pipeline.schemas import (
    ActivityComplete,
    ActivityCreate,
    CheckIn,
    ObjectionCreate,
    ObjectionUpdate,
)
from canvass.pipeline.scope import Actor, activity_scope
from canvass.pipeline.services.accounts import get_account
from canvass.pipeline.services.common import apply_patch, check_version, exists, paginate, preloaded, timestamp_key
from canvass.pipeline.services.leads import get_lead
from canvass.pipeline.vocabulary import ActivityKind, LeadStatus

ACTIVITY_SORTS = {
    "created_at": timestamp_key(Activity.created_at),
    "-created_at": timestamp_key(Activity.created_at, descending=True),
}


class ActivityFilters(msgspec.Struct, kw_only=True):
    lead_id: uuid.UUID | None = None
    account_id: uuid.UUID | None = None
    owner_id: uuid.UUID | None = None
    kind: ActivityKind | None = None
    open_tasks: bool = False


async def get_activity(session: AsyncSession, actor: Actor, activity_id: uuid.UUID) -> Activity:
    activity = preloaded(session, actor, Activity, activity_id) or await session.scalar(
        select(Activity).where(Activity.id == activity_id, activity_scope(actor))
    )
    if activity is None:
        raise NotFound(f"No activity {activity_id}.", resource="activity", id=str(activity_id))
    return activity


async def list_activities(
    session: AsyncSession, actor: Actor, filters: ActivityFilters, *, sort: str, limit: int, cursor: str | None
) -> tuple[Sequence[Activity], str | None]:
    stmt = select(Activity).where(activity_scope(actor))
    if filters.lead_id:
        stmt = stmt.where(Activity.lead_id == filters.lead_id)
    if filters.account_id:
        stmt = stmt.where(Activity.account_id == filters.account_id)
    if filters.owner_id:
        stmt = stmt.where(Activity.owner_id == filters.owner_id)
    if filters.kind:
        stmt = stmt.where(Activity.kind == filters.kind.value)
    if filters.open_tasks:
        stmt = stmt.where(Activity.kind == ActivityKind.TASK.value, Activity.completed_at.is_(None))
    return await paginate(session, stmt, id_column=Activity.id, key=ACTIVITY_SORTS[sort], limit=limit, cursor=cursor)


async def log_activity(session: AsyncSession, actor: Actor, data: ActivityCreate) -> Activity:
    """Record an activity on a lead and/or an account the actor can see."""
    account_id = data.account_id
    if data.lead_id is not None:
        lead = await get_lead(session, actor, data.lead_id)
        if account_id is not None and lead.account_id is not None and account_id != lead.account_id:
            raise InvalidReference("`account_id` differs from the lead's account.", field="account_id")
        account_id = account_id or lead.account_id
    elif account_id is not None:
        await get_account(session, actor, account_id)
    else:
        raise InvalidReference(
            "An activity belongs to a lead or an account.", field="lead_id", missing=["lead_id", "account_id"]
        )
    if data.contact_id is not None:
        contact_account = await session.scalar(
            select(Contact.account_id).where(
                Contact.organization_id == actor.organization_id, Contact.id == data.contact_id
            )
        )
        if contact_account is None or contact_account != account_id:
            raise InvalidReference("The contact must belong to the activity's account.", field="contact_id")
    if data.id is not None and await exists(session, Activity, (actor.organization_id, data.id)):
        raise AlreadyExists(f"Activity {data.id} already exists.", id=str(data.id))
    fields = msgspec.to_builtins(data, builtin_types=(uuid.UUID, dt.datetime, dt.date))
    if data.id is None:
        fields.pop("id")
    now = utcnow()
    fields.update(account_id=account_id, occurred_at=data.occurred_at or (None if data.planned_at else now))
    activity = Activity(
        organization_id=actor.organization_id, owner_id=actor.user_id, created_at=now, updated_at=now, **fields
    )
    session.add(activity)
    await session.flush()
    return activity


async def check_in(session: AsyncSession, actor: Actor, activity_id: uuid.UUID, where: CheckIn) -> Activity:
    """The rep arrived at a visit: when and where (the location proves the visit)."""
    activity = await get_activity(session, actor, activity_id)
    if activity.kind != ActivityKind.VISIT.value:
        raise RuleViolation("visit.check_in_kind", "Only visits are checked in to.")
    if activity.check_in_at is not None:
        raise RuleViolation("visit.already_checked_in", "This visit is already checked in.")
    activity.check_in_at = where.at or utcnow()
    activity.occurred_at = activity.occurred_at or activity.check_in_at
    activity.check_in_latitude, activity.check_in_longitude = where.latitude, where.longitude
    await session.flush()
    return activity


async def check_out(session: AsyncSession, actor: Actor, activity_id: uuid.UUID, where: CheckIn) -> Activity:
    activity = await get_activity(session, actor, activity_id)
    if activity.check_in_at is None:
        raise RuleViolation("visit.check_out_before_check_in", "Check in to the visit before checking out.")
    if activity.check_out_at is not None:
        raise RuleViolation("visit.already_checked_out", "This visit is already checked out.")
    at = where.at or utcnow()
    if at < activity.check_in_at:
        raise RuleViolation("visit.check_out_before_check_in", "Check-out time is before the check-in time.")
    activity.check_out_at = at
    activity.check_out_latitude, activity.check_out_longitude = where.latitude, where.longitude
    activity.completed_at = activity.completed_at or at
    await session.flush()
    return activity


async def complete_activity(
    session: AsyncSession, actor: Actor, activity_id: uuid.UUID, done: ActivityComplete
) -> Activity:
    """Mark a task, call or meeting done."""
    activity = await get_activity(session, actor, activity_id)
    if activity.completed_at is not None:
        raise RuleViolation("activity.already_completed", "This activity is already completed.")
    activity.completed_at = done.at or utcnow()
    if done.notes:
        activity.notes = f"{activity.notes}\n{done.notes}" if activity.notes else done.notes
    await session.flush()
    return activity


# ---------------------------------------------------------------- objections


async def add_objection(session: AsyncSession, actor: Actor, lead_id: uuid.UUID, data: ObjectionCreate) -> Objection:
    lead = await get_lead(session, actor, lead_id)
    if lead.status != LeadStatus.OPEN.value:
        raise RuleViolation("lead.not_open", f"Cannot raise an objection on a {lead.status} lead.")
    if data.id is not None and await exists(session, Objection, (actor.organization_id, data.id)):
        raise AlreadyExists(f"Objection {data.id} already exists.", id=str(data.id))
    fields = msgspec.to_builtins(data, builtin_types=(uuid.UUID,))
    if data.id is None:
        fields.pop("id")
    now = utcnow()
    objection = Objection(
        organization_id=actor.organization_id,
        lead_id=lead_id,
        raised_by_id=actor.user_id,
        created_at=now,
        updated_at=now,
        **fields,
    )
    session.add(objection)
    await session.flush()
    return objection


async def get_objection(session: AsyncSession, actor: Actor, objection_id: uuid.UUID) -> Objection:
    objection = await session.get(Objection, (actor.organization_id, objection_id))
    if objection is None:
        raise NotFound(f"No objection {objection_id}.", resource="objection", id=str(objection_id))
    await get_lead(session, actor, objection.lead_id)  # scope follows the lead
    return objection


async def list_objections(session: AsyncSession, actor: Actor, lead_id: uuid.UUID) -> Sequence[Objection]:
    await get_lead(session, actor, lead_id)
    return (
        await session.scalars(
            select(Objection)
            .where(Objection.organization_id == actor.organization_id, Objection.lead_id == lead_id)
            .order_by(Objection.created_at, Objection.id)
        )
    ).all()


async def update_objection(
    session: AsyncSession, actor: Actor, objection_id: uuid.UUID, patch: ObjectionUpdate, *, if_match: int | None = None
) -> Objection:
    objection = await get_objection(session, actor, objection_id)
    check_version(objection.version, if_match)
    if apply_patch(objection, patch):
        await session.flush()
    return objection
