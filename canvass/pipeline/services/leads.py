"""Leads: create, edit, list, and move through the pipeline.

Every stage move, outcome and reopen goes through here and asks ``pipeline.stages``
whether it is allowed; every one writes a ``StageChange``.
"""

from __future__ import annotations

import datetime as dt
import functools
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import msgspec
from sqlalchemy import Integer, Select, Table, Uuid, bindparam, func, insert, null, or_, select, update
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncSession

from canvass.db import AloneWrites, alone_writes, read_rows, utcnow, with_column_defaults, write_alone
from canvass.errors import AlreadyExists, InvalidReference, NotFound
from canvass.ids import new_id
from canvass.pipeline import stage_summary, stages
from canvass.pipeline.config import PipelineConfig, decode_config
from canvass.pipeline.models import Account, Activity, Contact, Lead, Objection, Organization, StageChange
from canvass.pipeline.schemas import (
    LeadCreate,
    LeadOut,
    LeadUpdate,
    OutcomeRecord,
    Reopen,
    StageMove,
)
from canvass.pipeline.scope import Actor, account_scope, lead_scope
from canvass.pipeline.services.common import (
    SortKey,
    apply_patch,
    check_owner,
    check_version,
    exists,
    keyset_page,
    page_of,
    page_parameters,
    preloaded,
    timestamp_key,
)
from canvass.pipeline.vocabulary import ForecastCategory, LeadStatus, Outcome, Stage

LEAD_SORTS: dict[str, SortKey] = {
    "created_at": timestamp_key(Lead.created_at),
    "-created_at": timestamp_key(Lead.created_at, descending=True),
    "updated_at": timestamp_key(Lead.updated_at),
    "-updated_at": timestamp_key(Lead.updated_at, descending=True),
    "title": SortKey(Lead.title),
    "-title": SortKey(Lead.title, descending=True),
}


# A lead as written or read: the ORM object, a row of `_lead_out_columns()`, or
# its columns by name (what `to_lead_out` takes).
StoredLead = Lead | Row[Any] | Sequence[Any] | Mapping[str, Any]


class LeadFilters(msgspec.Struct, kw_only=True):
    owner_id: uuid.UUID | None = None
    stage: Stage | None = None
    status: LeadStatus | None = None
    account_id: uuid.UUID | None = None
    updated_since: dt.datetime | None = None
    q: str | None = None  # text search on the lead's title and its account's name


@functools.lru_cache(maxsize=4096)
def _lead_model_by_id(actor: Actor, for_update: bool) -> Select[Any]:
    """Built once per caller (and lock mode); only the id varies, bound at execution."""
    stmt = select(Lead).where(Lead.id == bindparam("lead_id"), lead_scope(actor))
    return stmt.with_for_update() if for_update else stmt


async def get_lead(session: AsyncSession, actor: Actor, lead_id: uuid.UUID, *, for_update: bool = False) -> Lead:
    """The lead, if the actor may see it. Out of scope looks the same as missing."""
    lead = preloaded(session, actor, Lead, lead_id) or await session.scalar(
        _lead_model_by_id(actor, for_update), {"lead_id": lead_id}
    )
    if lead is None:
        raise NotFound(f"No lead {lead_id}.", resource="lead", id=str(lead_id))
    return lead


@functools.lru_cache(maxsize=4096)
def _lead_by_id(actor: Actor) -> Select[Any]:
    """The statement that reads one lead in the actor's scope, built once per
    caller; only the id varies, as a bound parameter."""
    return select(*_lead_out_columns()).where(Lead.id == bindparam("lead_id"), lead_scope(actor))


async def read_lead(
    session: AsyncSession, actor: Actor, lead_id: uuid.UUID, config: PipelineConfig | None = None
) -> LeadOut:
    """A lead for display: a plain row straight into its response struct."""
    # Plain rows, no ORM work: the hottest read of the API.
    rows = await read_rows(session, _lead_by_id(actor), {"lead_id": lead_id})
    if not rows:
        raise NotFound(f"No lead {lead_id}.", resource="lead", id=str(lead_id))
    return to_lead_out(rows[0], config)


