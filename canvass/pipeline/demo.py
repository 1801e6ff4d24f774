"""The demo tenant, loaded from the Maven CRM sample data (``shared/data/maven-crm``).

Its agents become reps under their managers, its regional offices teams and
territories, its accounts accounts, and its 8,800 opportunities leads whose
Maven stage and dates are kept as stage history, written through the same bulk
import partners use. Loading twice changes nothing but the demo password (when
none is configured a new one is made, so the printed login always works).
See ``docs/demo-data.md`` for the mapping.
"""

from __future__ import annotations

import collections
import csv
import datetime as dt
import os
import secrets
import uuid
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from canvass.db import create_engine, session_factory
from canvass.errors import CanvassError
from canvass.pipeline.models import Organization, User
from canvass.pipeline.schemas import AccountCreate, ContactCreate, TeamCreate, TerritoryCreate, UserCreate
from canvass.pipeline.scope import Actor
from canvass.pipeline.services import accounts, imports, people
from canvass.pipeline.services.imports import HistoryEntry, LeadImportRow
from canvass.pipeline.vocabulary import AccountKind, BuyingRole, LeadStatus, Role, Stage
from canvass.settings import Settings

DEMO_SLUG = "demo"
DEMO_DOMAIN = "demo.example"
ADMIN_EMAIL = f"admin@{DEMO_DOMAIN}"
LOSS_REASON = "Lost (imported from Maven CRM, which records no reason)"


def find_data_dir(explicit: str | None = None) -> Path:
    """The Maven CSV folder: given, from CANVASS_DEMO_DATA, or the project's
    ``shared/data/maven-crm`` found beside the working directory or the package."""
    candidates = [explicit, os.environ.get("CANVASS_DEMO_DATA")]
    for start in (Path.cwd(), Path(__file__).resolve()):
        candidates += [str(p / "shared" / "data" / "maven-crm") for p in (start, *start.parents)]
    for candidate in candidates:
        if candidate and (Path(candidate) / "sales_pipeline.csv").is_file():
            return Path(candidate)
    raise FileNotFoundError("Maven CRM sample data not found; pass --data-dir or set CANVASS_DEMO_DATA")


def email_for(full_name: str) -> str:
    return ".".join(full_name.lower().split()) + "@" + DEMO_DOMAIN


def _product_key(name: str) -> str:
    # "GTXPro" in the pipeline is "GTX Pro" in products.csv.
    return name.replace(" ", "").lower()


def _date(text: str) -> dt.datetime | None:
    if not text:
        return None
    month, day, year = (int(part) for part in text.split("/"))
    return dt.datetime(year, month, day, 9, 0, tzinfo=dt.UTC)


