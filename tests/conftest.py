"""Shared fixtures: every test runs against SQLite and against PostgreSQL.

Each database is created fresh per run (PostgreSQL: a new database on the local
server; it must be reachable — the suite fails rather than skip) and brought to
the current schema by the Alembic migrations themselves. Tests isolate by
tenant: each builds its own organization through the services, so nothing needs
truncating and every test also exercises tenant isolation.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import msgspec
import pytest
from alembic import command
from litestar.testing import TestClient

from canvass.api.app import create_app
from canvass.api.security import access_token
from canvass.migrations import alembic_config
from canvass.pipeline.schemas import TeamCreate, UserCreate
from canvass.pipeline.scope import Actor
from canvass.pipeline.services import people
from canvass.pipeline.vocabulary import Role
from canvass.settings import Settings

T = TypeVar("T")

POSTGRES_ADMIN_URL = os.environ.get("CANVASS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
TEST_PASSWORD = "correct horse battery"
# Hashing is deliberately slow; tenants share one hash of the test password.
TEST_PASSWORD_HASH = people.hash_password(TEST_PASSWORD)


def _databases() -> list[str]:
    chosen = os.environ.get("CANVASS_TEST_DATABASES", "sqlite,postgresql")
    return [d.strip() for d in chosen.split(",") if d.strip()]


async def _postgres(statement: str) -> None:
    import asyncpg

    url = POSTGRES_ADMIN_URL.replace("postgresql+asyncpg://", "postgresql://")
    conn = await asyncpg.connect(url, timeout=10)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture(scope="session", params=_databases())
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A fresh database at the head migration, per backend."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'canvass.db'}"
        command.upgrade(alembic_config(url), "head")
        yield url
        return
    name = f"canvass_test_{uuid.uuid4().hex[:12]}"
    try:
        asyncio.run(_postgres(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        pytest.fail(f"PostgreSQL is required for the test suite and is not reachable at {POSTGRES_ADMIN_URL}: {exc}")
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0]
    url = f"{base}/{name}"
    command.upgrade(alembic_config(url), "head")
    try:
        yield url
    finally:
        asyncio.run(_postgres(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def settings(database_url: str) -> Settings:
    return Settings(database_url=database_url, secret_key="test-secret-key-" + "x" * 32, max_body_bytes=64 * 1024)


@pytest.fixture(scope="session")
def client(settings: Settings) -> Iterator[TestClient[Any]]:
    app = create_app(settings)
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


def run(client: TestClient[Any], fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """Run service code on the app's own event loop (where its engine lives)."""
    return client.blocking_portal.call(fn, *args)  # type: ignore[arg-type]


class Person(msgspec.Struct, kw_only=True):
    id: uuid.UUID
    email: str
    role: Role
    team_path: str | None
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


class Tenant(msgspec.Struct, kw_only=True):
    """An organization with a small team tree:

    root (admin)
    ├── team A — manager_a; rep_a, rep_a2
    │   └── team A1 — rep_a1 (in manager_a's subtree)
    └── team B — manager_b; rep_b
    """

    organization_id: uuid.UUID
    slug: str
    people: dict[str, Person]

    def __getattr__(self, name: str) -> Person:
        try:
            return self.people[name]
        except KeyError:
            raise AttributeError(name) from None


async def _build_tenant(sessionmaker: Any, jwt_auth: Any) -> Tenant:
    slug = f"t-{uuid.uuid4().hex[:10]}"
    async with sessionmaker() as session, session.begin():
        org = await people.create_organization(session, f"Tenant {slug}", slug)
        bootstrap = Actor(organization_id=org.id, user_id=uuid.uuid4(), role=Role.ADMIN)
        root = await people.create_team(session, bootstrap, TeamCreate(name="Sales"))
        team_a = await people.create_team(session, bootstrap, TeamCreate(name="Team A", parent_id=root.id))
        team_a1 = await people.create_team(session, bootstrap, TeamCreate(name="Team A1", parent_id=team_a.id))
        team_b = await people.create_team(session, bootstrap, TeamCreate(name="Team B", parent_id=root.id))
        layout = {
            "admin": (Role.ADMIN, root),
            "manager_a": (Role.MANAGER, team_a),
            "rep_a": (Role.REP, team_a),
            "rep_a2": (Role.REP, team_a),
            "rep_a1": (Role.REP, team_a1),
            "manager_b": (Role.MANAGER, team_b),
            "rep_b": (Role.REP, team_b),
        }
        members: dict[str, Person] = {}
        for key, (role, team) in layout.items():
            email = f"{key}@{slug}.example"
            user = await people.create_user(
                session,
                bootstrap,
                UserCreate(
                    email=email, name=key.replace("_", " ").title(), role=role, team_id=team.id, password=TEST_PASSWORD
                ),
                password_hash=TEST_PASSWORD_HASH,
            )
            members[key] = Person(
                id=user.id, email=email, role=role, team_path=team.path, token=access_token(jwt_auth, user, team.path)
            )
        for team, manager in ((team_a, "manager_a"), (team_b, "manager_b")):
            team.manager_id = members[manager].id
        return Tenant(organization_id=org.id, slug=slug, people=members)


@pytest.fixture
def tenant(client: TestClient[Any]) -> Tenant:
    """A fresh organization with its team tree and a token per person."""
    state = client.app.state
    return run(client, _build_tenant, state.sessionmaker, state.jwt_auth)


@pytest.fixture
def other_tenant(client: TestClient[Any]) -> Tenant:
    state = client.app.state
    return run(client, _build_tenant, state.sessionmaker, state.jwt_auth)


def create_account(client: TestClient[Any], who: Person, **fields: Any) -> dict[str, Any]:
    response = client.post("/api/v1/accounts", json={"name": "Acme Corp", **fields}, headers=who.headers)
    assert response.status_code == 201, response.text
    return response.json()


def create_contact(client: TestClient[Any], who: Person, account_id: str, **fields: Any) -> dict[str, Any]:
    body = {"account_id": account_id, "name": "Li Wei", "buying_role": "decision_maker", **fields}
    response = client.post("/api/v1/contacts", json=body, headers=who.headers)
    assert response.status_code == 201, response.text
    return response.json()


def create_lead(client: TestClient[Any], who: Person, **fields: Any) -> dict[str, Any]:
    response = client.post("/api/v1/leads", json={"title": "GTX Pro for Acme", **fields}, headers=who.headers)
    assert response.status_code == 201, response.text
    return response.json()
