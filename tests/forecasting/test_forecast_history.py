"""The input arrays: normalisation and what is knowable at an as-of day."""

from __future__ import annotations

import numpy as np
import pytest

from canvass.forecasting.history import LOST, OPEN, STAGES, WON, LeadHistory, day_number


def _three_leads() -> LeadHistory:
    # lead 0: created Jan 1, amount 100 then 120 on Jan 10, won Jan 20 at 150
    # lead 1: created Jan 5, no stage change given, lost Jan 15
    # lead 2: created Jan 8, open, negotiate from Jan 12
    d = np.array(["2024-01-01", "2024-01-05", "2024-01-08"], dtype="datetime64[D]")
    return LeadHistory.from_arrays(
        created=d,
        status=np.array([WON, LOST, OPEN]),
        closed=np.array(["2024-01-20", "2024-01-15", "NaT"], dtype="datetime64[D]"),
        amount_lead=np.array([0, 2, 0, 1, 0]),
        amount_day=np.array(
            ["2024-01-20", "2024-01-08", "2024-01-10", "2024-01-05", "2024-01-01"], dtype="datetime64[D]"
        ),
        amount=np.array([150.0, 70.0, 120.0, 50.0, 100.0]),
        stage_lead=np.array([2, 0, 2]),
        stage_day=np.array(["2024-01-12", "2024-01-01", "2024-01-08"], dtype="datetime64[D]"),
        stage_to=np.array([STAGES.index("negotiate"), STAGES.index("qualify"), STAGES.index("qualify")]),
    )


def test_records_are_sorted_and_every_lead_starts_with_a_stage_on_its_creation_day() -> None:
    h = _three_leads()
    assert list(h.amount_lead) == [0, 0, 0, 1, 2]
    assert list(h.stage_lead) == [0, 1, 2, 2]
    assert h.stage_day[1] == h.created[1] and h.stage_to[1] == STAGES.index("prospecting")


def test_amount_known_at_a_day_is_the_latest_recorded_strictly_before_it() -> None:
    h = _three_leads()
    assert list(h.amount_before(day_number("2024-01-10"))) == [100.0, 50.0, 70.0]
    assert list(h.amount_before(day_number("2024-01-11"))) == [120.0, 50.0, 70.0]
    assert list(h.amount_before(day_number("2024-01-01"))) == [0.0, 0.0, 0.0]
    assert list(h.won_value()) == [150.0, 50.0, 70.0]


def test_a_lead_closed_on_or_after_the_as_of_day_is_open_then() -> None:
    h = _three_leads()
    t = day_number("2024-01-15")
    assert list(h.open_at(t)) == [True, True, True]
    assert list(h.open_at(t + 1)) == [True, False, True]
    assert list(h.open_at(day_number("2024-01-05"))) == [True, False, False]


def test_stage_before_a_day_ignores_later_changes() -> None:
    h = _three_leads()
    assert list(h.stage_before(day_number("2024-01-12"))) == [1, 0, 1]
    assert list(h.stage_before(day_number("2024-01-13"))) == [1, 0, STAGES.index("negotiate")]


def test_a_closed_lead_needs_a_close_day_not_before_creation() -> None:
    with pytest.raises(ValueError, match="close day"):
        LeadHistory.from_arrays(
            created=np.array([10]),
            status=np.array([WON]),
            closed=np.array([-1]),
            amount_lead=np.array([0]),
            amount_day=np.array([10]),
            amount=np.array([1.0]),
        )
    with pytest.raises(ValueError, match="before it was created"):
        LeadHistory.from_arrays(
            created=np.array([10]),
            status=np.array([LOST]),
            closed=np.array([5]),
            amount_lead=np.array([0]),
            amount_day=np.array([10]),
            amount=np.array([1.0]),
        )
