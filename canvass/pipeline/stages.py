"""The stage machine: every rule about how a lead moves through the pipeline.

Pure functions over a ``LeadFacts`` snapshot, so the REST API, the sync layer
(re-evaluating an offline move against the current state) and the importer all
ask the same questions and get the same answers. A refused move raises
``RuleViolation`` naming the rule and what is missing; nothing is applied.

Rules (SPEC §2):
- stages move forward one at a time; ``handle_objections`` may be skipped when no
  objection was raised;
- leaving a stage needs its gate (configurable per organization);
- any open stage may end as ``lost`` (the lead jumps to ``close``); a lead may be
  ``disqualified`` only while in ``prospecting`` or ``qualify``; ``won`` is
  recorded in ``close``; only a ``won`` lead moves on to ``after_sale``;
- a manager (or admin) may reopen a lost lead, back to the stage it was lost in.
"""

from __future__ import annotations

from typing import Any

import msgspec

from canvass.errors import RuleViolation
from canvass.pipeline.config import PipelineConfig
from canvass.pipeline.vocabulary import STAGE_ORDER, LeadStatus, Outcome, Role, Stage

# 需求度, 购买力, 决策权, 信誉度: each scored 0–5 by the rep.
QUALIFICATION_CRITERIA = ("need", "purchasing_power", "decision_authority", "creditworthiness")
CRITERION_MAX = 5


class LeadFacts(msgspec.Struct, kw_only=True, frozen=True):
    """What the rules need to know about a lead, gathered by the service."""

    stage: Stage
    status: LeadStatus
    has_account: bool
    has_primary_contact: bool
    qualification: dict[str, Any]
    completed_visits: int
    quoted_amount: float | None
    objections_raised: int
    open_objections: int
    lost_at_stage: Stage | None = None


def qualification_score(answers: dict[str, Any]) -> int | None:
    """0–100: the four criteria's sum over their maximum. ``None`` while any is unscored."""
    if not answers:
        return None
    scores = [answers.get(name) for name in QUALIFICATION_CRITERIA]
    numeric = [float(s) for s in scores if isinstance(s, int | float) and not isinstance(s, bool)]
    if len(numeric) < len(scores):
        return None
    total = sum(numeric)
    return round(100 * total / (CRITERION_MAX * len(QUALIFICATION_CRITERIA)))


def next_stage(stage: Stage) -> Stage | None:
    i = STAGE_ORDER.index(stage)
    return STAGE_ORDER[i + 1] if i + 1 < len(STAGE_ORDER) else None


def check_gate(
    facts: LeadFacts,
    config: PipelineConfig,
    *,
    role: Role,
    override_reason: str | None = None,
) -> None:
    """Raise unless the lead may leave its current stage."""
    gates = config.gates
    stage = facts.stage
    if stage is Stage.PROSPECTING and gates.prospecting.enabled:
        missing = [
            name
            for name, present in (
                ("account_id", facts.has_account),
                ("primary_contact_id", facts.has_primary_contact),
            )
            if not present
        ]
        if missing:
            raise RuleViolation(
                "gate.prospecting.account_and_contact",
                "A lead leaves prospecting once its account and a contact are identified.",
                missing=missing,
            )
    elif stage is Stage.QUALIFY and gates.qualify.enabled:
        score = qualification_score(facts.qualification)
        threshold = gates.qualify.threshold
        if score is not None and score >= threshold:
            return
        if override_reason and role in (Role.MANAGER, Role.ADMIN):
            return
        missing = [c for c in QUALIFICATION_CRITERIA if not isinstance(facts.qualification.get(c), int | float)]
        standing = (
            f"The lead's qualification is not scored yet; leaving qualify needs a score of {threshold}"
            if score is None
            else f"Qualification score {score} is below the {threshold} that leaving qualify needs"
        )
        raise RuleViolation(
            "gate.qualify.score",
            f"{standing}: score the missing criteria, ask a manager to override with a reason, or disqualify the lead.",
            score=score,
            threshold=threshold,
            missing=missing,
        )
    elif stage is Stage.APPROACH and gates.approach.enabled:
        needed = gates.approach.min_completed_visits
        if facts.completed_visits < needed:
            raise RuleViolation(
                "gate.approach.visit",
                f"Leaving approach needs {needed} completed visit(s) or meeting(s) "
                f"(a visit with check-in, or a completed meeting); found {facts.completed_visits}.",
                missing=["completed_visit"],
                completed_visits=facts.completed_visits,
                required=needed,
            )
    elif stage is Stage.NEGOTIATE and gates.negotiate.enabled:
        if not facts.quoted_amount or facts.quoted_amount <= 0:
            raise RuleViolation(
                "gate.negotiate.quote",
                "Leaving negotiate needs a quote: set the lead's quoted amount.",
                missing=["amount"],
            )
    elif stage is Stage.HANDLE_OBJECTIONS and gates.handle_objections.enabled:
        if facts.open_objections:
            raise RuleViolation(
                "gate.handle_objections.open",
                f"{facts.open_objections} objection(s) still open: resolve them or mark them unresolved.",
                missing=["objection_resolution"],
                open_objections=facts.open_objections,
            )


