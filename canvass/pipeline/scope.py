"""Who sees what: the one place where row scoping is decided.

A rep sees their own records, a manager everything owned by people in their team
subtree (a prefix match on the team's materialized path), an admin the whole
tenant. Every query a service runs starts from one of these predicates, and every
one of them pins the tenant, so no query crosses organizations.
"""

from __future__ import annotations

import functools
import uuid
from typing import Any

import msgspec
from sqlalchemy import ColumnElement, Select, and_, exists, or_, select, true
from sqlalchemy.orm import InstrumentedAttribute

from canvass.pipeline.models import Account, Activity, Lead, Team, User
from canvass.pipeline.vocabulary import Role


class Actor(msgspec.Struct, frozen=True, kw_only=True):
    """The authenticated caller, as carried in the access token."""

    organization_id: uuid.UUID
    user_id: uuid.UUID
    role: Role
    # Materialized path of the team whose subtree a manager sees.
    team_path: str | None = None
    device_id: str | None = None

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN

    @property
    def is_manager(self) -> bool:
        return self.role is Role.MANAGER


def subtree_members(organization_id: uuid.UUID, team_path: str) -> Select[Any]:
    """Ids of the people in a team and every team below it."""
    return (
        select(User.id)
        .join(Team, and_(Team.organization_id == User.organization_id, Team.id == User.team_id))
        .where(User.organization_id == organization_id, Team.path.startswith(team_path))
    )


def visible_owner(actor: Actor, owner_column: InstrumentedAttribute[Any]) -> ColumnElement[bool]:
    """Records owned by someone the actor may see."""
    if actor.role is Role.ADMIN:
        return true()
    if actor.role is Role.MANAGER and actor.team_path:
        members = subtree_members(actor.organization_id, actor.team_path)
        return or_(owner_column == actor.user_id, owner_column.in_(members))
    return owner_column == actor.user_id


# Scope predicates are immutable SQL expressions: build each once per caller
# (per worker process) instead of on every request.
_cached = functools.lru_cache(maxsize=4096)


@_cached
def lead_scope(actor: Actor) -> ColumnElement[bool]:
    return and_(
        Lead.organization_id == actor.organization_id,
        Lead.deleted_at.is_(None),
        visible_owner(actor, Lead.owner_id),
    )


@_cached
def account_scope(actor: Actor) -> ColumnElement[bool]:
    """Accounts the actor owns, or on which they can see a lead: many reps sell to
    one account, and each must see the account of their own deal."""
    tenant = and_(Account.organization_id == actor.organization_id, Account.deleted_at.is_(None))
    if actor.role is Role.ADMIN:
        return tenant
    has_visible_lead = exists().where(
        Lead.organization_id == Account.organization_id,
        Lead.account_id == Account.id,
        Lead.deleted_at.is_(None),
        visible_owner(actor, Lead.owner_id),
    )
    return and_(tenant, or_(visible_owner(actor, Account.owner_id), has_visible_lead))


@_cached
def activity_scope(actor: Actor) -> ColumnElement[bool]:
    tenant = Activity.organization_id == actor.organization_id
    if actor.role is Role.ADMIN:
        return tenant
    on_visible_lead = exists().where(
        Lead.organization_id == Activity.organization_id,
        Lead.id == Activity.lead_id,
        visible_owner(actor, Lead.owner_id),
    )
    return and_(tenant, or_(visible_owner(actor, Activity.owner_id), on_visible_lead))


def may_assign_to(actor: Actor, owner_id: uuid.UUID, owner_team_path: str | None) -> bool:
    """May the actor make ``owner_id`` (an active user of the tenant, whose team has
    ``owner_team_path``) the owner of a record? Reps assign only to themselves."""
    if actor.role is Role.ADMIN or owner_id == actor.user_id:
        return True
    if actor.role is Role.MANAGER and actor.team_path and owner_team_path:
        return owner_team_path.startswith(actor.team_path)
    return False
