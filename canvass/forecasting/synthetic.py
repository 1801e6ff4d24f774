"""Synthetic tenants: seeded, vectorised lead histories for tests, model checks and performance runs.

A real tenant's funnel drifts, has seasons and quarter-end pushes, and in fast
funnels most of a window's wins come from leads that do not exist at the as-of day.
The generator makes all of that explicit and tunable, so the learned model can be
checked on companies other than the Maven sample, and a 1,000,000-lead history can
be built in seconds for performance tests (no Python loop per lead).
"""

from __future__ import annotations

import msgspec
import numpy as np

from canvass.forecasting.history import LOST, OPEN, STAGES, WON, LeadHistory, day_number


class TenantProfile(msgspec.Struct, kw_only=True, frozen=True):
    """How a synthetic company sells. Rates are per calendar day; drifts are per year."""

    start: str = "2020-01-01"
    days: int = 3 * 365
    leads_per_day: float = 20.0
    arrival_trend: float = 0.15  # exponential growth of arrivals per year
    yearly_amplitude: float = 0.15  # seasonal swing of arrivals
    weekend_factor: float = 0.3
    win_rate: float = 0.3
    win_rate_drift: float = -0.04  # absolute change of the win rate per year (cohort drift)
    median_cycle_days: float = 40.0
    cycle_sigma: float = 0.8  # lognormal spread of cycle lengths
    cycle_drift: float = 0.1  # log change of the cycle per year
    quarter_end_push: float = 0.25  # share of wins due within 45 days of a quarter end signed in its last week
    stale_share: float = 0.08  # leads that are never decided
    mean_amount: float = 10_000.0
    amount_sigma: float = 0.9
    amount_drift: float = 0.05
    n_owners: int = 50
    revisits_per_lead: float = 0.0  # Poisson mean of step-back-and-return pairs of extra stage changes


PROFILES: dict[str, TenantProfile] = {
    "steady_smb": TenantProfile(leads_per_day=25, median_cycle_days=20, arrival_trend=0.05, win_rate_drift=0.0),
    "growing_fast_funnel": TenantProfile(
        leads_per_day=15, median_cycle_days=10, cycle_sigma=0.6, arrival_trend=0.5, win_rate=0.25
    ),
    "drifting_enterprise": TenantProfile(
        leads_per_day=4,
        median_cycle_days=75,
        win_rate=0.35,
        win_rate_drift=-0.08,
        cycle_drift=0.25,
        mean_amount=60_000,
        quarter_end_push=0.4,
    ),
    "seasonal_midmarket": TenantProfile(leads_per_day=10, yearly_amplitude=0.4, median_cycle_days=35),
}


