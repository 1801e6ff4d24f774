"""Funnel reports and forecasts at scale (issue 6's performance bar).

Builds a synthetic tenant — by default 1,000,000 leads with about 5,000,000 stage
changes over the three years up to today — bulk-loads it (PostgreSQL: COPY;
SQLite: executemany in large transactions), runs ANALYZE, serves it with
`canvass serve --workers 2` and measures over HTTP on 127.0.0.1:

* the funnel report for the last year across the whole tenant (admin);
* the learned revenue forecast for the next quarter (h = 90 days, with its
  simulation) over the whole tenant (admin), and the default 30/60/90 days;
* a single rep's funnel for the last year (the rep's own login; the median rep
  and the rep with the most leads), and the same through an admin's owner cut;
* the peak resident memory (VmHWM) of every server process.

The tenant: a team tree (root → regions → teams of ten reps, a manager per
node), territories and accounts; leads arrive with a yearly trend, a season and
fewer on weekends; each stage is left for the next with a fixed probability, by
loss or disqualification, or not at all (stale); days in stage are lognormal;
wins depend on the rep and the deal size, some are pushed to quarter ends;
amounts are re-estimated in negotiation and signed at a discount. Every row is
what the service itself would have written (composite foreign keys, the lead's
stage/status/stage_entered_at/closed_at agreeing with its last history rows,
``from_stage_entered_at`` the moment the lead entered ``from_stage``).

    python bench/forecast_scale.py --db postgresql --leads 50000      # a quick try
    python bench/forecast_scale.py --db postgresql --db sqlite         # 1,000,000 leads
    python bench/forecast_scale.py --db postgresql --keep              # keep the database (prints its URL)
    python bench/forecast_scale.py --url postgresql://...              # measure an already loaded one

Results: a table on stdout and bench/results/forecast_scale_<db>.json. Every
HTTP call has a timeout; the server is always stopped and the database dropped
(unless --keep).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import datetime as dt
import io
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from http_bench import PASSWORD, PG_ADMIN, ROOT, _pg, free_port, http_json, machine, wait_until_up

from canvass.db import create_engine, session_factory
from canvass.pipeline.schemas import TeamCreate, TerritoryCreate, UserCreate
from canvass.pipeline.scope import Actor
from canvass.pipeline.services import people
from canvass.pipeline.vocabulary import Role, SourceChannel
from canvass.settings import to_async_url

BARS_S = {"funnel_year_tenant": 2.0, "forecast_next_quarter": 3.0, "funnel_rep": 0.1}
MEMORY_BAR_MIB = 1024
ADMIN = "admin@scale.example"

# The funnel: probability of moving on from each stage (prospecting … handle_objections),
# median days spent in each stage (… close), and what happens to a lead that does not move on.
ADVANCE = np.array([0.82, 0.82, 0.85, 0.85, 0.90])
DWELL_MEDIAN_DAYS = np.array([4.0, 6.0, 10.0, 12.0, 8.0, 10.0])
DWELL_SIGMA = 0.7
WIN_RATE_AT_CLOSE = 0.58
STALE_SHARE = 0.05  # never decided: stays open in the stage it stopped in
DISQUALIFY_SHARE = 0.6  # of the leads that stop in prospecting or qualify (the rest are lost)
AFTER_SALE_SHARE = 0.8  # of won deals, moved on to after-sale
QUARTER_END_PUSH = 0.3  # of wins due within 20 days of a quarter end, signed in its last three days
PRODUCTS = ("GTX Basic", "GTX Pro", "MG Special", "MG Advanced", "GTX Plus Pro", "GTK 500")
PRODUCT_AMOUNT = np.array([550.0, 4_800.0, 55.0, 3_400.0, 5_500.0, 26_000.0]) * 4
CHANNELS = tuple(c.value for c in SourceChannel)
STAGES = ("prospecting", "qualify", "approach", "negotiate", "handle_objections", "close", "after_sale")
STATUS = ("open", "won", "lost", "disqualified")
OPEN, WON, LOST, DISQ = 0, 1, 2, 3
CLOSE, AFTER_SALE = 5, 6
US_PER_DAY = 86_400_000_000


@dataclass
class People:
    organization_id: uuid.UUID
    reps: list[uuid.UUID]
    rep_emails: list[str]
    accounts: list[uuid.UUID]


@dataclass
class Tenant:
    """Leads (per lead) and their history (per stage change), as arrays."""

    lead_hi: np.ndarray
    lead_lo: np.ndarray
    owner: np.ndarray
    account: np.ndarray
    channel: np.ndarray
    product: np.ndarray
    created: np.ndarray  # µs since the epoch
    stage: np.ndarray
    status: np.ndarray
    stage_entered: np.ndarray
    closed: np.ndarray  # -1 while open
    amount: np.ndarray
    lost_at: np.ndarray  # stage index, -1 if none
    category: np.ndarray
    expected_close: np.ndarray  # day number
    updated: np.ndarray
    # the stage summary the service keeps on each lead (canvass.pipeline.stage_summary), µs or -1
    entered: np.ndarray  # (lead, stage): first advancing entry
    exited: np.ndarray  # (lead, stage): end of that first visit
    reached: np.ndarray  # furthest stage an advancing change reached, -1 if none
    # stage changes, sorted by lead then time
    c_hi: np.ndarray
    c_lo: np.ndarray
    c_lead: np.ndarray
    c_from: np.ndarray  # -1: none (the creation row)
    c_to: np.ndarray
    c_status: np.ndarray
    c_amount: np.ndarray
    c_at: np.ndarray
    c_from_entered: np.ndarray  # -1: none

    @property
    def n_leads(self) -> int:
        return int(self.created.size)

    @property
    def n_changes(self) -> int:
        return int(self.c_at.size)


def _uuid7_like(ms: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Time-ordered ids with the UUIDv7 layout (48-bit ms, version 7, variant 10): index locality."""
    hi = (ms.astype(np.uint64) << np.uint64(16)) | np.uint64(0x7000) | rng.integers(0, 4096, ms.size, dtype=np.uint64)
    lo = (np.uint64(0b10) << np.uint64(62)) | rng.integers(0, 2**62, ms.size, dtype=np.uint64)
    return hi, lo


