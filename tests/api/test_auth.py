"""Login, refresh rotation, disabled users, bad tokens, role guards."""

from __future__ import annotations

import datetime as dt
from typing import Any

import jwt
from litestar.testing import TestClient

from tests.conftest import TEST_PASSWORD, Tenant


def _login(client: TestClient[Any], email: str, password: str = TEST_PASSWORD) -> Any:
    return client.post("/api/v1/auth/login", json={"email": email, "password": password})


def test_login_gives_a_short_lived_token_and_a_refresh_token(client: TestClient[Any], tenant: Tenant) -> None:
    r = _login(client, tenant.rep_a.email.upper())  # e-mail is case-insensitive
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["token_type"] == "bearer" and body["role"] == "rep" and body["expires_in"] == 15 * 60
    me = client.get("/api/v1/users/me", headers={"Authorization": f"Bearer {body['access_token']}"})
    assert me.json()["id"] == str(tenant.rep_a.id)


def test_wrong_password_and_unknown_email_look_the_same(client: TestClient[Any], tenant: Tenant) -> None:
    wrong = _login(client, tenant.rep_a.email, "not the password")
    unknown = _login(client, "nobody@nowhere.example")
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json()["detail"] == unknown.json()["detail"]
    assert wrong.headers["www-authenticate"] == "Bearer"


def test_refresh_tokens_rotate(client: TestClient[Any], tenant: Tenant) -> None:
    first = _login(client, tenant.rep_a.email).json()["refresh_token"]
    second = client.post("/api/v1/auth/refresh", json={"refresh_token": first})
    assert second.status_code == 200
    assert client.post("/api/v1/auth/refresh", json={"refresh_token": first}).status_code == 401
    assert (
        client.post("/api/v1/auth/refresh", json={"refresh_token": second.json()["refresh_token"]}).status_code == 200
    )
    assert client.post("/api/v1/auth/refresh", json={"refresh_token": "garbage"}).status_code == 401


def test_a_disabled_user_can_neither_log_in_nor_refresh(client: TestClient[Any], tenant: Tenant) -> None:
    refresh = _login(client, tenant.rep_b.email).json()["refresh_token"]
    user_url = f"/api/v1/users/{tenant.rep_b.id}"
    assert client.patch(user_url, json={"active": False}, headers=tenant.admin.headers).status_code == 200
    assert _login(client, tenant.rep_b.email).status_code == 401
    assert client.post("/api/v1/auth/refresh", json={"refresh_token": refresh}).status_code == 401


def test_bad_tokens_are_401(client: TestClient[Any], tenant: Tenant, settings: Any) -> None:
    claims = {"sub": str(tenant.rep_a.id), "org": str(tenant.organization_id), "role": "rep"}
    now = dt.datetime.now(dt.UTC)
    expired = jwt.encode(
        {**claims, "exp": now - dt.timedelta(minutes=1), "iat": now - dt.timedelta(hours=1)}, settings.secret_key
    )
    forged = jwt.encode({**claims, "exp": now + dt.timedelta(minutes=5), "iat": now}, "someone else's key")
    for token in (expired, forged, "not.a.token"):
        r = client.get("/api/v1/leads", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 401 and r.json()["type"].endswith("/unauthorized")


def test_roles_are_checked(client: TestClient[Any], tenant: Tenant) -> None:
    body = {"email": "new@example.com", "name": "New Rep", "password": "long enough"}
    denied = client.post("/api/v1/users", json=body, headers=tenant.manager_a.headers)
    assert denied.status_code == 403 and denied.json()["type"].endswith("/forbidden")
    created = client.post(
        "/api/v1/users", json={**body, "email": f"new@{tenant.slug}.example"}, headers=tenant.admin.headers
    )
    assert created.status_code == 201
    duplicate = client.post(
        "/api/v1/users", json={**body, "email": f"new@{tenant.slug}.example"}, headers=tenant.admin.headers
    )
    assert duplicate.status_code == 409
    assert _login(client, f"new@{tenant.slug}.example", "long enough").status_code == 200
    visible = {u["id"] for u in client.get("/api/v1/users", headers=tenant.manager_a.headers).json()["items"]}
    assert str(tenant.rep_a1.id) in visible and str(tenant.rep_b.id) not in visible
