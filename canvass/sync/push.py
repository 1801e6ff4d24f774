"""Push: apply a device's queued mutations exactly once, in seq order, through
the pipeline services the REST API calls (PROTOCOL.md, "Push").

One push is one transaction. Mutations run in groups under a savepoint: a
mutation a rule refuses rolls back only its own work and is answered
``rejected``; its seq is still consumed, so one bad intent never blocks the
outbox behind it. The receipts are stored in the same transaction as the
effects, so a push repeated after a lost reply is answered from them and
applies nothing twice.

What a push costs per mutation (PROTOCOL.md, "Push", "Cost"): the records the
push names are read once up front (``_preload``), and within a group the
services' flushes are put off (``_apply_put_off``).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

import msgspec
from sqlalchemy import ColumnElement, Uuid, any_, bindparam, insert, inspect, literal, select, union_all
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.util import identity_key

from canvass.db import utcnow
from canvass.errors import BatchTooLarge, CanvassError, InvalidValue, NotFound, SeqGap
from canvass.pipeline.models import Account, Activity, Contact, FieldVersioned, Lead, Objection
from canvass.pipeline.schemas import (
    AccountCreate,
    ActivityComplete,
    ActivityCreate,
    CheckIn,
    ContactCreate,
    LeadCreate,
    ObjectionCreate,
    ObjectionUpdate,
    OutcomeRecord,
    StageMove,
)
from canvass.pipeline.scope import Actor, activity_scope, lead_scope
from canvass.pipeline.services import accounts, activities, leads
from canvass.pipeline.services.common import PRELOADED
from canvass.pipeline.vocabulary import LeadStatus
from canvass.sync import feed
from canvass.sync.devices import own_device
from canvass.sync.hlc import ClockDrift, Timestamp
from canvass.sync.merge import (
    EDITS,
    Editable,
    Policy,
    deleted_conflict,
    find_deleted,
    jsonable,
    merge_edit,
    new_conflict,
    record_owner,
    written_since,
)
from canvass.sync.models import SyncReceipt
from canvass.sync.wire import (
    MAX_MUTATIONS_PER_PUSH,
    Mutation,
    MutationName,
    PushRequest,
    PushResponse,
    Receipt,
    ReceiptStatus,
)

Handler = Callable[[AsyncSession, Actor, Mutation], Awaitable[Receipt]]


class _Target(msgspec.Struct, forbid_unknown_fields=True):
    id: uuid.UUID


class _Edit(msgspec.Struct, forbid_unknown_fields=True):
    id: uuid.UUID
    fields: dict[str, Any]


def _split(args: dict[str, Any], key: str = "id") -> tuple[uuid.UUID, dict[str, Any]]:
    """The record a mutation names, and the rest of its arguments."""
    rest = dict(args)
    if key not in rest:
        raise msgspec.ValidationError(f"Object missing required field `{key}`")
    return msgspec.convert(rest.pop(key), uuid.UUID), rest


def _applied(m: Mutation) -> Receipt:
    return Receipt(seq=m.seq, status=ReceiptStatus.APPLIED)


def _already(m: Mutation, *fields: str) -> Receipt:
    """The server already is where the device wanted it: nothing to change."""
    return Receipt(seq=m.seq, status=ReceiptStatus.MERGED, fields=list(fields))


# ---------------------------------------------------------------- records


def _create(create: Callable[[AsyncSession, Actor, Any], Awaitable[Any]], struct: type[msgspec.Struct]) -> Handler:
    async def handle(session: AsyncSession, actor: Actor, m: Mutation) -> Receipt:
        data = msgspec.convert(m.args, struct)
        if getattr(data, "id", None) is None:
            raise InvalidValue("A record created offline carries the id the device made (UUIDv7).", field="args.id")
        created = await create(session, actor, data)
        if (preloaded := session.info.get(PRELOADED)) is not None:
            # A later mutation of the push (a visit's check-in) may take it
            # from the session, flushed or not.
            preloaded["created"][identity_key(type(created), (created.organization_id, created.id))] = created
        return _applied(m)

    return handle


def _edit(entity: str) -> Handler:
    spec = EDITS[entity]

    async def handle(session: AsyncSession, actor: Actor, m: Mutation) -> Receipt:
        edit = msgspec.convert(m.args, _Edit)
        return await merge_edit(session, actor, m, spec, edit.id, edit.fields)

    return handle


def _delete(entity: str) -> Handler:
    spec = EDITS[entity]

    async def handle(session: AsyncSession, actor: Actor, m: Mutation) -> Receipt:
        target = msgspec.convert(m.args, _Target)
        try:
            record: Editable = await spec.get(session, actor, target.id)
        except NotFound:
            if await find_deleted(session, actor, spec.model, target.id) is not None:
                return _already(m, "deleted_at")
            raise
        base = m.base.get(f"{entity}:{target.id}")
        edited_since = sorted(
            name for name, last in (record.field_versions or {}).items() if written_since(last, base, actor)
        )
        if edited_since:
            # Deleting what someone else just edited would lose their edit
            # silently: a person decides.
            conflict = new_conflict(
                actor,
                m,
                entity=entity,
                record_id=target.id,
                owner_id=await record_owner(session, record),
                field=None,
                policy=Policy.EDIT_VS_DELETE,
                server_value={name: jsonable(getattr(record, name)) for name in edited_since},
                device_value={"deleted": True},
                server_hlc=max(str(record.field_versions[n][1]) for n in edited_since),
            )
            session.add(conflict)
            await session.flush()
            return Receipt(seq=m.seq, status=ReceiptStatus.CONFLICT, fields=edited_since, conflict_id=conflict.id)
        await spec.delete(session, actor, target.id)
        return _applied(m)

    return handle


# ---------------------------------------------------------------- the pipeline


async def _lead_or_conflict(session: AsyncSession, actor: Actor, m: Mutation, lead_id: uuid.UUID) -> Lead | Receipt:
    """The lead a pipeline change applies to — re-read now, whatever the device
    saw — or the conflict that a change of a deleted lead is."""
    try:
        return await leads.get_lead(session, actor, lead_id, for_update=True)
    except NotFound:
        deleted = await find_deleted(session, actor, Lead, lead_id)
        if deleted is None:
            raise
        return await deleted_conflict(session, actor, m, "lead", deleted, {"mutation": m.name.value, **m.args})


async def _move_stage(session: AsyncSession, actor: Actor, m: Mutation) -> Receipt:
    lead_id, rest = _split(m.args)
    move = msgspec.convert(rest, StageMove)
    lead = await _lead_or_conflict(session, actor, m, lead_id)
    if isinstance(lead, Receipt):
        return lead
    if lead.stage == move.to_stage.value and lead.status == LeadStatus.OPEN.value:
        return _already(m, "stage")  # someone moved it there meanwhile
    # Judged against the lead as it is now, by the same rules as online.
    await leads.move_stage(session, actor, lead_id, move, locked=lead)
    return _applied(m)


async def _record_outcome(session: AsyncSession, actor: Actor, m: Mutation) -> Receipt:
    lead_id, rest = _split(m.args)
    record = msgspec.convert(rest, OutcomeRecord)
    lead = await _lead_or_conflict(session, actor, m, lead_id)
    if isinstance(lead, Receipt):
        return lead
    if lead.status == record.outcome.value:
        return _already(m, "status")
    await leads.record_outcome(session, actor, lead_id, record, locked=lead)
    return _applied(m)


async def _activity_step(
    session: AsyncSession, actor: Actor, m: Mutation, struct: type[msgspec.Struct], step: Any
) -> Receipt:
    activity_id, rest = _split(m.args)
    await step(session, actor, activity_id, msgspec.convert(rest, struct))
    return _applied(m)


async def _add_objection(session: AsyncSession, actor: Actor, m: Mutation) -> Receipt:
    lead_id, rest = _split(m.args, "lead_id")
    data = msgspec.convert(rest, ObjectionCreate)
    if data.id is None:
        raise InvalidValue("A record created offline carries the id the device made (UUIDv7).", field="args.id")
    await activities.add_objection(session, actor, lead_id, data)
    return _applied(m)


async def _update_objection(session: AsyncSession, actor: Actor, m: Mutation) -> Receipt:
    edit = msgspec.convert(m.args, _Edit)
    await activities.update_objection(session, actor, edit.id, msgspec.convert(edit.fields, ObjectionUpdate))
    return _applied(m)


HANDLERS: dict[MutationName, Handler] = {
    MutationName.ACCOUNT_CREATE: _create(accounts.create_account, AccountCreate),
    MutationName.ACCOUNT_UPDATE: _edit("account"),
    MutationName.ACCOUNT_DELETE: _delete("account"),
    MutationName.CONTACT_CREATE: _create(accounts.create_contact, ContactCreate),
    MutationName.CONTACT_UPDATE: _edit("contact"),
    MutationName.CONTACT_DELETE: _delete("contact"),
    MutationName.LEAD_CREATE: _create(leads.create_lead, LeadCreate),
    MutationName.LEAD_UPDATE: _edit("lead"),
    MutationName.LEAD_DELETE: _delete("lead"),
    MutationName.LEAD_MOVE_STAGE: _move_stage,
    MutationName.LEAD_RECORD_OUTCOME: _record_outcome,
    MutationName.ACTIVITY_LOG: _create(activities.log_activity, ActivityCreate),
    MutationName.ACTIVITY_CHECK_IN: lambda s, a, m: _activity_step(s, a, m, CheckIn, activities.check_in),
    MutationName.ACTIVITY_CHECK_OUT: lambda s, a, m: _activity_step(s, a, m, CheckIn, activities.check_out),
    MutationName.ACTIVITY_COMPLETE: lambda s, a, m: _activity_step(
        s, a, m, ActivityComplete, activities.complete_activity
    ),
    MutationName.OBJECTION_ADD: _add_objection,
    MutationName.OBJECTION_UPDATE: _update_objection,
}


# ---------------------------------------------------------------- the push


def _rejected(m: Mutation, rule: str, message: str) -> Receipt:
    return Receipt(seq=m.seq, status=ReceiptStatus.REJECTED, rule=rule, message=message)


# Mutations run in groups under one savepoint each: a savepoint costs round
# trips, and nearly every mutation applies. A group in which anything is refused
# is rolled back whole and re-run in parts (``apply_group``), so a refusal still
# undoes only its own mutation's work.
GROUP = 50

_REFUSALS = (CanvassError, msgspec.ValidationError, IntegrityError)


def _use_clock(session: AsyncSession, m: Mutation) -> None:
    hlc = m.hlc
    try:
        feed.server_clock.receive(Timestamp.decode(m.hlc))
    except ClockDrift:
        # A clock a day or more fast would win every later edit: the rep's work
        # is still applied, but stamped with the server's own time.
        hlc = feed.server_clock.tick().encode()
    session.info[feed.HLC] = hlc


def _forget_since(session: AsyncSession, before: set[Any]) -> None:
    """After a savepoint rolled back: drop the records it created from the
    session. (SQLAlchemy expunges those only if they were not also updated in
    the savepoint; a lead created and then moved stays behind otherwise.)"""
    for key in set(session.identity_map.keys()) - before:
        obj = session.identity_map.get(key)
        if obj is not None:
            session.expunge(obj)


def _refusal(m: Mutation, exc: Exception) -> Receipt:
    if isinstance(exc, CanvassError):
        field = exc.extra.get("field")
        message = f"{exc.detail} (field `{field}`)" if field else exc.detail
        return _rejected(m, getattr(exc, "rule", None) or exc.code, message)
    if isinstance(exc, msgspec.ValidationError):
        return _rejected(m, "args.invalid", f"Invalid arguments for {m.name.value}: {exc}")
    return _rejected(m, "integrity", "The change conflicts with existing data (a duplicate id or a missing record).")


async def apply_mutation(session: AsyncSession, actor: Actor, m: Mutation) -> Receipt:
    """Apply one mutation in its own savepoint; a refusal becomes its receipt."""
    _use_clock(session, m)
    before = set(session.identity_map.keys())
    try:
        async with session.begin_nested():
            return await HANDLERS[m.name](session, actor, m)
    except _REFUSALS as exc:
        _forget_since(session, before)
        return _refusal(m, exc)
    finally:
        session.info.pop(feed.HLC, None)


def _changed(m: Mutation) -> str | None:
    """The id of the record a mutation changes or creates (``args.id``; a
    record it hangs something on, ``args.lead_id``, it only reads)."""
    record_id = _uuid(m.args.get("id"))
    return None if record_id is None else str(record_id)


def _unflushed_versioned(session: AsyncSession) -> set[str]:
    """The ids of the records with per-field versions written in the session
    and not flushed yet."""
    return {str(obj.id) for objects in (session.new, session.dirty) for obj in objects if isinstance(obj, Editable)}


async def _put_off(objects: Sequence[Any] | None = None) -> None:
    """A service's own flush while a group is applied (see ``apply_group``)."""


