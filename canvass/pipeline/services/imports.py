"""Bulk import of leads with their history, for a company migrating from another
CRM: each row is a lead plus the stage changes it went through, with their dates.

History is a record of the past, so the live stage machine's one-step rule does
not apply to it; what must hold is that it is in time order and that the lead's
final stage and status are those of its last entry. Rows are validated one by
one: a bad row is reported (row number, field, message) and skipped, the good
ones are written in bulk. The demo loader uses this same path.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable
from typing import Annotated

import msgspec
from msgspec import Meta
from sqlalchemy import and_, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from canvass.db import Base, mark_written, utcnow
from canvass.ids import new_id
from canvass.pipeline import stage_summary
from canvass.pipeline.models import Account, Contact, Lead, StageChange, Team, User
from canvass.pipeline.schemas import Currency, Email, Input, LongText, Money, Name, ShortText, Timestamp
from canvass.pipeline.scope import Actor, may_assign_to
from canvass.pipeline.vocabulary import ForecastCategory, LeadStatus, SourceChannel, Stage

# Rows written per INSERT round trip.
_BATCH = 2_000


class HistoryEntry(Input, kw_only=True):
    to_stage: Stage
    status: LeadStatus = LeadStatus.OPEN
    at: Timestamp
    amount: Money | None = None  # the deal's amount as recorded at that moment
    note: LongText | None = None


class LeadImportRow(Input, kw_only=True):
    """One lead and its past. Owner and account may be given by id or by their
    e-mail / name, as an export from another CRM has them."""

    external_ref: Annotated[str, Meta(min_length=1, max_length=100)] | None = None
    title: Name
    owner_id: uuid.UUID | None = None
    owner_email: Email | None = None
    account_id: uuid.UUID | None = None
    account_name: Name | None = None
    primary_contact_id: uuid.UUID | None = None
    source_channel: SourceChannel | None = None
    product_interest: ShortText | None = None
    amount: Money | None = None
    currency: Currency = "USD"
    expected_close_date: dt.date | None = None
    loss_reason: LongText | None = None
    competitor: ShortText | None = None
    # Optional cross-checks an export usually carries: when given they must agree
    # with the history (last entry's stage/status/date, first entry's date).
    stage: Stage | None = None
    status: LeadStatus | None = None
    created_at: Timestamp | None = None
    closed_at: Timestamp | None = None
    history: Annotated[list[HistoryEntry], Meta(min_length=1, max_length=200)]


class RejectedRow(msgspec.Struct, kw_only=True):
    row: int  # 1-based position in the input
    external_ref: str | None
    field: str
    message: str


class ImportReport(msgspec.Struct, kw_only=True):
    accepted: int
    stage_changes: int
    rejected: list[RejectedRow]


class _RowError(Exception):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field, self.message = field, message


class _Directory(msgspec.Struct, kw_only=True):
    """What rows refer to, loaded once per import."""

    users_by_id: dict[uuid.UUID, tuple[bool, str | None]]
    users_by_email: dict[str, uuid.UUID]
    accounts_by_id: set[uuid.UUID]
    accounts_by_name: dict[str, uuid.UUID]
    contact_accounts: dict[uuid.UUID, uuid.UUID]
    known_refs: set[str]


async def _directory(session: AsyncSession, actor: Actor, refs: set[str]) -> _Directory:
    org = actor.organization_id
    users = (
        await session.execute(
            select(User.id, User.email, User.active, Team.path)
            .outerjoin(Team, and_(Team.organization_id == User.organization_id, Team.id == User.team_id))
            .where(User.organization_id == org)
        )
    ).all()
    accounts = (
        await session.execute(
            select(Account.id, Account.name).where(Account.organization_id == org, Account.deleted_at.is_(None))
        )
    ).all()
    contacts = (
        await session.execute(
            select(Contact.id, Contact.account_id).where(Contact.organization_id == org, Contact.deleted_at.is_(None))
        )
    ).all()
    known: set[str] = set()
    ref_list = sorted(refs)
    for i in range(0, len(ref_list), _BATCH):
        chunk = ref_list[i : i + _BATCH]
        known.update(
            (
                await session.scalars(
                    select(Lead.external_ref).where(Lead.organization_id == org, Lead.external_ref.in_(chunk))
                )
            ).all()  # type: ignore[arg-type]
        )
    return _Directory(
        users_by_id={u.id: (u.active, u.path) for u in users},
        users_by_email={u.email.lower(): u.id for u in users},
        accounts_by_id={a.id for a in accounts},
        accounts_by_name={a.name.strip().lower(): a.id for a in accounts},
        contact_accounts={c.id: c.account_id for c in contacts},
        known_refs=known,
    )


def _resolve_owner(actor: Actor, row: LeadImportRow, d: _Directory) -> uuid.UUID:
    if row.owner_id is None and row.owner_email is None:
        return actor.user_id
    owner_id = row.owner_id or d.users_by_email.get(row.owner_email.lower() if row.owner_email else "")
    field = "owner_id" if row.owner_id else "owner_email"
    if owner_id is None or owner_id not in d.users_by_id:
        raise _RowError(field, "no such user in this organization")
    active, team_path = d.users_by_id[owner_id]
    if not active:
        raise _RowError(field, "the owner's account is disabled")
    if not may_assign_to(actor, owner_id, team_path):
        raise _RowError(field, "you may not assign leads to this user")
    return owner_id


def _resolve_account(row: LeadImportRow, d: _Directory) -> uuid.UUID | None:
    if row.account_id is not None:
        if row.account_id not in d.accounts_by_id:
            raise _RowError("account_id", "no such account in this organization")
        return row.account_id
    if row.account_name is not None:
        found = d.accounts_by_name.get(row.account_name.strip().lower())
        if found is None:
            raise _RowError("account_name", "no account with this name")
        return found
    return None


def _check_history(row: LeadImportRow) -> None:
    previous: dt.datetime | None = None
    for i, entry in enumerate(row.history):
        if previous is not None and entry.at < previous:
            raise _RowError(f"history[{i}].at", "history must be in time order")
        previous = entry.at
    last = row.history[-1]
    if row.stage is not None and row.stage is not last.to_stage:
        raise _RowError(
            "stage", f"stage {row.stage.value} disagrees with the last history entry ({last.to_stage.value})"
        )
    if row.status is not None and row.status is not last.status:
        raise _RowError(
            "status", f"status {row.status.value} disagrees with the last history entry ({last.status.value})"
        )
    if row.created_at is not None and row.created_at > row.history[0].at:
        raise _RowError("created_at", "created_at is after the first history entry")
    if row.closed_at is not None and (last.status is LeadStatus.OPEN or row.closed_at != last.at):
        raise _RowError("closed_at", "closed_at must be the date of the closing (last) history entry")
    if last.status is LeadStatus.WON and not (last.amount or row.amount):
        raise _RowError("amount", "a won lead needs its amount")
    if last.status is LeadStatus.LOST and last.to_stage is not Stage.CLOSE:
        raise _RowError(f"history[{len(row.history) - 1}].to_stage", "a lost lead ends in the close stage")


def _lead_and_changes(
    actor: Actor, row: LeadImportRow, owner_id: uuid.UUID, account_id: uuid.UUID | None, now: dt.datetime
) -> tuple[dict[str, object], list[dict[str, object]]]:
    org = actor.organization_id
    lead_id = new_id()
    first, last = row.history[0], row.history[-1]
    amount = last.amount if last.amount is not None else row.amount
    closed = last.status is not LeadStatus.OPEN
    changes: list[dict[str, object]] = []
    stage: str | None = None
    entered: dt.datetime | None = None
    lost_at: str | None = None
    summary = stage_summary.empty_summary()  # the leads' stage summary, as the service keeps it
    for entry in row.history:
        changes.append(
            {
                "organization_id": org,
                "id": new_id(),
                "lead_id": lead_id,
                "from_stage": stage,
                "to_stage": entry.to_stage.value,
                "status": entry.status.value,
                "amount": entry.amount if entry.amount is not None else row.amount,
                "at": entry.at,
                "from_stage_entered_at": entered,
                "by_user_id": actor.user_id,
                "by_device_id": None,
                "note": entry.note,
                "imported": True,
            }
        )
        summary.update(
            stage_summary.apply_change(summary.__getitem__, stage, entry.to_stage.value, entry.status.value, entry.at)
        )
        if entry.status is LeadStatus.LOST and stage is not None:
            lost_at = stage
        if entry.to_stage.value != stage:
            stage, entered = entry.to_stage.value, entry.at
    lead = {
        "organization_id": org,
        "id": lead_id,
        "title": row.title,
        "external_ref": row.external_ref,
        "account_id": account_id,
        "primary_contact_id": row.primary_contact_id,
        "owner_id": owner_id,
        "source_channel": row.source_channel.value if row.source_channel else None,
        "product_interest": row.product_interest,
        "amount": amount,
        "currency": row.currency,
        "expected_close_date": row.expected_close_date,
        "stage": last.to_stage.value,
        "status": last.status.value,
        "stage_entered_at": entered,
        "forecast_category": (
            ForecastCategory.CLOSED.value
            if last.status is LeadStatus.WON
            else ForecastCategory.OMITTED.value
            if closed
            else ForecastCategory.PIPELINE.value
        ),
        "probability_override": None,
        "qualification": {},
        "qualification_override_reason": None,
        "visit_plan": {},
        "next_step": None,
        "closing_signals": [],
        "closing_method": None,
        "loss_reason": row.loss_reason if closed else None,
        "competitor": row.competitor if closed else None,
        "lost_at_stage": lost_at if last.status is LeadStatus.LOST else None,
        "closed_at": last.at if closed else None,
        "deleted_at": None,
        "created_at": row.created_at or first.at,
        "updated_at": now,
        "version": 1,
        **summary,
    }
    return lead, changes


async def import_leads(session: AsyncSession, actor: Actor, rows: Iterable[LeadImportRow]) -> ImportReport:
    """Validate every row, write the good ones in bulk, report the rest."""
    rows = list(rows)
    d = await _directory(session, actor, {r.external_ref for r in rows if r.external_ref})
    now = utcnow()
    leads: list[dict[str, object]] = []
    changes: list[dict[str, object]] = []
    rejected: list[RejectedRow] = []
    seen_refs: set[str] = set()
    for number, row in enumerate(rows, start=1):
        try:
            if row.external_ref is not None and (row.external_ref in d.known_refs or row.external_ref in seen_refs):
                raise _RowError("external_ref", "a lead with this reference was already imported")
            owner_id = _resolve_owner(actor, row, d)
            account_id = _resolve_account(row, d)
            if row.primary_contact_id is not None and d.contact_accounts.get(row.primary_contact_id) != account_id:
                raise _RowError("primary_contact_id", "the contact must belong to the lead's account")
            _check_history(row)
        except _RowError as error:
            rejected.append(
                RejectedRow(row=number, external_ref=row.external_ref, field=error.field, message=error.message)
            )
            continue
        if row.external_ref is not None:
            seen_refs.add(row.external_ref)
        lead, history = _lead_and_changes(actor, row, owner_id, account_id, now)
        leads.append(lead)
        changes.extend(history)
    # Core inserts (not ORM bulk): one multi-row INSERT per batch on both drivers.
    connection = await session.connection()
    lead_table, change_table = (Base.metadata.tables[m.__tablename__] for m in (Lead, StageChange))
    for i in range(0, len(leads), _BATCH):
        await connection.execute(insert(lead_table), leads[i : i + _BATCH])
    for i in range(0, len(changes), _BATCH):
        await connection.execute(insert(change_table), changes[i : i + _BATCH])
    mark_written(session, actor.organization_id, lead_table, (lead["id"] for lead in leads))
    mark_written(session, actor.organization_id, change_table, (change["id"] for change in changes))
    return ImportReport(accepted=len(leads), stage_changes=len(changes), rejected=rejected)
