"""A tenant's lead history as flat numpy arrays: the one input of every forecast method.

The database layer fills these arrays once per request (one row per lead, one row
per amount record, one row per stage change); every forecast, backtest and
simulation is then pure numpy over them. Dates are whole UTC days
(``datetime64[D]``): forecasts are about days and months, and day arithmetic on
integers is what keeps a million-lead history fast.

Knowability: at an as-of day ``T`` (start of that day) a record is known when
its day is strictly before ``T``. A lead closed on or after ``T`` is open at ``T``;
its amount is the latest amount recorded before ``T``; a lead created on or
after ``T`` does not exist yet.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import numpy as np

# Stage indices used in ``stage_to``; the order of ``canvass.pipeline.vocabulary.STAGE_ORDER``.
STAGES: tuple[str, ...] = (
    "prospecting",
    "qualify",
    "approach",
    "negotiate",
    "handle_objections",
    "close",
    "after_sale",
)
PROSPECTING = 0

# Status codes used in ``status`` (the lead's status today).
OPEN, WON, LOST, DISQUALIFIED = 0, 1, 2, 3
STATUSES: tuple[str, ...] = ("open", "won", "lost", "disqualified")

DateLike = dt.date | np.datetime64 | str


def day_number(value: DateLike) -> int:
    """Days since 1970-01-01: the integer every model works in."""
    if isinstance(value, dt.datetime):
        value = value.date()
    if isinstance(value, dt.date):
        return (value - dt.date(1970, 1, 1)).days
    if isinstance(value, np.datetime64):
        return int(value.astype("datetime64[D]").astype(np.int64))
    return (dt.date.fromisoformat(str(value)[:10]) - dt.date(1970, 1, 1)).days


def as_date(day: int) -> dt.date:
    return dt.date(1970, 1, 1) + dt.timedelta(days=int(day))


@dataclass(frozen=True, slots=True, eq=False)
class LeadHistory:
    """One tenant's leads, amounts and stage changes, as arrays.

    Per lead ``i`` (length ``n``):
      ``created``  int64 day the lead entered the pipeline;
      ``owner``    int32 owner index (the caller's numbering; used for cuts, not by the maths);
      ``status``   int8 status today: OPEN, WON, LOST or DISQUALIFIED (treated as a loss);
      ``closed``   int64 day it was won/lost/disqualified, ``-1`` while open.
    Per amount record (sorted by lead, then day):
      ``amount_lead``, ``amount_day``, ``amount``: the amount known from that day on
      (e.g. the expected amount at creation, then the final value at close).
    Per stage change (sorted by lead, then day; every lead's first change is on its creation day):
      ``stage_lead``, ``stage_day``, ``stage_to`` (index into ``STAGES``).

    Build it with :meth:`from_arrays`, which converts, sorts and checks.
    """

    created: np.ndarray
    owner: np.ndarray
    status: np.ndarray
    closed: np.ndarray
    amount_lead: np.ndarray
    amount_day: np.ndarray
    amount: np.ndarray
    stage_lead: np.ndarray
    stage_day: np.ndarray
    stage_to: np.ndarray
    amount_start: np.ndarray  # per lead, index of its first amount record (derived)
    stage_start: np.ndarray  # per lead, index of its first stage change (derived)
    _cache: dict[str, np.ndarray] = field(default_factory=dict, repr=False)  # derived arrays computed once

    @property
    def n_leads(self) -> int:
        return int(self.created.shape[0])

    @classmethod
    def from_arrays(
        cls,
        *,
        created: np.ndarray,
        status: np.ndarray,
        closed: np.ndarray,
        amount_lead: np.ndarray,
        amount_day: np.ndarray,
        amount: np.ndarray,
        stage_lead: np.ndarray | None = None,
        stage_day: np.ndarray | None = None,
        stage_to: np.ndarray | None = None,
        owner: np.ndarray | None = None,
    ) -> LeadHistory:
        """Normalise caller arrays: dates may be ``datetime64`` or day numbers;
        a closed lead needs a close day; leads whose first stage change is missing or
        later than creation get a ``prospecting`` entry on their creation day."""
        created_d = _days(created)
        n = created_d.shape[0]
        status_a = np.asarray(status, dtype=np.int8)
        closed_d = _days(closed, missing=-1)
        if status_a.shape != (n,) or closed_d.shape != (n,):
            raise ValueError("created, status and closed must have one entry per lead")
        if np.any((status_a != OPEN) & (closed_d < 0)):
            raise ValueError("a won, lost or disqualified lead needs its close day")
        closed_d = np.where(status_a == OPEN, -1, closed_d)
        if np.any((closed_d >= 0) & (closed_d < created_d)):
            raise ValueError("a lead cannot close before it was created")
        owner_a = np.zeros(n, np.int32) if owner is None else np.asarray(owner, dtype=np.int32)

        a_lead = np.asarray(amount_lead, dtype=np.int64)
        a_day = _days(amount_day)
        a_val = np.asarray(amount, dtype=np.float64)
        if not _sorted_by_lead_day(a_lead, a_day):
            order = np.lexsort((a_day, a_lead))
            a_lead, a_day, a_val = a_lead[order], a_day[order], a_val[order]

        if stage_lead is None or stage_day is None or stage_to is None:
            s_lead = np.zeros(0, np.int64)
            s_day = np.zeros(0, np.int64)
            s_to = np.zeros(0, np.int8)
        else:
            s_lead = np.asarray(stage_lead, dtype=np.int64)
            s_day = _days(stage_day)
            if s_lead.size:
                np.maximum(s_day, created_d[s_lead], out=s_day)
            s_to = np.asarray(stage_to, dtype=np.int8)
        # Every lead starts with a stage on its creation day.
        first_day = np.full(n, np.iinfo(np.int64).max)
        np.minimum.at(first_day, s_lead, s_day)
        need = np.flatnonzero(first_day > created_d)
        if need.size:
            s_lead = np.concatenate([s_lead, need])
            s_day = np.concatenate([s_day, created_d[need]])
            s_to = np.concatenate([s_to, np.full(need.size, PROSPECTING, np.int8)])
        # Stable: changes of one lead on one day keep the caller's order (the last is the day's stage).
        if not _sorted_by_lead_day(s_lead, s_day):
            order = np.lexsort((np.arange(s_lead.size), s_day, s_lead))
            s_lead, s_day, s_to = s_lead[order], s_day[order], s_to[order]
        leads = np.arange(n)
        return cls(
            created=created_d,
            owner=owner_a,
            status=status_a,
            closed=closed_d,
            amount_lead=a_lead,
            amount_day=a_day,
            amount=a_val,
            stage_lead=s_lead,
            stage_day=s_day,
            stage_to=s_to,
            amount_start=np.searchsorted(a_lead, leads),
            stage_start=np.searchsorted(s_lead, leads),
        )

    # -- what was knowable at a day -------------------------------------------------

    def closed_before(self, day: int) -> np.ndarray:
        """Mask of leads whose close was on record before ``day``."""
        return (self.closed >= 0) & (self.closed < day)

    def open_at(self, day: int) -> np.ndarray:
        """Mask of leads that existed and were open at the start of ``day``."""
        return (self.created < day) & ~self.closed_before(day)

    def amount_before(self, cutoff: np.ndarray | int) -> np.ndarray:
        """Per lead, the latest amount recorded before ``cutoff`` (a day, or one day per lead); 0 if none."""
        cut = np.broadcast_to(np.asarray(cutoff, dtype=np.int64), (self.n_leads,))
        known = self.amount_day < cut[self.amount_lead]
        idx = _last_index_per_lead(self.amount_lead, self.amount_start, known)
        out = np.zeros(self.n_leads, dtype=np.float64)
        has = idx >= 0
        out[has] = self.amount[idx[has]]
        return out

    def amount_of(self, leads: np.ndarray, cutoff: np.ndarray | int) -> np.ndarray:
        """``amount_before(cutoff)[leads]`` in O(len(leads) · records per lead): for a subset of leads
        (``cutoff``: a day, or one day per lead of the subset)."""
        idx = _last_before(self.amount_day, self.amount_start, leads, cutoff)
        return np.where(idx >= 0, self.amount[np.maximum(idx, 0)] if self.amount.size else 0.0, 0.0)

    def stage_of(self, leads: np.ndarray, cutoff: np.ndarray | int) -> np.ndarray:
        """``stage_before(cutoff)[leads]`` for a subset of leads, as :meth:`amount_of`."""
        idx = _last_before(self.stage_day, self.stage_start, leads, cutoff)
        idx = np.where(idx >= 0, idx, self.stage_start[leads])
        return self.stage_to[np.minimum(idx, self.stage_to.size - 1)].astype(np.int64)

    def won_value(self) -> np.ndarray:
        """Per lead, the amount on record at its close (the revenue of a won lead). Computed once;
        do not modify the array."""
        if "won_value" not in self._cache:
            self._cache["won_value"] = self.amount_before(
                np.where(self.closed >= 0, self.closed + 1, np.iinfo(np.int64).max)
            )
        return self._cache["won_value"]

    def stage_before(self, cutoff: np.ndarray | int) -> np.ndarray:
        """Per lead, the stage index of its latest change before ``cutoff`` (its first stage if none)."""
        cut = np.broadcast_to(np.asarray(cutoff, dtype=np.int64), (self.n_leads,))
        known = self.stage_day < cut[self.stage_lead]
        last = _last_index_per_lead(self.stage_lead, self.stage_start, known)
        # every lead has a change on its creation day, so ``last`` is -1 only before the lead exists
        idx = np.where(last >= 0, last, self.stage_start)
        return self.stage_to[np.minimum(idx, self.stage_to.size - 1)].astype(np.int64)


def _days(values: np.ndarray, missing: int | None = None) -> np.ndarray:
    a = np.asarray(values)
    if np.issubdtype(a.dtype, np.datetime64):
        d = a.astype("datetime64[D]")
        out = d.astype(np.int64)
        if missing is not None:
            out = np.where(np.isnat(d), missing, out)
        return out
    return a.astype(np.int64)


def _sorted_by_lead_day(lead: np.ndarray, day: np.ndarray) -> bool:
    """Are records already ordered by (lead, day)? Then sorting them (stably) would change nothing."""
    if lead.size < 2:
        return True
    if not np.all(lead[1:] >= lead[:-1]):
        return False
    return bool(np.all((lead[1:] > lead[:-1]) | (day[1:] >= day[:-1])))


def _last_before(day: np.ndarray, start: np.ndarray, leads: np.ndarray, cutoff: np.ndarray | int) -> np.ndarray:
    """Per lead in ``leads``, the index of its last record dated before ``cutoff`` (a day, or one per
    lead in ``leads``); -1 if none. Records are sorted by (lead, day) and ``start`` is each lead's
    first record, so the records before the cutoff are a prefix of the lead's: step through the
    prefixes together, k-th records first (a lead has a few records; no search over all of them)."""
    leads = np.asarray(leads, dtype=np.int64)
    found = np.full(leads.size, -1, np.int64)
    if day.size == 0 or leads.size == 0:
        return found
    first = start[leads]
    end = np.append(start, day.size)[leads + 1]
    cut = np.broadcast_to(np.asarray(cutoff, dtype=np.int64), leads.shape)
    active = np.arange(leads.size)
    pos = first
    while active.size:
        ok = pos < end[active]
        ok[ok] = day[pos[ok]] < cut[active[ok]]
        active, pos = active[ok], pos[ok]
        found[active] = pos
        pos = pos + 1
    return found


def _last_index_per_lead(lead: np.ndarray, start: np.ndarray, known: np.ndarray) -> np.ndarray:
    """For records sorted by (lead, day) where ``known`` is a prefix within each lead:
    the index of each lead's last known record, -1 if none. O(records), no Python loop."""
    counts = np.bincount(lead[known], minlength=start.size)
    return np.where(counts > 0, start + counts - 1, -1)