async def _apply_put_off(
    session: AsyncSession, actor: Actor, group: Sequence[Mutation], refused_at: list[int]
) -> list[Receipt]:
    """Apply a group with the services' flushes put off: the writes of several
    mutations go to the database in one flush (one unit of work, and inserts
    of a table in one statement) instead of one flush each. What the services
    read is still up to date — the session flushes before every query
    (autoflush) — and a flush is still made:

    - before a mutation that changes a lead, account or contact written and
      not yet flushed (the same lead edited twice), so that each mutation's change
      of a record with per-field versions is its own UPDATE with its own row
      version, as when applied one by one; (an activity logged, checked in and
      checked out in one group is written once, as its final state);
    - at the end of the group (the savepoint's release).

    Each record's per-field versions get the timestamp of the mutation that
    changed it (``feed.HLC_OF``), not that of the mutation at whose flush it is
    written. A refusal found at a later flush (an integrity error) rolls the
    group back (see ``apply_group``). ``refused_at`` receives the index of the
    mutation whose handler raised, if one did."""
    hlc_of: dict[Any, str] = {}
    session.info[feed.HLC_OF] = hlc_of
    autoflush = session.sync_session.autoflush
    session.flush = _put_off  # type: ignore[method-assign]
    session.sync_session.autoflush = True
    try:
        receipts = []
        for i, m in enumerate(group):
            if (session.new or session.dirty) and _changed(m) in _unflushed_versioned(session):
                await AsyncSession.flush(session)
            _use_clock(session, m)
            try:
                receipts.append(await HANDLERS[m.name](session, actor, m))
            except _REFUSALS:
                refused_at.append(i)
                raise
            hlc = session.info[feed.HLC]
            for obj in session.dirty:
                if isinstance(obj, FieldVersioned):
                    hlc_of.setdefault(inspect(obj).key, hlc)
        return receipts
    finally:
        del session.flush
        session.sync_session.autoflush = autoflush


