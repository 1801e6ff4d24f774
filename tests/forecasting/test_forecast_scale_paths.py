"""The fast paths behind forecasts at scale give what the plain algorithms give.

* ``lead_history`` (binary COPY on PostgreSQL, partitions on SQLite) against a row-by-row
  reference built from ordinary ORM queries, with same-instant changes, a deleted lead and
  scopes;
* the exposure table's interval counts against the split-per-age-bucket algorithm;
* per-lead prefix lookups against a search over all records;
* ``from_arrays`` on sorted input against shuffled input.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import numpy as np
from litestar.testing import TestClient
from sqlalchemy import select, update

from canvass.forecasting import queries
from canvass.forecasting.history import STATUSES, LeadHistory
from canvass.forecasting.learned import _AGE_BUCKET, AGE_CAP, N_AGE, _interval_counts
from canvass.forecasting.queries import STAGE_INDEX, lead_history
from canvass.pipeline.models import Lead, StageChange
from canvass.pipeline.scope import Actor, lead_scope
from canvass.pipeline.services.imports import HistoryEntry, LeadImportRow, import_leads
from canvass.pipeline.vocabulary import LeadStatus, Role, Stage
from tests.conftest import Tenant, run

T0 = dt.datetime(2024, 3, 1, 9, 30, tzinfo=dt.UTC)


def _rows(tenant: Tenant) -> list[LeadImportRow]:
    reps = [tenant.rep_a.id, tenant.rep_a2.id, tenant.rep_b.id, tenant.rep_a1.id]
    rows = []
    for i in range(40):
        created = T0 + dt.timedelta(days=3 * i, minutes=7 * i)
        history = [HistoryEntry(to_stage=Stage.PROSPECTING, at=created, amount=1000.0 + i)]
        if i % 2:
            history.append(HistoryEntry(to_stage=Stage.QUALIFY, at=created + dt.timedelta(days=2)))
        if i % 3 == 0:
            # Two changes at the same instant (the database orders them by id) and one just
            # before midnight: same-day order and whole-day boundaries both matter.
            at = created + dt.timedelta(days=5, hours=14, minutes=29, seconds=59, microseconds=999_999)
            history.append(HistoryEntry(to_stage=Stage.APPROACH, at=at, amount=2000.0 + i))
            history.append(HistoryEntry(to_stage=Stage.NEGOTIATE, at=at, amount=2500.0 + i))
        if i % 4 == 1:
            history.append(HistoryEntry(to_stage=Stage.CLOSE, at=created + dt.timedelta(days=9)))
            history.append(
                HistoryEntry(
                    to_stage=Stage.CLOSE, status=LeadStatus.WON, at=created + dt.timedelta(days=9), amount=900.0 + i
                )
            )
        elif i % 4 == 2:
            history.append(
                HistoryEntry(to_stage=Stage.CLOSE, status=LeadStatus.LOST, at=created + dt.timedelta(days=8))
            )
        rows.append(LeadImportRow(title=f"Deal {i}", owner_id=reps[i % len(reps)], history=history))
    return rows


async def _load(client: TestClient[Any], tenant: Tenant) -> None:
    actor = Actor(organization_id=tenant.organization_id, user_id=tenant.admin.id, role=Role.ADMIN)
    async with client.app.state.sessionmaker() as session, session.begin():
        report = await import_leads(session, actor, _rows(tenant))
        assert not report.rejected
        # One deleted lead: neither it nor its changes are history.
        victim = (await session.scalars(select(Lead.id).where(Lead.organization_id == actor.organization_id))).first()
        await session.execute(update(Lead).where(Lead.id == victim).values(deleted_at=T0))
        # Two more changes of one lead at one instant, the one written first with the larger id: the
        # order is the ids' (PostgreSQL reads the changes in table order and sorts them itself).
        lead = (await session.scalars(select(Lead.id).where(Lead.organization_id == actor.organization_id))).all()[5]
        at = T0 + dt.timedelta(days=400)
        for id_, stage, amount in (
            (uuid.UUID(int=2**127 - 1), Stage.CLOSE, 7.0),
            (uuid.UUID(int=1), Stage.NEGOTIATE, 8.0),
        ):
            session.add(
                StageChange(
                    id=id_, organization_id=actor.organization_id, lead_id=lead, from_stage=None,
                    to_stage=stage.value, status=LeadStatus.OPEN.value, amount=amount, at=at, imported=True,
                )
            )  # fmt: skip
            await session.flush()


async def _reference(session: Any, organization_id: uuid.UUID, scope: Any) -> LeadHistory:
    """The straightforward algorithm: ORM rows, a Python dict from lead id to index."""
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    leads = (
        await session.execute(
            select(Lead.id, Lead.owner_id, Lead.created_at, Lead.status, Lead.closed_at)
            .where(Lead.organization_id == organization_id, Lead.deleted_at.is_(None), scope)
            .order_by(Lead.id)
        )
    ).all()
    index = {r[0]: i for i, r in enumerate(leads)}
    owners: dict[uuid.UUID, int] = {}
    changes = [
        c
        for c in (
            await session.execute(
                select(StageChange.lead_id, StageChange.at, StageChange.to_stage, StageChange.amount)
                .where(StageChange.organization_id == organization_id)
                .order_by(StageChange.lead_id, StageChange.at, StageChange.id)
            )
        ).all()
        if c[0] in index
    ]
    # An amount record where the lead's amount changes (repeats say nothing new).
    priced = []
    for c in changes:
        if c[3] is not None and not (priced and priced[-1][0] == c[0] and priced[-1][3] == c[3]):
            priced.append(c)
    return LeadHistory.from_arrays(
        created=np.array([(r[2] - epoch).days for r in leads]),
        status=np.array([STATUSES.index(r[3]) for r in leads]),
        closed=np.array([(r[4] - epoch).days if r[4] else -1 for r in leads]),
        owner=np.array([owners.setdefault(r[1], len(owners)) for r in leads]),
        amount_lead=np.array([index[c[0]] for c in priced], dtype=np.int64),
        amount_day=np.array([(c[1] - epoch).days for c in priced], dtype=np.int64),
        amount=np.array([float(c[3]) for c in priced]),
        stage_lead=np.array([index[c[0]] for c in changes], dtype=np.int64),
        stage_day=np.array([(c[1] - epoch).days for c in changes], dtype=np.int64),
        stage_to=np.array([STAGE_INDEX[c[2]] for c in changes], dtype=np.int64),
    )


FIELDS = ("created", "owner", "status", "closed", "amount_lead", "amount_day", "amount", "stage_lead", "stage_day")


def test_lead_history_matches_the_row_by_row_reference(client: TestClient[Any], tenant: Tenant) -> None:
    run(client, _load, client, tenant)

    async def compare() -> list[tuple[str, int]]:
        checked = []
        async with client.app.state.sessionmaker() as session:
            for who in ("admin", "manager_a", "rep_a", "rep_b"):
                person = tenant.people[who]
                actor = Actor(
                    organization_id=tenant.organization_id,
                    user_id=person.id,
                    role=person.role,
                    team_path=person.team_path,
                )
                scope = lead_scope(actor)
                expected = await _reference(session, tenant.organization_id, scope)
                for got in (
                    await lead_history(session, tenant.organization_id, scope=scope),
                    *([await lead_history(session, tenant.organization_id)] if who == "admin" else []),
                ):
                    for name in FIELDS:
                        assert np.array_equal(getattr(got, name), getattr(expected, name)), (who, name)
                    assert np.array_equal(got.stage_to, expected.stage_to), who
                checked.append((who, expected.n_leads))
        return checked

    checked = dict(run(client, compare))
    assert checked["admin"] == 39 and 0 < checked["rep_a"] < checked["manager_a"] < checked["admin"]


def _split_reference(created, start, end, stratum, n_strata, width, weight):  # type: ignore[no-untyped-def]
    """The exposure table's former algorithm: each interval split at the age-bucket edges it crosses."""
    edges = np.array([0, 7, 14, 30, 60, 90, 120, 180, 365])
    upper = np.append(edges[1:] - 1, 2**30)
    first_b = _AGE_BUCKET[np.minimum(start - created, AGE_CAP)]
    last_b = _AGE_BUCKET[np.minimum(end - created, AGE_CAP)]
    pieces = last_b - first_b + 1
    row = np.repeat(np.arange(start.size), pieces)
    b = first_b[row] + np.arange(row.size) - np.repeat(np.cumsum(pieces) - pieces, pieces)
    p_start = np.maximum(start[row], created[row] + edges[b])
    p_end = np.minimum(end[row], created[row] + upper[b])
    base = b * width if stratum is None else (stratum[row] * N_AGE + b) * width
    size = n_strata * N_AGE * width
    w = None if weight is None else weight[row]
    diff = np.bincount(base + p_start, weights=w, minlength=size) - np.bincount(
        base + p_end + 1, weights=w, minlength=size
    )
    return np.cumsum(diff.reshape(n_strata, N_AGE, width), axis=2)[:, :, : width - 1].astype(np.float64)


