"""Schemathesis against our own OpenAPI document, every operation, authenticated:
no 5xx, responses match their documented schema, status code and content type.

Requests go through the app's own test client (the app and its database engine
live on that client's event loop). Path ids are pointed at real records of the
caller's tenant, so operations are exercised beyond 404.
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from litestar.testing import TestClient
from schemathesis import checks

from canvass.api.app import create_app
from canvass.settings import Settings
from tests.conftest import Tenant, create_account, create_contact, create_lead

with TestClient(create_app(Settings(database_url="sqlite://", secret_key="x" * 32))) as _docs:
    schema = schemathesis.openapi.from_dict(_docs.get("/schema/openapi.json").json())

CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
]


@pytest.fixture(scope="module")
def seeded(client: TestClient[Any], request: pytest.FixtureRequest) -> dict[str, Any]:
    """A tenant with one record of each kind, owned by the rep; ids by path parameter."""
    from tests.conftest import _build_tenant, run

    state = client.app.state
    tenant: Tenant = run(client, _build_tenant, state.sessionmaker, state.jwt_auth)
    rep = tenant.rep_a
    account = create_account(client, rep)
    contact = create_contact(client, rep, account["id"])
    lead = create_lead(client, rep, account_id=account["id"], primary_contact_id=contact["id"])
    activity = client.post(
        "/api/v1/activities", json={"kind": "visit", "lead_id": lead["id"]}, headers=rep.headers
    ).json()
    objection = client.post(
        f"/api/v1/leads/{lead['id']}/objections", json={"type": "price", "statement": "Too dear"}, headers=rep.headers
    ).json()
    teams = client.get("/api/v1/teams", headers=tenant.admin.headers).json()
    return {
        "tenant": tenant,
        "ids": {
            "account_id": account["id"],
            "contact_id": contact["id"],
            "lead_id": lead["id"],
            "activity_id": activity["id"],
            "objection_id": objection["id"],
            "user_id": str(rep.id),
            "team_id": teams[0]["id"],
        },
    }


def _send(client: TestClient[Any], case: Any, headers: dict[str, str]) -> Any:
    kwargs = case.as_transport_kwargs(base_url="http://testserver.local", headers=headers)
    body: dict[str, Any] = {}
    if "json" in kwargs:
        body["json"] = kwargs["json"]
    elif kwargs.get("data") is not None:
        body["content"] = kwargs["data"]
    return client.request(
        kwargs["method"],
        kwargs["url"],
        params=kwargs.get("params"),
        headers=kwargs.get("headers"),
        **body,
    )


@pytest.mark.parametrize("role", ["admin", "rep_a"])
@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_every_operation_honours_its_contract(
    case: Any, role: str, client: TestClient[Any], seeded: dict[str, Any]
) -> None:
    if case.path_parameters:
        for name in case.path_parameters:
            if name in seeded["ids"]:
                case.path_parameters[name] = seeded["ids"][name]
    who = seeded["tenant"].people[role]
    response = _send(client, case, who.headers)
    case.validate_response(response, checks=CHECKS)
