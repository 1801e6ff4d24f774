"""Accounts (客户) and their contacts (联系人)."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence

import msgspec
from sqlalchemy import ColumnElement, and_, select
from sqlalchemy.ext.asyncio import AsyncSession

from canvass.db import utcnow
from canvass.errors import AlreadyExists, InvalidReference, NotFound
from canvass.pipeline.models import Account, Contact, Territory
from canvass.pipeline.schemas import AccountCreate, AccountUpdate, ContactCreate, ContactUpdate
from canvass.pipeline.scope import Actor, account_scope
from canvass.pipeline.services.common import (
    SortKey,
    apply_patch,
    check_owner,
    check_version,
    paginate,
    timestamp_key,
)

ACCOUNT_SORTS: dict[str, SortKey] = {
    "name": SortKey(Account.name),
    "-name": SortKey(Account.name, descending=True),
    "created_at": timestamp_key(Account.created_at),
    "-created_at": timestamp_key(Account.created_at, descending=True),
    "updated_at": timestamp_key(Account.updated_at),
    "-updated_at": timestamp_key(Account.updated_at, descending=True),
}
CONTACT_SORTS: dict[str, SortKey] = {
    "name": SortKey(Contact.name),
    "-name": SortKey(Contact.name, descending=True),
    "created_at": timestamp_key(Contact.created_at),
    "updated_at": timestamp_key(Contact.updated_at),
}


class AccountFilters(msgspec.Struct, kw_only=True):
    owner_id: uuid.UUID | None = None
    kind: str | None = None
    territory_id: uuid.UUID | None = None
    updated_since: dt.datetime | None = None
    q: str | None = None


async def get_account(session: AsyncSession, actor: Actor, account_id: uuid.UUID) -> Account:
    account = await session.scalar(select(Account).where(Account.id == account_id, account_scope(actor)))
    if account is None:
        raise NotFound(f"No account {account_id}.", resource="account", id=str(account_id))
    return account


async def list_accounts(
    session: AsyncSession, actor: Actor, filters: AccountFilters, *, sort: str, limit: int, cursor: str | None
) -> tuple[Sequence[Account], str | None]:
    stmt = select(Account).where(account_scope(actor))
    if filters.owner_id:
        stmt = stmt.where(Account.owner_id == filters.owner_id)
    if filters.kind:
        stmt = stmt.where(Account.kind == filters.kind)
    if filters.territory_id:
        stmt = stmt.where(Account.territory_id == filters.territory_id)
    if filters.updated_since:
        stmt = stmt.where(Account.updated_at >= filters.updated_since)
    if filters.q:
        stmt = stmt.where(Account.name.icontains(filters.q, autoescape=True))
    return await paginate(session, stmt, id_column=Account.id, key=ACCOUNT_SORTS[sort], limit=limit, cursor=cursor)


async def _check_territory(session: AsyncSession, actor: Actor, territory_id: uuid.UUID | None) -> None:
    if territory_id is None:
        return
    if await session.get(Territory, (actor.organization_id, territory_id)) is None:
        raise InvalidReference(f"No territory {territory_id}.", field="territory_id")


async def create_account(session: AsyncSession, actor: Actor, data: AccountCreate) -> Account:
    owner_id = data.owner_id or actor.user_id
    if owner_id != actor.user_id:
        await check_owner(session, actor, owner_id)
    await _check_territory(session, actor, data.territory_id)
    if data.id is not None and await session.get(Account, (actor.organization_id, data.id)) is not None:
        raise AlreadyExists(f"Account {data.id} already exists.", id=str(data.id))
    fields = msgspec.to_builtins(data, builtin_types=(uuid.UUID, dt.date))
    if data.id is None:
        fields.pop("id")
    now = utcnow()
    account = Account(
        organization_id=actor.organization_id, created_at=now, updated_at=now, **{**fields, "owner_id": owner_id}
    )
    session.add(account)
    await session.flush()
    return account


async def update_account(
    session: AsyncSession, actor: Actor, account_id: uuid.UUID, patch: AccountUpdate, *, if_match: int | None = None
) -> Account:
    account = await get_account(session, actor, account_id)
    return await edit_account(session, actor, account, patch, if_match=if_match)


async def edit_account(
    session: AsyncSession, actor: Actor, account: Account, patch: AccountUpdate, *, if_match: int | None = None
) -> Account:
    """``update_account`` for an account the caller has already read in scope."""
    check_version(account.version, if_match)
    if patch.owner_id is not msgspec.UNSET and patch.owner_id != account.owner_id:
        await check_owner(session, actor, patch.owner_id)
    if patch.territory_id is not msgspec.UNSET:
        await _check_territory(session, actor, patch.territory_id)
    if apply_patch(account, patch):
        await session.flush()
    return account


async def delete_account(
    session: AsyncSession, actor: Actor, account_id: uuid.UUID, *, if_match: int | None = None
) -> None:
    account = await get_account(session, actor, account_id)
    check_version(account.version, if_match)
    account.deleted_at = utcnow()
    await session.flush()


# ---------------------------------------------------------------- contacts


def _contact_in_scope(actor: Actor) -> ColumnElement[bool]:
    visible_accounts = select(Account.id).where(account_scope(actor))
    return and_(
        Contact.organization_id == actor.organization_id,
        Contact.deleted_at.is_(None),
        Contact.account_id.in_(visible_accounts),
    )


async def get_contact(session: AsyncSession, actor: Actor, contact_id: uuid.UUID) -> Contact:
    contact = await session.scalar(select(Contact).where(Contact.id == contact_id, _contact_in_scope(actor)))
    if contact is None:
        raise NotFound(f"No contact {contact_id}.", resource="contact", id=str(contact_id))
    return contact


async def list_contacts(
    session: AsyncSession,
    actor: Actor,
    *,
    account_id: uuid.UUID | None,
    q: str | None,
    sort: str,
    limit: int,
    cursor: str | None,
) -> tuple[Sequence[Contact], str | None]:
    stmt = select(Contact).where(_contact_in_scope(actor))
    if account_id:
        stmt = stmt.where(Contact.account_id == account_id)
    if q:
        stmt = stmt.where(Contact.name.icontains(q, autoescape=True))
    return await paginate(session, stmt, id_column=Contact.id, key=CONTACT_SORTS[sort], limit=limit, cursor=cursor)


async def create_contact(session: AsyncSession, actor: Actor, data: ContactCreate) -> Contact:
    found = await session.scalar(select(Account.id).where(Account.id == data.account_id, account_scope(actor)))
    if found is None:
        raise InvalidReference(f"No account {data.account_id} that you can see.", field="account_id")
    if data.id is not None and await session.get(Contact, (actor.organization_id, data.id)) is not None:
        raise AlreadyExists(f"Contact {data.id} already exists.", id=str(data.id))
    fields = msgspec.to_builtins(data, builtin_types=(uuid.UUID, dt.date))
    if data.id is None:
        fields.pop("id")
    now = utcnow()
    contact = Contact(organization_id=actor.organization_id, created_at=now, updated_at=now, **fields)
    session.add(contact)
    await session.flush()
    return contact


async def update_contact(
    session: AsyncSession, actor: Actor, contact_id: uuid.UUID, patch: ContactUpdate, *, if_match: int | None = None
) -> Contact:
    contact = await get_contact(session, actor, contact_id)
    return await edit_contact(session, actor, contact, patch, if_match=if_match)


async def edit_contact(
    session: AsyncSession, actor: Actor, contact: Contact, patch: ContactUpdate, *, if_match: int | None = None
) -> Contact:
    """``update_contact`` for a contact the caller has already read in scope."""
    check_version(contact.version, if_match)
    if apply_patch(contact, patch):
        await session.flush()
    return contact


async def delete_contact(
    session: AsyncSession, actor: Actor, contact_id: uuid.UUID, *, if_match: int | None = None
) -> None:
    contact = await get_contact(session, actor, contact_id)
    check_version(contact.version, if_match)
    contact.deleted_at = utcnow()
    await session.flush()
