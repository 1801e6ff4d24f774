"""Leads: create, edit, list, and move through the pipeline.

Every stage move, outcome and reopen goes through here and asks ``pipeline.stages``
whether it is allowed; every one writes a ``StageChange``.
"""

from __future__ import annotations

import datetime as dt
import functools
import uuid
from collections.abc import Sequence
from typing import Any

import msgspec
from sqlalchemy import Select, Uuid, bindparam, func, or_, select
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncSession

from canvass.db import read_rows, utcnow
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


def _record_change(
    session: AsyncSession,
    actor: Actor,
    lead: Lead,
    *,
    from_stage: str | None,
    at: dt.datetime,
    from_stage_entered_at: dt.datetime | None = None,
    note: str | None = None,
    imported: bool = False,
) -> StageChange:
    change = StageChange(
        organization_id=lead.organization_id,
        lead_id=lead.id,
        from_stage=from_stage,
        to_stage=lead.stage,
        status=lead.status,
        amount=lead.amount,
        at=at,
        from_stage_entered_at=from_stage_entered_at,
        by_user_id=actor.user_id,
        by_device_id=actor.device_id,
        note=note,
        imported=imported,
    )
    session.add(change)
    stage_summary.apply_to(lead, from_stage, at)  # the summary the funnel reports read
    return change


async def create_lead(session: AsyncSession, actor: Actor, data: LeadCreate, *, at: dt.datetime | None = None) -> Lead:
    owner_id = data.owner_id or actor.user_id
    if owner_id != actor.user_id:
        await check_owner(session, actor, owner_id)
    await _check_references(session, actor, data.account_id, data.primary_contact_id)
    if data.id is not None and await exists(session, Lead, (actor.organization_id, data.id)):
        raise AlreadyExists(f"Lead {data.id} already exists.", id=str(data.id))
    now = at or utcnow()
    fields = msgspec.to_builtins(data, builtin_types=(uuid.UUID, dt.date))
    fields.update(
        owner_id=owner_id,
        # JSON columns hold plain JSON: dates inside them become ISO strings.
        qualification=msgspec.to_builtins(data.qualification) if data.qualification else {},
        visit_plan=msgspec.to_builtins(data.visit_plan) if data.visit_plan else {},
    )
    fields["id"] = data.id or new_id()  # known now, so the history row can refer to it
    lead = Lead(
        organization_id=actor.organization_id,
        stage=Stage.PROSPECTING.value,
        status=LeadStatus.OPEN.value,
        stage_entered_at=now,
        created_at=now,
        updated_at=now,
        **fields,
    )
    session.add(lead)
    _record_change(session, actor, lead, from_stage=None, at=now, note="created")
    await session.flush()  # one flush: both rows in one unit of work
    return lead


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
            Activity.kind.in_(("visit", "meeting")),
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


def _facts(lead: Lead, counts: Sequence[Any]) -> tuple[stages.LeadFacts, PipelineConfig]:
    facts = stages.LeadFacts(
        stage=Stage(lead.stage),
        status=LeadStatus(lead.status),
        has_account=lead.account_id is not None,
        has_primary_contact=lead.primary_contact_id is not None,
        qualification=lead.qualification or {},
        completed_visits=counts[0],
        quoted_amount=lead.amount,
        objections_raised=counts[1],
        open_objections=counts[2],
        lost_at_stage=Stage(lead.lost_at_stage) if lead.lost_at_stage else None,
    )
    return facts, decode_config(counts[3])


async def lead_facts(session: AsyncSession, lead: Lead) -> tuple[stages.LeadFacts, PipelineConfig]:
    """Gather what the stage rules need — the lead's activity and objection
    counts and the organization's current configuration — in one round trip."""
    params = {"org": lead.organization_id, "lead_id": lead.id}
    return _facts(lead, (await session.execute(_facts_statement(), params)).one())


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
        facts, config = _facts(lead, row[1:])
        return lead, facts, config
    check_version(lead.version, if_match)
    facts, config = await lead_facts(session, lead)
    return lead, facts, config


def _business_time(given: dt.datetime | None, lead: Lead) -> dt.datetime:
    """When a move or outcome happened: the time given (a device records it
    offline, with its own clock), but never before the lead entered its current
    stage, so time in a stage is never negative."""
    if given is None:
        return utcnow()
    return max(given, lead.stage_entered_at)


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
    """After a move, outcome or reopen: restart the stage clock if the stage
    changed, and append the history row."""
    if lead.stage != from_stage:
        lead.stage_entered_at = at
    _record_change(session, actor, lead, from_stage=from_stage, at=at, from_stage_entered_at=entered, note=note)
    await session.flush()
    return lead


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
    lead, facts, current = await _lead_for_rules(session, actor, lead_id, if_match, locked)
    config = config or current
    stages.check_move(facts, move.to_stage, config, role=actor.role, override_reason=move.override_reason)
    at = _business_time(move.at, lead)
    from_stage, entered = lead.stage, lead.stage_entered_at
    if move.override_reason and from_stage == Stage.QUALIFY.value:
        score = stages.qualification_score(facts.qualification)
        if score is None or score < config.gates.qualify.threshold:
            lead.qualification_override_reason = move.override_reason
    lead.stage = move.to_stage.value
    note = move.note or move.override_reason
    return await _write_history(session, actor, lead, from_stage=from_stage, entered=entered, at=at, note=note)


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
    at = _business_time(record.at, lead)
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


def to_lead_out(lead: Lead | Row[Any] | Sequence[Any], config: PipelineConfig | None = None) -> LeadOut:
    """The response shape of a lead, with its derived probability and score.
    A plain sequence is a row of `_lead_out_columns()`, in that order."""
    if isinstance(lead, Lead):
        stored = {name: getattr(lead, name) for name in _LEAD_STORED_FIELDS}
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
