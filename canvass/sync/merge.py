"""The three-way, field-by-field merge of an offline edit (PROTOCOL.md, "Merge").

An edit names the row version it was based on. For each field it sets, the
record's ``field_versions`` tell whether someone else wrote that field since:

- not since the base (or only this device itself): the device's value is applied;
- since the base, same value: nothing to do;
- since the base, different value: the field's policy decides, and the losing
  value is kept in a conflict record — free text goes to the later hybrid-clock
  timestamp (settled at once), money, commitments and ownership keep the
  server's value and wait for a person.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from canvass.db import utcnow
from canvass.errors import NotFound
from canvass.ids import new_id
from canvass.pipeline.models import Account, Contact, Lead
from canvass.pipeline.schemas import AccountUpdate, ContactUpdate, LeadUpdate
from canvass.pipeline.scope import Actor, may_assign_to
from canvass.pipeline.services import accounts, leads
from canvass.pipeline.services.common import team_path_of
from canvass.sync.feed import HLC
from canvass.sync.hlc import Timestamp
from canvass.sync.models import SyncConflict
from canvass.sync.wire import Mutation, Receipt, ReceiptStatus


class Policy(enum.StrEnum):
    LATEST_WINS = "latest_wins"
    SERVER_KEEPS = "server_keeps"
    EDIT_VS_DELETE = "edit_vs_delete"


class ConflictStatus(enum.StrEnum):
    OPEN = "open"
    AUTO_RESOLVED = "auto_resolved"
    RESOLVED = "resolved"


# Money, commitments and ownership are never settled by a clock: the server's
# value stays until a person decides. Every other field is free text or a
# choice where the later edit is what the rep meant.
SERVER_KEEPS = frozenset(
    {
        "amount",
        "currency",
        "expected_close_date",
        "forecast_category",
        "probability_override",
        "owner_id",
        "account_id",
        "primary_contact_id",
        "credit_limit",
        "annual_demand",
    }
)


# The records devices edit field by field.
Editable = Lead | Account | Contact


def policy_for(field: str) -> Policy:
    return Policy.SERVER_KEEPS if field in SERVER_KEEPS else Policy.LATEST_WINS


def jsonable(value: Any) -> Any:
    return msgspec.to_builtins(value)


def _later(device_hlc: str, server_hlc: str | None) -> bool:
    if server_hlc is None:
        return True
    return Timestamp.decode(device_hlc) > Timestamp.decode(server_hlc)


async def record_owner(session: AsyncSession, record: Editable) -> uuid.UUID:
    if isinstance(record, Lead | Account):
        return record.owner_id
    assert isinstance(record, Contact)
    owner = await session.scalar(
        select(Account.owner_id).where(
            Account.organization_id == record.organization_id, Account.id == record.account_id
        )
    )
    assert owner is not None  # composite foreign key
    return owner


async def find_deleted(
    session: AsyncSession, actor: Actor, model: type[Lead] | type[Account] | type[Contact], record_id: uuid.UUID
) -> Editable | None:
    """A record of the caller's scope that was deleted (a tombstone), if any."""
    record: Editable | None = await session.get(model, (actor.organization_id, record_id))
    if record is None or record.deleted_at is None:
        return None
    owner = await record_owner(session, record)
    found = await team_path_of(session, actor.organization_id, owner)
    if found is None or not may_assign_to(actor, owner, found[1]):  # the same rule as scope.visible_owner
        return None
    return record


def new_conflict(
    actor: Actor,
    mutation: Mutation,
    *,
    entity: str,
    record_id: uuid.UUID,
    owner_id: uuid.UUID,
    field: str | None,
    policy: Policy,
    server_value: Any,
    device_value: Any,
    server_hlc: str | None,
    device_won: bool | None = None,
) -> SyncConflict:
    settled = device_won is not None
    now = utcnow()
    return SyncConflict(
        id=new_id(),
        organization_id=actor.organization_id,
        entity=entity,
        record_id=record_id,
        owner_id=owner_id,
        field=field,
        policy=policy.value,
        status=(ConflictStatus.AUTO_RESOLVED if settled else ConflictStatus.OPEN).value,
        server_value=server_value,
        device_value=device_value,
        server_hlc=server_hlc,
        device_hlc=mutation.hlc,
        device_id=actor.device_id or "",
        seq=mutation.seq,
        pushed_by_id=actor.user_id,
        winner=None if not settled else ("device" if device_won else "server"),
        resolved_at=now if settled else None,
        created_at=now,
        updated_at=now,
    )


def written_since(last: list[Any], base: int | None, actor: Actor) -> bool:
    """Was a field (its ``field_versions`` entry ``last``) written by someone
    else after the row version ``base`` the device's edit was based on? A device
    never conflicts with its own edits."""
    return base is not None and bool(last) and last[0] > base and (len(last) < 3 or last[2] != actor.device_id)


