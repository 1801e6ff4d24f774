"""The stage machine on its own: every rule, and a property over random moves."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from canvass.errors import RuleViolation
from canvass.pipeline import stages
from canvass.pipeline.config import PipelineConfig
from canvass.pipeline.vocabulary import STAGE_ORDER, LeadStatus, Outcome, Role, Stage

READY = {"need": 4, "purchasing_power": 4, "decision_authority": 4, "creditworthiness": 4}


def facts(**overrides: Any) -> stages.LeadFacts:
    base: dict[str, Any] = {
        "stage": Stage.PROSPECTING,
        "status": LeadStatus.OPEN,
        "has_account": True,
        "has_primary_contact": True,
        "qualification": READY,
        "completed_visits": 1,
        "quoted_amount": 100.0,
        "objections_raised": 0,
        "open_objections": 0,
    }
    base.update(overrides)
    return stages.LeadFacts(**base)


def refused(rule: str, fn: Any, *args: Any, **kwargs: Any) -> RuleViolation:
    with pytest.raises(RuleViolation) as caught:
        fn(*args, **kwargs)
    assert caught.value.rule == rule
    return caught.value


CONFIG = PipelineConfig()


@pytest.mark.parametrize(
    ("answers", "score"),
    [
        ({}, None),
        ({"need": 5, "purchasing_power": 5, "decision_authority": 5}, None),
        (READY, 80),
        ({"need": 0, "purchasing_power": 0, "decision_authority": 0, "creditworthiness": 0}, 0),
        ({"need": 5, "purchasing_power": 5, "decision_authority": 5, "creditworthiness": 5}, 100),
        ({"need": True, "purchasing_power": 5, "decision_authority": 5, "creditworthiness": 5}, None),
    ],
)
def test_qualification_score(answers: dict[str, Any], score: int | None) -> None:
    assert stages.qualification_score(answers) == score


def test_each_gate_refuses_with_its_rule_and_what_is_missing() -> None:
    error = refused(
        "gate.prospecting.account_and_contact",
        stages.check_move,
        facts(has_primary_contact=False),
        Stage.QUALIFY,
        CONFIG,
        role=Role.REP,
    )
    assert error.extra["missing"] == ["primary_contact_id"]
    low = {**READY, "need": 0, "purchasing_power": 1}
    error = refused(
        "gate.qualify.score",
        stages.check_move,
        facts(stage=Stage.QUALIFY, qualification=low),
        Stage.APPROACH,
        CONFIG,
        role=Role.REP,
    )
    assert error.extra["score"] == 45 and error.extra["threshold"] == 60
    assert error.detail.startswith("Qualification score 45 is below the 60 that leaving qualify needs")
    refused(
        "gate.approach.visit",
        stages.check_move,
        facts(stage=Stage.APPROACH, completed_visits=0),
        Stage.NEGOTIATE,
        CONFIG,
        role=Role.REP,
    )
    refused(
        "gate.negotiate.quote",
        stages.check_move,
        facts(stage=Stage.NEGOTIATE, quoted_amount=None),
        Stage.HANDLE_OBJECTIONS,
        CONFIG,
        role=Role.REP,
    )
    refused(
        "gate.handle_objections.open",
        stages.check_move,
        facts(stage=Stage.HANDLE_OBJECTIONS, objections_raised=2, open_objections=1),
        Stage.CLOSE,
        CONFIG,
        role=Role.REP,
    )
    refused("gate.close.won", stages.check_move, facts(stage=Stage.CLOSE), Stage.AFTER_SALE, CONFIG, role=Role.REP)


def test_a_manager_may_override_the_qualification_gate_with_a_reason() -> None:
    unscored = facts(stage=Stage.QUALIFY, qualification={})
    stages.check_move(unscored, Stage.APPROACH, CONFIG, role=Role.MANAGER, override_reason="strategic account")
    refused(
        "gate.qualify.score",
        stages.check_move,
        unscored,
        Stage.APPROACH,
        CONFIG,
        role=Role.REP,
        override_reason="please",
    )
    error = refused("gate.qualify.score", stages.check_move, unscored, Stage.APPROACH, CONFIG, role=Role.MANAGER)
    # Nothing scored is said as such, not as a score below the threshold.
    assert error.detail.startswith("The lead's qualification is not scored yet; leaving qualify needs a score of 60")


def test_disabled_gates_and_thresholds_come_from_the_organization() -> None:
    lenient = PipelineConfig()
    lenient.gates.approach.enabled = False
    stages.check_move(facts(stage=Stage.APPROACH, completed_visits=0), Stage.NEGOTIATE, lenient, role=Role.REP)
    strict = PipelineConfig()
    strict.gates.qualify.threshold = 90
    refused("gate.qualify.score", stages.check_move, facts(stage=Stage.QUALIFY), Stage.APPROACH, strict, role=Role.REP)


def test_objections_may_be_skipped_only_when_none_was_raised() -> None:
    stages.check_move(facts(stage=Stage.NEGOTIATE), Stage.CLOSE, CONFIG, role=Role.REP)
    refused(
        "stage.skip_objections",
        stages.check_move,
        facts(stage=Stage.NEGOTIATE, objections_raised=1),
        Stage.CLOSE,
        CONFIG,
        role=Role.REP,
    )


def test_outcomes() -> None:
    refused(
        "outcome.won_in_close", stages.check_outcome, facts(stage=Stage.NEGOTIATE), Outcome.WON, amount=10, reason=None
    )
    refused("outcome.won_amount", stages.check_outcome, facts(stage=Stage.CLOSE), Outcome.WON, amount=None, reason=None)
    refused(
        "outcome.lost_reason", stages.check_outcome, facts(stage=Stage.APPROACH), Outcome.LOST, amount=None, reason=None
    )
    stages.check_outcome(facts(stage=Stage.APPROACH), Outcome.LOST, amount=None, reason="price")
    refused(
        "outcome.disqualify_stage",
        stages.check_outcome,
        facts(stage=Stage.APPROACH),
        Outcome.DISQUALIFIED,
        amount=None,
        reason="x",
    )
    stages.check_outcome(facts(stage=Stage.QUALIFY), Outcome.DISQUALIFIED, amount=None, reason="no need")
    refused("lead.not_open", stages.check_outcome, facts(status=LeadStatus.LOST), Outcome.LOST, amount=None, reason="x")


def test_reopen_is_for_managers_and_goes_back_to_where_it_was_lost() -> None:
    lost = facts(stage=Stage.CLOSE, status=LeadStatus.LOST, lost_at_stage=Stage.NEGOTIATE)
    assert stages.check_reopen(lost, role=Role.MANAGER) is Stage.NEGOTIATE
    refused("reopen.manager_only", stages.check_reopen, lost, role=Role.REP)
    refused("reopen.not_lost", stages.check_reopen, facts(), role=Role.ADMIN)


@given(
    current=st.sampled_from(STAGE_ORDER),
    target=st.sampled_from(STAGE_ORDER),
    objections=st.integers(min_value=0, max_value=2),
)
def test_only_next_stage_moves_or_the_objection_skip_are_accepted(
    current: Stage, target: Stage, objections: int
) -> None:
    """With every gate satisfied, the order rule alone decides."""
    status = LeadStatus.WON if current is Stage.CLOSE and target is Stage.AFTER_SALE else LeadStatus.OPEN
    f = facts(stage=current, status=status, objections_raised=objections)
    i, j = STAGE_ORDER.index(current), STAGE_ORDER.index(target)
    allowed = j == i + 1 or (current is Stage.NEGOTIATE and target is Stage.CLOSE and objections == 0)
    try:
        stages.check_move(f, target, CONFIG, role=Role.ADMIN)
        accepted = True
    except RuleViolation:
        accepted = False
    assert accepted == allowed


@given(
    moves=st.lists(
        st.tuples(st.sampled_from(STAGE_ORDER), st.sampled_from(["move", "lose", "win", "reopen"])), max_size=40
    )
)
def test_random_sequences_never_go_backwards_except_by_reopen(moves: list[tuple[Stage, str]]) -> None:
    """Apply whatever the machine accepts; the stage only ever advances, except
    that a reopen returns a lost lead to exactly the stage it was lost in."""
    stage, status, lost_at = Stage.PROSPECTING, LeadStatus.OPEN, None
    for target, action in moves:
        f = facts(stage=stage, status=status, lost_at_stage=lost_at)
        try:
            if action == "move":
                stages.check_move(f, target, CONFIG, role=Role.MANAGER)
                assert STAGE_ORDER.index(target) > STAGE_ORDER.index(stage)
                stage = target
            elif action == "lose":
                stages.check_outcome(f, Outcome.LOST, amount=None, reason="r")
                lost_at, stage, status = stage, Stage.CLOSE, LeadStatus.LOST
            elif action == "win":
                stages.check_outcome(f, Outcome.WON, amount=5.0, reason=None)
                status = LeadStatus.WON
            else:
                back = stages.check_reopen(f, role=Role.MANAGER)
                assert status is LeadStatus.LOST and back is lost_at
                stage, status, lost_at = back, LeadStatus.OPEN, None
        except RuleViolation:
            pass
        if status is LeadStatus.WON:
            assert stage in (Stage.CLOSE, Stage.AFTER_SALE)
