"""Replay history to score forecast methods (SPEC §4: "forecast different periods, compare with what happened").

At each as-of day T (the first of each month from ``from_date`` while T + h ≤ ``to_date``)
every method sees only what was knowable at T (``LeadHistory`` enforces it: closes,
amounts, stage changes and leads dated on or after T are invisible) and forecasts won
revenue with close day in [T, T + h). Scores, per method and horizon:

* WAPE = Σ|forecast − actual| / Σ actual — errors weighted by money, not by month;
* bias = Σ(forecast − actual) / Σ actual — the sign says over- or under-forecast;
* coverage of [P10, P90] — should be near 80% if the interval is honest;
* sharpness = median (P90 − P10) / P50 — a wide interval covers trivially.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence

import msgspec
import numpy as np

from canvass.forecasting.baselines import (
    Forecast,
    WeightedPipelineConfig,
    naive_last_h,
    weighted_pipeline,
    won_in_window,
)
from canvass.forecasting.history import DateLike, LeadHistory, as_date, day_number
from canvass.forecasting.learned import LearnedConfig, learned_many

METHODS: tuple[str, ...] = ("learned", "naive_last_h", "weighted_pipeline")


class MethodScore(msgspec.Struct, kw_only=True):
    method: str
    horizon_days: int
    wape: float | None
    bias: float | None
    coverage_p10_p90: float | None
    sharpness: float | None  # median (P90 − P10) / P50
    n: int


class OriginResult(msgspec.Struct, kw_only=True):
    method: str
    horizon_days: int
    as_of: str
    actual: float
    forecast: float
    p10: float
    p50: float
    p90: float
    flags: list[str] = msgspec.field(default_factory=list)


class BacktestReport(msgspec.Struct, kw_only=True):
    """The JSON contract of ``canvass forecast backtest --json``."""

    as_of: list[str]
    results: list[MethodScore]
    origins: list[OriginResult]

    def to_builtins(self) -> dict[str, object]:
        return msgspec.to_builtins(self)


def wape(forecast: Sequence[float], actual: Sequence[float]) -> float | None:
    f, a = np.asarray(forecast, float), np.asarray(actual, float)
    total = float(a.sum())
    return float(np.abs(f - a).sum() / total) if total > 0 else None


def bias(forecast: Sequence[float], actual: Sequence[float]) -> float | None:
    f, a = np.asarray(forecast, float), np.asarray(actual, float)
    total = float(a.sum())
    return float((f - a).sum() / total) if total > 0 else None


def coverage(p10: Sequence[float], p90: Sequence[float], actual: Sequence[float]) -> float | None:
    a = np.asarray(actual, float)
    if a.size == 0:
        return None
    return float(np.mean((np.asarray(p10, float) <= a) & (a <= np.asarray(p90, float))))


def sharpness(p10: Sequence[float], p50: Sequence[float], p90: Sequence[float]) -> float | None:
    mid = np.asarray(p50, float)
    ok = mid > 0
    if not ok.any():
        return None
    return float(np.median((np.asarray(p90, float)[ok] - np.asarray(p10, float)[ok]) / mid[ok]))


def month_starts(start: int, end: int) -> list[int]:
    """Days that are the first of a month, from ``start`` (rounded up to a first) through ``end``."""
    d = as_date(start)
    y, m = (d.year, d.month - 1) if d.day == 1 else divmod(d.year * 12 + d.month, 12)
    out = []
    while (day := day_number(dt.date(y, m + 1, 1))) <= end:
        out.append(day)
        y, m = divmod(y * 12 + m + 1, 12)
    return out


def score(origins: Sequence[OriginResult], method: str, horizon: int, since: DateLike | None = None) -> MethodScore:
    """One results row, optionally over origins on or after ``since`` only."""
    rows = [o for o in origins if o.method == method and o.horizon_days == horizon]
    if since is not None:
        cut = as_date(day_number(since)).isoformat()
        rows = [o for o in rows if o.as_of >= cut]
    a = [o.actual for o in rows]
    f = [o.forecast for o in rows]
    return MethodScore(
        method=method,
        horizon_days=horizon,
        wape=wape(f, a),
        bias=bias(f, a),
        coverage_p10_p90=coverage([o.p10 for o in rows], [o.p90 for o in rows], a),
        sharpness=sharpness([o.p10 for o in rows], [o.p50 for o in rows], [o.p90 for o in rows]),
        n=len(rows),
    )


def run_backtest(
    history: LeadHistory,
    horizons: Sequence[int] = (30, 60, 90),
    from_date: DateLike | None = None,
    to_date: DateLike | None = None,
    methods: Sequence[str] = METHODS,
    learned_config: LearnedConfig | None = None,
    weighted_config: WeightedPipelineConfig | None = None,
) -> BacktestReport:
    """Score ``methods`` at monthly as-of days. Without dates: the whole history
    (from the month after the first lead to the last recorded day + 1)."""
    last = int(max(history.created.max(), history.closed.max())) + 1
    start = day_number(from_date) if from_date is not None else int(history.created.min()) + 1
    end = day_number(to_date) if to_date is not None else last
    h_min = min(horizons)
    as_of = [t for t in month_starts(start, end) if t + h_min <= end]
    runners: dict[str, Callable[[int, list[int]], list[Forecast]]] = {
        "learned": lambda t, hs: learned_many(history, as_date(t), hs, learned_config, weighted_config),
        "naive_last_h": lambda t, hs: [naive_last_h(history, as_date(t), h) for h in hs],
        "weighted_pipeline": lambda t, hs: [weighted_pipeline(history, as_date(t), h, weighted_config) for h in hs],
    }
    origins: list[OriginResult] = []
    for t in as_of:
        hs = [h for h in horizons if t + h <= end]
        actual = {h: won_in_window(history, t, t + h)[0] for h in hs}
        for method in methods:
            for fc in runners[method](t, hs):
                origins.append(
                    OriginResult(
                        method=method,
                        horizon_days=fc.horizon_days,
                        as_of=fc.as_of,
                        actual=actual[fc.horizon_days],
                        forecast=fc.revenue,
                        p10=fc.p10,
                        p50=fc.p50,
                        p90=fc.p90,
                        flags=fc.flags,
                    )
                )
    results = [score(origins, m, h) for m in methods for h in horizons]
    return BacktestReport(as_of=[as_date(t).isoformat() for t in as_of], results=results, origins=origins)
