"""SQLAlchemy models for the sales domain.

Tenant rules (SPEC §7), so the schema distributes by ``organization_id`` on Citus
unchanged: every tenant table's primary key is ``(organization_id, id)``; every
unique constraint and hot index starts with ``organization_id``; foreign keys
between tenant tables are composite and include it. Tables without a tenant
(``organizations``, ``login_directory``) are small and become reference tables.

Every mutable row carries ``version`` (optimistic concurrency and the ETag) and
``updated_at``. Ids are UUIDv7, made by whoever creates the record (server or an
offline device).
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Date,
    Float,
    ForeignKeyConstraint,
    Index,
    Integer,
    Numeric,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    Uuid,
    null,
    text,
)
from sqlalchemy.orm import Mapped, declared_attr, mapped_column

from canvass.db import Base, JSONType, UTCDateTime, utcnow
from canvass.ids import new_id

Money = Numeric(16, 2, asdecimal=False)


def _tenant_fk(columns: list[str], table: str, targets: list[str] | None = None, **kw: Any) -> ForeignKeyConstraint:
    """A composite foreign key that always carries the tenant."""
    targets = targets or ["id"] * (len(columns))
    return ForeignKeyConstraint(
        ["organization_id", *columns],
        [f"{table}.organization_id", *(f"{table}.{t}" for t in targets)],
        **kw,
    )


class Organization(Base):
    """The tenant. Its ``settings`` hold gate configuration, thresholds and stage
    probabilities (see ``pipeline.config``)."""

    __tablename__ = "organizations"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(300))
    slug: Mapped[str] = mapped_column(String(80), unique=True)
    settings: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    version: Mapped[int] = mapped_column(Integer, default=1)

    __mapper_args__ = {"version_id_col": version}


class LoginDirectory(Base):
    """Which tenant an e-mail address logs in to. The one global lookup table:
    login takes only an e-mail, and no query may scan users across tenants."""

    __tablename__ = "login_directory"

    email: Mapped[str] = mapped_column(String(320), primary_key=True)
    organization_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    user_id: Mapped[uuid.UUID] = mapped_column(Uuid)


class TenantMixin:
    organization_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)


class Versioned:
    """Created/updated timestamps and the row version that the ORM checks on every
    UPDATE (optimistic concurrency) and that the API exposes as the ETag."""

    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    version: Mapped[int] = mapped_column(Integer, default=1)

    @declared_attr.directive
    def __mapper_args__(cls) -> dict[str, Any]:
        return {"version_id_col": cls.__table__.c.version}  # type: ignore[attr-defined]


class Synced:
    """Rows that offline devices replicate (see ``canvass/sync/PROTOCOL.md``).

    ``server_version`` is the tenant's change-feed position of the row's last
    write. Every write sets it to NULL ("written, not yet published"); the sync
    layer publishes it with the tenant's next version (``canvass/sync/feed.py``),
    so versions become visible in order and a device's cursor never skips a
    change."""

    server_version: Mapped[int | None] = mapped_column(BigInteger, default=None, onupdate=null())


class FieldVersioned(Synced):
    """Records that devices edit field by field. ``field_versions`` maps a field
    to ``[row version, hybrid-clock timestamp, device id or null]`` of its last write: the three-way
    merge compares it with the row version the device's edit was based on."""

    field_versions: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)


def _feed_index(table: str) -> Index:
    return Index(f"ix_{table}_org_server_version", "organization_id", "server_version", "id")


class Team(TenantMixin, Versioned, Base):
    """A node of the team tree. ``path`` is the materialized path of ids from the
    root ("/<root>/<child>/"), so "the whole subtree" is one prefix match."""

    __tablename__ = "teams"

    name: Mapped[str] = mapped_column(String(300))
    parent_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    manager_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    path: Mapped[str] = mapped_column(String(2000))

    __table_args__ = (
        _tenant_fk(["parent_id"], "teams"),
        _tenant_fk(["manager_id"], "users", use_alter=True, name="fk_teams_manager_users"),
        UniqueConstraint("organization_id", "name"),
        Index("ix_teams_org_path", "organization_id", "path"),
    )


