"""The demo tenant from the Maven sample: what the CSV holds is what gets loaded,
and loading again adds nothing."""

from __future__ import annotations

import collections
import csv
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient
from sqlalchemy import func, select

from canvass.pipeline.demo import find_data_dir, load_demo
from canvass.pipeline.models import Account, Lead, Organization, StageChange, Team, User
from canvass.settings import Settings

PASSWORD = "demo password 42"


def _csv(name: str) -> list[dict[str, str]]:
    with (find_data_dir() / name).open(newline="") as f:
        return list(csv.DictReader(f))


async def _counts(sessionmaker: Any) -> dict[str, Any]:
    async with sessionmaker() as session:
        org = await session.scalar(select(Organization.id).where(Organization.slug == "demo"))

        async def count(model: Any) -> int:
            return int(
                await session.scalar(select(func.count()).select_from(model).where(model.organization_id == org)) or 0
            )

        statuses = dict(
            (
                await session.execute(
                    select(Lead.status, func.count()).where(Lead.organization_id == org).group_by(Lead.status)
                )
            ).all()
        )
        return {
            "users": await count(User),
            "teams": await count(Team),
            "accounts": await count(Account),
            "leads": await count(Lead),
            "changes": await count(StageChange),
            "statuses": statuses,
        }


@pytest.fixture(scope="module")
def demo(client: TestClient[Any], settings: Settings) -> dict[str, Any]:
    demo_settings = Settings(
        **{**{f: getattr(settings, f) for f in settings.__struct_fields__}, "demo_password": PASSWORD}
    )
    first = client.blocking_portal.call(load_demo, demo_settings, None)
    second = client.blocking_portal.call(load_demo, demo_settings, None)
    return {
        "first": first,
        "second": second,
        "counts": client.blocking_portal.call(_counts, client.app.state.sessionmaker),
    }


def test_demo_tenant_matches_the_maven_files(demo: dict[str, Any]) -> None:
    teams = _csv("sales_teams.csv")
    pipeline = _csv("sales_pipeline.csv")
    managers = {r["manager"] for r in teams}
    offices = {r["regional_office"] for r in teams}
    counts = demo["counts"]
    assert counts["users"] == len(teams) + len(managers) + 1  # reps, managers, the admin
    assert counts["teams"] == 1 + len(offices) + len(managers)
    assert counts["accounts"] == len(_csv("accounts.csv"))
    assert counts["leads"] == len(pipeline)
    stages = collections.Counter(r["deal_stage"] for r in pipeline)
    assert counts["statuses"] == {
        "won": stages["Won"],
        "lost": stages["Lost"],
        "open": stages["Prospecting"] + stages["Engaging"],
    }
    # A created/engaged entry for every lead, plus the close of every decided one.
    assert counts["changes"] == len(pipeline) + stages["Won"] + stages["Lost"]
    assert "anna.snelling@demo.example" in demo["first"] and PASSWORD in demo["first"]


def test_loading_again_adds_nothing(demo: dict[str, Any], client: TestClient[Any]) -> None:
    assert "already loaded" in demo["second"]
    assert client.blocking_portal.call(_counts, client.app.state.sessionmaker) == demo["counts"]


def test_demo_logins_see_their_own_scope(demo: dict[str, Any], client: TestClient[Any]) -> None:
    pipeline = _csv("sales_pipeline.csv")

    def login(email: str) -> dict[str, str]:
        r = client.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
        assert r.status_code == 200, r.text
        return {"Authorization": f"Bearer {r.json()['access_token']}"}

    def all_leads(headers: dict[str, str]) -> list[dict[str, Any]]:
        items, cursor = [], None
        while True:
            params = {"limit": 200, **({"cursor": cursor} if cursor else {})}
            page = client.get("/api/v1/leads", params=params, headers=headers).json()
            items += page["items"]
            cursor = page["next_cursor"]
            if not cursor:
                return items

    anna = all_leads(login("anna.snelling@demo.example"))
    assert len(anna) == sum(1 for r in pipeline if r["sales_agent"] == "Anna Snelling")
    team = {r["sales_agent"] for r in _csv("sales_teams.csv") if r["manager"] == "Dustin Brinkmann"}
    dustin = all_leads(login("dustin.brinkmann@demo.example"))
    assert len(dustin) == sum(1 for r in pipeline if r["sales_agent"] in team)
    assert {lead["external_ref"] for lead in anna} <= {lead["external_ref"] for lead in dustin}


def test_data_dir_is_found_from_the_repository() -> None:
    assert (find_data_dir() / "sales_pipeline.csv").is_file()
    assert Path(find_data_dir(str(find_data_dir()))).name == "maven-crm"
