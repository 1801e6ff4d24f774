"""Funnel report maths: from the aggregates of ``queries`` to the figures a
manager reads. Pure functions over small arrays; no database here."""

from __future__ import annotations

import datetime as dt

import msgspec
import numpy as np

from canvass.forecasting.queries import OpenLead, Outcomes, StageDurations, StageFlow
from canvass.pipeline.vocabulary import STAGE_ORDER, LeadStatus

# A stage needs this many finished visits before "longer than usual" means anything.
MIN_VISITS_FOR_THRESHOLD = 10
STUCK_PERCENTILE = 0.9


class StageFigures(msgspec.Struct, kw_only=True):
    stage: str
    entered: int  # leads that entered the stage in the period
    entered_amount: float
    advanced: int  # of those, how many reached a later stage (for close: won)
    conversion_rate: float | None  # cohort-based: advanced / entered
    visits_ended: int  # stage visits that ended in the period
    days_mean: float | None
    days_median: float | None
    days_p90: float | None


class StuckLead(msgspec.Struct, kw_only=True):
    id: str
    title: str
    owner_id: str
    stage: str
    days_in_stage: float
    threshold_days: float
    amount: float | None


class FunnelReport(msgspec.Struct, kw_only=True):
    period_start: dt.datetime
    period_end: dt.datetime
    stages: list[StageFigures]
    won: int
    won_amount: float
    lost: int
    lost_amount: float
    disqualified: int
    win_rate: float | None  # won / (won + lost), deals decided in the period
    sales_cycle_days_mean: float | None
    sales_cycle_days_median: float | None
    open_pipeline: int
    open_pipeline_amount: float
    quota: float | None
    pipeline_coverage: float | None  # open pipeline amount / quota
    stuck_total: int
    stuck: list[StuckLead]


def histogram_quantile(days: np.ndarray, counts: np.ndarray, q: float) -> float | None:
    """The q-quantile of a whole-day histogram (the day the cumulative share reaches q)."""
    total = int(counts.sum())
    if total == 0:
        return None
    order = np.argsort(days, kind="stable")
    cumulative = np.cumsum(counts[order])
    index = int(np.searchsorted(cumulative, q * total, side="left"))
    return float(days[order][min(index, len(order) - 1)])


def _stage_days(durations: StageDurations, i: int) -> tuple[int, float | None, float | None, float | None]:
    """Visits of stage ``i`` that ended in the period, and their mean, median and p90 days."""
    mine = durations.stage == i
    visits = int(durations.visits[mine].sum())
    return (
        visits,
        float(durations.total_days[mine].sum() / visits) if visits else None,
        histogram_quantile(durations.day[mine], durations.visits[mine], 0.5),
        histogram_quantile(durations.day[mine], durations.visits[mine], STUCK_PERCENTILE),
    )


def stage_figures(flow: StageFlow, durations: StageDurations) -> list[StageFigures]:
    figures = []
    won = np.array([s == LeadStatus.WON.value for s in flow.status], dtype=bool)
    for i, stage in enumerate(STAGE_ORDER):
        in_cohort = (flow.entered_mask & (1 << i)) != 0
        entered = int(flow.leads[in_cohort].sum())
        if stage is STAGE_ORDER[-1]:
            advanced, rate = 0, None
        else:
            # Close is left by winning; every other stage by reaching a later one.
            moved_on = won if stage.value == "close" else flow.furthest_stage > i
            advanced = int(flow.leads[in_cohort & moved_on].sum())
            rate = advanced / entered if entered else None
        visits, mean, median, p90 = _stage_days(durations, i)
        figures.append(
            StageFigures(
                stage=stage.value,
                entered=entered,
                entered_amount=float(flow.amount[in_cohort].sum()),
                advanced=advanced,
                conversion_rate=rate,
                visits_ended=visits,
                days_mean=mean,
                days_median=median,
                days_p90=p90,
            )
        )
    return figures


def stuck_thresholds(durations: StageDurations, now: dt.datetime) -> dict[str, dt.datetime]:
    """For each stage with enough history: leads that entered it before this are stuck
    (longer in it than 90 % of the visits that ended in the period, plus a day)."""
    thresholds = {}
    for i, stage in enumerate(STAGE_ORDER):
        visits, _, _, p90 = _stage_days(durations, i)
        if p90 is not None and visits >= MIN_VISITS_FOR_THRESHOLD and stage.value != "after_sale":
            thresholds[stage.value] = now - dt.timedelta(days=p90 + 1)
    return thresholds


def build_report(
    *,
    period_start: dt.datetime,
    period_end: dt.datetime,
    figures: list[StageFigures],
    decided: Outcomes,
    open_count: int,
    open_amount: float,
    quota: float | None,
    stuck_total: int,
    stuck: list[OpenLead],
    now: dt.datetime,
) -> FunnelReport:
    p90 = {f.stage: f.days_p90 for f in figures}
    closed = decided.won + decided.lost
    return FunnelReport(
        period_start=period_start,
        period_end=period_end,
        stages=figures,
        won=decided.won,
        won_amount=decided.won_amount,
        lost=decided.lost,
        lost_amount=decided.lost_amount,
        disqualified=decided.disqualified,
        win_rate=decided.won / closed if closed else None,
        sales_cycle_days_mean=decided.cycle_total_days / decided.won if decided.won else None,
        sales_cycle_days_median=histogram_quantile(decided.cycle_day, decided.cycle_deals, 0.5),
        open_pipeline=open_count,
        open_pipeline_amount=open_amount,
        quota=quota,
        pipeline_coverage=open_amount / quota if quota else None,
        stuck_total=stuck_total,
        stuck=[
            StuckLead(
                id=str(lead.id),
                title=lead.title,
                owner_id=str(lead.owner_id),
                stage=lead.stage,
                days_in_stage=round((now - lead.stage_entered_at).total_seconds() / 86400, 1),
                threshold_days=float(p90.get(lead.stage) or 0.0),
                amount=lead.amount,
            )
            for lead in stuck
        ],
    )


CSV_COLUMNS = (
    "stage",
    "entered",
    "entered_amount",
    "advanced",
    "conversion_rate",
    "visits_ended",
    "days_mean",
    "days_median",
    "days_p90",
)


def report_csv(report: FunnelReport) -> str:
    """One row per stage, then the period's totals as commented key/value lines."""
    lines = [",".join(CSV_COLUMNS)]
    for f in report.stages:
        values = [getattr(f, c) for c in CSV_COLUMNS]
        lines.append(",".join("" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v)) for v in values))
    for key in ("won", "won_amount", "lost", "lost_amount", "win_rate", "sales_cycle_days_median", "stuck_total"):
        value = getattr(report, key)
        lines.append(f"# {key},{'' if value is None else value}")
    return "\n".join(lines) + "\n"