class User(TenantMixin, Versioned, Base):
    __tablename__ = "users"

    email: Mapped[str] = mapped_column(String(320))
    name: Mapped[str] = mapped_column(String(300))
    role: Mapped[str] = mapped_column(String(16))
    team_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    password_hash: Mapped[str] = mapped_column(String(200))
    active: Mapped[bool] = mapped_column(Boolean, default=True)

    __table_args__ = (
        _tenant_fk(["team_id"], "teams"),
        UniqueConstraint("organization_id", "email"),
        Index("ix_users_org_team", "organization_id", "team_id"),
    )


class RefreshToken(TenantMixin, Base):
    """A refresh token is shown once; only its SHA-256 is stored. Rotated on use."""

    __tablename__ = "refresh_tokens"

    user_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    token_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (_tenant_fk(["user_id"], "users"),)


class Territory(TenantMixin, Versioned, Base):
    """区域划分: a sales territory within a region."""

    __tablename__ = "territories"

    name: Mapped[str] = mapped_column(String(300))
    region: Mapped[str | None] = mapped_column(String(200))

    __table_args__ = (UniqueConstraint("organization_id", "name"),)


class UserTerritory(Base):
    __tablename__ = "user_territories"

    organization_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    user_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    territory_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)

    __table_args__ = (
        _tenant_fk(["user_id"], "users"),
        _tenant_fk(["territory_id"], "territories"),
    )


class Account(TenantMixin, FieldVersioned, Versioned, Base):
    """客户: a company or person the organization sells to."""

    __tablename__ = "accounts"

    name: Mapped[str] = mapped_column(String(300))
    kind: Mapped[str] = mapped_column(String(16), default="prospect")
    b2b_kind: Mapped[str | None] = mapped_column(String(16))
    industry: Mapped[str | None] = mapped_column(String(200))
    size: Mapped[str | None] = mapped_column(String(200))
    region: Mapped[str | None] = mapped_column(String(200))
    address: Mapped[str | None] = mapped_column(Text)
    latitude: Mapped[float | None] = mapped_column(Float)
    longitude: Mapped[float | None] = mapped_column(Float)
    owner_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    territory_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    credit_rating: Mapped[str | None] = mapped_column(String(20))
    credit_limit: Mapped[float | None] = mapped_column(Money)  # 授信额度
    annual_demand: Mapped[float | None] = mapped_column(Money)
    contact_cycle_days: Mapped[int] = mapped_column(Integer, default=30)  # 联系周期
    lifecycle_stage: Mapped[str] = mapped_column(String(16), default="prospect")
    abc_class: Mapped[str | None] = mapped_column(String(1))
    tags: Mapped[list[str]] = mapped_column(JSONType, default=list)
    custom_fields: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    deleted_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        _feed_index("accounts"),
        _tenant_fk(["owner_id"], "users"),
        _tenant_fk(["territory_id"], "territories"),
        Index("ix_accounts_org_owner", "organization_id", "owner_id"),
        Index("ix_accounts_org_name", "organization_id", "name"),
        Index("ix_accounts_org_updated", "organization_id", "updated_at"),
    )


class Contact(TenantMixin, FieldVersioned, Versioned, Base):
    """联系人: a person at an account, with their buying role and consent."""

    __tablename__ = "contacts"

    account_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    name: Mapped[str] = mapped_column(String(300))
    title: Mapped[str | None] = mapped_column(String(200))
    phone: Mapped[str | None] = mapped_column(String(50))
    email: Mapped[str | None] = mapped_column(String(320))
    buying_role: Mapped[str | None] = mapped_column(String(20))
    consent: Mapped[dict[str, bool]] = mapped_column(JSONType, default=dict)
    birthday: Mapped[dt.date | None] = mapped_column(Date)
    deleted_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        _feed_index("contacts"),
        _tenant_fk(["account_id"], "accounts"),
        Index("ix_contacts_org_account", "organization_id", "account_id"),
    )


