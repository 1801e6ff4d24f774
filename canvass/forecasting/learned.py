"""The learned funnel forecast: everything from the tenant's own history before the as-of day.

Pieces, and why each is there (see docs/forecasting.md for the evidence):

* **Competing-risks discrete hazard** of winning and of losing per day, by stage and
  age (days since the lead entered the pipeline). An open deal's chance to win
  inside the window follows from its stage and how old it already is, so stale deals
  fade out instead of counting at full probability.
* **Calendar effects**: each hazard is multiplied by a factor for the day's position
  in the quarter (month 1/2/3) and in the month (days 1-10, 11-20, 21+, last three), per age
  bucket. Factors are observed/expected ratios with pseudo-events, shrunk toward a
  pooled factor and that toward flat, so a short history gives a flat calendar.
* **Recency weighting**: the hazard levels and the arrival rate weight recent days
  more (the half-life is picked by the inner backtest): funnels drift.
* **Arrivals**: leads that do not exist yet are forecast at the recency-weighted,
  calendar-adjusted arrival rate and follow the same hazards from age 0. In fast
  funnels most of the window's wins come from them.
* **Self-calibration**: the same model is replayed at monthly inner origins whose
  windows ended before the as-of day; the (shrunk) mean log error rescales the
  forecast and the spread of the errors sets the interval's shared shock.
* **Intervals by simulation**: a shared lognormal shock (the inner backtest's error
  spread, widened in a cold start) times compound deal noise (each deal wins or not,
  arrivals are Poisson). Independent Bernoulli deals alone would cover almost nothing.

All exposure arrays are built once per call as (stage, age bucket, day) tables, so
refitting at an inner origin is a weighted sum over earlier days: O(days), not O(leads).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import msgspec
import numpy as np

from canvass.forecasting.baselines import Forecast, WeightedPipelineConfig, weighted_pipeline
from canvass.forecasting.history import STAGES, WON, DateLike, LeadHistory, as_date, day_number

AGE_EDGES = np.array([0, 7, 14, 30, 60, 90, 120, 180, 365], dtype=np.int64)  # lower bounds; last is open-ended
N_AGE = AGE_EDGES.size
AGE_CAP = int(AGE_EDGES[-1])  # beyond this age the hazard no longer changes with age
N_STAGE = len(STAGES)
N_CAL = 12  # month of quarter (3) × part of month (4)
_AGE_BUCKET = np.searchsorted(AGE_EDGES, np.arange(AGE_CAP + 1), side="right") - 1
_EDGES32 = AGE_EDGES.astype(np.int32)
_UPPER32 = np.append(AGE_EDGES[1:] - 1, 2**30).astype(np.int32)  # last day of each age bucket (last: none)


class LearnedConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Fixed constants of the learned model. None is fitted to a particular tenant."""

    half_life_candidates: tuple[float, ...] = (90.0, 45.0, 180.0)  # recency of levels; inner backtest picks
    amount_half_life_days: float = 90.0  # recency of new-lead amounts and the won/expected amount ratio
    calendar_half_life_days: float = 730.0  # calendar pattern: long memory
    pseudo_events: float = 10.0  # shrinkage strength for rates and calendar factors
    calendar_pseudo_days: float = 30.0  # arrival calendar factors shrink while cells have few days
    inner_origins: int = 9  # latest monthly inner origins that set the calibration factor
    spread_origins: int = 12  # inner origins whose errors set the interval's shock
    calibration_prior_origins: float = 1.0  # weight (in origins) of the prior error spread
    bias_prior_sigma: float = 0.2  # prior spread of the model's log bias that calibration corrects
    prior_sigma: float = 0.2  # prior shared-shock spread (log), before inner errors are seen
    min_shock_sigma: float = 0.05
    max_log_spread: float = 1.0  # log-error spreads are capped here (tiny windows are not lognormal)
    shock_reference_days: int = 30  # longer horizons get at least the shock seen on these windows
    max_season_years: int = 3
    calendar_effects: bool = True  # off only to measure what they are worth (ablation)  # year-over-year arrival seasonality looks back this many years
    cold_start_days: int = 91  # less than one quarter of closes on record: flagged and widened
    cold_start_extra_sigma: float = 0.25
    min_closes: int = 30  # fewer closes on record: fall back to the weighted pipeline
    min_close_days: int = 28
    fallback_sigma: float = 0.6
    simulations: int = 4000
    seed: int = 20170401


def learned(history: LeadHistory, as_of: DateLike, horizon_days: int, config: LearnedConfig | None = None) -> Forecast:
    """The learned forecast for one horizon (see :func:`learned_many` for several)."""
    return learned_many(history, as_of, [horizon_days], config)[0]


