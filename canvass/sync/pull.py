"""Pull: pages of what changed in the caller's scope since a cursor
(PROTOCOL.md, "Pull").

The feed is ordered by (server version, kind of record, id). A cursor is the
position of the last record sent — ``"<version>"`` when a version was sent
whole, ``"<version>.<kind>.<id>"`` inside one (a single push can publish
thousands of rows under one version). Each page reads, per kind of record, at
most ``limit`` rows past the cursor through the ``(organization_id,
server_version, id)`` index, so a pull costs what changed, not what exists.
"""

from __future__ import annotations

import datetime as dt
import heapq
import uuid
from collections.abc import Callable
from functools import cache
from typing import Any

import msgspec
from sqlalchemy import ColumnElement, Table, Uuid, and_, bindparam, exists, false, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from canvass.db import utcnow
from canvass.errors import InvalidValue
from canvass.pipeline.config import PipelineConfig
from canvass.pipeline.models import Account, Activity, Contact, Lead, Objection, StageChange
from canvass.pipeline.schemas import AccountOut, ActivityOut, ContactOut, LeadOut, ObjectionOut, StageChangeOut
from canvass.pipeline.scope import Actor, activity_scope, visible_owner
from canvass.pipeline.services.leads import to_lead_out
from canvass.pipeline.services.organizations import cached_pipeline_config
from canvass.sync import feed
from canvass.sync.conflicts import conflict_out
from canvass.sync.devices import own_device
from canvass.sync.models import Device, SyncClock, SyncConflict, SyncDeparture
from canvass.sync.wire import Change, Entity, PullResponse, Removal, RemovalReason

PULL_STAMP_EVERY = dt.timedelta(seconds=60)


def _lead_visible(actor: Actor, lead_id: Any) -> ColumnElement[bool]:
    return exists().where(
        Lead.organization_id == actor.organization_id, Lead.id == lead_id, visible_owner(actor, Lead.owner_id)
    )


def _account_visible(actor: Actor) -> ColumnElement[bool]:
    """As ``scope.account_scope``, tombstones included: a device must hear of them."""
    has_visible_lead = exists().where(
        Lead.organization_id == Account.organization_id,
        Lead.account_id == Account.id,
        Lead.deleted_at.is_(None),
        visible_owner(actor, Lead.owner_id),
    )
    return or_(visible_owner(actor, Account.owner_id), has_visible_lead)


class _Kind(msgspec.Struct, frozen=True):
    rank: int
    entity: Entity
    table: Table
    scope: Callable[[Actor], ColumnElement[bool]]
    out: Callable[[Any, PipelineConfig], Any] | None  # None: rows are removals
    # What the page query selects: the response's fields and the feed position,
    # not the sync bookkeeping (a lead's per-field versions are a JSON document,
    # its stage summary 16 timestamps, decoded per row and thrown away).
    columns: tuple[Any, ...] = ()
    deletable: bool = False  # rows have a ``deleted_at`` (tombstones)


def _columns(table: Table, struct: type[msgspec.Struct] | None) -> tuple[Any, ...]:
    if struct is None:
        return tuple(table.c)
    wanted = {*struct.__struct_fields__, "id", "server_version", "deleted_at"}
    return tuple(c for c in table.c if c.name in wanted)


def _convert(struct: type[msgspec.Struct]) -> Callable[[Any, PipelineConfig], Any]:
    return lambda row, _config: msgspec.convert(row, struct, from_attributes=True)