class Lead(TenantMixin, FieldVersioned, Versioned, Base):
    """The unit that moves through the seven-stage pipeline."""

    __tablename__ = "leads"

    title: Mapped[str] = mapped_column(String(300))
    # The lead's id in the system it was imported from (one import per reference).
    external_ref: Mapped[str | None] = mapped_column(String(100))
    account_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    primary_contact_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    owner_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    source_channel: Mapped[str | None] = mapped_column(String(30))
    product_interest: Mapped[str | None] = mapped_column(String(200))
    amount: Mapped[float | None] = mapped_column(Money)
    currency: Mapped[str] = mapped_column(String(3), default="USD")
    expected_close_date: Mapped[dt.date | None] = mapped_column(Date)
    stage: Mapped[str] = mapped_column(String(20), default="prospecting")
    status: Mapped[str] = mapped_column(String(16), default="open")
    stage_entered_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    forecast_category: Mapped[str] = mapped_column(String(16), default="pipeline")
    probability_override: Mapped[float | None] = mapped_column(Float)
    # 需求度 / 购买力 / 决策权 / 信誉度 scores, budget and timing; see pipeline.stages.
    qualification: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    qualification_override_reason: Mapped[str | None] = mapped_column(Text)
    visit_plan: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    next_step: Mapped[str | None] = mapped_column(Text)
    closing_signals: Mapped[list[str]] = mapped_column(JSONType, default=list)
    closing_method: Mapped[str | None] = mapped_column(String(30))
    loss_reason: Mapped[str | None] = mapped_column(Text)
    competitor: Mapped[str | None] = mapped_column(String(200))
    lost_at_stage: Mapped[str | None] = mapped_column(String(20))
    closed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    deleted_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    # Stage summary, derived from the stage changes when each is written (see
    # ``pipeline.stage_summary``): funnel reports read these instead of scanning the
    # history, which stays the source of truth. ``entered_<stage>_at``: the first
    # time the lead advanced into the stage (an open or won move that changed the
    # stage, or the creation); ``exited_<stage>_at``: when that first visit ended;
    # ``reached_stage``: the furthest stage (index in STAGE_ORDER) an advancing move reached.
    entered_prospecting_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    exited_prospecting_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    entered_qualify_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    exited_qualify_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    entered_approach_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    exited_approach_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    entered_negotiate_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    exited_negotiate_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    entered_handle_objections_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    exited_handle_objections_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    entered_close_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    exited_close_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    entered_after_sale_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    exited_after_sale_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    reached_stage: Mapped[int | None] = mapped_column(SmallInteger)

    __table_args__ = (
        _feed_index("leads"),
        _tenant_fk(["account_id"], "accounts"),
        _tenant_fk(["primary_contact_id"], "contacts"),
        _tenant_fk(["owner_id"], "users"),
        Index("ix_leads_org_owner_created", "organization_id", "owner_id", "created_at", "id"),
        Index("ix_leads_org_created", "organization_id", "created_at", "id"),
        Index("ix_leads_org_updated", "organization_id", "updated_at", "id"),
        Index("ix_leads_org_account", "organization_id", "account_id"),
        Index("ix_leads_org_stage_status", "organization_id", "stage", "status"),
        # The funnel's stuck leads: open leads of a stage by when they entered it (migration 0005).
        Index(
            "ix_leads_org_open_stage_entered",
            "organization_id",
            "stage",
            "stage_entered_at",
            "id",
            postgresql_where=text("status = 'open' AND deleted_at IS NULL"),
            sqlite_where=text("status = 'open' AND deleted_at IS NULL"),
        ),
        UniqueConstraint("organization_id", "external_ref"),
    )


class StageChange(TenantMixin, Synced, Base):
    """Append-only history of a lead's moves. Funnel reports and forecasts are
    computed from it, so it also records the status and amount after the move."""

    __tablename__ = "stage_changes"

    lead_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    from_stage: Mapped[str | None] = mapped_column(String(20))
    to_stage: Mapped[str] = mapped_column(String(20))
    status: Mapped[str] = mapped_column(String(16))
    amount: Mapped[float | None] = mapped_column(Money)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    # When the lead entered ``from_stage``: the time spent there is ``at`` minus
    # this, row-local, so funnel reports aggregate durations without window scans.
    from_stage_entered_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    by_user_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    by_device_id: Mapped[str | None] = mapped_column(String(100))
    note: Mapped[str | None] = mapped_column(Text)
    imported: Mapped[bool] = mapped_column(Boolean, default=False)

    __table_args__ = (
        _feed_index("stage_changes"),
        _tenant_fk(["lead_id"], "leads"),
        Index("ix_stage_changes_org_lead_at", "organization_id", "lead_id", "at"),
        Index("ix_stage_changes_org_at", "organization_id", "at"),
    )


