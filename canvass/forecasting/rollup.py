"""The forecast roll-up: per rep and up the team tree.

Pure arithmetic over per-owner aggregates. For each person: what is already won
in the period, the open pipeline expected to close in it by forecast category,
the weighted pipeline (amount × probability), their own call and their manager's
adjustment, quota and attainment. Each team line sums its whole subtree.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections import defaultdict

import msgspec

from canvass.forecasting.queries import OwnerPipeline, Person, TeamNode
from canvass.pipeline.vocabulary import ForecastCategory


class ForecastLine(msgspec.Struct, kw_only=True):
    kind: str  # "rep" (one person's own deals) or "team" (the whole subtree)
    id: uuid.UUID
    name: str
    quota: float | None
    won: float
    won_deals: int
    pipeline: float  # open, expected to close in the period, category pipeline
    best_case: float
    commit: float
    omitted: float
    weighted_pipeline: float
    expected: float  # won + weighted pipeline: the familiar baseline
    call: float | None  # the manager's adjustment if any, else the person's own commit
    call_source: str | None  # "adjustment", "commit", or for teams "sum_of_members"
    attainment: float | None  # won / quota
    stale_pipeline_share: float | None  # share of open amount not updated recently


class ForecastRollup(msgspec.Struct, kw_only=True):
    period_start: dt.date
    period_end: dt.date
    freshness_hours: int
    freshness: str
    # Share of the open pipeline amount in the period that belongs to reps whose
    # devices have not synced for more than `freshness_hours` (their offline
    # edits may be missing); null when no rep in scope has a registered device.
    silent_device_share: float | None = None
    silent_reps: list[uuid.UUID] = msgspec.field(default_factory=list)
    lines: list[ForecastLine]


class _Totals(msgspec.Struct, kw_only=True):
    won: float = 0.0
    won_deals: int = 0
    by_category: dict[str, float] = msgspec.field(default_factory=dict)
    weighted: float = 0.0
    open_amount: float = 0.0
    stale: float = 0.0

    def add(self, other: _Totals) -> None:
        self.won += other.won
        self.won_deals += other.won_deals
        for k, v in other.by_category.items():
            self.by_category[k] = self.by_category.get(k, 0.0) + v
        self.weighted += other.weighted
        self.open_amount += other.open_amount
        self.stale += other.stale


def _line(
    kind: str, id_: uuid.UUID, name: str, t: _Totals, quota: float | None, call: float | None, source: str | None
) -> ForecastLine:
    c = t.by_category
    return ForecastLine(
        kind=kind,
        id=id_,
        name=name,
        quota=quota,
        won=t.won,
        won_deals=t.won_deals,
        pipeline=c.get(ForecastCategory.PIPELINE.value, 0.0),
        best_case=c.get(ForecastCategory.BEST_CASE.value, 0.0),
        commit=c.get(ForecastCategory.COMMIT.value, 0.0),
        omitted=c.get(ForecastCategory.OMITTED.value, 0.0),
        weighted_pipeline=t.weighted,
        expected=t.won + t.weighted,
        call=call,
        call_source=source,
        attainment=t.won / quota if quota else None,
        stale_pipeline_share=t.stale / t.open_amount if t.open_amount else None,
    )


def roll_up(
    *,
    period_start: dt.date,
    period_end: dt.date,
    people: list[Person],
    teams: list[TeamNode],
    open_deals: list[OwnerPipeline],
    won: dict[uuid.UUID, tuple[int, float]],
    quotas: dict[uuid.UUID, float],
    calls: dict[tuple[uuid.UUID, str], float],
    freshness_hours: int,
    silent_owners: set[uuid.UUID] | None = None,
) -> ForecastRollup:
    """``silent_owners``: people whose devices have not synced within the
    freshness window (None: nobody in scope syncs from a device)."""
    totals: dict[uuid.UUID, _Totals] = defaultdict(_Totals)
    for row in open_deals:
        t = totals[row.owner_id]
        t.by_category[row.category] = t.by_category.get(row.category, 0.0) + row.amount
        if row.category != ForecastCategory.OMITTED.value:
            t.weighted += row.weighted
            t.open_amount += row.amount
            t.stale += row.stale_amount
    for owner, (deals, amount) in won.items():
        totals[owner].won_deals += deals
        totals[owner].won += amount

    lines: list[ForecastLine] = []
    person_call: dict[uuid.UUID, float | None] = {}
    for p in sorted(people, key=lambda p: p.name):
        adjustment, commit = calls.get((p.id, "adjustment")), calls.get((p.id, "commit"))
        call, source = (
            (adjustment, "adjustment") if adjustment is not None else (commit, "commit" if commit is not None else None)
        )
        person_call[p.id] = call
        lines.append(_line("rep", p.id, p.name, totals[p.id], quotas.get(p.id), call, source))

    team_path = {t.id: t.path for t in teams}
    for team in teams:
        members = [p for p in people if p.team_id in team_path and team_path[p.team_id].startswith(team.path)]
        subtotal = _Totals()
        for p in members:
            subtotal.add(totals[p.id])
        # A manager's own commit is their call for the whole team they lead.
        manager_call = calls.get((team.manager_id, "commit")) if team.manager_id else None
        member_calls = [person_call[p.id] for p in members if person_call.get(p.id) is not None]
        if manager_call is not None:
            call, source = manager_call, "commit"
        elif member_calls:
            call, source = float(sum(c for c in member_calls if c is not None)), "sum_of_members"
        else:
            call, source = None, None
        quota = quotas.get(team.manager_id) if team.manager_id else None
        lines.append(_line("team", team.id, team.name, subtotal, quota, call, source))

    stale = sum(t.stale for t in totals.values())
    open_amount = sum(t.open_amount for t in totals.values())
    share = stale / open_amount if open_amount else 0.0
    freshness = (
        f"{share:.0%} of the open pipeline amount expected in this period was last updated more than "
        f"{freshness_hours} hours ago."
    )
    silent_share: float | None = None
    silent_reps: list[uuid.UUID] = []
    if silent_owners is not None:
        silent_reps = sorted(p.id for p in people if p.id in silent_owners)
        silent_amount = sum(totals[owner].open_amount for owner in silent_reps)
        silent_share = silent_amount / open_amount if open_amount else 0.0
        freshness += (
            f" {silent_share:.0%} belongs to {len(silent_reps)} rep(s) whose devices have not synced for more than "
            f"{freshness_hours} hours: their offline edits may not be in it yet."
        )
    else:
        freshness += " No rep in scope syncs from a device, so record update age is the only freshness measure."
    return ForecastRollup(
        period_start=period_start,
        period_end=period_end,
        freshness_hours=freshness_hours,
        freshness=freshness,
        silent_device_share=silent_share,
        silent_reps=silent_reps,
        lines=lines,
    )