def learned_many(
    history: LeadHistory,
    as_of: DateLike,
    horizons: Sequence[int],
    config: LearnedConfig | None = None,
    weighted_config: WeightedPipelineConfig | None = None,
) -> list[Forecast]:
    """Forecasts for several horizons from one fit: won revenue with close day in [as_of, as_of + h)."""
    cfg = config or LearnedConfig()
    if not horizons or min(horizons) < 1:
        raise ValueError("horizons are whole days, at least 1")
    t = day_number(as_of)
    closed = history.closed_before(t)
    n_closes = int(closed.sum())
    first_close = int(history.closed[closed].min()) if n_closes else t
    if n_closes < cfg.min_closes or t - first_close < cfg.min_close_days:
        return [_fallback(history, t, h, n_closes, cfg, weighted_config) for h in horizons]

    h_max = max(horizons)
    table = _ExposureTable.build(history, t, h_max)
    inner = _inner_origins(t, table, h_max, cfg)
    wins = _WinsByDay.of(history)
    states = {o: _OriginState.at(history, table, o, h_max, cfg, wins) for o in {t, *inner}}
    ref = cfg.shock_reference_days
    actuals = {(o, h): wins.won_between(o, o + h) for o in inner for h in {*horizons, ref}}

    # The recency half-life is chosen by the inner backtest: the one with the smallest log errors.
    best: tuple[float, float, dict[int, _Curve]] | None = None
    for half_life in cfg.half_life_candidates:
        curves = {o: _curve(table, states[o], o, h_max, _fit(table, o, half_life, cfg, h_max)) for o in states}
        errs = [e for h in horizons for e, _ in _inner_errors(curves, inner, actuals, t, h, cfg)]
        loss = float(np.mean(np.square(errs))) if errs else 0.0
        if best is None or loss < best[0] - 1e-12:
            best = (loss, half_life, curves)
    assert best is not None
    _, half_life, curves = best

    cold = t - first_close < cfg.cold_start_days
    # A shared shock does not average out over a longer window the way deal noise does: longer
    # horizons get at least the shock seen on the reference (30-day) windows.
    ref_shock2 = 0.0
    if h_max >= ref:
        rev_ref, var_ref, _ = curves[t].window(ref)
        noise_ref = var_ref / (rev_ref * rev_ref) if rev_ref > 0 else 0.0
        ref_shock2 = _error_model(_inner_errors(curves, inner, actuals, t, ref, cfg), noise_ref, cfg)[2]
    results = []
    for h in horizons:
        rev, var, deals = curves[t].window(h)
        now_noise = var / (rev * rev) if rev > 0 else 0.0
        factor, bias_var, shock2, n = _error_model(_inner_errors(curves, inner, actuals, t, h, cfg), now_noise, cfg)
        if h > ref:
            shock2 = max(shock2, ref_shock2)
        sigma2 = shock2 + bias_var
        flags: list[str] = []
        notes: list[str] = [
            f"self-calibration factor {factor:.3f} from {n} inner origins; recency half-life {half_life:g} days"
        ]
        if cold:
            sigma2 += cfg.cold_start_extra_sigma**2
            flags.append("cold_start")
            notes.append(
                f"less than one full quarter of closes on record ({t - first_close} days since the first close);"
                " interval widened"
            )
        mean = rev * factor
        p10, p50, p90 = _simulate(mean, var * factor**2, float(np.sqrt(sigma2)), cfg.simulations, cfg.seed + h)
        results.append(
            Forecast(
                method="learned",
                as_of=as_date(t).isoformat(),
                horizon_days=h,
                revenue=mean,
                p10=p10,
                p50=p50,
                p90=p90,
                won_deals=deals * factor,
                flags=flags,
                notes=notes,
            )
        )
    return results


def _fallback(
    history: LeadHistory,
    t: int,
    h: int,
    n_closes: int,
    cfg: LearnedConfig,
    weighted_config: WeightedPipelineConfig | None,
) -> Forecast:
    wcfg = msgspec.structs.replace(weighted_config or WeightedPipelineConfig(), sigma=cfg.fallback_sigma)
    base = weighted_pipeline(history, as_date(t), h, wcfg)
    return msgspec.structs.replace(
        base,
        method="learned",
        flags=["cold_start", "fallback_weighted_pipeline"],
        notes=[
            f"only {n_closes} closes on record before {as_date(t).isoformat()}: too little history to learn from;"
            " this is the weighted pipeline with a wide interval"
        ],
    )


