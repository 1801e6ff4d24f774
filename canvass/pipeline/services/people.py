"""Organizations, users, teams (a tree), territories, and the credentials users
log in with (argon2 password hashes, rotating refresh tokens)."""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
import uuid
from collections.abc import Sequence

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from msgspec import UNSET
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from canvass.db import utcnow
from canvass.errors import AlreadyExists, Forbidden, InvalidReference, NotFound, Unauthorized
from canvass.ids import new_id
from canvass.pipeline.models import (
    LoginDirectory,
    Organization,
    RefreshToken,
    Team,
    Territory,
    User,
    UserTerritory,
)
from canvass.pipeline.schemas import (
    TeamCreate,
    TeamUpdate,
    TerritoryCreate,
    UserCreate,
    UserOut,
    UserUpdate,
)
from canvass.pipeline.scope import Actor, subtree_members
from canvass.pipeline.services.common import apply_patch, check_version, paginate, timestamp_key
from canvass.pipeline.vocabulary import Role

_hasher = PasswordHasher()
# Verified against when the e-mail is unknown, so timing does not reveal which exist.
_DUMMY_HASH = _hasher.hash("canvass-no-such-user")


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def normalize_email(email: str) -> str:
    return email.strip().lower()


# ---------------------------------------------------------------- organizations


async def create_organization(session: AsyncSession, name: str, slug: str) -> Organization:
    if await session.scalar(select(Organization.id).where(Organization.slug == slug)) is not None:
        raise AlreadyExists(f"An organization with slug {slug!r} exists.", field="slug")
    org = Organization(name=name, slug=slug, settings={})
    session.add(org)
    await session.flush()
    return org


# ---------------------------------------------------------------- login


async def authenticate(session: AsyncSession, email: str, password: str) -> tuple[User, str | None]:
    entry = await session.get(LoginDirectory, normalize_email(email))
    user = None
    if entry is not None:
        user = await session.get(User, (entry.organization_id, entry.user_id))
    try:
        _hasher.verify(user.password_hash if user else _DUMMY_HASH, password)
    except (VerificationError, InvalidHashError):
        user = None
    if user is None or not user.active:
        raise Unauthorized("E-mail or password is wrong, or the account is disabled.")
    return user, await _team_path(session, user)


async def _team_path(session: AsyncSession, user: User) -> str | None:
    if user.team_id is None:
        return None
    return await session.scalar(
        select(Team.path).where(Team.organization_id == user.organization_id, Team.id == user.team_id)
    )


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


async def issue_refresh_token(session: AsyncSession, user: User, *, days: int) -> str:
    """A refresh token names its tenant and row, so it is found without a scan:
    ``<organization>.<token id>.<secret>``."""
    secret = secrets.token_urlsafe(32)
    token = RefreshToken(
        organization_id=user.organization_id,
        id=new_id(),
        user_id=user.id,
        token_hash=_digest(secret),
        expires_at=utcnow() + dt.timedelta(days=days),
    )
    session.add(token)
    await session.flush()
    return f"{token.organization_id}.{token.id}.{secret}"


async def redeem_refresh_token(session: AsyncSession, presented: str) -> tuple[User, str | None]:
    """Check and revoke a refresh token (rotation: each is good once)."""
    invalid = Unauthorized("The refresh token is invalid, expired or already used.")
    try:
        org_part, id_part, secret = presented.split(".", 2)
        key = (uuid.UUID(org_part), uuid.UUID(id_part))
    except ValueError as exc:
        raise invalid from exc
    token = await session.get(RefreshToken, key, with_for_update=True)
    if (
        token is None
        or token.revoked_at is not None
        or token.expires_at <= utcnow()
        or not secrets.compare_digest(token.token_hash, _digest(secret))
    ):
        raise invalid
    token.revoked_at = utcnow()
    user = await session.get(User, (token.organization_id, token.user_id))
    if user is None or not user.active:
        raise invalid
    await session.flush()
    return user, await _team_path(session, user)


# ---------------------------------------------------------------- users


def _require_admin(actor: Actor) -> None:
    if actor.role is not Role.ADMIN:
        raise Forbidden("Only an admin manages users, teams and territories.")