def synthetic_tenant(profile: TenantProfile | None = None, seed: int = 0) -> LeadHistory:
    """A tenant's history from ``profile.start`` for ``profile.days`` days; deals not
    decided by the end are open. Deterministic for a given profile and seed."""
    p = profile or TenantProfile()
    rng = np.random.default_rng(seed)
    d0 = day_number(p.start)
    end = d0 + p.days
    day = np.arange(d0, end)
    years = (day - d0) / 365.0
    weekday = (day + 3) % 7  # 1970-01-01 was a Thursday; 5, 6 = Saturday, Sunday
    rate = (
        p.leads_per_day
        * np.exp(p.arrival_trend * years)
        * (1 + p.yearly_amplitude * np.sin(2 * np.pi * (day - d0) / 365.25))
        * np.where(weekday >= 5, p.weekend_factor, 1.0)
    )
    created = np.repeat(day, rng.poisson(rate))
    n = created.size
    age_years = (created - d0) / 365.0

    owner = rng.integers(0, p.n_owners, n).astype(np.int32)
    owner_skill = rng.normal(0, 0.3, p.n_owners)
    amount0 = p.mean_amount * np.exp(
        p.amount_sigma * rng.standard_normal(n) - 0.5 * p.amount_sigma**2 + p.amount_drift * age_years
    )
    base_rate = np.clip(p.win_rate + p.win_rate_drift * age_years, 0.02, 0.95)
    logit = np.log(base_rate / (1 - base_rate)) + owner_skill[owner] - 0.2 * np.log(amount0 / p.mean_amount)
    wins = rng.random(n) < 1 / (1 + np.exp(-logit))
    stale = rng.random(n) < p.stale_share

    cycle = p.median_cycle_days * np.exp(p.cycle_sigma * rng.standard_normal(n) + p.cycle_drift * age_years)
    cycle = np.where(wins, cycle, cycle * 0.7)
    close = created + np.floor(cycle).astype(np.int64)
    # Quarter-end push: some wins due shortly before a quarter end are signed in its last week.
    month = close.astype("datetime64[D]").astype("datetime64[M]").astype(np.int64)
    quarter_end = (((month // 3) + 1) * 3).astype("datetime64[M]").astype("datetime64[D]").astype(np.int64) - 1
    push = wins & (rng.random(n) < p.quarter_end_push) & (quarter_end - close <= 45)
    close = np.where(push, np.maximum(close, quarter_end - rng.integers(0, 7, n)), close)

    decided = ~stale & (close < end)
    status = np.where(decided, np.where(wins, WON, LOST), OPEN).astype(np.int8)
    closed = np.where(decided, close, -1)

    # Stage changes: lead i reaches stage ``reached``; changes are spread over its cycle.
    close_stage = STAGES.index("close")
    reached = np.where(wins & decided, len(STAGES) - 1, rng.integers(0, close_stage, n))
    k = reached + 1
    lead = np.repeat(np.arange(n), k)
    start = np.cumsum(k) - k
    pos = np.arange(lead.size) - start[lead]
    span = np.where(decided, close - created, np.maximum(np.floor(cycle).astype(np.int64), 1))[lead]
    frac = np.where(pos == 0, 0.0, (pos + 0.8 * rng.random(lead.size)) / (k[lead] + 1))
    s_day = created[lead] + np.floor(frac * span).astype(np.int64)
    s_day = np.where(pos >= close_stage, np.where(decided[lead], close[lead], s_day), s_day)
    s_to = pos.copy()
    if p.revisits_per_lead > 0:
        # A lead steps back one stage and returns the next day, after one of its earlier changes.
        visits = rng.poisson(p.revisits_per_lead, n)
        v_lead = np.repeat(np.arange(n), visits)
        base = start[v_lead] + np.floor(rng.random(v_lead.size) * np.maximum(k[v_lead] - 2, 1)).astype(np.int64)
        back_day, back_stage = s_day[base], np.maximum(pos[base] - 1, 0)
        lead = np.concatenate([lead, v_lead, v_lead])
        s_day = np.concatenate([s_day, back_day, back_day + 1])
        s_to = np.concatenate([s_to, back_stage, pos[base]])
        returns_late = decided[lead] & (s_day >= close[lead]) & (s_to < close_stage)
        s_day = np.where(returns_late, close[lead] - 1, s_day)
    seen = (s_day < end) & (s_day >= created[lead])
    lead, s_day, s_to = lead[seen], s_day[seen], s_to[seen].astype(np.int8)

    # Amounts: the estimate at creation, a re-estimate for half the leads, the signed value for wins.
    revise = rng.random(n) < 0.5
    revise_day = created + np.floor(cycle * 0.5).astype(np.int64)
    revise &= (revise_day < end) & (~decided | (revise_day < close))
    amount1 = amount0 * np.exp(0.2 * rng.standard_normal(n))
    won_idx = np.flatnonzero(status == WON)
    last = np.where(revise, amount1, amount0)
    signed = last[won_idx] * rng.uniform(0.85, 1.05, won_idx.size)
    rev_idx = np.flatnonzero(revise)
    return LeadHistory.from_arrays(
        created=created,
        status=status,
        closed=closed,
        amount_lead=np.concatenate([np.arange(n), rev_idx, won_idx]),
        amount_day=np.concatenate([created, revise_day[rev_idx], close[won_idx]]),
        amount=np.concatenate([amount0, amount1[rev_idx], signed]),
        stage_lead=lead,
        stage_day=s_day,
        stage_to=s_to,
        owner=owner,
    )


def leads_per_day_for(n_leads: int, profile: TenantProfile) -> float:
    """The base arrival rate that gives about ``n_leads`` leads over the profile's span."""
    years = np.arange(profile.days) / 365.0
    weekday_mean = (5 + 2 * profile.weekend_factor) / 7
    return float(n_leads / (np.exp(profile.arrival_trend * years).sum() * weekday_mean))
