"""open leads of a stage by when they entered it (the funnel's stuck leads)

A partial index on ``leads`` (open, not deleted): the funnel report counts and lists
the open leads that entered their stage before its threshold per stage from it
(index-only counts, the first hundred read in order) instead of scanning the tenant.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 04:40:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OPEN = sa.text("status = 'open' AND deleted_at IS NULL")


def upgrade() -> None:
    op.create_index(
        "ix_leads_org_open_stage_entered",
        "leads",
        ["organization_id", "stage", "stage_entered_at", "id"],
        postgresql_where=OPEN,
        sqlite_where=OPEN,
    )


def downgrade() -> None:
    op.drop_index("ix_leads_org_open_stage_entered", table_name="leads")