async def _territory_ids(
    session: AsyncSession, org: uuid.UUID, user_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, list[uuid.UUID]]:
    rows = await session.execute(
        select(UserTerritory.user_id, UserTerritory.territory_id).where(
            UserTerritory.organization_id == org, UserTerritory.user_id.in_(user_ids)
        )
    )
    out: dict[uuid.UUID, list[uuid.UUID]] = {uid: [] for uid in user_ids}
    for user_id, territory_id in rows:
        out[user_id].append(territory_id)
    return out


async def users_out(session: AsyncSession, org: uuid.UUID, users: Sequence[User]) -> list[UserOut]:
    territories = await _territory_ids(session, org, [u.id for u in users])
    return [
        UserOut(
            id=u.id,
            email=u.email,
            name=u.name,
            role=Role(u.role),
            team_id=u.team_id,
            active=u.active,
            territory_ids=territories[u.id],
            created_at=u.created_at,
            updated_at=u.updated_at,
            version=u.version,
        )
        for u in users
    ]


async def _check_team(
    session: AsyncSession, org: uuid.UUID, team_id: uuid.UUID | None, field: str = "team_id"
) -> Team | None:
    if team_id is None:
        return None
    team = await session.get(Team, (org, team_id))
    if team is None:
        raise InvalidReference(f"No team {team_id}.", field=field)
    return team


async def _set_territories(
    session: AsyncSession, org: uuid.UUID, user_id: uuid.UUID, territory_ids: list[uuid.UUID]
) -> None:
    wanted = set(territory_ids)
    if wanted:
        found = set(
            (
                await session.scalars(
                    select(Territory.id).where(Territory.organization_id == org, Territory.id.in_(wanted))
                )
            ).all()
        )
        if missing := wanted - found:
            raise InvalidReference(f"No territory {sorted(map(str, missing))[0]}.", field="territory_ids")
    await session.execute(
        delete(UserTerritory).where(UserTerritory.organization_id == org, UserTerritory.user_id == user_id)
    )
    session.add_all(UserTerritory(organization_id=org, user_id=user_id, territory_id=t) for t in wanted)


async def create_user(
    session: AsyncSession, actor: Actor, data: UserCreate, *, password_hash: str | None = None
) -> User:
    """Create a user; ``password_hash`` lets bulk loaders hash a shared password once."""
    _require_admin(actor)
    org = actor.organization_id
    email = normalize_email(data.email)
    if await session.get(LoginDirectory, email) is not None:
        raise AlreadyExists(f"A user with e-mail {email} exists.", field="email")
    await _check_team(session, org, data.team_id)
    if data.id is not None and await session.get(User, (org, data.id)) is not None:
        raise AlreadyExists(f"User {data.id} already exists.", id=str(data.id))
    now = utcnow()
    user = User(
        organization_id=org,
        id=data.id or new_id(),
        email=email,
        name=data.name,
        role=data.role.value,
        team_id=data.team_id,
        password_hash=password_hash or hash_password(data.password),
        active=True,
        created_at=now,
        updated_at=now,
    )
    session.add(user)
    session.add(LoginDirectory(email=email, organization_id=org, user_id=user.id))
    await session.flush()
    if data.territory_ids:
        await _set_territories(session, org, user.id, data.territory_ids)
        await session.flush()
    return user


async def get_user(session: AsyncSession, actor: Actor, user_id: uuid.UUID) -> User:
    user = await session.get(User, (actor.organization_id, user_id))
    if user is None or (actor.role is Role.REP and user.id != actor.user_id):
        raise NotFound(f"No user {user_id}.", resource="user", id=str(user_id))
    return user


async def list_users(
    session: AsyncSession, actor: Actor, *, limit: int, cursor: str | None
) -> tuple[Sequence[User], str | None]:
    stmt = select(User).where(User.organization_id == actor.organization_id)
    if actor.role is Role.REP:
        stmt = stmt.where(User.id == actor.user_id)
    elif actor.role is Role.MANAGER and actor.team_path:
        stmt = stmt.where(User.id.in_(subtree_members(actor.organization_id, actor.team_path)))
    return await paginate(
        session, stmt, id_column=User.id, key=timestamp_key(User.created_at), limit=limit, cursor=cursor
    )