# In the order a device can insert them: parents before children.
KINDS: tuple[_Kind, ...] = (
    _Kind(0, Entity.ACCOUNT, Account.__table__, _account_visible, _convert(AccountOut)),  # type: ignore[arg-type]
    _Kind(
        1,
        Entity.CONTACT,
        Contact.__table__,  # type: ignore[arg-type]
        lambda a: Contact.account_id.in_(
            select(Account.id).where(Account.organization_id == a.organization_id, _account_visible(a))
        ),
        _convert(ContactOut),
    ),
    _Kind(2, Entity.LEAD, Lead.__table__, lambda a: visible_owner(a, Lead.owner_id), to_lead_out),  # type: ignore[arg-type]
    _Kind(
        3,
        Entity.STAGE_CHANGE,
        StageChange.__table__,  # type: ignore[arg-type]
        lambda a: _lead_visible(a, StageChange.lead_id),
        _convert(StageChangeOut),
    ),
    _Kind(4, Entity.ACTIVITY, Activity.__table__, activity_scope, _convert(ActivityOut)),  # type: ignore[arg-type]
    _Kind(
        5,
        Entity.OBJECTION,
        Objection.__table__,  # type: ignore[arg-type]
        lambda a: _lead_visible(a, Objection.lead_id),
        _convert(ObjectionOut),
    ),
    _Kind(
        6,
        Entity.CONFLICT,
        SyncConflict.__table__,  # type: ignore[arg-type]
        lambda a: visible_owner(a, SyncConflict.owner_id),
        lambda row, _config: conflict_out(row),
    ),
    _Kind(
        7,
        Entity.LEAD,  # departures: the entity is on the row
        SyncDeparture.__table__,  # type: ignore[arg-type]
        lambda a: visible_owner(a, SyncDeparture.from_owner_id),
        None,
    ),
)


_OUT: dict[str, type[msgspec.Struct]] = {
    "accounts": AccountOut,
    "contacts": ContactOut,
    "leads": LeadOut,
    "stage_changes": StageChangeOut,
    "activities": ActivityOut,
    "objections": ObjectionOut,
}
KINDS = tuple(
    msgspec.structs.replace(
        kind, columns=_columns(kind.table, _OUT.get(kind.table.name)), deletable="deleted_at" in kind.table.c
    )
    for kind in KINDS
)


class Position(msgspec.Struct, frozen=True, order=True):
    version: int
    rank: int = len(KINDS)  # past every kind: the whole version was sent
    id: uuid.UUID = uuid.UUID(int=0)

    def encode(self) -> str:
        return str(self.version) if self.rank == len(KINDS) else f"{self.version}.{self.rank}.{self.id}"

    @classmethod
    def decode(cls, text: str) -> Position:
        try:
            parts = text.split(".")
            if len(parts) == 1:
                return cls(int(parts[0]))
            version, rank, row_id = parts
            position = cls(int(version), int(rank), uuid.UUID(row_id))
        except ValueError as exc:
            raise InvalidValue("`cursor` is not a cursor a pull returned (start with 0).", field="cursor") from exc
        if position.version < 0 or not 0 <= position.rank < len(KINDS):
            raise InvalidValue("`cursor` is not a cursor a pull returned (start with 0).", field="cursor")
        return position


def _after(kind: _Kind, cursor: Position) -> ColumnElement[bool]:
    """Rows of this kind that come after the cursor in feed order."""
    sv, row_id = kind.table.c.server_version, kind.table.c.id
    if kind.rank > cursor.rank:
        return sv >= cursor.version
    if kind.rank < cursor.rank:
        return sv > cursor.version
    return or_(sv > cursor.version, and_(sv == cursor.version, row_id > cursor.id))


def _heads_columns(org: Any) -> list[Any]:
    """The tenant's clock and, per kind, its highest published version: index
    probes (the last entry of each ``(organization_id, server_version, id)``
    index). A kind whose head is behind the cursor has nothing to send, so its
    (scoped) query is skipped: a pull queries only the kinds that changed."""
    clock = select(SyncClock.version).where(SyncClock.organization_id == org).scalar_subquery()
    heads = [
        select(func.max(kind.table.c.server_version)).where(kind.table.c.organization_id == org).scalar_subquery()
        for kind in KINDS
    ]
    return [clock, *heads]


@cache
def _heads() -> Any:
    """The heads alone (after publishing). Built once; the tenant is ``org``."""
    return select(*_heads_columns(bindparam("org", type_=Uuid)))


@cache
def _start(dialect: str) -> Any:
    """A pull's first statement: the device, whether anything of the tenant
    waits to be published (PostgreSQL; what ``feed.publish_pending`` probes)
    and the heads. Built once per dialect; parameters ``org`` and ``device``."""
    org = bindparam("org", type_=Uuid)
    if dialect == "postgresql":
        waiting = or_(
            *(exists().where(t.c.organization_id == org, t.c.server_version.is_(None)) for t in feed.feed_tables())
        )
    else:  # SQLite publishes inside the writing transaction: nothing committed waits
        waiting = false()
    return select(Device, waiting.label("waiting"), *_heads_columns(org)).where(
        Device.organization_id == org, Device.device_id == bindparam("device")
    )