async def list_leads(
    session: AsyncSession,
    actor: Actor,
    filters: LeadFilters,
    *,
    sort: str = "created_at",
    limit: int = 50,
    cursor: str | None = None,
) -> tuple[Sequence[Sequence[Any]], str | None]:
    """A page of leads as rows of `_lead_out_columns()` (see `to_lead_out`)."""
    key = LEAD_SORTS[sort]
    given = {name: value for name, value in msgspec.structs.asdict(filters).items() if value}
    stmt = _lead_page(actor, frozenset(given), sort, bool(cursor))
    params = page_parameters(key, limit, cursor)
    for name, value in given.items():
        params[name] = _like_pattern(value) if name == "q" else getattr(value, "value", value)
    rows = await read_rows(session, stmt, params)
    at = (_LEAD_STORED_FIELDS.index(key.column.key), _LEAD_STORED_FIELDS.index("id"))
    return page_of(rows, limit, lambda row: (row[at[0]], row[at[1]]))


@functools.lru_cache(maxsize=1024)
def _lead_page(actor: Actor, filters: frozenset[str], sort: str, after: bool) -> Select[Any]:
    """A page of the caller's leads for one combination of filters, sort order
    and position: built once, every value bound at execution."""
    stmt = select(*_lead_out_columns()).where(lead_scope(actor))
    for name in ("owner_id", "stage", "status", "account_id"):
        if name in filters:
            column = Lead.__table__.c[name]
            stmt = stmt.where(column == bindparam(name, type_=column.type))
    if "updated_since" in filters:
        stmt = stmt.where(Lead.updated_at >= bindparam("updated_since", type_=Lead.updated_at.type))
    if "q" in filters:
        pattern = bindparam("q", type_=Lead.title.type)
        account_match = select(Account.id).where(
            Account.organization_id == actor.organization_id, Account.name.ilike(pattern, escape=_LIKE_ESCAPE)
        )
        stmt = stmt.where(or_(Lead.title.ilike(pattern, escape=_LIKE_ESCAPE), Lead.account_id.in_(account_match)))
    return keyset_page(stmt, id_column=Lead.id, key=LEAD_SORTS[sort], after=after)


_LIKE_ESCAPE = "/"


def _like_pattern(text: str) -> str:
    """A LIKE pattern matching ``text`` anywhere, its own ``%`` and ``_`` taken literally."""
    for special in (_LIKE_ESCAPE, "%", "_"):
        text = text.replace(special, _LIKE_ESCAPE + special)
    return f"%{text}%"


async def _check_references(
    session: AsyncSession, actor: Actor, account_id: uuid.UUID | None, contact_id: uuid.UUID | None
) -> None:
    if account_id is not None:
        found = await session.scalar(select(Account.id).where(Account.id == account_id, account_scope(actor)))
        if found is None:
            raise InvalidReference(f"No account {account_id} that you can see.", field="account_id")
    if contact_id is not None:
        contact_account = await session.scalar(
            select(Contact.account_id).where(
                Contact.organization_id == actor.organization_id,
                Contact.id == contact_id,
                Contact.deleted_at.is_(None),
            )
        )
        if contact_account is None:
            raise InvalidReference(f"No contact {contact_id}.", field="primary_contact_id")
        if account_id is None or contact_account != account_id:
            raise InvalidReference("The primary contact must belong to the lead's account.", field="primary_contact_id")


def _history_row(
    actor: Actor,
    lead: Callable[[str], Any],
    *,
    from_stage: str | None,
    at: dt.datetime,
    from_stage_entered_at: dt.datetime | None = None,
    note: str | None = None,
) -> dict[str, Any]:
    """The stage change to append to a lead's history; ``lead`` reads the lead's
    fields as they are after the change."""
    return {
        "organization_id": lead("organization_id"),
        "lead_id": lead("id"),
        "from_stage": from_stage,
        "to_stage": lead("stage"),
        "status": lead("status"),
        "amount": lead("amount"),
        "at": at,
        "from_stage_entered_at": from_stage_entered_at,
        "by_user_id": actor.user_id,
        "by_device_id": actor.device_id,
        "note": note,
        "imported": False,
    }


def _record_change(
    session: AsyncSession,
    actor: Actor,
    lead: Lead,
    *,
    from_stage: str | None,
    at: dt.datetime,
    from_stage_entered_at: dt.datetime | None = None,
    note: str | None = None,
) -> StageChange:
    row = _history_row(
        actor, _fields_of(lead), from_stage=from_stage, at=at, from_stage_entered_at=from_stage_entered_at, note=note
    )
    change = StageChange(**row)
    session.add(change)
    stage_summary.apply_to(lead, from_stage, at)  # the summary the funnel reports read
    return change