async def update_user(
    session: AsyncSession, actor: Actor, user_id: uuid.UUID, patch: UserUpdate, *, if_match: int | None = None
) -> User:
    _require_admin(actor)
    user = await get_user(session, actor, user_id)
    check_version(user.version, if_match)
    if patch.team_id is not UNSET:
        await _check_team(session, actor.organization_id, patch.team_id)
    if patch.territory_ids is not UNSET:
        await _set_territories(session, actor.organization_id, user.id, patch.territory_ids)
    if patch.password is not UNSET:
        user.password_hash = hash_password(patch.password)
    apply_patch(user, patch, skip=("password", "territory_ids"))
    await session.flush()
    return user


# ---------------------------------------------------------------- teams


async def create_team(session: AsyncSession, actor: Actor, data: TeamCreate) -> Team:
    _require_admin(actor)
    org = actor.organization_id
    parent = await _check_team(session, org, data.parent_id, field="parent_id")
    if data.manager_id is not None and await session.get(User, (org, data.manager_id)) is None:
        raise InvalidReference(f"No user {data.manager_id}.", field="manager_id")
    if await session.scalar(select(Team.id).where(Team.organization_id == org, Team.name == data.name)):
        raise AlreadyExists(f"A team named {data.name!r} exists.", field="name")
    if data.id is not None and await session.get(Team, (org, data.id)) is not None:
        raise AlreadyExists(f"Team {data.id} already exists.", id=str(data.id))
    team_id = data.id or new_id()
    now = utcnow()
    team = Team(
        organization_id=org,
        id=team_id,
        name=data.name,
        parent_id=data.parent_id,
        manager_id=data.manager_id,
        path=f"{parent.path if parent else '/'}{team_id}/",
        created_at=now,
        updated_at=now,
    )
    session.add(team)
    await session.flush()
    return team


async def update_team(
    session: AsyncSession, actor: Actor, team_id: uuid.UUID, patch: TeamUpdate, *, if_match: int | None = None
) -> Team:
    _require_admin(actor)
    team = await get_team(session, actor, team_id)
    check_version(team.version, if_match)
    if patch.manager_id is not UNSET and patch.manager_id is not None:
        if await session.get(User, (actor.organization_id, patch.manager_id)) is None:
            raise InvalidReference(f"No user {patch.manager_id}.", field="manager_id")
    apply_patch(team, patch)
    await session.flush()
    return team


async def get_team(session: AsyncSession, actor: Actor, team_id: uuid.UUID) -> Team:
    team = await session.get(Team, (actor.organization_id, team_id))
    if team is None:
        raise NotFound(f"No team {team_id}.", resource="team", id=str(team_id))
    return team


async def list_teams(session: AsyncSession, actor: Actor) -> Sequence[Team]:
    return (
        await session.scalars(select(Team).where(Team.organization_id == actor.organization_id).order_by(Team.path))
    ).all()


# ---------------------------------------------------------------- territories


async def create_territory(session: AsyncSession, actor: Actor, data: TerritoryCreate) -> Territory:
    _require_admin(actor)
    org = actor.organization_id
    if await session.scalar(select(Territory.id).where(Territory.organization_id == org, Territory.name == data.name)):
        raise AlreadyExists(f"A territory named {data.name!r} exists.", field="name")
    if data.id is not None and await session.get(Territory, (org, data.id)) is not None:
        raise AlreadyExists(f"Territory {data.id} already exists.", id=str(data.id))
    now = utcnow()
    territory = Territory(
        organization_id=org, id=data.id or new_id(), name=data.name, region=data.region, created_at=now, updated_at=now
    )
    session.add(territory)
    await session.flush()
    return territory


async def list_territories(session: AsyncSession, actor: Actor) -> Sequence[Territory]:
    return (
        await session.scalars(
            select(Territory).where(Territory.organization_id == actor.organization_id).order_by(Territory.name)
        )
    ).all()
