"""The per-lead stage summary kept on ``leads`` (``entered_<stage>_at``,
``exited_<stage>_at``, ``reached_stage``): what funnel reports need from a lead's
history, maintained as each stage change is written so reports read one row per
lead instead of the whole history. The history (``stage_changes``) stays the
source of truth; migration 0004 rebuilds the summary from it with set-based SQL
that gives the same result as folding the changes through ``apply_change``.

* ``entered_<s>_at``: the first *advancing* change into ``s`` — the creation row,
  or a change that moved the lead to another stage with status open or won after
  it (a lost deal that jumps to ``close`` has not reached ``close``).
* ``exited_<s>_at``: the first change after that which left ``s`` (to another
  stage, whatever the status): the end of the lead's first visit of the stage.
  Later visits are not summarised.
* ``reached_stage``: the furthest stage (index in ``STAGE_ORDER``) an advancing
  change reached.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from canvass.pipeline.vocabulary import STAGE_ORDER, LeadStatus

STAGES: tuple[str, ...] = tuple(stage.value for stage in STAGE_ORDER)
STAGE_INDEX = {stage: i for i, stage in enumerate(STAGES)}
ADVANCING_STATUSES = (LeadStatus.OPEN.value, LeadStatus.WON.value)


def entered_column(stage: str) -> str:
    return f"entered_{stage}_at"


def exited_column(stage: str) -> str:
    return f"exited_{stage}_at"


SUMMARY_COLUMNS: tuple[str, ...] = (
    *(name for stage in STAGES for name in (entered_column(stage), exited_column(stage))),
    "reached_stage",
)


def empty_summary() -> dict[str, Any]:
    return dict.fromkeys(SUMMARY_COLUMNS)


def is_advancing(from_stage: str | None, to_stage: str, status: str) -> bool:
    return status in ADVANCING_STATUSES and (from_stage is None or from_stage != to_stage)


def apply_change(
    get: Callable[[str], Any], from_stage: str | None, to_stage: str, status: str, at: dt.datetime
) -> dict[str, Any]:
    """The summary columns one stage change sets, given the lead's current summary
    (``get``: column name to value). Changes must be applied in time order."""
    updates: dict[str, Any] = {}
    if from_stage is not None and from_stage != to_stage:
        if get(entered_column(from_stage)) is not None and get(exited_column(from_stage)) is None:
            updates[exited_column(from_stage)] = at
    if is_advancing(from_stage, to_stage, status):
        if get(entered_column(to_stage)) is None:
            updates[entered_column(to_stage)] = at
        reached = get("reached_stage")
        if reached is None or STAGE_INDEX[to_stage] > reached:
            updates["reached_stage"] = STAGE_INDEX[to_stage]
    return updates


def apply_to(lead: Any, from_stage: str | None, at: dt.datetime) -> None:
    """Fold the change being recorded into a Lead object (already showing the
    stage and status after the change)."""
    for name, value in apply_change(lambda c: getattr(lead, c), from_stage, lead.stage, lead.status, at).items():
        setattr(lead, name, value)


def summarise(changes: list[tuple[str | None, str, str, dt.datetime]]) -> dict[str, Any]:
    """The summary of a whole history: (from_stage, to_stage, status, at) in time order."""
    summary = empty_summary()
    for from_stage, to_stage, status, at in changes:
        summary.update(apply_change(summary.__getitem__, from_stage, to_stage, status, at))
    return summary
