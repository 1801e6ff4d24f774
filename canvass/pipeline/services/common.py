"""Helpers every service shares: keyset pagination, partial updates, ETag checks,
reference and owner checks."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import uuid
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import msgspec
from sqlalchemy import Integer, Select, and_, bindparam, inspect, or_, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.orm.util import identity_key

from canvass.errors import Forbidden, InvalidReference, InvalidValue, StaleWrite
from canvass.pipeline.models import Team, User
from canvass.pipeline.scope import Actor, may_assign_to

T = TypeVar("T")

MAX_PAGE_SIZE = 200

# session.info: what a writer of many records at once (a sync push) read up
# front in this transaction, so that the services it calls record by record
# need not ask the database again:
#   "read": {model: ids read in the actor's scope (leads: and locked), or
#            created by this transaction},
#   "absent": {model: ids that did not exist},
#   "held": the records read (the session's identity map holds them weakly),
#   "created": {identity key: record} created by this transaction (possibly
#              not flushed yet: the writer may put flushes off).
PRELOADED = "canvass.preloaded"

_UNPUBLISHED = {"server_version"}


def _held(session: AsyncSession, info: dict[str, Any], key: Any) -> Any:
    obj = session.identity_map.get(key)
    if obj is None:
        obj = info["created"].get(key)
    if obj is None:
        return None
    state = inspect(obj)
    if state.expired_attributes == _UNPUBLISHED and not state.expired:
        # After an UPDATE the ORM expires a synced row's change-feed version
        # (its on-update value is SQL); it is NULL until the commit stamps it.
        set_committed_value(obj, "server_version", None)
    if state.expired or state.expired_attributes or state.deleted or state.detached or state.transient:
        return None  # e.g. after a savepoint rolled back: read it again
    return obj


def preloaded(session: AsyncSession, actor: Actor, model: type[T], record_id: uuid.UUID) -> T | None:
    """The record as the session holds it, if it was read (leads: and locked) up
    front in this transaction or created by it, and is still plainly in the
    actor's scope — their own and not deleted; else None, and the caller asks
    the database."""
    info = session.info.get(PRELOADED)
    if info is None or record_id not in info["read"].get(model, ()):
        return None
    obj = _held(session, info, identity_key(model, (actor.organization_id, record_id)))
    if obj is None or getattr(obj, "deleted_at", None) is not None or obj.owner_id != actor.user_id:
        return None
    found: T = obj
    return found


async def exists(session: AsyncSession, model: type[Any], key: tuple[uuid.UUID, uuid.UUID]) -> bool:
    """Is there a row with this primary key (deleted or not)? ``session.get``,
    without a round trip for an id found absent up front in this transaction."""
    info = session.info.get(PRELOADED)
    if info is not None:
        ident = identity_key(model, key)
        if ident in info["created"] and _held(session, info, ident) is not None:
            return True  # created by this transaction, maybe not flushed yet
        if key[1] in info["absent"].get(model, ()) and session.identity_map.get(ident) is None:
            return False
    return await session.get(model, key) is not None


class SortKey(msgspec.Struct, frozen=True):
    """A sort order over one non-null column, with the id as tie-breaker."""

    column: Any
    descending: bool = False
    parse: Callable[[Any], Any] = lambda v: v


def timestamp_key(column: Any, descending: bool = False) -> SortKey:
    return SortKey(column, descending, dt.datetime.fromisoformat)


def _encode_cursor(value: Any, row_id: uuid.UUID) -> str:
    if isinstance(value, dt.datetime | dt.date):
        value = value.isoformat()
    raw = msgspec.json.encode([value, str(row_id)])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str, key: SortKey) -> tuple[Any, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        value, row_id = msgspec.json.decode(raw, type=tuple[Any, str])
        return key.parse(value), uuid.UUID(row_id)
    except (binascii.Error, msgspec.DecodeError, ValueError, TypeError) as exc:
        raise InvalidValue("`cursor` is not a cursor this list returned.", field="cursor") from exc


def keyset_page(
    stmt: Select[Any], *, id_column: InstrumentedAttribute[uuid.UUID], key: SortKey, after: bool
) -> Select[Any]:
    """``stmt`` in keyset order, at most ``:page_size`` rows and, when ``after``,
    only the rows past ``:after_value`` / ``:after_id`` (the last row of the
    previous page). The values are bound at execution (`page_parameters`), so a
    caller may build the statement once per shape and keep it."""
    col = key.column
    if after:
        value = bindparam("after_value", type_=col.type)
        last_id = bindparam("after_id", type_=id_column.type)
        if key.descending:
            stmt = stmt.where(or_(col < value, and_(col == value, id_column < last_id)))
        else:
            stmt = stmt.where(or_(col > value, and_(col == value, id_column > last_id)))
    order = (col.desc(), id_column.desc()) if key.descending else (col, id_column)
    return stmt.order_by(*order).limit(bindparam("page_size", type_=Integer))


def page_parameters(key: SortKey, limit: int, cursor: str | None) -> dict[str, Any]:
    """The values a `keyset_page` statement is run with: one row more than the
    page, to learn whether another page follows."""
    params: dict[str, Any] = {"page_size": limit + 1}
    if cursor:
        params["after_value"], params["after_id"] = _decode_cursor(cursor, key)
    return params


def page_of(
    rows: Sequence[T], limit: int, position: Callable[[T], tuple[Any, uuid.UUID]]
) -> tuple[Sequence[T], str | None]:
    """The page and the cursor of the next one (None on the last page);
    ``position`` gives a row's sort value and id."""
    if len(rows) <= limit:
        return rows, None
    rows = rows[:limit]
    return rows, _encode_cursor(*position(rows[-1]))


