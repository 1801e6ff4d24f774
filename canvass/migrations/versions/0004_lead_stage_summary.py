"""lead stage summary: entered/exited time of each stage's first visit and the furthest stage reached

Funnel reports read these columns of ``leads`` instead of scanning ``stage_changes``
(see ``canvass.pipeline.stage_summary``); the service keeps them as it writes each
stage change. This migration adds them and fills them from the history with one
set-based statement (the same on SQLite and PostgreSQL).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 04:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import canvass.db

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# STAGE_ORDER as of this revision (frozen here: a migration must not follow later code).
STAGES = ("prospecting", "qualify", "approach", "negotiate", "handle_objections", "close", "after_sale")
COLUMNS = (*(f"{kind}_{stage}_at" for stage in STAGES for kind in ("entered", "exited")), "reached_stage")


def backfill_sql(*, one_tenant: bool = False) -> str:
    """Every lead's summary from its stage changes, in one UPDATE (``one_tenant``: only
    the leads of the organization bound as ``:organization_id``).

    ``entries``: per lead, the first advancing change into each stage (status open or
    won after it, and the stage changed, or the creation row) and the furthest stage
    such a change reached. ``exits``: per lead, the first change that left each stage
    (to another stage, any status) from a visit entered at or after that first entry
    (``from_stage_entered_at``: a lost deal's earlier stay in close, left by a reopen
    at the very instant the deal then advanced into close, is not that visit). Leads
    without stage changes keep NULLs."""
    entered = ",\n".join(f"MIN(CASE WHEN to_stage = '{s}' THEN at END) AS e{i}" for i, s in enumerate(STAGES))
    reached = " ".join(f"WHEN '{s}' THEN {i}" for i, s in enumerate(STAGES))
    exited = ",\n".join(
        f"MIN(CASE WHEN c.from_stage = '{s}' AND COALESCE(c.from_stage_entered_at, c.at) >= e.e{i} THEN c.at END) AS x{i}"
        for i, s in enumerate(STAGES)
    )
    assignments = ",\n".join(
        [f"entered_{s}_at = e.e{i}, exited_{s}_at = x.x{i}" for i, s in enumerate(STAGES)]
        + ["reached_stage = e.reached"]
    )
    tenant = " AND organization_id = :organization_id" if one_tenant else ""
    return f"""
WITH entries AS (
    SELECT organization_id, lead_id,
    {entered},
    MAX(CASE to_stage {reached} END) AS reached
    FROM stage_changes
    WHERE status IN ('open', 'won') AND (from_stage IS NULL OR from_stage <> to_stage){tenant}
    GROUP BY organization_id, lead_id
), exits AS (
    SELECT c.organization_id, c.lead_id,
    {exited}
    FROM stage_changes c
    JOIN entries e ON e.organization_id = c.organization_id AND e.lead_id = c.lead_id
    WHERE c.from_stage IS NOT NULL AND c.from_stage <> c.to_stage
    GROUP BY c.organization_id, c.lead_id
)
UPDATE leads SET
{assignments}
FROM entries e
LEFT JOIN exits x ON x.organization_id = e.organization_id AND x.lead_id = e.lead_id
WHERE leads.organization_id = e.organization_id AND leads.id = e.lead_id
"""


def upgrade() -> None:
    for name in COLUMNS:
        kind = sa.SmallInteger() if name == "reached_stage" else canvass.db.UTCDateTime()
        op.add_column("leads", sa.Column(name, kind, nullable=True))
    op.execute(sa.text(backfill_sql()))


def downgrade() -> None:
    with op.batch_alter_table("leads") as batch:
        for name in reversed(COLUMNS):
            batch.drop_column(name)