def _among(session: AsyncSession, column: Any, ids: Iterable[uuid.UUID]) -> ColumnElement[bool]:
    """``column IN ids``. On PostgreSQL the ids travel as one array parameter:
    the statement's text then does not depend on how many ids a push names, so
    each pooled connection prepares it once — an IN list of n ids is another
    statement for every n, prepared again and again (each a round trip, and
    parsed and planned by the server)."""
    if session.get_bind().dialect.name == "postgresql":
        return column == any_(bindparam(None, sorted(ids), type_=postgresql.ARRAY(Uuid())))  # type: ignore[no-any-return]
    return column.in_(sorted(ids))  # type: ignore[no-any-return]


async def _reload_expired(session: AsyncSession, actor: Actor) -> None:
    """After a group rolled back: the records read up front that it had changed
    are expired; read them again, one query per table, instead of one by one
    as the re-run reaches them."""
    info = session.info.get(PRELOADED)
    if info is None:
        return
    expired: dict[type[Any], list[uuid.UUID]] = {}
    for obj in info["held"]:
        state = inspect(obj)
        if state.persistent and (state.expired or state.expired_attributes - {"server_version"}):
            expired.setdefault(type(obj), []).append(state.identity[1])
    if Lead in expired:  # already locked: the lock is the transaction's
        await session.execute(select(Lead).where(lead_scope(actor), _among(session, Lead.id, expired[Lead])))
    if Activity in expired:
        await session.execute(
            select(Activity).where(activity_scope(actor), _among(session, Activity.id, expired[Activity]))
        )


