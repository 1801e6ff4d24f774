"""Initial schema: tenants, people, accounts, contacts, leads and their history.

Revision ID: 0001
Revises:
Create Date: 2026-11-24 20:14:07.612071
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import canvass.db

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "login_directory",
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.PrimaryKeyConstraint("email", name=op.f("pk_login_directory")),
    )
    op.create_table(
        "organizations",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=300), nullable=False),
        sa.Column("slug", sa.String(length=80), nullable=False),
        sa.Column("settings", canvass.db.JSONType, nullable=False),
        sa.Column("created_at", canvass.db.UTCDateTime(), nullable=False),
        sa.Column("updated_at", canvass.db.UTCDateTime(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_organizations")),
        sa.UniqueConstraint("slug", name=op.f("uq_organizations_slug")),
    )
    op.create_table(
        "teams",
        sa.Column("name", sa.String(length=300), nullable=False),
        sa.Column("parent_id", sa.Uuid(), nullable=True),
        sa.Column("manager_id", sa.Uuid(), nullable=True),
        sa.Column("path", sa.String(length=2000), nullable=False),
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("created_at", canvass.db.UTCDateTime(), nullable=False),
        sa.Column("updated_at", canvass.db.UTCDateTime(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["organization_id", "parent_id"],
            ["teams.organization_id", "teams.id"],
            name=op.f("fk_teams_organization_id_parent_id_teams"),
        ),
        sa.PrimaryKeyConstraint("organization_id", "id", name=op.f("pk_teams")),
        sa.UniqueConstraint("organization_id", "name", name=op.f("uq_teams_organization_id_name")),
    )
    with op.batch_alter_table("teams", schema=None) as batch_op:
        batch_op.create_index("ix_teams_org_path", ["organization_id", "path"], unique=False)

    op.create_table(
        "territories",
        sa.Column("name", sa.String(length=300), nullable=False),
        sa.Column("region", sa.String(length=200), nullable=True),
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("created_at", canvass.db.UTCDateTime(), nullable=False),
        sa.Column("updated_at", canvass.db.UTCDateTime(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("organization_id", "id", name=op.f("pk_territories")),
        sa.UniqueConstraint("organization_id", "name", name=op.f("uq_territories_organization_id_name")),
    )
    op.create_table(
        "users",
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("name", sa.String(length=300), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("team_id", sa.Uuid(), nullable=True),
        sa.Column("password_hash", sa.String(length=200), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("created_at", canvass.db.UTCDateTime(), nullable=False),
        sa.Column("updated_at", canvass.db.UTCDateTime(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["organization_id", "team_id"],
            ["teams.organization_id", "teams.id"],
            name=op.f("fk_users_organization_id_team_id_teams"),
        ),
        sa.PrimaryKeyConstraint("organization_id", "id", name=op.f("pk_users")),
        sa.UniqueConstraint("organization_id", "email", name=op.f("uq_users_organization_id_email")),
    )
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.create_index("ix_users_org_team", ["organization_id", "team_id"], unique=False)

    # teams.manager_id and users.team_id refer to each other: the second key is
    # added once both tables exist (batch mode, so SQLite can do it too).
    with op.batch_alter_table("teams", schema=None) as batch_op:
        batch_op.create_foreign_key(
            "fk_teams_manager_users", "users", ["organization_id", "manager_id"], ["organization_id", "id"]
        )

    op.create_table(
        "accounts",
        sa.Column("name", sa.String(length=300), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("b2b_kind", sa.String(length=16), nullable=True),
        sa.Column("industry", sa.String(length=200), nullable=True),
        sa.Column("size", sa.String(length=200), nullable=True),
        sa.Column("region", sa.String(length=200), nullable=True),
        sa.Column("address", sa.Text(), nullable=True),
        sa.Column("latitude", sa.Float(), nullable=True),
        sa.Column("longitude", sa.Float(), nullable=True),
        sa.Column("owner_id", sa.Uuid(), nullable=False),
        sa.Column("territory_id", sa.Uuid(), nullable=True),
        sa.Column("credit_rating", sa.String(length=20), nullable=True),
        sa.Column("credit_limit", sa.Numeric(precision=16, scale=2, asdecimal=False), nullable=True),
        sa.Column("annual_demand", sa.Numeric(precision=16, scale=2, asdecimal=False), nullable=True),
        sa.Column("contact_cycle_days", sa.Integer(), nullable=False),
        sa.Column("lifecycle_stage", sa.String(length=16), nullable=False),
        sa.Column("abc_class", sa.String(length=1), nullable=True),
        sa.Column("tags", canvass.db.JSONType, nullable=False),
        sa.Column("custom_fields", canvass.db.JSONType, nullable=False),
        sa.Column("deleted_at", canvass.db.UTCDateTime(), nullable=True),
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("created_at", canvass.db.UTCDateTime(), nullable=False),
        sa.Column("updated_at", canvass.db.UTCDateTime(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["organization_id", "owner_id"],
            ["users.organization_id", "users.id"],
            name=op.f("fk_accounts_organization_id_owner_id_users"),
        ),
        sa.ForeignKeyConstraint(
            ["organization_id", "territory_id"],
            ["territories.organization_id", "territories.id"],
            name=op.f("fk_accounts_organization_id_territory_id_territories"),
        ),
        sa.PrimaryKeyConstraint("organization_id", "id", name=op.f("pk_accounts")),
    )
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.create_index("ix_accounts_org_name", ["organization_id", "name"], unique=False)
        batch_op.create_index("ix_accounts_org_owner", ["organization_id", "owner_id"], unique=False)
        batch_op.create_index("ix_accounts_org_updated", ["organization_id", "updated_at"], unique=False)

    op.create_table(
        "refresh_tokens",
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", canvass.db.UTCDateTime(), nullable=False),
        sa.Column("expires_at", canvass.db.UTCDateTime(), nullable=False),
        sa.Column("revoked_at", canvass.db.UTCDateTime(), nullable=True),
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.ForeignKeyConstraint(
            ["organization_id", "user_id"],
            ["users.organization_id", "users.id"],
            name=op.f("fk_refresh_tokens_organization_id_user_id_users"),
        ),
        sa.PrimaryKeyConstraint("organization_id", "id", name=op.f("pk_refresh_tokens")),
    )
    op.create_table(
        "user_territories",
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("territory_id", sa.Uuid(), nullable=False),
        sa.ForeignKeyConstraint(
            ["organization_id", "territory_id"],
            ["territories.organization_id", "territories.id"],
            name=op.f("fk_user_territories_organization_id_territory_id_territories"),
        ),
        sa.ForeignKeyConstraint(
            ["organization_id", "user_id"],
            ["users.organization_id", "users.id"],
            name=op.f("fk_user_territories_organization_id_user_id_users"),
        ),
        sa.PrimaryKeyConstraint("organization_id", "user_id", "territory_id", name=op.f("pk_user_territories")),
    )
    op.create_table(
        "contacts",
        sa.Column("account_id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=300), nullable=False),
        sa.Column("title", sa.String(length=200), nullable=True),
        sa.Column("phone", sa.String(length=50), nullable=True),
        sa.Column("email", sa.String(length=320), nullable=True),
        sa.Column("buying_role", sa.String(length=20), nullable=True),
        sa.Column("consent", canvass.db.JSONType, nullable=False),
        sa.Column("birthday", sa.Date(), nullable=True),
        sa.Column("deleted_at", canvass.db.UTCDateTime(), nullable=True),
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("created_at", canvass.db.UTCDateTime(), nullable=False),
        sa.Column("updated_at", canvass.db.UTCDateTime(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["organization_id", "account_id"],
            ["accounts.organization_id", "accounts.id"],
            name=op.f("fk_contacts_organization_id_account_id_accounts"),
        ),
        sa.PrimaryKeyConstraint("organization_id", "id", name=op.f("pk_contacts")),
    )
    with op.batch_alter_table("contacts", schema=None) as batch_op:
        batch_op.create_index("ix_contacts_org_account", ["organization_id", "account_id"], unique=False)

    op.create_table(
        "leads",
        sa.Column("title", sa.String(length=300), nullable=False),
        sa.Column("external_ref", sa.String(length=100), nullable=True),
        sa.Column("account_id", sa.Uuid(), nullable=True),
        sa.Column("primary_contact_id", sa.Uuid(), nullable=True),
        sa.Column("owner_id", sa.Uuid(), nullable=False),
        sa.Column("source_channel", sa.String(length=30), nullable=True),
        sa.Column("product_interest", sa.String(length=200), nullable=True),
        sa.Column("amount", sa.Numeric(precision=16, scale=2, asdecimal=False), nullable=True),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("expected_close_date", sa.Date(), nullable=True),
        sa.Column("stage", sa.String(length=20), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("stage_entered_at", canvass.db.UTCDateTime(), nullable=False),
        sa.Column("forecast_category", sa.String(length=16), nullable=False),
        sa.Column("probability_override", sa.Float(), nullable=True),
        sa.Column("qualification", canvass.db.JSONType, nullable=False),
        sa.Column("qualification_override_reason", sa.Text(), nullable=True),
        sa.Column("visit_plan", canvass.db.JSONType, nullable=False),
        sa.Column("next_step", sa.Text(), nullable=True),
        sa.Column("closing_signals", canvass.db.JSONType, nullable=False),
        sa.Column("closing_method", sa.String(length=30), nullable=True),
        sa.Column("loss_reason", sa.Text(), nullable=True),
        sa.Column("competitor", sa.String(length=200), nullable=True),
        sa.Column("lost_at_stage", sa.String(length=20), nullable=True),
        sa.Column("closed_at", canvass.db.UTCDateTime(), nullable=True),
        sa.Column("deleted_at", canvass.db.UTCDateTime(), nullable=True),
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("created_at", canvass.db.UTCDateTime(), nullable=False),
        sa.Column("updated_at", canvass.db.UTCDateTime(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["organization_id", "account_id"],
            ["accounts.organization_id", "accounts.id"],
            name=op.f("fk_leads_organization_id_account_id_accounts"),
        ),
        sa.ForeignKeyConstraint(
            ["organization_id", "owner_id"],
            ["users.organization_id", "users.id"],
            name=op.f("fk_leads_organization_id_owner_id_users"),
        ),
        sa.ForeignKeyConstraint(
            ["organization_id", "primary_contact_id"],
            ["contacts.organization_id", "contacts.id"],
            name=op.f("fk_leads_organization_id_primary_contact_id_contacts"),
        ),
        sa.PrimaryKeyConstraint("organization_id", "id", name=op.f("pk_leads")),
        sa.UniqueConstraint("organization_id", "external_ref", name=op.f("uq_leads_organization_id_external_ref")),
    )
    with op.batch_alter_table("leads", schema=None) as batch_op:
        batch_op.create_index("ix_leads_org_account", ["organization_id", "account_id"], unique=False)
        batch_op.create_index("ix_leads_org_created", ["organization_id", "created_at", "id"], unique=False)
        batch_op.create_index(
            "ix_leads_org_owner_created", ["organization_id", "owner_id", "created_at", "id"], unique=False
        )
        batch_op.create_index("ix_leads_org_stage_status", ["organization_id", "stage", "status"], unique=False)
        batch_op.create_index("ix_leads_org_updated", ["organization_id", "updated_at", "id"], unique=False)

    op.create_table(
        "activities",
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("owner_id", sa.Uuid(), nullable=False),
        sa.Column("lead_id", sa.Uuid(), nullable=True),
        sa.Column("account_id", sa.Uuid(), nullable=True),
        sa.Column("contact_id", sa.Uuid(), nullable=True),
        sa.Column("subject", sa.String(length=300), nullable=True),
        sa.Column("notes", sa.Text(), nullable=True),
        sa.Column("occurred_at", canvass.db.UTCDateTime(), nullable=True),
        sa.Column("planned_at", canvass.db.UTCDateTime(), nullable=True),
        sa.Column("goal", sa.Text(), nullable=True),
        sa.Column("approach_method", sa.String(length=200), nullable=True),
        sa.Column("due_at", canvass.db.UTCDateTime(), nullable=True),
        sa.Column("completed_at", canvass.db.UTCDateTime(), nullable=True),
        sa.Column("check_in_at", canvass.db.UTCDateTime(), nullable=True),
        sa.Column("check_in_latitude", sa.Float(), nullable=True),
        sa.Column("check_in_longitude", sa.Float(), nullable=True),
        sa.Column("check_out_at", canvass.db.UTCDateTime(), nullable=True),
        sa.Column("check_out_latitude", sa.Float(), nullable=True),
        sa.Column("check_out_longitude", sa.Float(), nullable=True),
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("created_at", canvass.db.UTCDateTime(), nullable=False),
        sa.Column("updated_at", canvass.db.UTCDateTime(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["organization_id", "account_id"],
            ["accounts.organization_id", "accounts.id"],
            name=op.f("fk_activities_organization_id_account_id_accounts"),
        ),
        sa.ForeignKeyConstraint(
            ["organization_id", "contact_id"],
            ["contacts.organization_id", "contacts.id"],
            name=op.f("fk_activities_organization_id_contact_id_contacts"),
        ),
        sa.ForeignKeyConstraint(
            ["organization_id", "lead_id"],
            ["leads.organization_id", "leads.id"],
            name=op.f("fk_activities_organization_id_lead_id_leads"),
        ),
        sa.ForeignKeyConstraint(
            ["organization_id", "owner_id"],
            ["users.organization_id", "users.id"],
            name=op.f("fk_activities_organization_id_owner_id_users"),
        ),
        sa.PrimaryKeyConstraint("organization_id", "id", name=op.f("pk_activities")),
    )
    with op.batch_alter_table("activities", schema=None) as batch_op:
        batch_op.create_index("ix_activities_org_account", ["organization_id", "account_id"], unique=False)
        batch_op.create_index("ix_activities_org_lead", ["organization_id", "lead_id"], unique=False)
        batch_op.create_index("ix_activities_org_owner", ["organization_id", "owner_id", "created_at"], unique=False)

    op.create_table(
        "objections",
        sa.Column("lead_id", sa.Uuid(), nullable=False),
        sa.Column("type", sa.String(length=20), nullable=False),
        sa.Column("statement", sa.Text(), nullable=False),
        sa.Column("handling_method", sa.String(length=20), nullable=True),
        sa.Column("response", sa.Text(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("raised_by_id", sa.Uuid(), nullable=True),
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("created_at", canvass.db.UTCDateTime(), nullable=False),
        sa.Column("updated_at", canvass.db.UTCDateTime(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["organization_id", "lead_id"],
            ["leads.organization_id", "leads.id"],
            name=op.f("fk_objections_organization_id_lead_id_leads"),
        ),
        sa.PrimaryKeyConstraint("organization_id", "id", name=op.f("pk_objections")),
    )
    with op.batch_alter_table("objections", schema=None) as batch_op:
        batch_op.create_index("ix_objections_org_lead", ["organization_id", "lead_id"], unique=False)

    op.create_table(
        "stage_changes",
        sa.Column("lead_id", sa.Uuid(), nullable=False),
        sa.Column("from_stage", sa.String(length=20), nullable=True),
        sa.Column("to_stage", sa.String(length=20), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("amount", sa.Numeric(precision=16, scale=2, asdecimal=False), nullable=True),
        sa.Column("at", canvass.db.UTCDateTime(), nullable=False),
        sa.Column("from_stage_entered_at", canvass.db.UTCDateTime(), nullable=True),
        sa.Column("by_user_id", sa.Uuid(), nullable=True),
        sa.Column("by_device_id", sa.String(length=100), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("imported", sa.Boolean(), nullable=False),
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.ForeignKeyConstraint(
            ["organization_id", "lead_id"],
            ["leads.organization_id", "leads.id"],
            name=op.f("fk_stage_changes_organization_id_lead_id_leads"),
        ),
        sa.PrimaryKeyConstraint("organization_id", "id", name=op.f("pk_stage_changes")),
    )
    with op.batch_alter_table("stage_changes", schema=None) as batch_op:
        batch_op.create_index("ix_stage_changes_org_at", ["organization_id", "at"], unique=False)
        batch_op.create_index("ix_stage_changes_org_lead_at", ["organization_id", "lead_id", "at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("teams", schema=None) as batch_op:
        batch_op.drop_constraint("fk_teams_manager_users", type_="foreignkey")
    with op.batch_alter_table("stage_changes", schema=None) as batch_op:
        batch_op.drop_index("ix_stage_changes_org_lead_at")
        batch_op.drop_index("ix_stage_changes_org_at")

    op.drop_table("stage_changes")
    with op.batch_alter_table("objections", schema=None) as batch_op:
        batch_op.drop_index("ix_objections_org_lead")

    op.drop_table("objections")
    with op.batch_alter_table("activities", schema=None) as batch_op:
        batch_op.drop_index("ix_activities_org_owner")
        batch_op.drop_index("ix_activities_org_lead")
        batch_op.drop_index("ix_activities_org_account")

    op.drop_table("activities")
    with op.batch_alter_table("leads", schema=None) as batch_op:
        batch_op.drop_index("ix_leads_org_updated")
        batch_op.drop_index("ix_leads_org_stage_status")
        batch_op.drop_index("ix_leads_org_owner_created")
        batch_op.drop_index("ix_leads_org_created")
        batch_op.drop_index("ix_leads_org_account")

    op.drop_table("leads")
    with op.batch_alter_table("contacts", schema=None) as batch_op:
        batch_op.drop_index("ix_contacts_org_account")

    op.drop_table("contacts")
    op.drop_table("user_territories")
    op.drop_table("refresh_tokens")
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.drop_index("ix_accounts_org_updated")
        batch_op.drop_index("ix_accounts_org_owner")
        batch_op.drop_index("ix_accounts_org_name")

    op.drop_table("accounts")
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_index("ix_users_org_team")

    op.drop_table("users")
    op.drop_table("territories")
    with op.batch_alter_table("teams", schema=None) as batch_op:
        batch_op.drop_index("ix_teams_org_path")

    op.drop_table("teams")
    op.drop_table("organizations")
    op.drop_table("login_directory")