def _error_model(
    pairs: list[tuple[float, float]], now_noise: float, cfg: LearnedConfig
) -> tuple[float, float, float, int]:
    """From inner (log error, deal-noise CV²) pairs: calibration factor, variance of the calibrated
    bias, shared-shock variance (net of this window's deal noise), and the origins used."""
    errors = np.array([e for e, _ in pairs])
    noise = np.array([c for _, c in pairs])
    # Error spread per origin (deal noise and shocks), from all inner origins, with a prior.
    k0, m = cfg.calibration_prior_origins, errors.size
    dev2 = float(np.sum((errors - errors.mean()) ** 2)) if m else 0.0
    spread2 = (dev2 + k0 * cfg.prior_sigma**2) / (max(m - 1, 0) + k0)
    spread2 = max(spread2, (float(noise.mean()) if m else 0.0) + cfg.min_shock_sigma**2)
    spread2 = min(spread2, cfg.max_log_spread**2)
    # Calibration: the model's bias, a normal mean with prior N(0, bias_prior_sigma²) and the
    # latest origins as evidence, so noisy tenants calibrate less than steady ones.
    recent = errors[: cfg.inner_origins]
    n = recent.size
    precision = n / spread2 + 1 / cfg.bias_prior_sigma**2
    bias_mean, bias_var = float(recent.sum()) / spread2 / precision, 1 / precision
    factor = float(np.clip(np.exp(bias_mean), 0.5, 2.0))
    # The simulation adds this window's deal noise itself; the shared shock gets the rest.
    shock2 = max(spread2 - now_noise, cfg.min_shock_sigma**2)
    return factor, bias_var, shock2, n


def _inner_errors(
    curves: dict[int, _Curve],
    inner: list[int],
    actuals: dict[tuple[int, int], float],
    t: int,
    h: int,
    cfg: LearnedConfig,
) -> list[tuple[float, float]]:
    """(log(actual / forecast), deal-noise CV²) at the latest inner origins whose h-day window ended by t."""
    out = []
    for origin in [o for o in inner if o + h <= t][: cfg.spread_origins]:
        f, var, _ = curves[origin].window(h)
        actual = actuals[(origin, h)]
        if f > 0 and actual > 0:
            # deal-noise CV², capped: a near-empty window's noise says nothing about log errors
            out.append((float(np.log(actual / f)), min(var / (f * f), cfg.max_log_spread**2)))
    return out


def _simulate(mean: float, var: float, sigma: float, n: int, seed: int) -> tuple[float, float, float]:
    """P10/P50/P90 of mean × shared lognormal shock × compound deal noise (gamma with the deals' variance)."""
    if mean <= 0:
        return 0.0, 0.0, 0.0
    rng = np.random.default_rng(seed)
    shock = np.exp(sigma * rng.standard_normal(n) - 0.5 * sigma * sigma)
    cv2 = max(var, 1e-12) / (mean * mean)
    noise = rng.gamma(1.0 / cv2, cv2, n) if cv2 > 1e-9 else np.ones(n)
    q = np.quantile(mean * shock * noise, [0.1, 0.5, 0.9])
    return float(q[0]), float(q[1]), float(q[2])