async def apply_group(session: AsyncSession, actor: Actor, group: Sequence[Mutation]) -> list[Receipt]:
    """Apply mutations under one savepoint. If one is refused, the group is
    rolled back whole and re-run in parts: the mutations before the refused one
    as a group, the refused one alone (its receipt says why), the rest as a
    group — so a refusal costs a few savepoints, not one per mutation, and
    still undoes only its own mutation's work. A refusal found only when the
    group's writes were flushed (an integrity error) names no mutation: the
    group is halved until it is found."""
    if len(group) <= 1:
        return [await apply_mutation(session, actor, m) for m in group]
    before = set(session.identity_map.keys())
    refused_at: list[int] = []
    try:
        async with session.begin_nested():
            return await _apply_put_off(session, actor, group, refused_at)
    except _REFUSALS:
        _forget_since(session, before)
    finally:
        session.info.pop(feed.HLC, None)
        session.info.pop(feed.HLC_OF, None)
    await _reload_expired(session, actor)
    if refused_at:
        k = refused_at[0]
        return [
            *await apply_group(session, actor, group[:k]),
            await apply_mutation(session, actor, group[k]),
            *await apply_group(session, actor, group[k + 1 :]),
        ]
    half = len(group) // 2
    return [*await apply_group(session, actor, group[:half]), *await apply_group(session, actor, group[half:])]


