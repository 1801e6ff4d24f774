"""Conflicts: list, show and resolve the edits that met on the server
(PROTOCOL.md, "Conflicts"). A resolution is an ordinary write through the
pipeline services, so it is checked by the same rules and flows to every
device through the change feed."""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from collections.abc import Sequence
from typing import Any

import msgspec
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from canvass.db import utcnow
from canvass.errors import InvalidValue, NotFound, RuleViolation
from canvass.pipeline.scope import Actor, visible_owner
from canvass.pipeline.services.common import paginate, timestamp_key
from canvass.sync.merge import EDITS, ConflictStatus, Editable, Policy
from canvass.sync.models import SyncConflict


class ConflictOut(msgspec.Struct, kw_only=True):
    id: uuid.UUID
    entity: str
    record_id: uuid.UUID
    owner_id: uuid.UUID
    field: str | None  # null: an edit met a delete
    policy: str
    status: str
    server_value: Any
    device_value: Any
    server_hlc: str | None
    device_hlc: str
    device_id: str
    seq: int
    pushed_by_id: uuid.UUID
    winner: str | None
    resolved_value: Any
    resolved_by_id: uuid.UUID | None
    resolved_at: dt.datetime | None
    created_at: dt.datetime
    version: int


class ConflictPage(msgspec.Struct, kw_only=True):
    items: list[ConflictOut]
    next_cursor: str | None


class Choice(enum.StrEnum):
    KEEP_SERVER = "keep_server"
    TAKE_DEVICE = "take_device"
    NEW_VALUE = "new_value"


class Resolution(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    choice: Choice
    value: Any = None  # with new_value: the field's new value


def conflict_out(row: Any) -> ConflictOut:
    return msgspec.convert(row, ConflictOut, from_attributes=True)


def _scope(actor: Actor) -> Any:
    return (SyncConflict.organization_id == actor.organization_id) & visible_owner(actor, SyncConflict.owner_id)


async def list_conflicts(
    session: AsyncSession, actor: Actor, *, status: ConflictStatus | None, limit: int, cursor: str | None
) -> tuple[Sequence[SyncConflict], str | None]:
    """A rep sees conflicts on their own records, a manager their team's."""
    stmt = select(SyncConflict).where(_scope(actor))
    if status is not None:
        stmt = stmt.where(SyncConflict.status == status.value)
    key = timestamp_key(SyncConflict.created_at, descending=True)
    return await paginate(session, stmt, id_column=SyncConflict.id, key=key, limit=limit, cursor=cursor)


async def get_conflict(session: AsyncSession, actor: Actor, conflict_id: uuid.UUID) -> SyncConflict:
    conflict = await session.scalar(select(SyncConflict).where(SyncConflict.id == conflict_id, _scope(actor)))
    if conflict is None:
        raise NotFound(f"No conflict {conflict_id}.", resource="conflict", id=str(conflict_id))
    return conflict


async def resolve_conflict(
    session: AsyncSession, actor: Actor, conflict_id: uuid.UUID, resolution: Resolution
) -> SyncConflict:
    conflict = await get_conflict(session, actor, conflict_id)
    if conflict.status != ConflictStatus.OPEN.value:
        raise RuleViolation("conflict.not_open", f"This conflict is already {conflict.status}.")
    spec = EDITS.get(conflict.entity)
    if spec is None:  # pragma: no cover - every conflict is on an edited record
        raise InvalidValue(f"Conflicts on {conflict.entity} cannot be resolved here.")
    record_id = conflict.record_id
    value: Any = None
    if conflict.policy == Policy.EDIT_VS_DELETE.value:
        if resolution.choice is Choice.NEW_VALUE:
            raise InvalidValue("An edit that met a delete is settled by keeping one side.", field="choice")
        if resolution.choice is Choice.TAKE_DEVICE:
            if conflict.device_value == {"deleted": True}:
                await spec.delete(session, actor, record_id)
            else:
                # Bring the record back and apply the edit the delete would have lost.
                record: Editable | None = await session.get(spec.model, (actor.organization_id, record_id))
                if record is None:
                    raise NotFound(f"No {conflict.entity} {record_id}.", resource=conflict.entity, id=str(record_id))
                record.deleted_at = None
                await session.flush()
                # (A stage move or outcome on the deleted lead is not a field
                # edit: the lead comes back and the rep makes the move again.)
                editable = set(spec.patch_type.__struct_fields__)
                fields = {k: v for k, v in (conflict.device_value or {}).items() if k in editable}
                await spec.update(session, actor, record_id, msgspec.convert(fields, spec.patch_type))
            value = conflict.device_value
    elif resolution.choice is not Choice.KEEP_SERVER:
        assert conflict.field is not None
        value = conflict.device_value if resolution.choice is Choice.TAKE_DEVICE else resolution.value
        try:
            patch = msgspec.convert({conflict.field: value}, spec.patch_type)
        except msgspec.ValidationError as exc:
            raise InvalidValue(f"`value` is not a valid {conflict.field}: {exc}", field="value") from exc
        await spec.update(session, actor, record_id, patch)
    conflict.status = ConflictStatus.RESOLVED.value
    conflict.winner = {Choice.KEEP_SERVER: "server", Choice.TAKE_DEVICE: "device", Choice.NEW_VALUE: "new_value"}[
        resolution.choice
    ]
    conflict.resolved_value = conflict.server_value if resolution.choice is Choice.KEEP_SERVER else value
    conflict.resolved_by_id = actor.user_id
    conflict.resolved_at = utcnow()
    await session.flush()
    return conflict