async def deleted_conflict(
    session: AsyncSession,
    actor: Actor,
    mutation: Mutation,
    entity: str,
    deleted: Editable,
    device_value: Any,
    fields: list[str] | None = None,
) -> Receipt:
    """A change that arrived for a record deleted on the server: kept as an
    open edit-versus-delete conflict, never silently dropped."""
    conflict = new_conflict(
        actor,
        mutation,
        entity=entity,
        record_id=deleted.id,
        owner_id=await record_owner(session, deleted),
        field=None,
        policy=Policy.EDIT_VS_DELETE,
        server_value={"deleted_at": jsonable(deleted.deleted_at)},
        device_value=device_value,
        server_hlc=None,
    )
    session.add(conflict)
    await session.flush()
    return Receipt(seq=mutation.seq, status=ReceiptStatus.CONFLICT, fields=fields or [], conflict_id=conflict.id)


class EditSpec(msgspec.Struct, frozen=True, kw_only=True):
    """How to edit one kind of record through its pipeline service."""

    entity: str
    model: type[Editable]
    patch_type: type[msgspec.Struct]
    get: Callable[[AsyncSession, Actor, uuid.UUID], Awaitable[Any]]
    update: Callable[[AsyncSession, Actor, uuid.UUID, Any], Awaitable[Any]]
    edit: Callable[[AsyncSession, Actor, Any, Any], Awaitable[Any]]  # update of a record already read
    delete: Callable[[AsyncSession, Actor, uuid.UUID], Awaitable[None]]


EDITS = {
    "account": EditSpec(
        entity="account",
        model=Account,
        patch_type=AccountUpdate,
        get=accounts.get_account,
        update=accounts.update_account,
        edit=accounts.edit_account,
        delete=accounts.delete_account,
    ),
    "contact": EditSpec(
        entity="contact",
        model=Contact,
        patch_type=ContactUpdate,
        get=accounts.get_contact,
        update=accounts.update_contact,
        edit=accounts.edit_contact,
        delete=accounts.delete_contact,
    ),
    "lead": EditSpec(
        entity="lead",
        model=Lead,
        patch_type=LeadUpdate,
        get=lambda s, a, i: leads.get_lead(s, a, i, for_update=True),
        update=leads.update_lead,
        edit=leads.edit_lead,
        delete=leads.delete_lead,
    ),
}


async def merge_edit(
    session: AsyncSession,
    actor: Actor,
    mutation: Mutation,
    spec: EditSpec,
    record_id: uuid.UUID,
    fields: dict[str, Any],
) -> Receipt:
    patch = msgspec.convert(fields, spec.patch_type)  # every value valid before anything is decided
    given = {name: value for name in patch.__struct_fields__ if (value := getattr(patch, name)) is not msgspec.UNSET}
    try:
        record: Editable = await spec.get(session, actor, record_id)
    except NotFound:
        deleted = await find_deleted(session, actor, spec.model, record_id)
        if deleted is None:
            raise
        return await deleted_conflict(session, actor, mutation, spec.entity, deleted, jsonable(given), sorted(given))

    base = mutation.base.get(f"{spec.entity}:{record_id}")
    versions: dict[str, Any] = record.field_versions or {}
    apply: dict[str, Any] = {}
    merged: list[str] = []
    held: list[str] = []
    conflicts: list[SyncConflict] = []
    owner_id = await record_owner(session, record)
    for name, value in given.items():
        last: list[Any] = versions.get(name) or []  # [row version, hlc, device] of its last write
        if not written_since(last, base, actor):
            apply[name] = value
            continue
        server_value, device_value = jsonable(getattr(record, name)), jsonable(value)
        if server_value == device_value:
            continue
        policy = policy_for(name)
        device_won = _later(session.info.get(HLC, mutation.hlc), last[1]) if policy is Policy.LATEST_WINS else None
        if device_won:
            apply[name] = value
        conflicts.append(
            new_conflict(
                actor,
                mutation,
                entity=spec.entity,
                record_id=record_id,
                owner_id=owner_id,
                field=name,
                policy=policy,
                server_value=server_value,
                device_value=device_value,
                server_hlc=last[1],
                device_won=device_won,
            )
        )
        (merged if policy is Policy.LATEST_WINS else held).append(name)
    if apply:
        await spec.edit(session, actor, record, spec.patch_type(**apply))
    session.add_all(conflicts)
    await session.flush()
    if held:
        first_open = next(c for c in conflicts if c.status == ConflictStatus.OPEN.value)
        return Receipt(
            seq=mutation.seq, status=ReceiptStatus.CONFLICT, fields=sorted(held + merged), conflict_id=first_open.id
        )
    if merged:
        return Receipt(seq=mutation.seq, status=ReceiptStatus.MERGED, fields=sorted(merged))
    return Receipt(seq=mutation.seq, status=ReceiptStatus.APPLIED)
