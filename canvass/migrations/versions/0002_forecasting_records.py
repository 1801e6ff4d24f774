"""forecasting records: quotas, submissions, snapshots

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24 20:33:29.569481
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import canvass.db

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "forecast_snapshots",
        sa.Column("taken_at", canvass.db.UTCDateTime(), nullable=False),
        sa.Column("as_of", sa.Date(), nullable=False),
        sa.Column("horizon_days", sa.Integer(), nullable=False),
        sa.Column("method", sa.String(length=40), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=True),
        sa.Column("revenue", sa.Numeric(precision=16, scale=2, asdecimal=False), nullable=False),
        sa.Column("revenue_p10", sa.Numeric(precision=16, scale=2, asdecimal=False), nullable=True),
        sa.Column("revenue_p50", sa.Numeric(precision=16, scale=2, asdecimal=False), nullable=True),
        sa.Column("revenue_p90", sa.Numeric(precision=16, scale=2, asdecimal=False), nullable=True),
        sa.Column("deals", sa.Float(), nullable=True),
        sa.Column("details", canvass.db.JSONType, nullable=False),
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.ForeignKeyConstraint(
            ["organization_id", "user_id"],
            ["users.organization_id", "users.id"],
            name=op.f("fk_forecast_snapshots_organization_id_user_id_users"),
        ),
        sa.PrimaryKeyConstraint("organization_id", "id", name=op.f("pk_forecast_snapshots")),
    )
    with op.batch_alter_table("forecast_snapshots", schema=None) as batch_op:
        batch_op.create_index("ix_forecast_snapshots_org_as_of", ["organization_id", "as_of", "method"], unique=False)

    op.create_table(
        "forecast_submissions",
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("submitted_by_id", sa.Uuid(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("period_start", sa.Date(), nullable=False),
        sa.Column("period_end", sa.Date(), nullable=False),
        sa.Column("commit_amount", sa.Numeric(precision=16, scale=2, asdecimal=False), nullable=False),
        sa.Column("best_case_amount", sa.Numeric(precision=16, scale=2, asdecimal=False), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("submitted_at", canvass.db.UTCDateTime(), nullable=False),
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.ForeignKeyConstraint(
            ["organization_id", "submitted_by_id"],
            ["users.organization_id", "users.id"],
            name=op.f("fk_forecast_submissions_organization_id_submitted_by_id_users"),
        ),
        sa.ForeignKeyConstraint(
            ["organization_id", "user_id"],
            ["users.organization_id", "users.id"],
            name=op.f("fk_forecast_submissions_organization_id_user_id_users"),
        ),
        sa.PrimaryKeyConstraint("organization_id", "id", name=op.f("pk_forecast_submissions")),
    )
    with op.batch_alter_table("forecast_submissions", schema=None) as batch_op:
        batch_op.create_index(
            "ix_forecast_submissions_org_period", ["organization_id", "period_start", "user_id"], unique=False
        )

    op.create_table(
        "quotas",
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("period_start", sa.Date(), nullable=False),
        sa.Column("period_end", sa.Date(), nullable=False),
        sa.Column("amount", sa.Numeric(precision=16, scale=2, asdecimal=False), nullable=False),
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("created_at", canvass.db.UTCDateTime(), nullable=False),
        sa.Column("updated_at", canvass.db.UTCDateTime(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["organization_id", "user_id"],
            ["users.organization_id", "users.id"],
            name=op.f("fk_quotas_organization_id_user_id_users"),
        ),
        sa.PrimaryKeyConstraint("organization_id", "id", name=op.f("pk_quotas")),
        sa.UniqueConstraint(
            "organization_id",
            "user_id",
            "period_start",
            "period_end",
            name=op.f("uq_quotas_organization_id_user_id_period_start_period_end"),
        ),
    )


def downgrade() -> None:
    op.drop_table("quotas")
    with op.batch_alter_table("forecast_submissions", schema=None) as batch_op:
        batch_op.drop_index("ix_forecast_submissions_org_period")

    op.drop_table("forecast_submissions")
    with op.batch_alter_table("forecast_snapshots", schema=None) as batch_op:
        batch_op.drop_index("ix_forecast_snapshots_org_as_of")

    op.drop_table("forecast_snapshots")