def _fields_of(lead: Lead) -> Callable[[str], Any]:
    return functools.partial(getattr, lead)


async def _new_lead(
    session: AsyncSession, actor: Actor, data: LeadCreate, at: dt.datetime | None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Check a new lead; its row and its first history row (``created``)."""
    owner_id = data.owner_id or actor.user_id
    if owner_id != actor.user_id:
        await check_owner(session, actor, owner_id)
    await _check_references(session, actor, data.account_id, data.primary_contact_id)
    if data.id is not None and await exists(session, Lead, (actor.organization_id, data.id)):
        raise AlreadyExists(f"Lead {data.id} already exists.", id=str(data.id))
    now = at or utcnow()
    lead = msgspec.to_builtins(data, builtin_types=(uuid.UUID, dt.date))
    lead.update(
        id=data.id or new_id(),
        organization_id=actor.organization_id,
        owner_id=owner_id,
        # JSON columns hold plain JSON: dates inside them become ISO strings.
        qualification=msgspec.to_builtins(data.qualification) if data.qualification else {},
        visit_plan=msgspec.to_builtins(data.visit_plan) if data.visit_plan else {},
        stage=Stage.PROSPECTING.value,
        status=LeadStatus.OPEN.value,
        stage_entered_at=now,
        created_at=now,
        updated_at=now,
    )
    lead.update(stage_summary.apply_change(lead.get, None, lead["stage"], lead["status"], now))
    return lead, _history_row(actor, lead.get, from_stage=None, at=now, note="created")


async def create_lead(session: AsyncSession, actor: Actor, data: LeadCreate, *, at: dt.datetime | None = None) -> Lead:
    """Create a lead in ``prospecting``, in the session's transaction."""
    return await _add_lead(session, *await _new_lead(session, actor, data, at))


async def _add_lead(session: AsyncSession, lead_row: dict[str, Any], change_row: dict[str, Any]) -> Lead:
    lead = Lead(**lead_row)
    session.add_all((lead, StageChange(**change_row)))
    await session.flush()  # one flush: both rows in one unit of work
    return lead


async def create_lead_now(session: AsyncSession, actor: Actor, data: LeadCreate) -> StoredLead:
    """``create_lead`` for a request of its own (REST). Where it can, the lead
    and its first history row are written by one statement that commits by
    itself (``canvass.db.write_alone``); else through the session."""
    lead_row, change_row = await _new_lead(session, actor, data, None)
    if alone_writes(session) is None:
        return await _add_lead(session, lead_row, change_row)
    lead_row = with_column_defaults(_LEADS, lead_row)
    params = {f"lead_{k}": v for k, v in lead_row.items()}
    params.update((f"change_{k}", v) for k, v in with_column_defaults(_CHANGES, change_row).items())
    await write_alone(session, _create_statement(), params, actor.organization_id)
    return lead_row


_LEADS: Table = Lead.__table__  # type: ignore[assignment]
_CHANGES: Table = StageChange.__table__  # type: ignore[assignment]


@functools.cache
def _create_statement() -> Select[Any]:
    """A lead and its first history row in one statement, every column bound."""
    lead = (
        insert(_LEADS)
        .values({c.key: bindparam(f"lead_{c.key}", type_=c.type) for c in _LEADS.columns})
        .returning(_LEADS.c.id)
        .cte("new_lead")
    )
    change = insert(_CHANGES).values({c.key: bindparam(f"change_{c.key}", type_=c.type) for c in _CHANGES.columns})
    return select(lead.c.id).add_cte(change.cte("new_change"))


async def update_lead(
    session: AsyncSession, actor: Actor, lead_id: uuid.UUID, patch: LeadUpdate, *, if_match: int | None = None
) -> Lead:
    lead = await get_lead(session, actor, lead_id, for_update=True)
    return await edit_lead(session, actor, lead, patch, if_match=if_match)


async def edit_lead(
    session: AsyncSession, actor: Actor, lead: Lead, patch: LeadUpdate, *, if_match: int | None = None
) -> Lead:
    """``update_lead`` for a lead the caller has already read in scope and locked."""
    check_version(lead.version, if_match)
    if patch.owner_id is not msgspec.UNSET and patch.owner_id != lead.owner_id:
        await check_owner(session, actor, patch.owner_id)
    account_id = lead.account_id if patch.account_id is msgspec.UNSET else patch.account_id
    contact_id = lead.primary_contact_id if patch.primary_contact_id is msgspec.UNSET else patch.primary_contact_id
    if (account_id, contact_id) != (lead.account_id, lead.primary_contact_id):
        await _check_references(session, actor, account_id, contact_id)
    if apply_patch(lead, patch):
        await session.flush()
    return lead


async def delete_lead(session: AsyncSession, actor: Actor, lead_id: uuid.UUID, *, if_match: int | None = None) -> None:
    """A tombstone, not a hard delete: offline devices must learn of the removal."""
    lead = await get_lead(session, actor, lead_id, for_update=True)
    check_version(lead.version, if_match)
    lead.deleted_at = utcnow()
    await session.flush()


def _fact_columns(org: Any, lead_id: Any) -> tuple[Any, ...]:
    """What the stage rules count for a lead, and its organization's
    configuration, as four scalar subqueries (``org`` and ``lead_id`` are
    parameters or the lead's own columns)."""
    completed_visits = (
        select(func.count())
        .where(
            Activity.organization_id == org,
            Activity.lead_id == lead_id,
            # Not IN (…): its list is expanded when a session executes, and
            # `read_rows` runs the statement as compiled.
            or_(Activity.kind == "visit", Activity.kind == "meeting"),
            or_(Activity.check_in_at.is_not(None), Activity.completed_at.is_not(None)),
        )
        .scalar_subquery()
    )
    raised = select(func.count()).where(Objection.organization_id == org, Objection.lead_id == lead_id)
    still_open = raised.where(Objection.status == "open")
    settings = select(Organization.settings).where(Organization.id == org).scalar_subquery()
    return completed_visits, raised.scalar_subquery(), still_open.scalar_subquery(), settings


@functools.cache
def _facts_statement() -> Select[Any]:
    """The facts of a lead already in hand, built once (the tenant and the lead
    vary, as parameters)."""
    return select(*_fact_columns(bindparam("org", type_=Uuid), bindparam("lead_id", type_=Uuid)))


@functools.lru_cache(maxsize=4096)
def _locked_lead_with_facts(actor: Actor) -> Select[Any]:
    """The lead in the actor's scope, locked, with its facts: one round trip for
    a REST stage move or outcome. Built once per caller."""
    return (
        select(Lead, *_fact_columns(Lead.organization_id, Lead.id))
        .where(Lead.id == bindparam("lead_id"), lead_scope(actor))
        .with_for_update(of=Lead)
    )


def _facts(lead: Callable[[str], Any], counts: Sequence[Any]) -> tuple[stages.LeadFacts, PipelineConfig]:
    """What the stage rules judge a lead by (``lead`` reads its fields) and its
    organization's configuration; ``counts``: the `_fact_columns` read with it."""
    lost_at_stage = lead("lost_at_stage")
    facts = stages.LeadFacts(
        stage=Stage(lead("stage")),
        status=LeadStatus(lead("status")),
        has_account=lead("account_id") is not None,
        has_primary_contact=lead("primary_contact_id") is not None,
        qualification=lead("qualification") or {},
        completed_visits=counts[0],
        quoted_amount=lead("amount"),
        objections_raised=counts[1],
        open_objections=counts[2],
        lost_at_stage=Stage(lost_at_stage) if lost_at_stage else None,
    )
    return facts, decode_config(counts[3])


async def lead_facts(session: AsyncSession, lead: Lead) -> tuple[stages.LeadFacts, PipelineConfig]:
    """Gather what the stage rules need — the lead's activity and objection
    counts and the organization's current configuration — in one round trip."""
    params = {"org": lead.organization_id, "lead_id": lead.id}
    return _facts(_fields_of(lead), (await session.execute(_facts_statement(), params)).one())


async def _lead_for_rules(
    session: AsyncSession, actor: Actor, lead_id: uuid.UUID, if_match: int | None, locked: Lead | None = None
) -> tuple[Lead, stages.LeadFacts, PipelineConfig]:
    """The lead locked for a pipeline change (``locked``: the caller already
    read it in scope and locked it), checked against If-Match, with what the
    stage rules need to judge it."""
    lead = locked or preloaded(session, actor, Lead, lead_id)
    if lead is None:
        row = (await session.execute(_locked_lead_with_facts(actor), {"lead_id": lead_id})).first()
        if row is None:
            raise NotFound(f"No lead {lead_id}.", resource="lead", id=str(lead_id))
        lead = row[0]
        check_version(lead.version, if_match)
        facts, config = _facts(_fields_of(lead), row[1:])
        return lead, facts, config
    check_version(lead.version, if_match)
    facts, config = await lead_facts(session, lead)
    return lead, facts, config


def _business_time(given: dt.datetime | None, stage_entered_at: dt.datetime) -> dt.datetime:
    """When a move or outcome happened: the time given (a device records it
    offline, with its own clock), but never before the lead entered its current
    stage, so time in a stage is never negative."""
    if given is None:
        return utcnow()
    return max(given, stage_entered_at)


async def _write_history(
    session: AsyncSession,
    actor: Actor,
    lead: Lead,
    *,
    from_stage: str,
    entered: dt.datetime,
    at: dt.datetime,
    note: str | None,
) -> Lead:
    """After an outcome or reopen: restart the stage clock if the stage
    changed, and append the history row."""
    if lead.stage != from_stage:
        lead.stage_entered_at = at
    _record_change(session, actor, lead, from_stage=from_stage, at=at, from_stage_entered_at=entered, note=note)
    await session.flush()
    return lead


def _planned_move(
    actor: Actor, lead: Callable[[str], Any], facts: stages.LeadFacts, config: PipelineConfig, move: StageMove
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A stage move, if the rules allow it: the lead's columns it changes (the
    stage summary with them) and the history row it appends. ``lead`` reads
    the lead's fields as they are before the move."""
    stages.check_move(facts, move.to_stage, config, role=actor.role, override_reason=move.override_reason)
    from_stage, entered = lead("stage"), lead("stage_entered_at")
    at = _business_time(move.at, entered)
    changes: dict[str, Any] = {"stage": move.to_stage.value}
    if move.override_reason and from_stage == Stage.QUALIFY.value:
        score = stages.qualification_score(facts.qualification)
        if score is None or score < config.gates.qualify.threshold:
            changes["qualification_override_reason"] = move.override_reason
    if changes["stage"] != from_stage:
        changes["stage_entered_at"] = at  # the stage clock restarts

    def after(name: str) -> Any:
        return changes[name] if name in changes else lead(name)

    changes.update(stage_summary.apply_change(after, from_stage, after("stage"), after("status"), at))
    note = move.note or move.override_reason
    history = _history_row(actor, after, from_stage=from_stage, at=at, from_stage_entered_at=entered, note=note)
    return changes, history


async def move_stage(
    session: AsyncSession,
    actor: Actor,
    lead_id: uuid.UUID,
    move: StageMove,
    *,
    if_match: int | None = None,
    config: PipelineConfig | None = None,
    locked: Lead | None = None,
) -> Lead:
    """Move a lead to another stage, in the session's transaction, the lead
    locked from the read to the commit."""
    lead, facts, current = await _lead_for_rules(session, actor, lead_id, if_match, locked)
    changes, history = _planned_move(actor, _fields_of(lead), facts, config or current, move)
    for name, value in changes.items():
        setattr(lead, name, value)
    session.add(StageChange(**history))
    await session.flush()
    return lead


# How many times a move that commits alone reads, judges and writes before it
# waits for the lead's lock instead (the lead changed between its read and write).
_OPTIMISTIC_TRIES = 2


async def move_stage_now(
    session: AsyncSession, actor: Actor, lead_id: uuid.UUID, move: StageMove, *, if_match: int | None = None
) -> StoredLead:
    """``move_stage`` for a request of its own (REST). Where it can, the move
    takes no lock: it reads the lead with its facts, judges the move, and
    writes the lead and its history row in one statement that commits by itself
    (``canvass.db.write_alone``) only if the lead's version is still the one it
    judged — two round trips instead of five. If the lead changed meanwhile it
    judges again; after `_OPTIMISTIC_TRIES` it takes the locking path."""
    hooks = alone_writes(session)
    if hooks is not None:
        for _ in range(_OPTIMISTIC_TRIES):
            moved = await _move_alone(session, hooks, actor, lead_id, move, if_match)
            if moved is not None:
                return moved
    return await move_stage(session, actor, lead_id, move, if_match=if_match)


async def _move_alone(
    session: AsyncSession, hooks: AloneWrites, actor: Actor, lead_id: uuid.UUID, move: StageMove, if_match: int | None
) -> Sequence[Any] | None:
    """One optimistic try of `move_stage_now`: the lead as moved, or None if it
    changed between the read and the write."""
    rows = await read_rows(session, _lead_with_facts(actor), {"lead_id": lead_id})
    if not rows:
        raise NotFound(f"No lead {lead_id}.", resource="lead", id=str(lead_id))
    width = len(_LEADS.columns)  # the lead's columns, then its facts
    lead = dict(zip(_LEADS.columns.keys(), rows[0][:width], strict=True)).__getitem__
    check_version(lead("version"), if_match)
    facts, config = _facts(lead, rows[0][width:])
    changes, history = _planned_move(actor, lead, facts, config, move)
    changed = [name for name, value in changes.items() if value != lead(name)]
    params = {f"set_{name}": value for name, value in changes.items()}
    params.update((f"change_{k}", v) for k, v in with_column_defaults(_CHANGES, history).items())
    params.update(
        org=actor.organization_id,
        lead_id=lead_id,
        read_version=lead("version"),
        now=utcnow(),
        field_versions=hooks.field_versions(session, lead("field_versions"), changed, lead("version") + 1),
    )
    moved = await write_alone(session, _move_statement(tuple(sorted(changes))), params, actor.organization_id)
    return moved[0] if moved else None


@functools.lru_cache(maxsize=4096)
def _lead_with_facts(actor: Actor) -> Select[Any]:
    """Every column of the lead in the actor's scope, and its facts, not
    locked: `move_stage_now` guards its write on the version instead."""
    return select(*_LEADS.columns, *_fact_columns(Lead.organization_id, Lead.id)).where(
        Lead.id == bindparam("lead_id"), lead_scope(actor)
    )


@functools.lru_cache(maxsize=64)
def _move_statement(columns: tuple[str, ...]) -> Select[Any]:
    """A stage move as one statement: the lead's UPDATE, only if its version is
    still the one the move was judged on, and the history row, only if the
    UPDATE wrote. Returns the lead as moved (`_lead_out_columns`), or nothing.
    Built once per set of changed ``columns``; every value bound."""
    leads = _LEADS.c
    values: dict[str, Any] = {name: bindparam(f"set_{name}", type_=leads[name].type) for name in columns}
    values.update(
        version=leads.version + 1,
        updated_at=bindparam("now", type_=leads.updated_at.type),
        server_version=null(),  # written, not yet published (canvass/sync/feed.py)
        field_versions=bindparam("field_versions", type_=leads.field_versions.type),
    )
    moved = (
        update(_LEADS)
        .where(
            leads.organization_id == bindparam("org", type_=Uuid),
            leads.id == bindparam("lead_id", type_=Uuid),
            leads.version == bindparam("read_version", type_=Integer),
        )
        .values(values)
        .returning(*_lead_out_columns())
        .cte("moved")
    )
    history = insert(_CHANGES).from_select(
        [c.key for c in _CHANGES.columns],
        select(*(bindparam(f"change_{c.key}", type_=c.type) for c in _CHANGES.columns)).select_from(moved),
    )
    return select(*moved.c).add_cte(history.cte("history"))


async def record_outcome(
    session: AsyncSession,
    actor: Actor,
    lead_id: uuid.UUID,
    record: OutcomeRecord,
    *,
    if_match: int | None = None,
    locked: Lead | None = None,
) -> Lead:
    lead, facts, _ = await _lead_for_rules(session, actor, lead_id, if_match, locked)
    amount = record.amount if record.amount is not None else lead.amount
    stages.check_outcome(facts, record.outcome, amount=amount, reason=record.loss_reason)
    at = _business_time(record.at, lead.stage_entered_at)
    from_stage, entered = lead.stage, lead.stage_entered_at
    lead.status = record.outcome.value
    lead.closed_at = at
    if record.closing_method:
        lead.closing_method = record.closing_method.value
    if record.closing_signals is not None:
        lead.closing_signals = [s.value for s in record.closing_signals]
    if record.outcome is Outcome.WON:
        lead.amount = amount
        lead.forecast_category = ForecastCategory.CLOSED.value
    else:
        lead.loss_reason = record.loss_reason
        lead.competitor = record.competitor
        lead.forecast_category = ForecastCategory.OMITTED.value
        if record.outcome is Outcome.LOST:
            lead.lost_at_stage = from_stage
            lead.stage = Stage.CLOSE.value
    note = record.note or record.loss_reason
    return await _write_history(session, actor, lead, from_stage=from_stage, entered=entered, at=at, note=note)


async def reopen_lead(
    session: AsyncSession, actor: Actor, lead_id: uuid.UUID, request: Reopen, *, if_match: int | None = None
) -> Lead:
    lead, facts, _ = await _lead_for_rules(session, actor, lead_id, if_match)
    back_to = stages.check_reopen(facts, role=actor.role)
    at = utcnow()
    from_stage, entered = lead.stage, lead.stage_entered_at
    lead.stage = back_to.value
    lead.status = LeadStatus.OPEN.value
    lead.closed_at = None
    lead.lost_at_stage = None
    lead.forecast_category = ForecastCategory.PIPELINE.value
    note = request.note or "reopened"
    return await _write_history(session, actor, lead, from_stage=from_stage, entered=entered, at=at, note=note)


async def stage_history(session: AsyncSession, actor: Actor, lead_id: uuid.UUID) -> Sequence[StageChange]:
    await get_lead(session, actor, lead_id)
    return (
        await session.scalars(
            select(StageChange)
            .where(StageChange.organization_id == actor.organization_id, StageChange.lead_id == lead_id)
            .order_by(StageChange.at, StageChange.id)
        )
    ).all()


def lead_probability(lead: Lead | Row[Any], config: PipelineConfig | None = None) -> float:
    """Probability used for weighted pipeline: the rep's override, else the stage's."""
    return _probability(lead.status, lead.probability_override, lead.stage, config)


def _probability(status: str, override: float | None, stage: str, config: PipelineConfig | None) -> float:
    if status == LeadStatus.WON.value:
        return 1.0
    if status != LeadStatus.OPEN.value:
        return 0.0
    if override is not None:
        return override
    return _stage_probabilities(config)[stage]


_DEFAULT_CONFIG = PipelineConfig()
_probabilities_of: tuple[PipelineConfig | None, dict[str, float]] = (None, {})


def _stage_probabilities(config: PipelineConfig | None) -> dict[str, float]:
    """The configuration's probability by stage name, worked out once per
    configuration object (a tenant's cached configuration is one object until it
    changes), not once per lead of a page."""
    global _probabilities_of
    config = config or _DEFAULT_CONFIG
    if _probabilities_of[0] is not config:
        _probabilities_of = (config, {stage.value: p for stage, p in config.probabilities().items()})
    return _probabilities_of[1]


_LEAD_STORED_FIELDS = tuple(f for f in LeadOut.__struct_fields__ if f not in ("probability", "qualification_score"))


@functools.cache
def _lead_out_columns() -> tuple[Any, ...]:
    """The columns a lead's response is made of. Reads for display select only
    these: the sync bookkeeping (per-field versions, a JSON document per row) and
    the report columns would be decoded on every row and then thrown away."""
    return tuple(Lead.__table__.c[name] for name in _LEAD_STORED_FIELDS)


def to_lead_out(lead: StoredLead, config: PipelineConfig | None = None) -> LeadOut:
    """The response shape of a lead, with its derived probability and score.
    A plain sequence is a row of `_lead_out_columns()`, in that order; a
    mapping has every stored field by name."""
    if isinstance(lead, Lead):
        stored = {name: getattr(lead, name) for name in _LEAD_STORED_FIELDS}
    elif isinstance(lead, Mapping):
        stored = {name: lead[name] for name in _LEAD_STORED_FIELDS}
    elif isinstance(lead, Row) and lead._fields != _LEAD_STORED_FIELDS:
        values = lead._asdict()
        stored = {name: values[name] for name in _LEAD_STORED_FIELDS}
    else:  # a read of `_lead_out_columns()`: zip, no lookups
        stored = dict(zip(_LEAD_STORED_FIELDS, lead, strict=True))
    return LeadOut(
        **stored,
        probability=_probability(stored["status"], stored["probability_override"], stored["stage"], config),
        qualification_score=stages.qualification_score(stored["qualification"] or {}),
    )