async def paginate(
    session: AsyncSession,
    stmt: Select[Any],
    *,
    id_column: InstrumentedAttribute[uuid.UUID],
    key: SortKey,
    limit: int,
    cursor: str | None,
) -> tuple[Sequence[Any], str | None]:
    """One page of ``stmt``'s records in keyset order: cost independent of the page number."""
    paged = keyset_page(stmt, id_column=id_column, key=key, after=bool(cursor))
    records = (await session.execute(paged, page_parameters(key, limit, cursor))).scalars().all()
    name = key.column.key
    return page_of(records, limit, lambda record: (getattr(record, name), record.id))


def check_version(current: int, if_match: int | None) -> None:
    """ETag / If-Match: refuse a write based on a version that is no longer current."""
    if if_match is not None and if_match != current:
        raise StaleWrite(
            f"The record is at version {current}; your change was based on version {if_match}. "
            "Fetch it again and re-apply your change.",
            current_version=current,
        )


def apply_patch(target: Any, patch: msgspec.Struct, *, skip: Sequence[str] = ()) -> list[str]:
    """Copy every field the patch sets (not UNSET) onto the model; return their names."""
    changed = []
    for name in patch.__struct_fields__:
        if name in skip:
            continue
        value = getattr(patch, name)
        if value is msgspec.UNSET:
            continue
        if isinstance(value, msgspec.Struct):
            # Nested records (qualification, visit plan) merge: what is given
            # replaces, what is left out or null keeps its value.
            given = {k: v for k, v in msgspec.to_builtins(value).items() if v is not None}
            value = {**(getattr(target, name) or {}), **given}
        elif isinstance(value, list):
            value = msgspec.to_builtins(value)
        if getattr(target, name) != value:
            setattr(target, name, value)
            changed.append(name)
    return changed


async def team_path_of(
    session: AsyncSession, organization_id: uuid.UUID, user_id: uuid.UUID
) -> tuple[bool, str | None] | None:
    """(active, team path) of a user of the tenant, or None if there is no such user."""
    row = (
        await session.execute(
            select(User.active, Team.path)
            .outerjoin(Team, and_(Team.organization_id == User.organization_id, Team.id == User.team_id))
            .where(User.organization_id == organization_id, User.id == user_id)
        )
    ).first()
    return None if row is None else (row[0], row[1])


async def check_owner(session: AsyncSession, actor: Actor, owner_id: uuid.UUID) -> None:
    """Refuse an owner who is not an active user the actor may assign records to."""
    found = await team_path_of(session, actor.organization_id, owner_id)
    if found is None or not found[0]:
        raise InvalidReference("`owner_id` is not an active user of this organization.", field="owner_id")
    if not may_assign_to(actor, owner_id, found[1]):
        raise Forbidden(
            "You may assign records only to yourself"
            + (" or to people in your team subtree." if actor.is_manager else "."),
            field="owner_id",
        )