def _behind(kind: _Kind, head: int | None, cursor: Position) -> bool:
    """Whether no row of this kind can come after the cursor."""
    if head is None:
        return True
    return head < cursor.version if kind.rank >= cursor.rank else head <= cursor.version


async def _still_visible(session: AsyncSession, actor: Actor, entity: str, record_id: uuid.UUID) -> bool:
    if entity == Entity.LEAD:
        predicate = and_(Lead.id == record_id, Lead.deleted_at.is_(None), visible_owner(actor, Lead.owner_id))
        return bool(
            await session.scalar(select(exists().where(Lead.organization_id == actor.organization_id, predicate)))
        )
    predicate = and_(Account.id == record_id, Account.deleted_at.is_(None), _account_visible(actor))
    return bool(
        await session.scalar(select(exists().where(Account.organization_id == actor.organization_id, predicate)))
    )


async def pull(session: AsyncSession, actor: Actor, device_id: str, cursor: str, limit: int) -> PullResponse:
    # One statement: the device (as ``own_device`` checks it), whether a publish
    # is due, and which kinds have anything past the cursor.
    org = actor.organization_id
    dialect = session.get_bind().dialect.name
    first = (await session.execute(_start(dialect), {"org": org, "device": device_id})).first()
    if first is None or first[0].user_id != actor.user_id:
        await own_device(session, actor, device_id)  # raises: not registered, or another user's
        return await pull(session, actor, device_id, cursor, limit)  # registered meanwhile
    device, waiting, clock, *heads = first
    start = Position.decode(cursor)
    if waiting:
        # What is committed but not yet published gets a version now, so the
        # pull sees the writes committed before it started — unless another
        # publication is under way: a pull does not queue behind it (under load
        # every pull would wait for every other); that one, the push that wrote
        # (a push publishes its own writes) or the process's publisher publishes
        # them by the next pull. Everything up to the clock's committed value is
        # committed (the clock row is locked until the rows it stamps commit),
        # so nothing below it can appear later.
        await feed.publish_pending(session, org, probed=True, wait=False)
        connection = await session.connection()
        clock, *heads = (await connection.execute(_heads(), {"org": org})).one()
    upto = max(clock or 0, start.version)
    config = await cached_pipeline_config(session, org)
    connection = await session.connection()
    candidates: list[tuple[Position, _Kind, Any]] = []
    for kind, head in zip(KINDS, heads, strict=True):
        if _behind(kind, head, start):
            continue
        table = kind.table
        stmt = (
            select(*kind.columns)
            .where(
                table.c.organization_id == actor.organization_id,
                table.c.server_version <= upto,
                _after(kind, start),
                kind.scope(actor),
            )
            .order_by(table.c.server_version, table.c.id)
            .limit(limit + 1)
        )
        for row in (await connection.execute(stmt)).all():
            candidates.append((Position(row.server_version, kind.rank, row.id), kind, row))
    page = heapq.nsmallest(limit + 1, candidates, key=lambda c: c[0])
    has_more = len(page) > limit
    page = page[:limit]
    changes: list[Change] = []
    removals: list[Removal] = []
    for position, kind, row in page:
        if kind.out is None:  # a departure
            if not await _still_visible(session, actor, row.entity, row.record_id):
                removals.append(
                    Removal(
                        entity=Entity(row.entity),
                        id=row.record_id,
                        server_version=position.version,
                        reason=RemovalReason.OUT_OF_SCOPE,
                    )
                )
        elif kind.deletable and row.deleted_at is not None:
            removals.append(
                Removal(entity=kind.entity, id=row.id, server_version=position.version, reason=RemovalReason.DELETED)
            )
        else:
            data = msgspec.to_builtins(kind.out(row, config))
            changes.append(Change(entity=kind.entity, id=row.id, server_version=position.version, data=data))
    next_position = page[-1][0] if has_more else Position(upto)
    now = utcnow()
    if device.last_pull_at is None or now - device.last_pull_at > PULL_STAMP_EVERY:
        # Freshness to the minute is plenty; a pull that writes every time
        # would queue behind every push on SQLite's single writer.
        device.last_pull_at = now
        await session.flush()
    return PullResponse(
        changes=changes,
        removals=removals,
        cursor=next_position.encode(),
        has_more=has_more,
        last_applied_seq=device.last_applied_seq,
    )