def calendar_cell(days: np.ndarray) -> np.ndarray:
    """Position of each day in its quarter and month: 4 × month-of-quarter + part of month, where the
    parts are days 1-10, 11-20, 21 to the fourth-last, and the last three (where quarter-end deals land)."""
    d = np.asarray(days, dtype=np.int64).astype("datetime64[D]")
    month = d.astype("datetime64[M]")
    dom = (d - month).astype(np.int64)
    left = ((month + 1).astype("datetime64[D]") - d).astype(np.int64)  # 1 on the last day
    part = np.where(left <= 3, 3, np.minimum(dom // 10, 2))
    return (month.astype(np.int64) % 3) * 4 + part


def _add_months(day: int, months: int) -> int:
    d = as_date(day)
    y, m = divmod(d.year * 12 + d.month - 1 + months, 12)
    last = (dt.date(y + (m + 1) // 12, (m + 1) % 12 + 1, 1) - dt.timedelta(days=1)).day
    return day_number(dt.date(y, m + 1, min(d.day, last)))


def _inner_origins(t: int, table: _ExposureTable, h_max: int, cfg: LearnedConfig) -> list[int]:
    """Monthly origins before ``t`` whose windows end by ``t`` and that had enough closes behind them."""
    out = []
    for m in range(1, max(cfg.inner_origins, cfg.spread_origins) + 1 + h_max // 28):
        origin = _add_months(t, -m)
        if origin - table.first_close < cfg.min_close_days:
            break
        if origin + 28 <= t:
            out.append(origin)
    return out


@dataclass(frozen=True, slots=True)
class _Curve:
    """Expected won revenue, its variance and won deals per future day."""

    revenue: np.ndarray
    open_amount_sq: np.ndarray  # per open group: sum of amount², for the variance
    open_win_path: np.ndarray  # per open group: win probability per day
    new_second_moment: float
    new_expected_wins: np.ndarray
    deals: np.ndarray
    won_ratio: float

    def window(self, h: int) -> tuple[float, float, float]:
        p = self.open_win_path[:, :h].sum(axis=1)
        var_open = float((self.open_amount_sq * p * (1 - p)).sum())
        var_new = float(self.new_expected_wins[:h].sum()) * self.new_second_moment
        var = (var_open + var_new) * self.won_ratio**2
        return float(self.revenue[:h].sum()), var, float(self.deals[:h].sum())


@dataclass(frozen=True, slots=True)
class _ExposureTable:
    """Lead-days at risk, wins and losses per (stage, age bucket, day), plus daily arrivals, before ``t``."""

    d0: int
    t: int
    first_close: int
    at_risk: np.ndarray  # (N_STAGE, N_AGE, days)
    wins: np.ndarray
    losses: np.ndarray
    at_risk_value: np.ndarray  # (N_AGE, days) each lead weighted by its amount, any stage
    wins_value: np.ndarray  # (N_AGE, days)
    arrivals: np.ndarray  # (days,)
    entry_amount: np.ndarray  # (days,) sum of entry amounts of the leads created that day
    entry_amount_sq: np.ndarray
    entry_count: np.ndarray
    calendar: np.ndarray  # (days + horizon room,) calendar cell of day d0 + i

    @classmethod
    def build(cls, history: LeadHistory, t: int, horizon: int) -> _ExposureTable:
        exists = history.created < t
        d0 = int(history.created[exists].min())
        n_days = t - d0
        width = n_days + 1
        closed = history.closed_before(t)
        exit_day = np.where(closed, history.closed, t - 1)
        limit = np.where(closed, history.closed, t)

        # Stage segments known before t; a change on the close day is the close itself, not a stage.
        lead = history.stage_lead
        first = np.ones(lead.size, bool)
        first[1:] = lead[1:] != lead[:-1]
        keep = exists[lead] & ((history.stage_day < limit[lead]) | first)
        seg_lead = lead[keep]
        seg_start = (history.stage_day[keep] - d0).astype(np.int32)
        seg_stage = history.stage_to[keep].astype(np.int32)
        seg_end = (exit_day - d0).astype(np.int32)[seg_lead]
        same = seg_lead[1:] == seg_lead[:-1]
        seg_end[:-1][same] = seg_start[1:][same] - 1
        ok = seg_start <= seg_end
        seg_created = (history.created - d0).astype(np.int32)[seg_lead[ok]]
        at_risk = _interval_counts(seg_created, seg_start[ok], seg_end[ok], seg_stage[ok], N_STAGE, width, None)

        # Each lead also weighs in with its amount (the latest before t or before its close), by age
        # only: the size ratio carries any link between deal size and winning into the revenue forecast.
        value = history.amount_before(limit)
        ex = np.flatnonzero(exists)
        created_rel = (history.created[ex] - d0).astype(np.int32)
        at_risk_value = _interval_counts(
            created_rel, created_rel, (exit_day[ex] - d0).astype(np.int32), None, 1, width, value[ex]
        )[0]

        c_idx = np.flatnonzero(closed)
        c_day = history.closed[c_idx]
        c_stage = history.stage_of(c_idx, c_day)
        c_bucket = _AGE_BUCKET[np.minimum(c_day - history.created[c_idx], AGE_CAP)]
        key = (c_stage * N_AGE + c_bucket) * n_days + (c_day - d0)
        won = history.status[c_idx] == WON
        shape = (N_STAGE, N_AGE, n_days)
        size = N_STAGE * N_AGE * n_days
        wins = np.bincount(key[won], minlength=size).reshape(shape).astype(np.float64)
        losses = np.bincount(key[~won], minlength=size).reshape(shape).astype(np.float64)
        v_key = c_bucket[won] * n_days + (c_day[won] - d0)
        wins_value = np.bincount(v_key, weights=value[c_idx][won], minlength=N_AGE * n_days).reshape(N_AGE, n_days)
        arrivals = np.bincount(history.created[exists] - d0, minlength=n_days).astype(np.float64)
        # The amount a lead enters with (its first record, if on record before t), summed by creation day.
        has = np.flatnonzero(exists & (np.bincount(history.amount_lead, minlength=history.n_leads) > 0))
        first_rec = history.amount_start[has]
        known = history.amount_day[first_rec] < t
        has, first_rec = has[known], first_rec[known]
        entry = history.amount[first_rec]
        entry_day = history.created[has] - d0
        entry_sum = np.bincount(entry_day, weights=entry, minlength=n_days)
        entry_sq = np.bincount(entry_day, weights=entry * entry, minlength=n_days)
        entry_n = np.bincount(entry_day, minlength=n_days).astype(np.float64)
        calendar = calendar_cell(np.arange(d0, t + horizon + 1))
        first_close = int(c_day.min())
        return cls(
            d0,
            t,
            first_close,
            at_risk,
            wins,
            losses,
            at_risk_value,
            wins_value,
            arrivals,
            entry_sum,
            entry_sq,
            entry_n,
            calendar,
        )


def _interval_counts(
    created: np.ndarray,
    start: np.ndarray,
    end: np.ndarray,
    stratum: np.ndarray | None,
    n_strata: int,
    width: int,
    weight: np.ndarray | None,
) -> np.ndarray:
    """(stratum, age bucket, day) count of intervals [start, end] covering each day (days relative
    to the table start; ``created <= start <= end < width - 1``).

    Ages below ``AGE_CAP`` are counted on a (stratum, creation day, age) grid — one difference
    array along each creation day's age axis, two bincounts for all intervals — and the grid is
    then folded into (age bucket, day = creation day + age). Ages from ``AGE_CAP`` on are all in the
    last bucket and are counted by day alone. Linear in the intervals, no per-interval splitting;
    the grid has strata × days × ``AGE_CAP`` cells."""
    cap = AGE_CAP
    # int32 throughout: these arrays have one entry per interval (millions), and every index below
    # is under strata × days × (AGE_CAP + 1).
    strat = np.zeros(start.size, np.int32) if stratum is None else stratum.astype(np.int32, copy=False)
    created = created.astype(np.int32, copy=False)
    s_age = start.astype(np.int32, copy=False) - created
    e_age = end.astype(np.int32, copy=False) - created
    out_width = width + cap
    out = np.zeros(n_strata * N_AGE * out_width)

    # Ages [s_age, min(e_age, cap - 1)] on the grid.
    g = s_age < cap
    stride = cap + 1
    base = (strat[g] * width + created[g]) * stride
    size = n_strata * width * stride
    w = None if weight is None else weight[g]
    diff = np.bincount(base + s_age[g], weights=w, minlength=size)
    base += np.minimum(e_age[g], cap - 1) + 1
    diff -= np.bincount(base, weights=w, minlength=size)
    del base
    grid = np.cumsum(diff.reshape(n_strata, width, stride)[:, :, :cap], axis=2)
    ages = np.arange(cap)
    cell = (np.arange(n_strata)[:, None, None] * N_AGE + _AGE_BUCKET[ages][None, None, :]) * out_width + (
        np.arange(width)[None, :, None] + ages[None, None, :]
    )
    out += np.bincount(cell.ravel(), weights=grid.ravel().astype(np.float64), minlength=out.size)

    # Ages from cap on: the last bucket, by day.
    tail = np.flatnonzero(e_age >= cap)
    t_base = (strat[tail].astype(np.int64) * N_AGE + N_AGE - 1) * out_width
    w = None if weight is None else weight[tail]
    t_start = np.maximum(start[tail].astype(np.int64), created[tail].astype(np.int64) + cap)
    t_diff = np.bincount(t_base + t_start, weights=w, minlength=out.size).astype(np.float64)
    t_diff -= np.bincount(t_base + end[tail].astype(np.int64) + 1, weights=w, minlength=out.size)
    out += np.cumsum(t_diff.reshape(n_strata, N_AGE, out_width), axis=2).ravel()
    return out.reshape(n_strata, N_AGE, out_width)[:, :, : width - 1]


@dataclass(frozen=True, slots=True)
class _Rates:
    win_base: np.ndarray  # (N_STAGE, N_AGE)
    loss_base: np.ndarray
    win_marginal: np.ndarray  # (N_AGE,) any stage: what a new lead follows
    loss_marginal: np.ndarray
    win_calendar: np.ndarray  # (N_AGE, N_CAL)
    loss_calendar: np.ndarray
    arrival_rate: float
    arrival_calendar: np.ndarray  # (N_CAL,)
    arrival_season: np.ndarray  # (h,) year-over-year multiplier per future day
    size_ratio: np.ndarray  # (N_AGE,) mean won amount / mean amount at risk


def _fit(table: _ExposureTable, origin: int, half_life: float, cfg: LearnedConfig, h: int) -> _Rates:
    """Rates from days [first close, origin) only: the table's later days are ignored."""
    lo, hi = table.first_close - table.d0, origin - table.d0
    age_from_end = (hi - 1 - np.arange(lo, hi)).astype(np.float64)
    w_level = 0.5 ** (age_from_end / half_life)
    w_cal = 0.5 ** (age_from_end / cfg.calendar_half_life_days)
    onehot = np.eye(N_CAL)[table.calendar[lo:hi]]  # (days, N_CAL)
    k = cfg.pseudo_events
    x = table.at_risk[:, :, lo:hi]
    x_age = x.sum(axis=0)

    def hazard(events: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        ev = events[:, :, lo:hi]
        ev_age = ev.sum(axis=0)
        obs = (ev_age * w_cal) @ onehot  # (N_AGE, N_CAL)
        expo = (x_age * w_cal) @ onehot
        mean_rate = obs.sum(axis=1) / np.maximum(expo.sum(axis=1), 1e-12)
        expected = expo * mean_rate[:, None]
        pooled = (obs.sum(axis=0) + k) / (expected.sum(axis=0) + k)
        cal = (obs + k * pooled) / (expected + k) if cfg.calendar_effects else np.ones((N_AGE, N_CAL))
        # levels: recent, standardised for the calendar of the days they were seen on
        o_sb = (ev * w_level).sum(axis=2)
        x_sb = ((x * w_level) @ onehot * cal[None, :, :]).sum(axis=2)
        o_b, x_b = o_sb.sum(axis=0), x_sb.sum(axis=0)
        marginal = np.zeros(N_AGE)
        for b in range(N_AGE):  # unseen old ages inherit the previous bucket's rate
            marginal[b] = o_b[b] / x_b[b] if x_b[b] > 0 else (marginal[b - 1] if b else 0.0)
        prior_expo = k / np.maximum(marginal, 1e-9)
        base = (o_sb + k) / (x_sb + prior_expo[None, :])
        base = np.where(x_sb > 0, base, marginal[None, :])
        return base, marginal, cal

    win_base, win_marg, win_cal = hazard(table.wins)
    loss_base, loss_marg, loss_cal = hazard(table.losses)

    # Deal size and winning: per age bucket, the mean amount of wins over the mean amount at risk
    # (long memory, shrunk toward 1 with pseudo-wins of average size). Scales win hazards for revenue.
    won_n = (table.wins[:, :, lo:hi] * w_cal).sum(axis=(0, 2))
    won_v = (table.wins_value[:, lo:hi] * w_cal).sum(axis=1)
    risk_n = (x * w_cal).sum(axis=(0, 2))
    risk_v = (table.at_risk_value[:, lo:hi] * w_cal).sum(axis=1)
    mean_risk = np.where(risk_n > 0, risk_v / np.maximum(risk_n, 1e-12), 0.0)
    size_ratio = np.where(mean_risk > 0, (won_v + k * mean_risk) / np.maximum((won_n + k) * mean_risk, 1e-12), 1.0)
    size_ratio = np.clip(size_ratio, 0.5, 2.0)

    # Arrivals: calendar factors with a long memory, shrunk while cells have few days; level recent.
    a_hi = hi
    a_age = (a_hi - 1 - np.arange(a_hi)).astype(np.float64)
    wa_cal = 0.5 ** (a_age / cfg.calendar_half_life_days)
    wa_level = 0.5 ** (a_age / half_life)
    arr = table.arrivals[:a_hi]
    oh = np.eye(N_CAL)[table.calendar[:a_hi]]
    days_c = wa_cal @ oh
    obs_c = (arr * wa_cal) @ oh
    mean_rate = obs_c.sum() / max(days_c.sum(), 1e-12)
    raw = obs_c / np.maximum(days_c * mean_rate, 1e-12)
    trust = days_c / (days_c + cfg.calendar_pseudo_days)
    arr_cal = np.where(days_c > 0, 1 + (raw - 1) * trust, 1.0) if cfg.calendar_effects else np.ones(N_CAL)
    level = float((arr * wa_level).sum() / max((wa_level * arr_cal[table.calendar[:a_hi]]).sum(), 1e-12))
    season = _arrival_season(arr, table.calendar[:a_hi], arr_cal, wa_level, h, cfg)
    return _Rates(win_base, loss_base, win_marg, loss_marg, win_cal, loss_cal, level, arr_cal, season, size_ratio)


def _arrival_season(
    arr: np.ndarray, cal: np.ndarray, arr_cal: np.ndarray, w_level: np.ndarray, h: int, cfg: LearnedConfig
) -> np.ndarray:
    """Year-over-year arrival multiplier per future day: how last year's next-h days compared with
    last year's recent period (same recency weights), in 30-day blocks, averaged over past years and
    shrunk toward 1 (one year of evidence counts two-thirds). Flat until a whole reference period is on record."""
    hi = arr.size
    logs = []
    for year in range(1, cfg.max_season_years + 1):
        shift = round(365.25 * year)
        if h > shift:  # last year's window would reach past the origin
            break
        ref = np.arange(hi) - shift
        ok = ref >= 0
        if w_level[ok].sum() < 0.8 * w_level.sum():
            break
        ref_level = (w_level[ok] * arr[ref[ok]]).sum() / max((w_level[ok] * arr_cal[cal[ref[ok]]]).sum(), 1e-12)
        days = hi - shift + np.arange(h)
        block = np.arange(h) // 30
        n_block = np.bincount(block, weights=arr[days])
        e_block = np.bincount(block, weights=arr_cal[cal[days]])
        if ref_level <= 0 or np.any(n_block <= 0):
            break
        logs.append(np.log(n_block / e_block / ref_level)[block])
    if not logs:
        return np.ones(h)
    n = len(logs)
    return np.exp(np.clip(np.mean(logs, axis=0) * n / (n + 0.5), np.log(0.5), np.log(2.0)))


def _paths(win: np.ndarray, loss: np.ndarray) -> np.ndarray:
    """Per row, the probability of winning on each day given open at the start (competing risks)."""
    total = win + loss
    scale = np.where(total > 1, 1 / np.maximum(total, 1e-12), 1.0)
    win, total = win * scale, np.minimum(total, 1.0)
    survive = np.cumprod(1 - total, axis=1)
    before = np.ones_like(survive)
    before[:, 1:] = survive[:, :-1]
    return before * win


@dataclass(frozen=True, slots=True)
class _WinsByDay:
    """Won deals summed by close day: the won value, and for wins with an amount on record before
    the close day, that amount and the final value. Every origin reads prefixes of these, so a
    replay costs O(days), not O(leads)."""

    d0: int
    value: np.ndarray  # won value closed on each day
    final: np.ndarray  # of wins with an amount before close: the won value
    before: np.ndarray  # and the amount just before the close day
    priced: np.ndarray  # how many such wins

    @classmethod
    def of(cls, history: LeadHistory) -> _WinsByDay:
        won = np.flatnonzero((history.status == WON) & (history.closed >= 0))
        if won.size == 0:
            empty = np.zeros(1)
            return cls(0, empty, empty, empty, empty)
        final = history.won_value()[won]
        before = history.amount_before(history.closed)[won]
        day = history.closed[won]
        d0 = int(day.min())
        rel = day - d0
        use = before > 0
        n = int(rel.max()) + 1
        return cls(
            d0,
            np.bincount(rel, weights=final, minlength=n),
            np.bincount(rel[use], weights=final[use], minlength=n),
            np.bincount(rel[use], weights=before[use], minlength=n),
            np.bincount(rel[use], minlength=n).astype(np.float64),
        )

    def won_between(self, start: int, end: int) -> float:
        """Won value with close day in [start, end)."""
        return float(self.value[max(start - self.d0, 0) : max(end - self.d0, 0)].sum())

    def won_ratio(self, origin: int, half_life: float, pseudo_events: float) -> float:
        """Final value over the amount just before close, of wins closed before ``origin``: recency
        weighted, shrunk toward 1 by ``pseudo_events`` wins of the mean amount."""
        k = min(max(origin - self.d0, 0), self.final.size)
        w = 0.5 ** ((origin - 1 - (self.d0 + np.arange(k))) / half_life)
        n = float(self.priced[:k].sum())
        pseudo = pseudo_events * max(float(self.before[:k].sum()) / n if n else 1.0, 1e-9)
        return float((w @ self.final[:k] + pseudo) / (w @ self.before[:k] + pseudo))


@dataclass(frozen=True, slots=True)
class _OriginState:
    """What was knowable at an origin, reduced to what the hazards need: open deals grouped by
    (stage, age capped), plus the amount of a typical new lead and the won/expected amount ratio."""

    open_cell: np.ndarray  # (groups, h) flat (stage, age bucket, calendar cell) of each group on each day
    open_bucket: np.ndarray  # (groups, h) the age bucket alone
    new_cell: np.ndarray  # (h, h) flat (age bucket, calendar cell) of a lead created on day i, on day j; -1 before
    count: np.ndarray
    amount: np.ndarray
    amount_sq: np.ndarray
    new_amount: float
    new_second_moment: float
    won_ratio: float

    @classmethod
    def at(
        cls,
        history: LeadHistory,
        table: _ExposureTable,
        origin: int,
        h: int,
        cfg: LearnedConfig,
        wins: _WinsByDay,
    ) -> _OriginState:
        idx = np.flatnonzero(history.open_at(origin))
        amount = history.amount_of(idx, origin)
        stage = history.stage_of(idx, origin)
        age = np.minimum(origin - history.created[idx], AGE_CAP)
        key = stage * (AGE_CAP + 1) + age
        n_groups = N_STAGE * (AGE_CAP + 1)
        count_g = np.bincount(key, minlength=n_groups)
        amount_g = np.bincount(key, weights=amount, minlength=n_groups)
        amount_sq_g = np.bincount(key, weights=amount * amount, minlength=n_groups)
        groups = np.flatnonzero(count_g)

        # A new lead's amount and the won/expected ratio: recent history, the ratio shrunk toward 1.
        hl = cfg.amount_half_life_days
        hi = origin - table.d0
        w = 0.5 ** ((hi - 1 - np.arange(hi)) / hl)
        wsum = max(float(w @ table.entry_count[:hi]), 1e-12)
        won_ratio = wins.won_ratio(origin, hl, cfg.pseudo_events)
        cal = table.calendar[origin - table.d0 : origin - table.d0 + h]
        steps = np.arange(h)
        g_stage, g_age = groups // (AGE_CAP + 1), groups % (AGE_CAP + 1)
        bucket = _AGE_BUCKET[np.minimum(g_age[:, None] + steps[None, :], AGE_CAP)]
        open_cell = (g_stage[:, None] * N_AGE + bucket) * N_CAL + cal[None, :]
        lag = steps[None, :] - steps[:, None]
        new_cell = np.where(lag >= 0, _AGE_BUCKET[np.clip(lag, 0, AGE_CAP)] * N_CAL + cal[None, :], -1)
        return cls(
            open_cell=open_cell,
            open_bucket=bucket,
            new_cell=new_cell,
            count=count_g[groups].astype(np.float64),
            amount=amount_g[groups],
            amount_sq=amount_sq_g[groups],
            new_amount=float(w @ table.entry_amount[:hi]) / wsum,
            new_second_moment=float(w @ table.entry_amount_sq[:hi]) / wsum,
            won_ratio=won_ratio,
        )


def _win_paths(state: _OriginState, rates: _Rates) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Daily win probabilities per open group and per lead created on each day of the window, by
    count and size-weighted (for revenue: the same survival, wins scaled by the age bucket's size
    ratio). One gather per hazard from a (stage, age bucket, calendar cell) table."""
    win = rates.win_base[:, :, None] * rates.win_calendar[None, :, :]
    loss = rates.loss_base[:, :, None] * rates.loss_calendar[None, :, :]
    open_path = _paths(win.ravel()[state.open_cell], loss.ravel()[state.open_cell])
    open_size = rates.size_ratio[state.open_bucket]
    # Leads created on day i of the window follow the any-stage hazards from age 0 (cell -1: not yet created).
    new_win = np.append((rates.win_marginal[:, None] * rates.win_calendar).ravel(), 0.0)
    new_loss = np.append((rates.loss_marginal[:, None] * rates.loss_calendar).ravel(), 0.0)
    new_path = _paths(new_win[state.new_cell], new_loss[state.new_cell])
    new_size = np.append(rates.size_ratio, 1.0)[np.where(state.new_cell >= 0, state.new_cell // N_CAL, N_AGE)]
    return open_path, open_path * open_size, new_path, new_path * new_size


def _curve(table: _ExposureTable, state: _OriginState, origin: int, h: int, rates: _Rates) -> _Curve:
    """Uncalibrated daily forecast from ``origin``: open deals plus leads not yet created.
    Deals use the count hazards; revenue scales wins by deal size."""
    cal = table.calendar[origin - table.d0 : origin - table.d0 + h]
    arrivals = rates.arrival_rate * rates.arrival_calendar[cal] * rates.arrival_season
    open_path, open_value_path, new_path, new_value_path = _win_paths(state, rates)
    new_expected_wins = arrivals @ new_path
    revenue = state.won_ratio * (state.amount @ open_value_path + state.new_amount * (arrivals @ new_value_path))
    return _Curve(
        revenue=revenue,
        open_amount_sq=state.amount_sq,
        open_win_path=open_path,
        new_second_moment=state.new_second_moment,
        new_expected_wins=new_expected_wins,
        deals=state.count @ open_path + new_expected_wins,
        won_ratio=state.won_ratio,
    )
