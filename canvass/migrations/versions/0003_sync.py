"""offline sync: change feed columns, devices, receipts, conflicts, departures

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 00:40:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import canvass.db

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SYNCED = ("accounts", "contacts", "leads", "stage_changes", "activities", "objections")
FIELD_VERSIONED = ("accounts", "contacts", "leads")


def upgrade() -> None:
    for table in SYNCED:
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("server_version", sa.BigInteger(), nullable=True))
            if table in FIELD_VERSIONED:
                batch.add_column(
                    sa.Column("field_versions", canvass.db.JSONType, nullable=False, server_default=sa.text("'{}'"))
                )
        op.create_index(f"ix_{table}_org_server_version", table, ["organization_id", "server_version", "id"])

    op.create_table(
        "sync_clocks",
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("organization_id", name=op.f("pk_sync_clocks")),
    )
    op.create_table(
        "sync_devices",
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("device_id", sa.String(length=100), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=True),
        sa.Column("platform", sa.String(length=50), nullable=True),
        sa.Column("last_applied_seq", sa.BigInteger(), nullable=False),
        sa.Column("registered_at", canvass.db.UTCDateTime(), nullable=False),
        sa.Column("last_push_at", canvass.db.UTCDateTime(), nullable=True),
        sa.Column("last_pull_at", canvass.db.UTCDateTime(), nullable=True),
        sa.Column("oldest_pending_age_s", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["organization_id", "user_id"],
            ["users.organization_id", "users.id"],
            name=op.f("fk_sync_devices_organization_id_user_id_users"),
        ),
        sa.PrimaryKeyConstraint("organization_id", "device_id", name=op.f("pk_sync_devices")),
    )
    op.create_index("ix_sync_devices_org_user", "sync_devices", ["organization_id", "user_id"])
    op.create_table(
        "sync_receipts",
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("device_id", sa.String(length=100), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("receipt", sa.LargeBinary(), nullable=False),
        sa.Column("applied_at", canvass.db.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["organization_id", "device_id"],
            ["sync_devices.organization_id", "sync_devices.device_id"],
            name=op.f("fk_sync_receipts_organization_id_device_id_sync_devices"),
        ),
        sa.PrimaryKeyConstraint("organization_id", "device_id", "seq", name=op.f("pk_sync_receipts")),
    )
    op.create_table(
        "sync_conflicts",
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("entity", sa.String(length=20), nullable=False),
        sa.Column("record_id", sa.Uuid(), nullable=False),
        sa.Column("owner_id", sa.Uuid(), nullable=False),
        sa.Column("field", sa.String(length=50), nullable=True),
        sa.Column("policy", sa.String(length=20), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("server_value", canvass.db.JSONType, nullable=True),
        sa.Column("device_value", canvass.db.JSONType, nullable=True),
        sa.Column("server_hlc", sa.String(length=130), nullable=True),
        sa.Column("device_hlc", sa.String(length=130), nullable=False),
        sa.Column("device_id", sa.String(length=100), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("pushed_by_id", sa.Uuid(), nullable=False),
        sa.Column("winner", sa.String(length=16), nullable=True),
        sa.Column("resolved_value", canvass.db.JSONType, nullable=True),
        sa.Column("resolved_by_id", sa.Uuid(), nullable=True),
        sa.Column("resolved_at", canvass.db.UTCDateTime(), nullable=True),
        sa.Column("server_version", sa.BigInteger(), nullable=True),
        sa.Column("created_at", canvass.db.UTCDateTime(), nullable=False),
        sa.Column("updated_at", canvass.db.UTCDateTime(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["organization_id", "owner_id"],
            ["users.organization_id", "users.id"],
            name=op.f("fk_sync_conflicts_organization_id_owner_id_users"),
        ),
        sa.PrimaryKeyConstraint("organization_id", "id", name=op.f("pk_sync_conflicts")),
    )
    op.create_index(
        "ix_sync_conflicts_org_server_version", "sync_conflicts", ["organization_id", "server_version", "id"]
    )
    op.create_index("ix_sync_conflicts_org_owner_status", "sync_conflicts", ["organization_id", "owner_id", "status"])
    op.create_index("ix_sync_conflicts_org_record", "sync_conflicts", ["organization_id", "record_id"])
    op.create_table(
        "sync_departures",
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("entity", sa.String(length=20), nullable=False),
        sa.Column("record_id", sa.Uuid(), nullable=False),
        sa.Column("from_owner_id", sa.Uuid(), nullable=False),
        sa.Column("server_version", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("organization_id", "id", name=op.f("pk_sync_departures")),
    )
    op.create_index(
        "ix_sync_departures_org_server_version", "sync_departures", ["organization_id", "server_version", "id"]
    )

    # Records that exist already are published as the tenant's first version, so
    # a device bootstrapping from cursor 0 receives them.
    op.execute("INSERT INTO sync_clocks (organization_id, version) SELECT id, 1 FROM organizations")
    for table in SYNCED:
        op.execute(f"UPDATE {table} SET server_version = 1")


def downgrade() -> None:
    for name in ("sync_departures", "sync_conflicts", "sync_receipts", "sync_devices", "sync_clocks"):
        op.drop_table(name)
    for table in SYNCED:
        op.drop_index(f"ix_{table}_org_server_version", table_name=table)
        with op.batch_alter_table(table) as batch:
            batch.drop_column("server_version")
            if table in FIELD_VERSIONED:
                batch.drop_column("field_versions")