def test_interval_counts_on_the_age_grid_equal_the_split_intervals() -> None:
    rng = np.random.default_rng(3)
    for n, width in ((1, 5), (500, 40), (20_000, 900)):
        created = rng.integers(0, width - 1, n)
        start = np.minimum(created + rng.integers(0, 400, n), width - 2)
        end = np.minimum(start + rng.integers(0, 800, n), width - 2)
        stratum = rng.integers(0, 7, n)
        weight = rng.random(n) * 1000
        got = _interval_counts(created, start, end, stratum, 7, width, None)
        assert np.array_equal(got, _split_reference(created, start, end, stratum, 7, width, None))
        got_w = _interval_counts(created, start, end, None, 1, width, weight)
        assert np.allclose(got_w, _split_reference(created, start, end, None, 1, width, weight), rtol=1e-12, atol=1e-6)


def _random_history(rng: np.random.Generator, n: int, shuffle: bool) -> LeadHistory:
    created = rng.integers(18_000, 18_300, n)
    k = rng.integers(0, 6, n)
    lead = np.repeat(np.arange(n), k)
    day = created[lead] + rng.integers(0, 60, lead.size)
    to = rng.integers(0, 7, lead.size)
    value = rng.random(lead.size)
    order = np.lexsort((day, lead))  # sorted by (lead, day); ties keep their random order
    lead, day, to, value = lead[order], day[order], to[order], value[order]
    if shuffle:
        # Shuffle whole leads' blocks, keeping each lead's records in order: same stable sort result.
        perm = rng.permutation(n)
        order = np.argsort(perm[lead], kind="stable")
        lead, day, to, value = lead[order], day[order], to[order], value[order]
    return LeadHistory.from_arrays(
        created=created,
        status=np.zeros(n, np.int8),
        closed=np.full(n, -1),
        amount_lead=lead,
        amount_day=day,
        amount=value,
        stage_lead=lead,
        stage_day=day,
        stage_to=to,
    )


