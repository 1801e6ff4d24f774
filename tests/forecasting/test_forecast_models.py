"""The three methods: hand-made baselines, interval ordering, cold start and fallback."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from canvass.forecasting.baselines import (
    DEFAULT_STAGE_PROBABILITIES,
    WeightedPipelineConfig,
    naive_last_h,
    weighted_pipeline,
)
from canvass.forecasting.history import OPEN, STAGES, WON, LeadHistory, as_date, day_number
from canvass.forecasting.learned import LearnedConfig, calendar_cell, learned, learned_many
from canvass.pipeline.config import DEFAULT_STAGE_PROBABILITIES as PIPELINE_DEFAULTS


def _hand_made() -> LeadHistory:
    # Two wins in March (100 and 300), one open deal at negotiate (1000) created Mar 1, one at qualify
    # (500) created Jan 1.
    return LeadHistory.from_arrays(
        created=np.array(["2024-02-01", "2024-02-01", "2024-03-01", "2024-01-01"], dtype="datetime64[D]"),
        status=np.array([WON, WON, OPEN, OPEN]),
        closed=np.array(["2024-03-05", "2024-03-25", "NaT", "NaT"], dtype="datetime64[D]"),
        amount_lead=np.arange(4),
        amount_day=np.array(["2024-02-01", "2024-02-01", "2024-03-01", "2024-01-01"], dtype="datetime64[D]"),
        amount=np.array([100.0, 300.0, 1000.0, 500.0]),
        stage_lead=np.array([2, 3]),
        stage_day=np.array(["2024-03-01", "2024-01-01"], dtype="datetime64[D]"),
        stage_to=np.array([STAGES.index("negotiate"), STAGES.index("qualify")]),
    )


def test_stage_probability_defaults_are_the_pipeline_configs() -> None:
    assert {str(k): v for k, v in PIPELINE_DEFAULTS.items()} == DEFAULT_STAGE_PROBABILITIES


def test_naive_repeats_the_last_h_days() -> None:
    f = naive_last_h(_hand_made(), "2024-04-01", 30)
    assert f.revenue == 400.0 and f.won_deals == 2 and f.p10 <= f.p50 == 400.0 <= f.p90
    assert naive_last_h(_hand_made(), "2024-03-20", 10).revenue == 0.0


def test_weighted_pipeline_counts_deals_due_in_the_window_and_spreads_overdue_ones() -> None:
    cfg = WeightedPipelineConfig(cycle_days=60)
    # As of Apr 1: the negotiate deal is due Apr 30 (inside 30 days): 0.4 × 1000;
    # the qualify deal was due Mar 1, overdue: spread over 60 days, half in 30 days: 0.1 × 500 × 0.5.
    f = weighted_pipeline(_hand_made(), "2024-04-01", 30, cfg)
    assert f.revenue == pytest.approx(400 + 25)
    # With 20 days the negotiate deal is not due yet.
    assert weighted_pipeline(_hand_made(), "2024-04-01", 20, cfg).revenue == pytest.approx(500 * 0.1 * 20 / 60)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(offset=st.integers(min_value=0, max_value=500), h=st.sampled_from([7, 30, 60, 90]))
def test_every_method_orders_its_interval(small_tenant: LeadHistory, offset: int, h: int) -> None:
    day = as_date(day_number("2021-01-02") + offset)
    for f in (
        learned(small_tenant, day, h),
        naive_last_h(small_tenant, day, h),
        weighted_pipeline(small_tenant, day, h),
    ):
        assert 0 <= f.p10 <= f.p50 <= f.p90
        assert f.revenue >= 0 and np.isfinite(f.revenue)
        if f.revenue > 0:  # a realistic tenant: the interval is a real range around the forecast
            assert f.p10 < f.p90 and f.p10 <= f.revenue <= f.p90


def test_short_history_is_flagged_cold_start_and_widened(small_tenant: LeadHistory) -> None:
    first_close = int(small_tenant.closed[small_tenant.closed >= 0].min())
    cold = learned(small_tenant, as_date(first_close + 45), 30)
    warm = learned(small_tenant, as_date(first_close + 400), 30)
    assert "cold_start" in cold.flags and "fallback_weighted_pipeline" not in cold.flags
    assert any("quarter" in n for n in cold.notes)
    assert not warm.flags
    assert (cold.p90 - cold.p10) / cold.p50 > (warm.p90 - warm.p10) / warm.p50


def test_almost_no_history_falls_back_to_the_weighted_pipeline_and_says_so(small_tenant: LeadHistory) -> None:
    first_close = int(small_tenant.closed[small_tenant.closed >= 0].min())
    day = as_date(first_close + 20)
    f = learned(small_tenant, day, 60)
    assert f.flags == ["cold_start", "fallback_weighted_pipeline"]
    assert f.revenue == pytest.approx(weighted_pipeline(small_tenant, day, 60).revenue) and f.revenue > 0
    assert f.p90 / f.p10 > 2.5


def test_learned_forecasts_several_horizons_from_one_fit_consistently(small_tenant: LeadHistory) -> None:
    many = learned_many(small_tenant, "2022-03-01", [30, 60, 90])
    assert [f.horizon_days for f in many] == [30, 60, 90]
    assert many[0].revenue < many[1].revenue < many[2].revenue
    assert learned(small_tenant, "2022-03-01", 60).revenue == pytest.approx(many[1].revenue)


def test_calendar_cells_know_quarter_month_and_the_last_three_days() -> None:
    days = np.array([day_number(d) for d in ("2024-01-01", "2024-02-15", "2024-03-25", "2024-03-29", "2024-04-30")])
    assert list(calendar_cell(days)) == [0, 5, 10, 11, 3]


@st.composite
def _random_histories(draw: st.DrawFn) -> LeadHistory:
    """Small arbitrary tenants: any mix of open/won/lost, missing amounts, same-day closes."""
    n = draw(st.integers(min_value=1, max_value=60))
    seed = draw(st.integers(min_value=0, max_value=2**32 - 1))
    rng = np.random.default_rng(seed)
    created = day_number("2023-01-01") + rng.integers(0, 400, n)
    status = rng.choice([OPEN, WON, 2, 3], n).astype(np.int8)
    closed = np.where(status == OPEN, -1, created + rng.integers(0, 120, n))
    with_amount = rng.random(n) < 0.9
    lead = np.flatnonzero(with_amount)
    stage_lead = rng.integers(0, n, 2 * n)
    return LeadHistory.from_arrays(
        created=created,
        status=status,
        closed=closed,
        amount_lead=lead,
        amount_day=created[lead],
        amount=rng.choice([0.0, 10.0, 1_000.0, 50_000.0], lead.size),
        stage_lead=stage_lead,
        stage_day=created[stage_lead] + rng.integers(0, 60, stage_lead.size),
        stage_to=rng.integers(0, len(STAGES), stage_lead.size),
    )


@settings(max_examples=40, deadline=None)
@given(history=_random_histories(), offset=st.integers(min_value=-30, max_value=600))
def test_any_small_history_gives_finite_ordered_forecasts(history: LeadHistory, offset: int) -> None:
    day = as_date(day_number("2023-01-01") + offset)
    eager = LearnedConfig(min_closes=1, min_close_days=1)  # the learned path even on tiny histories
    forecasts = [
        *learned_many(history, day, [7, 30, 90]),
        *learned_many(history, day, [7, 30, 90], eager),
        naive_last_h(history, day, 30),
        weighted_pipeline(history, day, 30),
    ]
    for f in forecasts:
        assert np.isfinite([f.revenue, f.p10, f.p50, f.p90, f.won_deals]).all()
        assert 0 <= f.p10 <= f.p50 <= f.p90
        assert f.revenue >= 0


def test_horizons_must_be_whole_positive_days(small_tenant: LeadHistory) -> None:
    with pytest.raises(ValueError, match="horizons"):
        learned_many(small_tenant, "2022-03-01", [0])
