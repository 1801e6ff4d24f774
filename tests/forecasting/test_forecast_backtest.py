"""Backtest scores on hand-made cases, its JSON contract, and that no forecast sees the future."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from canvass.forecasting.backtest import bias, coverage, month_starts, run_backtest, sharpness, wape
from canvass.forecasting.baselines import naive_last_h, weighted_pipeline
from canvass.forecasting.history import LOST, OPEN, WON, LeadHistory, as_date, day_number
from canvass.forecasting.learned import learned_many


def test_wape_and_bias_weigh_errors_by_money() -> None:
    # errors +10 and -30 on actuals 100 and 300
    assert wape([110, 270], [100, 300]) == pytest.approx(40 / 400)
    assert bias([110, 270], [100, 300]) == pytest.approx(-20 / 400)
    assert wape([1.0], [0.0]) is None


def test_coverage_counts_actuals_inside_p10_p90_inclusive() -> None:
    assert coverage([0, 5, 10], [10, 6, 20], [10, 7, 10]) == pytest.approx(2 / 3)


def test_sharpness_is_the_median_relative_width() -> None:
    assert sharpness([80, 50, 0], [100, 100, 100], [120, 200, 100]) == pytest.approx(1.0)


def test_as_of_days_are_month_firsts() -> None:
    days = month_starts(day_number("2017-04-15"), day_number("2017-07-01"))
    assert [as_date(d).isoformat() for d in days] == ["2017-05-01", "2017-06-01", "2017-07-01"]


def test_backtest_has_one_origin_per_method_horizon_and_month_while_the_window_fits(small_tenant: LeadHistory) -> None:
    report = run_backtest(small_tenant, (30, 60, 90), "2021-10-01", "2022-07-01")
    data = report.to_builtins()
    assert data["as_of"][0] == "2021-10-01"
    assert set(data) == {"as_of", "results", "origins"}
    counts = {(r["method"], r["horizon_days"]): r["n"] for r in data["results"]}
    assert counts[("learned", 30)] == 9 and counts[("learned", 60)] == 8 and counts[("learned", 90)] == 7
    assert len(data["origins"]) == 3 * (9 + 8 + 7)
    row = data["origins"][0]
    assert {"method", "horizon_days", "as_of", "actual", "forecast", "p10", "p50", "p90"} <= set(row)


def _rewrite_future(h: LeadHistory, t: int, seed: int) -> LeadHistory:
    """Same past, different future: outcomes, close days, amounts and stages from ``t`` on, plus new leads."""
    rng = np.random.default_rng(seed)
    status, closed = h.status.copy(), h.closed.copy()
    later = (closed >= t) | (status == OPEN)
    later &= h.created < t
    new_status = rng.choice([OPEN, WON, LOST], size=h.n_leads)
    status = np.where(later, new_status, status).astype(np.int8)
    closed = np.where(later & (status != OPEN), t + rng.integers(0, 200, h.n_leads), np.where(later, -1, closed))
    amount = np.where(h.amount_day >= t, h.amount * rng.uniform(0.1, 10, h.amount.size), h.amount)
    stage_to = np.where(h.stage_day >= t, rng.integers(0, 7, h.stage_to.size), h.stage_to)
    extra = 200
    created = np.concatenate([h.created, t + rng.integers(0, 90, extra)])
    return LeadHistory.from_arrays(
        created=created,
        status=np.concatenate([status, np.full(extra, WON, np.int8)]),
        closed=np.concatenate([closed, created[-extra:] + 3]),
        amount_lead=np.concatenate([h.amount_lead, np.arange(h.n_leads, h.n_leads + extra)]),
        amount_day=np.concatenate([h.amount_day, created[-extra:]]),
        amount=np.concatenate([amount, np.full(extra, 1e6)]),
        stage_lead=h.stage_lead,
        stage_day=h.stage_day,
        stage_to=stage_to,
    )


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(month=st.integers(min_value=4, max_value=16), seed=st.integers(min_value=0, max_value=10_000))
def test_no_method_sees_data_dated_on_or_after_the_as_of_day(small_tenant: LeadHistory, month: int, seed: int) -> None:
    t = day_number(np.datetime64("2021-01", "M") + month)
    changed = _rewrite_future(small_tenant, t, seed)
    day = as_date(t)
    before = learned_many(small_tenant, day, [30, 90])
    after = learned_many(changed, day, [30, 90])
    # equal up to float summation order (the rewritten history has more leads)
    assert [f.revenue for f in after] == pytest.approx([f.revenue for f in before], rel=1e-9)
    assert [(f.p10, f.p50, f.p90) for f in after] == [pytest.approx((f.p10, f.p50, f.p90), rel=1e-9) for f in before]
    assert naive_last_h(small_tenant, day, 60) == naive_last_h(changed, day, 60)
    assert weighted_pipeline(small_tenant, day, 60) == weighted_pipeline(changed, day, 60)