class Activity(TenantMixin, Synced, Versioned, Base):
    """Append-only log of what a rep did: visits (拜访) with plan, check-in and
    check-out, calls, e-mails, meetings, demos, notes and tasks. Only lifecycle
    fields (check-in/out, done) change after creation."""

    __tablename__ = "activities"

    kind: Mapped[str] = mapped_column(String(16))
    owner_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    lead_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    account_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    contact_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    subject: Mapped[str | None] = mapped_column(String(300))
    notes: Mapped[str | None] = mapped_column(Text)
    occurred_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    planned_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    goal: Mapped[str | None] = mapped_column(Text)
    approach_method: Mapped[str | None] = mapped_column(String(200))
    due_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    completed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    check_in_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    check_in_latitude: Mapped[float | None] = mapped_column(Float)
    check_in_longitude: Mapped[float | None] = mapped_column(Float)
    check_out_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    check_out_latitude: Mapped[float | None] = mapped_column(Float)
    check_out_longitude: Mapped[float | None] = mapped_column(Float)

    __table_args__ = (
        _feed_index("activities"),
        _tenant_fk(["owner_id"], "users"),
        _tenant_fk(["lead_id"], "leads"),
        _tenant_fk(["account_id"], "accounts"),
        _tenant_fk(["contact_id"], "contacts"),
        Index("ix_activities_org_lead", "organization_id", "lead_id"),
        Index("ix_activities_org_account", "organization_id", "account_id"),
        Index("ix_activities_org_owner", "organization_id", "owner_id", "created_at"),
    )


class Objection(TenantMixin, Synced, Versioned, Base):
    """异议: an objection raised on a lead and how the rep handled it."""

    __tablename__ = "objections"

    lead_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    type: Mapped[str] = mapped_column(String(20))
    statement: Mapped[str] = mapped_column(Text)
    handling_method: Mapped[str | None] = mapped_column(String(20))
    response: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="open")
    raised_by_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)

    __table_args__ = (
        _feed_index("objections"),
        _tenant_fk(["lead_id"], "leads"),
        Index("ix_objections_org_lead", "organization_id", "lead_id"),
    )


# ---------------------------------------------------------------- forecasting records


class Quota(TenantMixin, Versioned, Base):
    """What a rep (or a manager, for their team) is expected to win in a period."""

    __tablename__ = "quotas"

    user_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    period_start: Mapped[dt.date] = mapped_column(Date)
    period_end: Mapped[dt.date] = mapped_column(Date)  # exclusive
    amount: Mapped[float] = mapped_column(Money)

    __table_args__ = (
        _tenant_fk(["user_id"], "users"),
        UniqueConstraint("organization_id", "user_id", "period_start", "period_end"),
    )


class ForecastSubmission(TenantMixin, Base):
    """The sales-force composite: a rep's own call for a period (``commit``), or a
    manager's adjustment of a rep's or their team's call (``adjustment``).
    Append-only; the latest submission per person, period and kind counts."""

    __tablename__ = "forecast_submissions"

    user_id: Mapped[uuid.UUID] = mapped_column(Uuid)  # whose forecast it is
    submitted_by_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    kind: Mapped[str] = mapped_column(String(16))
    period_start: Mapped[dt.date] = mapped_column(Date)
    period_end: Mapped[dt.date] = mapped_column(Date)
    commit_amount: Mapped[float] = mapped_column(Money)
    best_case_amount: Mapped[float | None] = mapped_column(Money)
    note: Mapped[str | None] = mapped_column(Text)
    submitted_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        _tenant_fk(["user_id"], "users"),
        _tenant_fk(["submitted_by_id"], "users"),
        Index("ix_forecast_submissions_org_period", "organization_id", "period_start", "user_id"),
    )


class ForecastSnapshot(TenantMixin, Base):
    """A forecast as it was made, kept so its accuracy and each rep's bias can be
    measured once the period is over."""

    __tablename__ = "forecast_snapshots"

    taken_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    as_of: Mapped[dt.date] = mapped_column(Date)
    horizon_days: Mapped[int] = mapped_column(Integer)
    method: Mapped[str] = mapped_column(String(40))
    user_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)  # null: the whole tenant
    revenue: Mapped[float] = mapped_column(Money)
    revenue_p10: Mapped[float | None] = mapped_column(Money)
    revenue_p50: Mapped[float | None] = mapped_column(Money)
    revenue_p90: Mapped[float | None] = mapped_column(Money)
    deals: Mapped[float | None] = mapped_column(Float)
    details: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)

    __table_args__ = (
        _tenant_fk(["user_id"], "users"),
        Index("ix_forecast_snapshots_org_as_of", "organization_id", "as_of", "method"),
    )
