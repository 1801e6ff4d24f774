"""The synthetic tenant generator: deterministic, realistic rates, well-formed arrays."""

from __future__ import annotations

import numpy as np

from canvass.forecasting.history import OPEN, WON, LeadHistory
from canvass.forecasting.synthetic import TenantProfile, leads_per_day_for, synthetic_tenant

PROFILE = TenantProfile(days=400, leads_per_day=10.0, arrival_trend=0.0, yearly_amplitude=0.0, weekend_factor=1.0)


def _same(a: LeadHistory, b: LeadHistory) -> bool:
    fields = (
        "created",
        "status",
        "closed",
        "amount_lead",
        "amount_day",
        "amount",
        "stage_lead",
        "stage_day",
        "stage_to",
    )
    return all(np.array_equal(getattr(a, f), getattr(b, f)) for f in fields)


def test_same_seed_same_tenant_other_seed_other_tenant() -> None:
    assert _same(synthetic_tenant(PROFILE, seed=3), synthetic_tenant(PROFILE, seed=3))
    assert not _same(synthetic_tenant(PROFILE, seed=3), synthetic_tenant(PROFILE, seed=4))


def test_arrival_and_win_rates_follow_the_profile() -> None:
    h = synthetic_tenant(PROFILE, seed=1)
    assert abs(h.n_leads / 400 - 10.0) < 0.5
    decided = h.status != OPEN
    win_rate = float(np.mean(h.status[decided] == WON))
    assert 0.2 < win_rate < 0.4
    cycle = h.closed[h.status == WON] - h.created[h.status == WON]
    assert 25 < np.median(cycle) < 70


def test_arrays_are_well_formed() -> None:
    h = synthetic_tenant(PROFILE, seed=2)
    end = h.created.min() + 400
    closed = h.closed >= 0
    assert np.all(h.closed[closed] >= h.created[closed]) and np.all(h.closed < end)
    assert np.all(np.diff(h.stage_lead) >= 0)
    same = h.stage_lead[1:] == h.stage_lead[:-1]
    assert np.all(np.diff(h.stage_day)[same] >= 0)
    assert np.all(h.stage_day >= h.created[h.stage_lead]) and np.all(h.stage_day < end)
    assert np.all(h.stage_day[h.stage_start] == h.created)
    won = h.status == WON
    assert np.all(h.won_value()[won] > 0)


def test_rate_for_a_target_size_gives_about_that_many_leads() -> None:
    profile = TenantProfile(days=365)
    rate = leads_per_day_for(50_000, profile)
    h = synthetic_tenant(TenantProfile(days=365, leads_per_day=rate), seed=0)
    assert abs(h.n_leads - 50_000) < 1_500