def _uuid(raw: Any) -> uuid.UUID | None:
    try:
        return uuid.UUID(raw) if isinstance(raw, str) else None
    except ValueError:
        return None


def _lead_named(m: Mutation) -> uuid.UUID | None:
    """The lead a mutation changes or hangs a record on, if any."""
    if m.name is MutationName.LEAD_CREATE:
        return None
    return _uuid(m.args.get("id") if m.name.value.startswith("lead.") else m.args.get("lead_id"))


# Mutations that create a record with the id the device made, and the table.
_CREATES: dict[MutationName, type[Any]] = {
    MutationName.LEAD_CREATE: Lead,
    MutationName.ACTIVITY_LOG: Activity,
    MutationName.OBJECTION_ADD: Objection,
    MutationName.ACCOUNT_CREATE: Account,
    MutationName.CONTACT_CREATE: Contact,
}
_ACTIVITY_STEPS = frozenset(
    {MutationName.ACTIVITY_CHECK_IN, MutationName.ACTIVITY_CHECK_OUT, MutationName.ACTIVITY_COMPLETE}
)


async def _preload(session: AsyncSession, actor: Actor, mutations: Sequence[Mutation]) -> None:
    """Read up front, one query per table, what the push's mutations name, so
    that the services need not ask again record by record
    (``services.common.PRELOADED``):

    - every lead the push touches, in the actor's scope, locked in id order: two
      pushes (say, a rep's phone and tablet) then queue instead of deadlocking on
      each other's leads;
    - the activities it checks in, out or completes, in the actor's scope;
    - which of the ids it creates records with do not exist yet (the services'
      duplicate-id checks).
    """
    lead_ids = sorted({lead_id for m in mutations if (lead_id := _lead_named(m)) is not None})
    activity_ids = {a for m in mutations if m.name in _ACTIVITY_STEPS and (a := _uuid(m.args.get("id")))}
    created: dict[type[Any], set[uuid.UUID]] = {}
    for m in mutations:
        model = _CREATES.get(m.name)
        if model is not None and (record_id := _uuid(m.args.get("id"))) is not None:
            created.setdefault(model, set()).add(record_id)
    read: dict[type[Any], set[uuid.UUID]] = {Lead: set(), Activity: set()}
    held: list[Any] = []
    if lead_ids:
        held.extend(
            await session.scalars(
                select(Lead)
                .where(lead_scope(actor), _among(session, Lead.id, lead_ids))
                .order_by(Lead.id)
                .with_for_update()
            )
        )
        read[Lead].update(lead.id for lead in held)
    if activity_ids:
        found = (
            await session.scalars(
                select(Activity).where(activity_scope(actor), _among(session, Activity.id, activity_ids))
            )
        ).all()
        read[Activity].update(activity.id for activity in found)
        held.extend(found)
    absent: dict[type[Any], set[uuid.UUID]] = {}
    if created:
        models = list(created)
        taken = union_all(
            *(
                select(literal(i).label("kind"), model.id).where(
                    model.organization_id == actor.organization_id, _among(session, model.id, created[model])
                )
                for i, model in enumerate(models)
            )
        )
        existing: dict[type[Any], set[uuid.UUID]] = {model: set() for model in models}
        for kind, record_id in await session.execute(taken):
            existing[models[kind]].add(record_id)
        absent = {model: created[model] - existing[model] for model in models}
    # Records this push creates are the actor's own once created: the services
    # may take them from the session too.
    read[Lead].update(created.get(Lead, ()))
    read[Activity].update(created.get(Activity, ()))
    session.info[PRELOADED] = {"read": read, "absent": absent, "held": held, "created": {}}