def test_from_arrays_skips_the_sort_only_when_it_would_change_nothing() -> None:
    sorted_h = _random_history(np.random.default_rng(5), 300, shuffle=False)
    shuffled_h = _random_history(np.random.default_rng(5), 300, shuffle=True)
    for name in ("stage_lead", "stage_day", "stage_to", "amount_lead", "amount_day", "amount", "stage_start"):
        assert np.array_equal(getattr(sorted_h, name), getattr(shuffled_h, name)), name


def test_prefix_lookups_equal_the_whole_history_answers() -> None:
    h = _random_history(np.random.default_rng(11), 500, shuffle=False)
    rng = np.random.default_rng(12)
    leads = np.sort(rng.choice(h.n_leads, 200, replace=False))
    for cutoff in (18_000, 18_150, 18_400):
        assert np.array_equal(h.stage_of(leads, cutoff), h.stage_before(cutoff)[leads])
        assert np.array_equal(h.amount_of(leads, cutoff), h.amount_before(cutoff)[leads])
    per_lead = rng.integers(18_000, 18_400, h.n_leads)
    assert np.array_equal(h.stage_of(leads, per_lead[leads]), h.stage_before(per_lead)[leads])
    assert np.array_equal(h.amount_of(leads, per_lead[leads]), h.amount_before(per_lead)[leads])


def test_unordered_changes_are_put_in_the_order_the_database_sorts_them() -> None:
    """PostgreSQL's stage changes come in table order; ``_in_lead_order`` gives the rows
    ``ORDER BY lead_id, at, id`` gives: here lead ids sharing their first 8 bytes, changes at the
    same instant (ordered by id), ``-infinity`` instants, against a sort of the raw bytes."""
    rng = np.random.default_rng(7)
    n = 5000
    high = rng.integers(0, 40, 300).astype(">u8")  # few distinct first halves: many shared
    leads = np.empty(300, "V16")
    leads.view(">u8").reshape(-1, 2)[:, 0] = high
    leads.view(">u8").reshape(-1, 2)[:, 1] = rng.integers(0, 2**63, 300).astype(">u8")
    lead = leads[rng.integers(0, 300, n)]
    at = rng.integers(0, 50, n).astype(np.int64) * 86_400_000_000 // 3  # many equal instants
    at[rng.random(n) < 0.02] = np.iinfo(np.int64).min
    ids = rng.integers(0, 256, (n, 16), dtype=np.uint8).view("V16").reshape(-1)
    rows = queries._Columns(
        {
            "lead": lead,
            "at": at,
            "stage": rng.integers(0, 7, n).astype(np.int16),
            "amount": np.where(rng.random(n) < 0.8, rng.integers(0, 5, n) * 100.0, -np.inf),  # -inf: none
            "id": ids,
        }
    )
    expected = sorted(range(n), key=lambda i: (lead[i].tobytes(), int(at[i]), ids[i].tobytes()))
    got = queries._in_lead_order(queries._Columns({name: column.copy() for name, column in rows.data.items()}))
    reference = queries._Collector(queries._CHANGE_FIELDS, group_key="lead")
    reference.add(
        {
            "lead": lead[expected],
            "day": queries._days_of_stamps(at[expected]),
            "stage": rows.data["stage"][expected],
            "amount": np.maximum(rows.data["amount"][expected], 0.0),
            "priced": rows.data["amount"][expected] != -np.inf,
        }
    )
    want = reference.result()
    assert want.keys is not None and got.keys is not None and want.group is not None and got.group is not None
    assert np.array_equal(got.keys, want.keys) and np.array_equal(got.group, want.group)
    for name in ("day", "stage", "amount", "priced"):
        assert np.array_equal(got.data[name], want.data[name]), name