def _read(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def lead_rows(data_dir: Path) -> list[LeadImportRow]:
    """The Maven opportunities as import rows (see docs/demo-data.md)."""
    prices = {
        _product_key(p["product"]): (p["product"], float(p["sales_price"])) for p in _read(data_dir / "products.csv")
    }
    pipeline = _read(data_dir / "sales_pipeline.csv")
    # Prospecting rows carry no date at all: they are the newest, not yet engaged.
    data_end = max(d for row in pipeline for d in (_date(row["engage_date"]), _date(row["close_date"])) if d)
    rows = []
    for opp in pipeline:
        product, list_price = prices[_product_key(opp["product"])]
        engaged, closed = _date(opp["engage_date"]), _date(opp["close_date"])
        stage = opp["deal_stage"]
        history = []
        if stage == "Prospecting":
            history.append(HistoryEntry(to_stage=Stage.PROSPECTING, at=data_end, amount=list_price))
        else:
            assert engaged is not None
            history.append(HistoryEntry(to_stage=Stage.APPROACH, at=engaged, amount=list_price, note="engaged"))
        if stage == "Won":
            assert closed is not None
            value = float(opp["close_value"] or 0) or list_price
            history.append(HistoryEntry(to_stage=Stage.CLOSE, status=LeadStatus.WON, at=closed, amount=value))
        elif stage == "Lost":
            assert closed is not None
            history.append(HistoryEntry(to_stage=Stage.CLOSE, status=LeadStatus.LOST, at=closed, amount=list_price))
        rows.append(
            LeadImportRow(
                external_ref=f"maven:{opp['opportunity_id']}",
                title=f"{product} for {opp['account'] or 'a new prospect'}",
                owner_email=email_for(opp["sales_agent"]),
                account_name=opp["account"] or None,
                product_interest=product,
                amount=list_price,
                loss_reason=LOSS_REASON if stage == "Lost" else None,
                history=history,
            )
        )
    return rows


async def _set_demo_password(session: AsyncSession, org_id: uuid.UUID, password_hash: str) -> None:
    await session.execute(
        update(User)
        .where(User.organization_id == org_id, User.email.like(f"%@{DEMO_DOMAIN}"))
        .values(password_hash=password_hash)
    )


async def _load(session: AsyncSession, data_dir: Path, password_hash: str) -> dict[str, int]:
    org = await people.create_organization(session, "Demo — Maven CRM sample", DEMO_SLUG)
    # The loader acts as the tenant's first admin (created below, so ids match).
    admin_id = uuid.uuid4()
    boot = Actor(organization_id=org.id, user_id=admin_id, role=Role.ADMIN)
    teams_csv = _read(data_dir / "sales_teams.csv")

    root = await people.create_team(session, boot, TeamCreate(name="Sales"))
    await people.create_user(
        session,
        boot,
        UserCreate(
            id=admin_id, email=ADMIN_EMAIL, name="Demo Admin", role=Role.ADMIN, team_id=root.id, password="x" * 8
        ),
        password_hash=password_hash,
    )
    offices = sorted({r["regional_office"] for r in teams_csv})
    territory = {o: await accounts_territory(session, boot, o) for o in offices}
    region_team = {
        o: await people.create_team(session, boot, TeamCreate(name=f"{o} region", parent_id=root.id)) for o in offices
    }
    manager_office = {r["manager"]: r["regional_office"] for r in teams_csv}
    manager_team: dict[str, uuid.UUID] = {}
    for manager, office in sorted(manager_office.items()):
        team = await people.create_team(
            session, boot, TeamCreate(name=f"{manager}'s team", parent_id=region_team[office].id)
        )
        user = await people.create_user(
            session,
            boot,
            UserCreate(
                email=email_for(manager),
                name=manager,
                role=Role.MANAGER,
                team_id=team.id,
                password="x" * 8,
                territory_ids=[territory[office]],
            ),
            password_hash=password_hash,
        )
        team.manager_id = user.id
        manager_team[manager] = team.id
    agent_ids: dict[str, uuid.UUID] = {}
    for r in teams_csv:
        user = await people.create_user(
            session,
            boot,
            UserCreate(
                email=email_for(r["sales_agent"]),
                name=r["sales_agent"],
                role=Role.REP,
                team_id=manager_team[r["manager"]],
                password="x" * 8,
                territory_ids=[territory[r["regional_office"]]],
            ),
            password_hash=password_hash,
        )
        agent_ids[r["sales_agent"]] = user.id

    # An account belongs to the rep who sells most to it.
    pipeline = _read(data_dir / "sales_pipeline.csv")
    deals = collections.Counter((o["account"], o["sales_agent"]) for o in pipeline if o["account"])
    office_of = {r["sales_agent"]: r["regional_office"] for r in teams_csv}
    contact_of: dict[str, uuid.UUID] = {}
    for a in _read(data_dir / "accounts.csv"):
        name = a["account"]
        owner = max((agent for acc, agent in deals if acc == name), key=lambda agent: (deals[(name, agent)], agent))
        account = await accounts.create_account(
            session,
            boot,
            AccountCreate(
                name=name,
                kind=AccountKind.CUSTOMER,
                industry=a["sector"] or None,
                size=f"{a['employees']} employees" if a["employees"] else None,
                region=a["office_location"] or None,
                owner_id=agent_ids[owner],
                territory_id=territory[office_of[owner]],
                annual_demand=float(a["revenue"]) * 1_000_000 if a["revenue"] else None,
                custom_fields={
                    "year_established": int(a["year_established"]) if a["year_established"] else None,
                    "subsidiary_of": a["subsidiary_of"] or None,
                    "revenue_musd": float(a["revenue"]) if a["revenue"] else None,
                },
            ),
        )
        # Maven has no contacts; one per account, plainly marked, lets demo
        # leads pass the prospecting gate (account + contact identified).
        contact = await accounts.create_contact(
            session,
            boot,
            ContactCreate(account_id=account.id, name=f"Purchasing desk, {name} (demo)", buying_role=BuyingRole.BUYER),
        )
        contact_of[name] = contact.id

    rows = lead_rows(data_dir)
    for row in rows:
        if row.account_name:
            row.primary_contact_id = contact_of[row.account_name]
    report = await imports.import_leads(session, boot, rows)
    if report.rejected:
        first = report.rejected[0]
        raise CanvassError(
            f"demo import rejected {len(report.rejected)} rows; first: row {first.row} {first.field}: {first.message}"
        )
    return {
        "reps": len(agent_ids),
        "managers": len(manager_team),
        "accounts": len(_read(data_dir / "accounts.csv")),
        "leads": report.accepted,
        "stage_changes": report.stage_changes,
    }


async def accounts_territory(session: AsyncSession, actor: Actor, office: str) -> uuid.UUID:
    territory = await people.create_territory(session, actor, TerritoryCreate(name=office, region=office))
    return territory.id


async def load_demo(settings: Settings, data_dir: str | None = None) -> str:
    """Load the demo tenant once; always (re)print a working login."""
    folder = find_data_dir(data_dir)
    password = settings.demo_password or secrets.token_urlsafe(9)
    password_hash = people.hash_password(password)
    engine = create_engine(settings.async_database_url)
    try:
        async with session_factory(engine)() as session, session.begin():
            org_id = await session.scalar(select(Organization.id).where(Organization.slug == DEMO_SLUG))
            if org_id is None:
                counts = await _load(session, folder, password_hash)
                summary = ", ".join(f"{n:,} {what.replace('_', ' ')}" for what, n in counts.items())
                status = f"Loaded the demo tenant from {folder}: {summary}."
            else:
                await _set_demo_password(session, org_id, password_hash)
                status = "The demo tenant is already loaded; its data is unchanged."
    finally:
        await engine.dispose()
    return "\n".join(
        [
            status,
            "Log in (POST /api/v1/auth/login) as any of:",
            f"  rep      anna.snelling@{DEMO_DOMAIN}",
            f"  manager  dustin.brinkmann@{DEMO_DOMAIN}",
            f"  admin    {ADMIN_EMAIL}",
            f"  password {password}",
        ]
    )


async def create_user_cli(settings: Settings, org_slug: str, email: str, name: str, role: str, password: str) -> str:
    """`canvass users create`: add a user to an organization from the command line."""
    engine = create_engine(settings.async_database_url)
    try:
        async with session_factory(engine)() as session, session.begin():
            org_id = await session.scalar(select(Organization.id).where(Organization.slug == org_slug))
            if org_id is None:
                raise SystemExit(f"no organization with slug {org_slug!r}")
            boot = Actor(organization_id=org_id, user_id=uuid.uuid4(), role=Role.ADMIN)
            user = await people.create_user(
                session, boot, UserCreate(email=email, name=name, role=Role(role), password=password)
            )
            return f"created {user.role} {user.email} ({user.id})"
    finally:
        await engine.dispose()