def _require_open(facts: LeadFacts, action: str) -> None:
    if facts.status is not LeadStatus.OPEN:
        raise RuleViolation(
            "lead.not_open",
            f"Cannot {action}: the lead is {facts.status.value}.",
            lead_status=facts.status.value,
        )


def check_move(
    facts: LeadFacts,
    target: Stage,
    config: PipelineConfig,
    *,
    role: Role,
    override_reason: str | None = None,
) -> None:
    """Raise unless a forward move from the lead's stage to ``target`` is allowed."""
    if target is Stage.AFTER_SALE:
        if facts.stage is not Stage.CLOSE or facts.status is not LeadStatus.WON:
            raise RuleViolation(
                "gate.close.won",
                "Only a won lead in close moves on to after_sale; record the outcome first.",
                missing=["outcome"],
            )
        return
    _require_open(facts, f"move to {target.value}")
    if target is Stage.CLOSE and facts.stage is Stage.NEGOTIATE:
        # handle_objections may be skipped only when no objection was raised.
        if facts.objections_raised:
            raise RuleViolation(
                "stage.skip_objections",
                "handle_objections can be skipped only when no objection was raised; "
                f"this lead has {facts.objections_raised}.",
                objections_raised=facts.objections_raised,
            )
    elif next_stage(facts.stage) is not target:
        expected = next_stage(facts.stage)
        raise RuleViolation(
            "stage.order",
            f"Stages move forward one at a time: from {facts.stage.value} the next stage is "
            f"{expected.value if expected else 'none'}, not {target.value}. "
            "To end a deal early, record the outcome 'lost'.",
            from_stage=facts.stage.value,
            to_stage=target.value,
        )
    check_gate(facts, config, role=role, override_reason=override_reason)


def check_outcome(facts: LeadFacts, outcome: Outcome, *, amount: float | None, reason: str | None) -> None:
    """Raise unless ``outcome`` may be recorded on the lead now."""
    _require_open(facts, f"record the outcome {outcome.value}")
    if outcome is Outcome.WON:
        if facts.stage is not Stage.CLOSE:
            raise RuleViolation(
                "outcome.won_in_close",
                f"A deal is won in the close stage; this lead is in {facts.stage.value}.",
                stage=facts.stage.value,
            )
        if not amount or amount <= 0:
            raise RuleViolation(
                "outcome.won_amount",
                "A won deal needs its amount.",
                missing=["amount"],
            )
    elif outcome is Outcome.LOST:
        if not reason:
            raise RuleViolation("outcome.lost_reason", "A lost deal needs its loss reason.", missing=["loss_reason"])
    elif outcome is Outcome.DISQUALIFIED:
        if facts.stage not in (Stage.PROSPECTING, Stage.QUALIFY):
            raise RuleViolation(
                "outcome.disqualify_stage",
                f"Only leads in prospecting or qualify can be disqualified; this one is in "
                f"{facts.stage.value}. Record it as lost instead.",
                stage=facts.stage.value,
            )
        if not reason:
            raise RuleViolation(
                "outcome.disqualify_reason",
                "Disqualifying a lead needs a reason.",
                missing=["loss_reason"],
            )


def check_reopen(facts: LeadFacts, *, role: Role) -> Stage:
    """Raise unless the lead may be reopened; return the stage it goes back to."""
    if role not in (Role.MANAGER, Role.ADMIN):
        raise RuleViolation("reopen.manager_only", "Only a manager can reopen a lost lead.")
    if facts.status is not LeadStatus.LOST:
        raise RuleViolation("reopen.not_lost", f"Only lost leads can be reopened; this one is {facts.status.value}.")
    return facts.lost_at_stage or Stage.CLOSE
