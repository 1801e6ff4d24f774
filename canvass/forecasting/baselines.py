"""The two familiar baselines every learned forecast must beat.

``weighted_pipeline`` is what a sales manager computes by hand (open amount ×
stage probability, closing on a fixed cycle); ``naive_last_h`` repeats the last
``h`` days. Both share the ``Forecast`` result of every method.
"""

from __future__ import annotations

import msgspec
import numpy as np

from canvass.forecasting.history import STAGES, WON, DateLike, LeadHistory, as_date, day_number

Z90 = 1.2815515655446004  # standard normal 90th percentile

# Defaults match canvass.pipeline.config.DEFAULT_STAGE_PROBABILITIES (a test checks it).
DEFAULT_STAGE_PROBABILITIES: dict[str, float] = {
    "prospecting": 0.05,
    "qualify": 0.10,
    "approach": 0.20,
    "negotiate": 0.40,
    "handle_objections": 0.55,
    "close": 0.75,
    "after_sale": 1.0,
}


class WeightedPipelineConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The organization's stage probabilities and the cycle it plans with."""

    stage_probabilities: dict[str, float] = msgspec.field(default_factory=lambda: dict(DEFAULT_STAGE_PROBABILITIES))
    cycle_days: int = 60
    # Spread of the interval as a lognormal sigma: the baseline has no error model of its own.
    sigma: float = 0.35


class Forecast(msgspec.Struct, kw_only=True):
    """Won revenue and won deals expected with close day in [as_of, as_of + horizon_days)."""

    method: str
    as_of: str
    horizon_days: int
    revenue: float  # point forecast (the mean)
    p10: float
    p50: float
    p90: float
    won_deals: float
    flags: list[str] = msgspec.field(default_factory=list)  # e.g. "cold_start", "fallback_weighted_pipeline"
    notes: list[str] = msgspec.field(default_factory=list)  # human sentences saying why a flag is set


def won_in_window(history: LeadHistory, start: int, end: int) -> tuple[float, int]:
    """Won revenue and won deals with close day in [start, end)."""
    mask = (history.status == WON) & (history.closed >= start) & (history.closed < end)
    if not mask.any():
        return 0.0, 0
    return float(history.won_value()[mask].sum()), int(mask.sum())


def lognormal_quantiles(mean: float, sigma: float) -> tuple[float, float, float]:
    """P10/P50/P90 of a lognormal with the given mean: a shape that never goes negative."""
    if mean <= 0:
        return 0.0, 0.0, 0.0
    median = mean * float(np.exp(-0.5 * sigma * sigma))
    return median * float(np.exp(-Z90 * sigma)), median, median * float(np.exp(Z90 * sigma))


def weighted_pipeline(
    history: LeadHistory, as_of: DateLike, horizon_days: int, config: WeightedPipelineConfig | None = None
) -> Forecast:
    """Open amount × stage probability, for open deals expected to close within the horizon.

    Cycle assumption: a deal is expected to close ``cycle_days`` after creation; a deal
    already past that is assumed to slip and close evenly over the next ``cycle_days``.
    Leads that do not exist yet are not forecast (this is a pipeline, not a funnel).
    """
    cfg = config or WeightedPipelineConfig()
    t = day_number(as_of)
    end = t + horizon_days
    open_ = history.open_at(t)
    probs = np.array([cfg.stage_probabilities.get(s, DEFAULT_STAGE_PROBABILITIES[s]) for s in STAGES])
    stage = history.stage_before(t)[open_]
    amount = history.amount_before(t)[open_]
    due = history.created[open_] + cfg.cycle_days
    cycle = max(cfg.cycle_days, 1)
    share = np.where(due >= t, (due < end).astype(np.float64), min(horizon_days, cycle) / cycle)
    weight = probs[stage] * share
    revenue = float((amount * weight).sum())
    p10, p50, p90 = lognormal_quantiles(revenue, cfg.sigma)
    return Forecast(
        method="weighted_pipeline",
        as_of=as_date(t).isoformat(),
        horizon_days=horizon_days,
        revenue=revenue,
        p10=p10,
        p50=p50,
        p90=p90,
        won_deals=float(weight.sum()),
    )


def naive_last_h(history: LeadHistory, as_of: DateLike, horizon_days: int) -> Forecast:
    """Won revenue in [as_of − h, as_of): the forecast to beat.

    The interval comes from how much consecutive h-day windows have differed in the
    past (log ratio of each window to the one before, six monthly steps back),
    shrunk toward a 0.3 prior while there are few of them.
    """
    t = day_number(as_of)
    h = horizon_days
    revenue, deals = won_in_window(history, t - h, t)
    ratios = []
    for k in range(6):
        end = t - 30 * k
        cur, _ = won_in_window(history, end - h, end)
        prev, _ = won_in_window(history, end - 2 * h, end - h)
        if cur > 0 and prev > 0:
            ratios.append(np.log(cur / prev))
    n = len(ratios)
    var = (float(np.var(ratios)) * n + 3 * 0.3**2) / (n + 3) if n else 0.3**2
    spread = float(np.exp(Z90 * np.sqrt(var)))
    return Forecast(
        method="naive_last_h",
        as_of=as_date(t).isoformat(),
        horizon_days=h,
        revenue=revenue,
        p10=revenue / spread,
        p50=revenue,
        p90=revenue * spread,
        won_deals=float(deals),
    )