def _check_order(mutations: Sequence[Mutation]) -> None:
    for i in range(1, len(mutations)):
        if mutations[i].seq != mutations[i - 1].seq + 1:
            raise InvalidValue(
                f"Mutations must be in seq order without holes: seq {mutations[i].seq} follows {mutations[i - 1].seq}.",
                field=f"mutations[{i}].seq",
            )


async def push(session: AsyncSession, actor: Actor, request: PushRequest) -> PushResponse:
    if len(request.mutations) > MAX_MUTATIONS_PER_PUSH:
        raise BatchTooLarge(
            f"At most {MAX_MUTATIONS_PER_PUSH} mutations per push; send the rest in the next one.",
            field="mutations",
        )
    _check_order(request.mutations)
    device = await own_device(session, actor, request.device_id, for_update=True)
    last = device.last_applied_seq
    seen = [m for m in request.mutations if m.seq <= last]
    fresh = [m for m in request.mutations if m.seq > last]
    if fresh and fresh[0].seq != last + 1:
        raise SeqGap(
            f"This device's last applied mutation is seq {last}; the push starts at {fresh[0].seq}. "
            f"Resend from seq {last + 1}.",
            expected_seq=last + 1,
            field="mutations[0].seq",
        )
    receipts = await _stored_receipts(session, actor, device.device_id, seen)
    if fresh:
        device_actor = msgspec.structs.replace(actor, device_id=device.device_id)
        session.info[feed.DEVICE] = device.device_id
        try:
            await _preload(session, device_actor, fresh)
            new = []
            for i in range(0, len(fresh), GROUP):
                new.extend(await apply_group(session, device_actor, fresh[i : i + GROUP]))
        finally:
            session.info.pop(feed.DEVICE, None)
            session.info.pop(PRELOADED, None)
        now = utcnow()
        await session.execute(
            insert(SyncReceipt),
            [
                {
                    "organization_id": actor.organization_id,
                    "device_id": device.device_id,
                    "seq": r.seq,
                    "receipt": msgspec.json.encode(r),
                    "applied_at": now,
                }
                for r in new
            ],
        )
        receipts.extend(new)
        device.last_applied_seq = fresh[-1].seq
    device.last_push_at = utcnow()
    if request.oldest_pending_age_s is not None:
        device.oldest_pending_age_s = request.oldest_pending_age_s
    await session.flush()
    return PushResponse(device_id=device.device_id, last_applied_seq=device.last_applied_seq, receipts=receipts)


async def _stored_receipts(
    session: AsyncSession, actor: Actor, device_id: str, seen: Sequence[Mutation]
) -> list[Receipt]:
    """Receipts of mutations applied by an earlier push (a retry after a lost reply)."""
    if not seen:
        return []
    rows = await session.scalars(
        select(SyncReceipt.receipt)
        .where(
            SyncReceipt.organization_id == actor.organization_id,
            SyncReceipt.device_id == device_id,
            SyncReceipt.seq >= seen[0].seq,
            SyncReceipt.seq <= seen[-1].seq,
        )
        .order_by(SyncReceipt.seq)
    )
    return [msgspec.json.decode(raw, type=Receipt) for raw in rows]
