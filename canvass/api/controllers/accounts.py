"""Accounts (客户) and contacts (联系人)."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Literal

from litestar import Controller, Response, delete, get, patch, post
from litestar.params import JSONBody
from litestar.status_codes import HTTP_201_CREATED, HTTP_204_NO_CONTENT

from canvass.api.deps import (
    CurrentActor,
    Cursor,
    Db,
    IfMatch,
    Limit,
    SearchText,
    parse_if_match,
    to_out,
    with_etag,
)
from canvass.api.problems import PROBLEM_RESPONSES
from canvass.pipeline.schemas import (
    AccountCreate,
    AccountOut,
    AccountPage,
    AccountUpdate,
    ContactCreate,
    ContactOut,
    ContactPage,
    ContactUpdate,
)
from canvass.pipeline.services import accounts as service
from canvass.pipeline.vocabulary import AccountKind

Search = SearchText


class AccountController(Controller):
    path = "/api/v1/accounts"
    tags = ["accounts"]

    @get(operation_id="listAccounts", responses=PROBLEM_RESPONSES)
    async def list_accounts(
        self,
        db: Db,
        actor: CurrentActor,
        owner_id: uuid.UUID | None = None,
        kind: AccountKind | None = None,
        territory_id: uuid.UUID | None = None,
        updated_since: dt.datetime | None = None,
        q: Search = None,
        sort: Literal["name", "-name", "created_at", "-created_at", "updated_at", "-updated_at"] = "name",
        limit: Limit = 50,
        cursor: Cursor = None,
    ) -> AccountPage:
        """Accounts the caller owns or sells to (through a lead in scope)."""
        filters = service.AccountFilters(
            owner_id=owner_id,
            kind=kind.value if kind else None,
            territory_id=territory_id,
            updated_since=updated_since,
            q=q,
        )
        rows, next_cursor = await service.list_accounts(db, actor, filters, sort=sort, limit=limit, cursor=cursor)
        return AccountPage(items=[to_out(AccountOut, r) for r in rows], next_cursor=next_cursor)

    @post(operation_id="createAccount", responses=PROBLEM_RESPONSES, status_code=HTTP_201_CREATED)
    async def create_account(self, db: Db, actor: CurrentActor, data: JSONBody[AccountCreate]) -> Response[AccountOut]:
        return with_etag(to_out(AccountOut, await service.create_account(db, actor, data)), HTTP_201_CREATED)

    @get("/{account_id:uuid}", operation_id="getAccount", responses=PROBLEM_RESPONSES)
    async def get_account(self, db: Db, actor: CurrentActor, account_id: uuid.UUID) -> Response[AccountOut]:
        return with_etag(to_out(AccountOut, await service.get_account(db, actor, account_id)))

    @patch("/{account_id:uuid}", operation_id="updateAccount", responses=PROBLEM_RESPONSES)
    async def update_account(
        self,
        db: Db,
        actor: CurrentActor,
        account_id: uuid.UUID,
        data: JSONBody[AccountUpdate],
        if_match: IfMatch = None,
    ) -> Response[AccountOut]:
        account = await service.update_account(db, actor, account_id, data, if_match=parse_if_match(if_match))
        return with_etag(to_out(AccountOut, account))

    @delete(
        "/{account_id:uuid}", operation_id="deleteAccount", responses=PROBLEM_RESPONSES, status_code=HTTP_204_NO_CONTENT
    )
    async def delete_account(
        self, db: Db, actor: CurrentActor, account_id: uuid.UUID, if_match: IfMatch = None
    ) -> None:
        await service.delete_account(db, actor, account_id, if_match=parse_if_match(if_match))


class ContactController(Controller):
    path = "/api/v1/contacts"
    tags = ["contacts"]

    @get(operation_id="listContacts", responses=PROBLEM_RESPONSES)
    async def list_contacts(
        self,
        db: Db,
        actor: CurrentActor,
        account_id: uuid.UUID | None = None,
        q: Search = None,
        sort: Literal["name", "-name", "created_at", "updated_at"] = "name",
        limit: Limit = 50,
        cursor: Cursor = None,
    ) -> ContactPage:
        rows, next_cursor = await service.list_contacts(
            db, actor, account_id=account_id, q=q, sort=sort, limit=limit, cursor=cursor
        )
        return ContactPage(items=[to_out(ContactOut, r) for r in rows], next_cursor=next_cursor)

    @post(operation_id="createContact", responses=PROBLEM_RESPONSES, status_code=HTTP_201_CREATED)
    async def create_contact(self, db: Db, actor: CurrentActor, data: JSONBody[ContactCreate]) -> Response[ContactOut]:
        return with_etag(to_out(ContactOut, await service.create_contact(db, actor, data)), HTTP_201_CREATED)

    @get("/{contact_id:uuid}", operation_id="getContact", responses=PROBLEM_RESPONSES)
    async def get_contact(self, db: Db, actor: CurrentActor, contact_id: uuid.UUID) -> Response[ContactOut]:
        return with_etag(to_out(ContactOut, await service.get_contact(db, actor, contact_id)))

    @patch("/{contact_id:uuid}", operation_id="updateContact", responses=PROBLEM_RESPONSES)
    async def update_contact(
        self,
        db: Db,
        actor: CurrentActor,
        contact_id: uuid.UUID,
        data: JSONBody[ContactUpdate],
        if_match: IfMatch = None,
    ) -> Response[ContactOut]:
        contact = await service.update_contact(db, actor, contact_id, data, if_match=parse_if_match(if_match))
        return with_etag(to_out(ContactOut, contact))

    @delete(
        "/{contact_id:uuid}", operation_id="deleteContact", responses=PROBLEM_RESPONSES, status_code=HTTP_204_NO_CONTENT
    )
    async def delete_contact(
        self, db: Db, actor: CurrentActor, contact_id: uuid.UUID, if_match: IfMatch = None
    ) -> None:
        await service.delete_contact(db, actor, contact_id, if_match=parse_if_match(if_match))