def generate(n_leads: int, n_reps: int, n_accounts: int, now_us: int, seed: int = 6) -> Tenant:
    """A vectorised tenant: no Python loop per lead or per stage change."""
    rng = np.random.default_rng(seed)
    end_day = now_us // US_PER_DAY
    days = np.arange(end_day - 3 * 365, end_day)
    years = (days - days[0]) / 365.0
    weekday = (days + 3) % 7  # 1970-01-01 was a Thursday: 5, 6 are the weekend
    weight = np.exp(0.2 * years) * (1 + 0.15 * np.sin(2 * np.pi * years)) * np.where(weekday >= 5, 0.3, 1.0)
    day = np.sort(rng.choice(days, n_leads, p=weight / weight.sum()))
    created = day * US_PER_DAY + rng.integers(8 * 3600, 18 * 3600, n_leads) * 1_000_000
    created = np.minimum(created, now_us - 1_000_000)
    n = n_leads

    rep_weight = np.exp(0.5 * rng.standard_normal(n_reps))
    owner = rng.choice(n_reps, n, p=rep_weight / rep_weight.sum())
    skill = rng.normal(0.0, 0.35, n_reps)
    account = rng.integers(0, n_accounts, n)
    channel = rng.integers(0, len(CHANNELS), n)
    product = rng.choice(len(PRODUCTS), n, p=[0.25, 0.2, 0.2, 0.15, 0.12, 0.08])
    amount0 = np.round(PRODUCT_AMOUNT[product] * np.exp(0.5 * rng.standard_normal(n)), 2)
    amount1 = np.round(amount0 * np.exp(0.2 * rng.standard_normal(n)), 2)

    # How far each lead gets (last stage reached) and how it ends.
    moves_on = rng.random((n, ADVANCE.size)) < ADVANCE
    reached = np.where(moves_on.all(axis=1), CLOSE, np.argmin(moves_on, axis=1))
    stale = rng.random(n) < STALE_SHARE
    logit = np.log(WIN_RATE_AT_CLOSE / (1 - WIN_RATE_AT_CLOSE)) + skill[owner] - 0.2 * np.log(amount0 / 5_000)
    win = (reached == CLOSE) & (rng.random(n) < 1 / (1 + np.exp(-logit)))
    disq = (reached <= 1) & ~win & (rng.random(n) < DISQUALIFY_SHARE)
    outcome = np.where(stale, OPEN, np.where(win, WON, np.where(disq, DISQ, LOST)))

    # When: lognormal days in each stage, entry times by cumulative sums.
    dwell = DWELL_MEDIAN_DAYS * np.exp(DWELL_SIGMA * rng.standard_normal((n, DWELL_MEDIAN_DAYS.size)))
    dwell_us = (dwell * US_PER_DAY).astype(np.int64)
    entered = np.empty((n, CLOSE + 1), np.int64)
    entered[:, 0] = created
    entered[:, 1:] = created[:, None] + np.cumsum(dwell_us[:, :CLOSE], axis=1)
    last_entered = entered[np.arange(n), reached]
    decided_at = last_entered + dwell_us[np.arange(n), reached]
    # Quarter-end push: some wins due shortly before a quarter end are signed in its last three days.
    month = (decided_at // US_PER_DAY).astype("datetime64[D]").astype("datetime64[M]").astype(np.int64)
    q_end = ((month // 3 + 1) * 3).astype("datetime64[M]").astype("datetime64[D]").astype(np.int64)  # next quarter
    q_end_us = q_end * US_PER_DAY - rng.integers(1, 3 * 86_400, n) * 1_000_000
    push = (
        win & (q_end_us > decided_at) & (q_end_us - decided_at < 20 * US_PER_DAY) & (rng.random(n) < QUARTER_END_PUSH)
    )
    decided_at = np.where(push, q_end_us, decided_at)
    after_sale = win & (rng.random(n) < AFTER_SALE_SHARE)
    after_sale_at = decided_at + (rng.uniform(1, 10, n) * US_PER_DAY).astype(np.int64)
    final = np.round(np.where(reached >= 3, amount1, amount0) * rng.uniform(0.85, 1.05, n), 2)

    # Rows per lead: the creation and each move (reached + 1), the outcome, after-sale.
    k_moves = reached + 1
    k = k_moves + (outcome != OPEN) + after_sale
    lead = np.repeat(np.arange(n), k)
    first = np.cumsum(k) - k
    pos = np.arange(lead.size) - first[lead]
    km = k_moves[lead]
    is_move = pos < km
    is_outcome = pos == km
    is_after = pos == km + 1
    s = np.minimum(pos, CLOSE)
    c_from = np.where(is_move, s - 1, np.where(is_outcome, reached[lead], CLOSE))
    lead_outcome = outcome[lead]
    c_to = np.where(
        is_move,
        s,
        np.where(is_after, AFTER_SALE, np.where(lead_outcome == LOST, CLOSE, reached[lead])),
    )
    c_status = np.where(is_move, OPEN, np.where(is_after, WON, lead_outcome))
    c_at = np.where(is_move, entered[lead, s], np.where(is_outcome, decided_at[lead], after_sale_at[lead]))
    c_from_entered = np.where(
        is_move,
        np.where(pos > 0, entered[lead, np.maximum(s - 1, 0)], -1),
        np.where(is_outcome, last_entered[lead], entered[lead, CLOSE]),
    )
    negotiated = np.where(is_move, s >= 3, reached[lead] >= 3)
    c_amount = np.where(
        is_move | (lead_outcome != WON), np.where(negotiated, amount1[lead], amount0[lead]), final[lead]
    )

    # What has happened by now.
    seen = c_at < now_us
    lead, c_from, c_to, c_status = lead[seen], c_from[seen], c_to[seen], c_status[seen]
    c_at, c_from_entered, c_amount = c_at[seen], c_from_entered[seen], c_amount[seen]
    last = np.r_[lead[1:] != lead[:-1], True]
    assert np.array_equal(lead[last], np.arange(n)), "every lead keeps its creation row"
    stage = c_to[last]
    status = c_status[last]
    amount = c_amount[last]
    # The lead entered its current stage at its latest row that changed the stage.
    changed = (c_from != c_to) | (c_from < 0)
    idx = np.where(changed, np.arange(lead.size), -1)
    entered_idx = np.maximum.reduceat(idx, np.flatnonzero(np.r_[True, lead[1:] != lead[:-1]]))
    stage_entered = c_at[entered_idx]
    closing = (c_status != OPEN) & (c_to != AFTER_SALE)  # the outcome row (after-sale comes later)
    closed = np.full(n, -1, np.int64)
    closed[lead[closing]] = c_at[closing]
    lost_at = np.where(status == LOST, reached, -1)
    category = np.select(
        [status == WON, status != OPEN, stage >= CLOSE, stage >= 3], [3, 4, 2, 1], 0
    )  # closed, omitted, commit, best_case, pipeline
    expected_close = np.where(
        status == OPEN,
        (stage_entered + (np.maximum(CLOSE - stage, 1) * 8 + 10) * US_PER_DAY) // US_PER_DAY,
        closed // US_PER_DAY,
    )
    summary_entered, summary_exited, summary_reached = stage_summary(
        n, lead, c_from, c_to, c_status, c_at, c_from_entered
    )
    lead_hi, lead_lo = _uuid7_like(created // 1000, rng)
    c_hi, c_lo = _uuid7_like(c_at // 1000, rng)
    return Tenant(
        lead_hi=lead_hi,
        lead_lo=lead_lo,
        owner=owner,
        account=account,
        channel=channel,
        product=product,
        created=created,
        stage=stage,
        status=status,
        stage_entered=stage_entered,
        closed=closed,
        amount=amount,
        lost_at=lost_at,
        category=category,
        expected_close=expected_close,
        updated=c_at[last],
        entered=summary_entered,
        exited=summary_exited,
        reached=summary_reached,
        c_hi=c_hi,
        c_lo=c_lo,
        c_lead=lead,
        c_from=c_from,
        c_to=c_to,
        c_status=c_status,
        c_amount=c_amount,
        c_at=c_at,
        c_from_entered=c_from_entered,
    )


def stage_summary(
    n: int,
    lead: np.ndarray,
    c_from: np.ndarray,
    c_to: np.ndarray,
    c_status: np.ndarray,
    c_at: np.ndarray,
    c_from_entered: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The leads' stage summary from their history (rows sorted by lead, then time), as the
    service keeps it and migration 0004 rebuilds it: per stage the first advancing entry (status
    open or won after a change of stage, or the creation) and the first change that left the
    visit entered then; the furthest stage an advancing change reached."""
    advancing = ((c_status == OPEN) | (c_status == WON)) & (c_from != c_to)  # the creation row has c_from -1
    entered = np.full((n, len(STAGES)), -1, np.int64)
    exited = np.full((n, len(STAGES)), -1, np.int64)

    def first_per_lead(rows: np.ndarray) -> np.ndarray:
        keep = np.ones(rows.size, bool)
        keep[1:] = lead[rows][1:] != lead[rows][:-1]
        return rows[keep]

    for s in range(len(STAGES)):
        into = first_per_lead(np.flatnonzero(advancing & (c_to == s)))
        entered[lead[into], s] = c_at[into]
        out = np.flatnonzero((c_from == s) & (c_to != s))
        since = entered[lead[out], s]
        visit_entered = np.where(c_from_entered[out] >= 0, c_from_entered[out], c_at[out])
        out = first_per_lead(out[(since >= 0) & (visit_entered >= since)])
        exited[lead[out], s] = c_at[out]
    reached = np.full(n, -1, np.int64)
    np.maximum.at(reached, lead[advancing], c_to[advancing])
    return entered, exited, reached


# -- rows as the database stores them ---------------------------------------------------------


def _hex_ids(hi: np.ndarray, lo: np.ndarray) -> list[str]:
    raw = np.empty((hi.size, 2), ">u8")
    raw[:, 0], raw[:, 1] = hi, lo
    text = raw.tobytes().hex()
    return [text[i : i + 32] for i in range(0, len(text), 32)]


def _stamps(us: np.ndarray, sqlite: bool) -> list[str | None]:
    """UTC timestamps as text: SQLAlchemy's SQLite format, or ISO for PostgreSQL COPY (session in UTC)."""
    text = np.datetime_as_string(np.maximum(us, 0).astype("datetime64[us]"), unit="us")
    if sqlite:
        text = np.char.replace(text, "T", " ")
    out: list[str | None] = text.tolist()
    for i in np.flatnonzero(us < 0).tolist():
        out[i] = None
    return out


def _names(values: np.ndarray, names: tuple[str, ...], none_below: int = 0) -> list[str | None]:
    table: list[str | None] = list(names)
    return [table[v] if v >= none_below else None for v in values.tolist()]


LEAD_COLUMNS = (
    "organization_id", "id", "title", "external_ref", "account_id", "primary_contact_id", "owner_id",
    "source_channel", "product_interest", "amount", "currency", "expected_close_date", "stage", "status",
    "stage_entered_at", "forecast_category", "probability_override", "qualification",
    "qualification_override_reason", "visit_plan", "next_step", "closing_signals", "closing_method",
    "loss_reason", "competitor", "lost_at_stage", "closed_at", "deleted_at", "created_at", "updated_at", "version",
    *(f"{kind}_{stage}_at" for stage in STAGES for kind in ("entered", "exited")), "reached_stage", "server_version",
)  # fmt: skip
CHANGE_COLUMNS = (
    "organization_id", "id", "lead_id", "from_stage", "to_stage", "status", "amount", "at",
    "from_stage_entered_at", "by_user_id", "by_device_id", "note", "imported", "server_version",
)  # fmt: skip
# A bulk load is published to the change feed as one version, as migration 0003 published the rows
# it found: devices and the forecast's history cache see it like any write.
LOADED_VERSION = 1
CATEGORIES = ("pipeline", "best_case", "commit", "closed", "omitted")


def lead_rows(t: Tenant, who: People, lo: int, hi: int, sqlite: bool) -> list[tuple[Any, ...]]:
    sl = slice(lo, hi)
    n = hi - lo
    org = who.organization_id.hex
    reps = [r.hex for r in who.reps]
    accounts = [a.hex for a in who.accounts]
    status = t.status[sl]
    closed_reason = ["no budget" if s in (LOST, DISQ) else None for s in status.tolist()]
    columns: list[list[Any]] = [
        [org] * n,
        _hex_ids(t.lead_hi[sl], t.lead_lo[sl]),
        [f"Deal {i}" for i in range(lo, hi)],
        [None] * n,
        [accounts[a] for a in t.account[sl].tolist()],
        [None] * n,
        [reps[o] for o in t.owner[sl].tolist()],
        _names(t.channel[sl], CHANNELS),
        _names(t.product[sl], PRODUCTS),
        t.amount[sl].tolist(),
        ["USD"] * n,
        np.datetime_as_string(t.expected_close[sl].astype("datetime64[D]")).tolist(),
        _names(t.stage[sl], STAGES),
        _names(status, STATUS),
        _stamps(t.stage_entered[sl], sqlite),
        _names(t.category[sl], CATEGORIES),
        [None] * n,
        ["{}"] * n,
        [None] * n,
        ["{}"] * n,
        [None] * n,
        ["[]"] * n,
        [None] * n,
        closed_reason,
        [None] * n,
        _names(t.lost_at[sl], STAGES),
        _stamps(t.closed[sl], sqlite),
        [None] * n,
        _stamps(t.created[sl], sqlite),
        _stamps(t.updated[sl], sqlite),
        [1] * n,
    ]
    for s in range(len(STAGES)):
        columns += [_stamps(t.entered[sl, s], sqlite), _stamps(t.exited[sl, s], sqlite)]
    columns.append([None if r < 0 else r for r in t.reached[sl].tolist()])
    columns.append([LOADED_VERSION] * n)
    return list(zip(*columns, strict=True))


def change_rows(t: Tenant, who: People, lo: int, hi: int, sqlite: bool) -> list[tuple[Any, ...]]:
    sl = slice(lo, hi)
    n = hi - lo
    org = who.organization_id.hex
    reps = [r.hex for r in who.reps]
    lead_ids = _hex_ids(t.lead_hi, t.lead_lo) if lo == 0 and hi == t.n_changes else None
    leads = t.c_lead[sl]
    if lead_ids is None:
        first, last = int(leads[0]), int(leads[-1]) + 1
        some = _hex_ids(t.lead_hi[first:last], t.lead_lo[first:last])
        lead_col = [some[i - first] for i in leads.tolist()]
    else:
        lead_col = [lead_ids[i] for i in leads.tolist()]
    columns: list[list[Any]] = [
        [org] * n,
        _hex_ids(t.c_hi[sl], t.c_lo[sl]),
        lead_col,
        _names(t.c_from[sl], STAGES),
        _names(t.c_to[sl], STAGES),
        _names(t.c_status[sl], STATUS),
        t.c_amount[sl].tolist(),
        _stamps(t.c_at[sl], sqlite),
        _stamps(t.c_from_entered[sl], sqlite),
        [reps[o] for o in t.owner[leads].tolist()],
        [None] * n,
        [None] * n,
        [1 if sqlite else "t"] * n,
        [LOADED_VERSION] * n,
    ]
    return list(zip(*columns, strict=True))


# -- loading ------------------------------------------------------------------------------------


async def seed_people(url: str, n_reps: int, n_accounts: int) -> People:
    """Organization, team tree, territories, people (through the services), accounts (Core insert)."""
    from sqlalchemy import insert

    from canvass.db import utcnow
    from canvass.ids import new_id
    from canvass.pipeline.models import Account

    engine = create_engine(to_async_url(url))
    password_hash = people.hash_password(PASSWORD)
    async with session_factory(engine)() as session, session.begin():
        org = await people.create_organization(session, "Scale Co", "scale")
        admin_id = uuid.uuid4()
        boot = Actor(organization_id=org.id, user_id=admin_id, role=Role.ADMIN)
        root = await people.create_team(session, boot, TeamCreate(name="Sales"))

        async def user(email: str, name: str, role: Role, team_id: uuid.UUID, id: uuid.UUID | None = None) -> uuid.UUID:
            created = await people.create_user(
                session,
                boot,
                UserCreate(id=id, email=email, name=name, role=role, team_id=team_id, password=PASSWORD),
                password_hash=password_hash,
            )
            return created.id

        await user(ADMIN, "Admin", Role.ADMIN, root.id, admin_id)
        territories = [
            (
                await people.create_territory(
                    session, boot, TerritoryCreate(name=f"Territory {i}", region=f"R{i // 3}")
                )
            ).id
            for i in range(12)
        ]
        reps: list[uuid.UUID] = []
        emails: list[str] = []
        n_teams = max(1, (n_reps + 9) // 10)
        n_regions = max(1, round(n_teams / 5))
        regions = []
        for r in range(n_regions):
            region = await people.create_team(session, boot, TeamCreate(name=f"Region {r}", parent_id=root.id))
            await user(f"manager.r{r}@scale.example", f"Region manager {r}", Role.MANAGER, region.id)
            regions.append(region)
        for t in range(n_teams):
            team = await people.create_team(
                session, boot, TeamCreate(name=f"Team {t}", parent_id=regions[t % n_regions].id)
            )
            await user(f"manager.t{t}@scale.example", f"Team manager {t}", Role.MANAGER, team.id)
            for i in range(10 * t, min(10 * t + 10, n_reps)):
                emails.append(f"rep{i}@scale.example")
                reps.append(await user(emails[-1], f"Rep {i}", Role.REP, team.id))
        now = utcnow()
        accounts = [new_id() for _ in range(n_accounts)]
        rows = [
            {
                "organization_id": org.id, "id": a, "name": f"Customer {i:05d}", "kind": "customer",
                "owner_id": reps[i % n_reps], "territory_id": territories[i % len(territories)],
                "contact_cycle_days": 30, "lifecycle_stage": "prospect", "tags": [], "custom_fields": {},
                "created_at": now, "updated_at": now, "version": 1, "server_version": LOADED_VERSION,
            }
            for i, a in enumerate(accounts)
        ]  # fmt: skip
        connection = await session.connection()
        for i in range(0, len(rows), 2_000):
            await connection.execute(insert(Account.__table__), rows[i : i + 2_000])
    await engine.dispose()
    return People(organization_id=org.id, reps=reps, rep_emails=emails, accounts=accounts)


CHUNK = 200_000


async def load_postgresql(url: str, t: Tenant, who: People) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("SET TIME ZONE 'UTC'")
        for table, columns, make, total in (
            ("leads", LEAD_COLUMNS, lead_rows, t.n_leads),
            ("stage_changes", CHANGE_COLUMNS, change_rows, t.n_changes),
        ):
            for lo in range(0, total, CHUNK):
                buffer = io.StringIO()
                csv.writer(buffer).writerows(make(t, who, lo, min(lo + CHUNK, total), False))
                await conn.copy_to_table(
                    table, source=io.BytesIO(buffer.getvalue().encode()), columns=list(columns), format="csv"
                )
        await conn.execute(
            "INSERT INTO sync_clocks (organization_id, version) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            who.organization_id,
            LOADED_VERSION,
        )
        await conn.execute("ANALYZE")
    finally:
        await conn.close()


def load_sqlite(path: Path, t: Tenant, who: People) -> None:
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA synchronous=OFF")
        for table, columns, make, total in (
            ("leads", LEAD_COLUMNS, lead_rows, t.n_leads),
            ("stage_changes", CHANGE_COLUMNS, change_rows, t.n_changes),
        ):
            statement = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
            for lo in range(0, total, CHUNK):
                with conn:
                    conn.executemany(statement, make(t, who, lo, min(lo + CHUNK, total), True))
        with conn:
            conn.execute(
                "INSERT INTO sync_clocks (organization_id, version) VALUES (?, ?) ON CONFLICT DO NOTHING",
                (who.organization_id.hex, LOADED_VERSION),
            )
        conn.execute("ANALYZE")
        conn.commit()
    finally:
        conn.close()


# -- measuring ------------------------------------------------------------------------------------


def _get(
    port: int, path: str, token: str, params: dict[str, Any] | list[tuple[str, Any]], timeout: float
) -> tuple[float, bytes]:
    query = urllib.parse.urlencode(params)
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}?{query}", headers={"Authorization": f"Bearer {token}"}
    )
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=timeout) as response:
        body = response.read()
    return time.perf_counter() - started, body


def _tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            children = (task / "children").read_text().split() if (task / "children").exists() else []
            todo.extend(int(c) for c in children)
    return pids


def _memory(pid: int) -> dict[str, dict[str, float]]:
    """VmHWM (peak resident set) and VmRSS per process of the server's tree, MiB."""
    out = {}
    for p in _tree(pid):
        try:
            status = Path(f"/proc/{p}/status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        out[str(p)] = {k: round(int(fields[k].split()[0]) / 1024, 1) for k in ("VmHWM", "VmRSS") if k in fields}
    return out


def measure(
    port: int,
    who: People,
    rep_leads: np.ndarray,
    repeats: int,
    timeout: float,
    only: set[str] | None = None,
    warm_up: bool = True,
) -> dict[str, Any]:
    base = f"http://127.0.0.1:{port}/api/v1"
    login = lambda email: http_json(f"{base}/auth/login", {"email": email, "password": PASSWORD})["access_token"]  # noqa: E731
    admin = login(ADMIN)
    order = np.argsort(rep_leads)
    median_rep, busiest_rep = int(order[len(order) // 2]), int(order[-1])
    today = dt.datetime.now(dt.UTC).date()
    year = {"from": (today - dt.timedelta(days=364)).isoformat(), "to": (today + dt.timedelta(days=1)).isoformat()}
    cases: list[tuple[str, str, str, Any]] = [
        ("funnel_year_tenant", "/api/v1/reports/funnel", admin, year),
        ("forecast_next_quarter", "/api/v1/forecasts/revenue", admin, [("horizons", 90)]),
        ("forecast_30_60_90", "/api/v1/forecasts/revenue", admin, [("horizons", 30), ("horizons", 60), ("horizons", 90)]),
        ("funnel_rep", "/api/v1/reports/funnel", login(who.rep_emails[median_rep]), year),
        ("funnel_busiest_rep", "/api/v1/reports/funnel", login(who.rep_emails[busiest_rep]), year),
        ("funnel_owner_cut_admin", "/api/v1/reports/funnel", admin, {**year, "owner_id": str(who.reps[median_rep])}),
    ]  # fmt: skip
    results: dict[str, Any] = {}
    for name, path, token, params in cases:
        if only and name not in only:
            continue
        try:
            if warm_up:
                _get(port, path, token, params, timeout)  # warm-up: connections, prepared statements, caches
            times = []
            body = b""
            for _ in range(repeats):
                elapsed, body = _get(port, path, token, params, timeout)
                times.append(elapsed)
        except OSError as exc:  # a timeout (socket.timeout is an OSError) or a refused request
            results[name] = {"error": f"{type(exc).__name__}: {exc}", "timeout_s": timeout}
            continue
        results[name] = {
            "median_s": round(statistics.median(times), 4),
            "min_s": round(min(times), 4),
            "max_s": round(max(times), 4),
            "runs": len(times),
            "bytes": len(body),
            "sample": _summary(name, json.loads(body)),
        }
    results["rep_leads"] = {"median_rep": int(rep_leads[median_rep]), "busiest_rep": int(rep_leads[busiest_rep])}
    return results


def _summary(name: str, body: Any) -> Any:
    if name.startswith("funnel"):
        return {
            "entered": [s["entered"] for s in body["stages"]],
            "won": body["won"],
            "win_rate": body["win_rate"],
            "stuck_total": body["stuck_total"],
        }
    return [
        {k: f[k] for k in ("method", "horizon_days", "revenue", "p10", "p50", "p90", "flags")}
        for f in body["forecasts"]
    ]


def run(
    db: str,
    leads: int,
    repeats: int,
    keep: bool,
    url: str | None,
    load_only: bool = False,
    timeout: float = 300,
    only: set[str] | None = None,
    warm_up: bool = True,
    settle: float = 0.0,
) -> dict[str, Any]:
    conditions = machine()
    tmp = Path(tempfile.mkdtemp(prefix="canvass-scale-"))
    name = f"canvass_scale_{uuid.uuid4().hex[:8]}"
    created_db = url is None
    timings: dict[str, float] = {}
    if url is None:
        if db == "postgresql":
            asyncio.run(_pg(f'CREATE DATABASE "{name}"'))
            url = PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
        else:
            url = f"sqlite:///{tmp / 'scale.db'}"
    env = {
        **os.environ,
        "CANVASS_DATABASE_URL": url,
        "CANVASS_SECRET_KEY": "scale-" + uuid.uuid4().hex,
        "CANVASS_ACCESS_TOKEN_MINUTES": "240",
    }
    server = None
    try:
        if created_db:
            subprocess.run(
                [sys.executable, "-m", "canvass.cli", "db", "upgrade"],
                env=env,
                check=True,
                cwd=ROOT,
                capture_output=True,
            )
            n_reps = max(20, leads // 5_000)
            started = time.monotonic()
            who = asyncio.run(seed_people(url, n_reps, max(100, leads // 500)))
            timings["people_s"] = time.monotonic() - started
            started = time.monotonic()
            tenant = generate(leads, n_reps, len(who.accounts), int(time.time() * 1_000_000))
            timings["generate_s"] = time.monotonic() - started
            print(f"{db}: generated {tenant.n_leads:,} leads, {tenant.n_changes:,} stage changes", flush=True)
            started = time.monotonic()
            if db == "postgresql":
                asyncio.run(load_postgresql(url, tenant, who))
            else:
                load_sqlite(Path(url.removeprefix("sqlite:///")), tenant, who)
            timings["load_and_analyze_s"] = time.monotonic() - started
            rep_leads = np.bincount(tenant.owner, minlength=n_reps)
            counts = {"leads": tenant.n_leads, "stage_changes": tenant.n_changes}
            del tenant
        else:
            who, rep_leads, counts = asyncio.run(_existing(url))
        if load_only:
            return {"database": db, "url": url, **counts, "setup": {k: round(v, 1) for k, v in timings.items()}}
        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "canvass.cli", "serve", "--port", str(port), "--workers", "2", "--log-level", "warning"],
            env=env,
            cwd=ROOT,
            start_new_session=True,
        )  # fmt: skip
        wait_until_up(port, timeout=60)
        time.sleep(settle)  # the server's start-up warm (canvass/forecasting/history_cache.py: warm)
        results = measure(port, who, rep_leads, repeats, timeout, only, warm_up)
        memory = _memory(server.pid)
        return {
            "machine": conditions,
            "database": db,
            "url": url if keep or not created_db else None,
            **counts,
            "setup": {k: round(v, 1) for k, v in timings.items()},
            "settle_s": settle,
            "results": results,
            "server_memory_mib": memory,
            "load_1min_after": round(os.getloadavg()[0], 2),
        }
    finally:
        if server is not None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
        if created_db and not keep and db == "postgresql":
            asyncio.run(_pg(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        if keep:
            print(f"kept: {url}", flush=True)


async def _existing(url: str) -> tuple[People, np.ndarray, dict[str, int]]:
    """People of an already loaded scale tenant, read back from the database."""
    from sqlalchemy import func, select

    from canvass.pipeline.models import Lead, Organization, StageChange, User

    engine = create_engine(to_async_url(url))
    async with session_factory(engine)() as session:
        org = (await session.scalars(select(Organization).where(Organization.slug == "scale"))).one()
        reps = (
            await session.execute(
                select(User.id, User.email)
                .where(User.organization_id == org.id, User.role == "rep")
                .order_by(User.email)
            )
        ).all()
        per_owner = dict(
            (await session.execute(select(Lead.owner_id, func.count()).where(Lead.organization_id == org.id).group_by(Lead.owner_id))).all()
        )  # fmt: skip
        n_leads = sum(per_owner.values())
        n_changes = int(await session.scalar(select(func.count()).select_from(StageChange)) or 0)
    await engine.dispose()
    who = People(organization_id=org.id, reps=[r[0] for r in reps], rep_emails=[r[1] for r in reps], accounts=[])
    return who, np.array([per_owner.get(r[0], 0) for r in reps]), {"leads": n_leads, "stage_changes": n_changes}


def table(report: dict[str, Any]) -> str:
    mem = report["server_memory_mib"]
    peak = max((m.get("VmHWM", 0.0) for m in mem.values()), default=0.0)
    lines = [
        f"{report['database']}: {report['leads']:,} leads, {report['stage_changes']:,} stage changes; "
        f"setup {report['setup']}; load after {report['load_1min_after']}",
        f"{'request':<24} {'median s':>9} {'min s':>8} {'max s':>8}   bar",
    ]
    for name, r in report["results"].items():
        if name == "rep_leads":
            continue
        if "error" in r:
            lines.append(f"{name:<24} {'—':>9} {'—':>8} {'—':>8}   no answer within {r['timeout_s']} s")
            continue
        bar = BARS_S.get(name)
        verdict = f"< {bar} s: {'met' if r['median_s'] < bar else 'NOT met'}" if bar else ""
        lines.append(f"{name:<24} {r['median_s']:>9.3f} {r['min_s']:>8.3f} {r['max_s']:>8.3f}   {verdict}")
    lines.append(f"rep leads: {report['results']['rep_leads']}")
    lines.append(
        f"peak RSS per server process (MiB): {', '.join(str(m.get('VmHWM')) for m in mem.values())}; "
        f"max {peak} (< {MEMORY_BAR_MIB}: {'met' if peak < MEMORY_BAR_MIB else 'NOT met'})"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", action="append", choices=["postgresql", "sqlite"])
    parser.add_argument("--leads", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=5, help="timed requests per case, after one warm-up")
    parser.add_argument("--keep", action="store_true", help="keep the database (PostgreSQL) and print its URL")
    parser.add_argument("--url", help="measure an already loaded scale database instead of building one")
    parser.add_argument("--load-only", action="store_true", help="build and keep the database, measure nothing")
    parser.add_argument(
        "--timeout", type=float, default=300, help="seconds per HTTP request before it counts as failed"
    )
    parser.add_argument("--cases", help="comma-separated subset of the requests, e.g. funnel_year_tenant,funnel_rep")
    parser.add_argument("--no-warm-up", action="store_true", help="time the first request too (slow databases)")
    parser.add_argument(
        "--settle",
        type=float,
        default=0.0,
        help="seconds between the server answering and the first request (its start-up warm of the history)",
    )
    args = parser.parse_args()
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    databases = args.db or (
        ["sqlite" if args.url.startswith("sqlite") else "postgresql"] if args.url else ["postgresql", "sqlite"]
    )
    for db in databases:
        only = set(args.cases.split(",")) if args.cases else None
        report = run(
            db, args.leads, args.repeats, args.keep or args.load_only, args.url, args.load_only, args.timeout, only,
            not args.no_warm_up, args.settle,
        )  # fmt: skip
        if args.load_only:
            print(json.dumps(report), flush=True)
            continue
        (out / f"forecast_scale_{db}.json").write_text(json.dumps(report, indent=2) + "\n")
        print(table(report), flush=True)


if __name__ == "__main__":
    main()
