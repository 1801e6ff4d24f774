"""Typed structs at the pipeline's boundary: what callers send in and get back.

The REST API uses them as request and response bodies, the sync layer as mutation
arguments, the importer for rows, so validation rules live here once. Input
structs reject unknown fields; ``UNSET`` marks a field a partial update leaves
alone (different from ``null``, which clears it).
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Any

import msgspec
from msgspec import UNSET, Meta, UnsetType

from canvass.pipeline.vocabulary import (
    AccountKind,
    ActivityKind,
    B2BKind,
    BuyingRole,
    ClosingMethod,
    ClosingSignal,
    ForecastCategory,
    HandlingMethod,
    LeadStatus,
    LifecycleStage,
    ObjectionStatus,
    ObjectionType,
    Outcome,
    Role,
    SourceChannel,
    Stage,
)

# PostgreSQL text and JSONB cannot hold NUL; refuse it at the edge, for every field.
_NO_NUL = r"^[^\x00]*$"
Name = Annotated[str, Meta(min_length=1, max_length=300, pattern=_NO_NUL)]
ShortText = Annotated[str, Meta(max_length=200, pattern=_NO_NUL)]
LongText = Annotated[str, Meta(max_length=20_000, pattern=_NO_NUL)]
Email = Annotated[str, Meta(min_length=3, max_length=320, pattern=r"^[^@\s\x00]+@[^@\s\x00]+$")]
Currency = Annotated[str, Meta(pattern=r"^[A-Z]{3}$")]
Money = Annotated[float, Meta(ge=0, le=1e12)]
Latitude = Annotated[float, Meta(ge=-90, le=90)]
Longitude = Annotated[float, Meta(ge=-180, le=180)]
Score = Annotated[int, Meta(ge=0, le=5)]
Probability = Annotated[float, Meta(ge=0, le=1)]
Days = Annotated[int, Meta(ge=1, le=3650)]
Timestamp = Annotated[dt.datetime, Meta(tz=True)]
Tags = Annotated[list[Annotated[str, Meta(min_length=1, max_length=50, pattern=_NO_NUL)]], Meta(max_length=50)]
CustomFields = Annotated[
    dict[
        Annotated[str, Meta(min_length=1, max_length=100, pattern=_NO_NUL)],
        Annotated[str, Meta(max_length=2000, pattern=_NO_NUL)] | int | float | bool | None,
    ],
    Meta(max_length=100),
]

# Business time stays within a sane window; also keeps UTC conversion from overflowing.
_EARLIEST = dt.datetime(1900, 1, 1, tzinfo=dt.UTC)
_LATEST = dt.datetime(2200, 1, 1, tzinfo=dt.UTC)


class Input(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Base of every input struct: unknown fields are refused, timestamps checked."""

    def __post_init__(self) -> None:
        for name in self.__struct_fields__:
            value = getattr(self, name)
            if isinstance(value, dt.datetime) and not _EARLIEST <= value <= _LATEST:
                raise ValueError(f"`{name}` must be between 1900 and 2200")
            if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
                if not 1900 <= value.year < 2200:
                    raise ValueError(f"`{name}` must be between 1900 and 2200")


class Output(msgspec.Struct, kw_only=True):
    """Base of every response struct."""


# ---------------------------------------------------------------- accounts


class AccountCreate(Input, kw_only=True):
    id: uuid.UUID | None = None  # made by the client (UUIDv7) or by the server
    name: Name
    kind: AccountKind = AccountKind.PROSPECT
    b2b_kind: B2BKind | None = None
    industry: ShortText | None = None
    size: ShortText | None = None
    region: ShortText | None = None
    address: LongText | None = None
    latitude: Latitude | None = None
    longitude: Longitude | None = None
    owner_id: uuid.UUID | None = None  # default: the caller
    territory_id: uuid.UUID | None = None
    credit_rating: Annotated[str, Meta(max_length=20, pattern=_NO_NUL)] | None = None
    credit_limit: Money | None = None
    annual_demand: Money | None = None
    contact_cycle_days: Days = 30
    lifecycle_stage: LifecycleStage = LifecycleStage.PROSPECT
    tags: Tags = msgspec.field(default_factory=list)
    custom_fields: CustomFields = msgspec.field(default_factory=dict)


class AccountUpdate(Input, kw_only=True):
    name: Name | UnsetType = UNSET
    kind: AccountKind | UnsetType = UNSET
    b2b_kind: B2BKind | UnsetType | None = UNSET
    industry: ShortText | UnsetType | None = UNSET
    size: ShortText | UnsetType | None = UNSET
    region: ShortText | UnsetType | None = UNSET
    address: LongText | UnsetType | None = UNSET
    latitude: Latitude | UnsetType | None = UNSET
    longitude: Longitude | UnsetType | None = UNSET
    owner_id: uuid.UUID | UnsetType = UNSET
    territory_id: uuid.UUID | UnsetType | None = UNSET
    credit_rating: Annotated[str, Meta(max_length=20, pattern=_NO_NUL)] | UnsetType | None = UNSET
    credit_limit: Money | UnsetType | None = UNSET
    annual_demand: Money | UnsetType | None = UNSET
    contact_cycle_days: Days | UnsetType = UNSET
    lifecycle_stage: LifecycleStage | UnsetType = UNSET
    tags: Tags | UnsetType = UNSET
    custom_fields: CustomFields | UnsetType = UNSET


class AccountOut(Output, kw_only=True):
    id: uuid.UUID
    name: str
    kind: str
    b2b_kind: str | None
    industry: str | None
    size: str | None
    region: str | None
    address: str | None
    latitude: float | None
    longitude: float | None
    owner_id: uuid.UUID
    territory_id: uuid.UUID | None
    credit_rating: str | None
    credit_limit: float | None
    annual_demand: float | None
    contact_cycle_days: int
    lifecycle_stage: str
    abc_class: str | None
    tags: list[str]
    custom_fields: dict[str, Any]
    created_at: dt.datetime
    updated_at: dt.datetime
    version: int


# ---------------------------------------------------------------- contacts

Consent = Annotated[
    dict[Annotated[str, Meta(pattern=r"^(phone|email|sms|visit|mail|chat)$")], bool], Meta(max_length=6)
]


class ContactCreate(Input, kw_only=True):
    id: uuid.UUID | None = None
    account_id: uuid.UUID
    name: Name
    title: ShortText | None = None
    phone: Annotated[str, Meta(max_length=50, pattern=_NO_NUL)] | None = None
    email: Email | None = None
    buying_role: BuyingRole | None = None
    consent: Consent = msgspec.field(default_factory=dict)  # e.g. {"phone": true, "email": false}
    birthday: dt.date | None = None


class ContactUpdate(Input, kw_only=True):
    name: Name | UnsetType = UNSET
    title: ShortText | UnsetType | None = UNSET
    phone: Annotated[str, Meta(max_length=50, pattern=_NO_NUL)] | UnsetType | None = UNSET
    email: Email | UnsetType | None = UNSET
    buying_role: BuyingRole | UnsetType | None = UNSET
    consent: Consent | UnsetType = UNSET
    birthday: dt.date | UnsetType | None = UNSET


class ContactOut(Output, kw_only=True):
    id: uuid.UUID
    account_id: uuid.UUID
    name: str
    title: str | None
    phone: str | None
    email: str | None
    buying_role: str | None
    consent: dict[str, bool]
    birthday: dt.date | None
    created_at: dt.datetime
    updated_at: dt.datetime
    version: int


# ---------------------------------------------------------------- leads


class Qualification(Input, kw_only=True):
    """The four criteria scored 0–5 (需求度, 购买力, 决策权, 信誉度), budget and timing."""

    need: Score | None = None
    purchasing_power: Score | None = None
    decision_authority: Score | None = None
    creditworthiness: Score | None = None
    budget: Money | None = None
    timing: ShortText | None = None


class VisitPlan(Input, kw_only=True):
    """拜访计划: what the first meeting is for and how the rep will approach it."""

    planned_date: dt.date | None = None
    goal: LongText | None = None
    approach_method: ShortText | None = None


class LeadCreate(Input, kw_only=True):
    id: uuid.UUID | None = None
    title: Name
    external_ref: Annotated[str, Meta(min_length=1, max_length=100, pattern=_NO_NUL)] | None = None
    account_id: uuid.UUID | None = None
    primary_contact_id: uuid.UUID | None = None
    owner_id: uuid.UUID | None = None  # default: the caller
    source_channel: SourceChannel | None = None
    product_interest: ShortText | None = None
    amount: Money | None = None
    currency: Currency = "USD"
    expected_close_date: dt.date | None = None
    forecast_category: ForecastCategory = ForecastCategory.PIPELINE
    probability_override: Probability | None = None
    qualification: Qualification | None = None
    visit_plan: VisitPlan | None = None
    next_step: LongText | None = None


class LeadUpdate(Input, kw_only=True):
    """Fields a rep edits freely. Stage and status change only through moves."""

    title: Name | UnsetType = UNSET
    account_id: uuid.UUID | UnsetType | None = UNSET
    primary_contact_id: uuid.UUID | UnsetType | None = UNSET
    owner_id: uuid.UUID | UnsetType = UNSET
    source_channel: SourceChannel | UnsetType | None = UNSET
    product_interest: ShortText | UnsetType | None = UNSET
    amount: Money | UnsetType | None = UNSET
    currency: Currency | UnsetType = UNSET
    expected_close_date: dt.date | UnsetType | None = UNSET
    forecast_category: ForecastCategory | UnsetType = UNSET
    probability_override: Probability | UnsetType | None = UNSET
    qualification: Qualification | UnsetType = UNSET
    visit_plan: VisitPlan | UnsetType = UNSET
    next_step: LongText | UnsetType | None = UNSET
    closing_signals: Annotated[list[ClosingSignal], Meta(max_length=10)] | UnsetType = UNSET


class LeadOut(Output, kw_only=True):
    id: uuid.UUID
    title: str
    external_ref: str | None
    account_id: uuid.UUID | None
    primary_contact_id: uuid.UUID | None
    owner_id: uuid.UUID
    source_channel: str | None
    product_interest: str | None
    amount: float | None
    currency: str
    expected_close_date: dt.date | None
    stage: Stage
    status: LeadStatus
    stage_entered_at: dt.datetime
    forecast_category: str
    probability: float
    probability_override: float | None
    qualification: dict[str, Any]
    qualification_score: int | None
    qualification_override_reason: str | None
    visit_plan: dict[str, Any]
    next_step: str | None
    closing_signals: list[str]
    closing_method: str | None
    loss_reason: str | None
    competitor: str | None
    lost_at_stage: str | None
    closed_at: dt.datetime | None
    created_at: dt.datetime
    updated_at: dt.datetime
    version: int


class StageMove(Input, kw_only=True):
    """Move a lead forward to ``to_stage`` (the next stage; ``close`` from negotiate
    when no objection was raised; ``after_sale`` once won)."""

    to_stage: Stage
    note: LongText | None = None
    # A manager may let a lead leave `qualify` below the threshold, with a reason.
    override_reason: LongText | None = None
    at: Timestamp | None = None  # business time of the move; default now


class OutcomeRecord(Input, kw_only=True):
    """Decide a deal: ``won`` (in close, with its amount), ``lost`` (from any open
    stage, with reason and competitor) or ``disqualified`` (prospecting/qualify)."""

    outcome: Outcome
    amount: Money | None = None
    loss_reason: LongText | None = None
    competitor: ShortText | None = None
    closing_method: ClosingMethod | None = None
    closing_signals: Annotated[list[ClosingSignal], Meta(max_length=10)] | None = None
    note: LongText | None = None
    at: Timestamp | None = None


class Reopen(Input, kw_only=True):
    note: LongText | None = None


class StageChangeOut(Output, kw_only=True):
    id: uuid.UUID
    lead_id: uuid.UUID
    from_stage: Stage | None
    to_stage: Stage
    status: LeadStatus
    amount: float | None
    at: dt.datetime
    from_stage_entered_at: dt.datetime | None
    by_user_id: uuid.UUID | None
    by_device_id: str | None
    note: str | None
    imported: bool


# ---------------------------------------------------------------- activities


class ActivityCreate(Input, kw_only=True):
    id: uuid.UUID | None = None
    kind: ActivityKind
    lead_id: uuid.UUID | None = None
    account_id: uuid.UUID | None = None
    contact_id: uuid.UUID | None = None
    subject: Annotated[str, Meta(max_length=300, pattern=_NO_NUL)] | None = None
    notes: LongText | None = None
    occurred_at: Timestamp | None = None
    planned_at: Timestamp | None = None  # visits: the planned time
    goal: LongText | None = None
    approach_method: ShortText | None = None
    due_at: Timestamp | None = None  # tasks
    completed_at: Timestamp | None = None  # meetings, calls, tasks done


class CheckIn(Input, kw_only=True):
    """A visit check-in or check-out: when and where the rep was."""

    at: Timestamp | None = None
    latitude: Latitude
    longitude: Longitude


class ActivityComplete(Input, kw_only=True):
    at: Timestamp | None = None
    notes: LongText | None = None


class ActivityOut(Output, kw_only=True):
    id: uuid.UUID
    kind: ActivityKind
    owner_id: uuid.UUID
    lead_id: uuid.UUID | None
    account_id: uuid.UUID | None
    contact_id: uuid.UUID | None
    subject: str | None
    notes: str | None
    occurred_at: dt.datetime | None
    planned_at: dt.datetime | None
    goal: str | None
    approach_method: str | None
    due_at: dt.datetime | None
    completed_at: dt.datetime | None
    check_in_at: dt.datetime | None
    check_in_latitude: float | None
    check_in_longitude: float | None
    check_out_at: dt.datetime | None
    check_out_latitude: float | None
    check_out_longitude: float | None
    created_at: dt.datetime
    updated_at: dt.datetime
    version: int


# ---------------------------------------------------------------- objections


class ObjectionCreate(Input, kw_only=True):
    id: uuid.UUID | None = None
    type: ObjectionType
    statement: Annotated[str, Meta(min_length=1, max_length=20_000, pattern=_NO_NUL)]
    handling_method: HandlingMethod | None = None
    response: LongText | None = None
    status: ObjectionStatus = ObjectionStatus.OPEN


class ObjectionUpdate(Input, kw_only=True):
    handling_method: HandlingMethod | UnsetType | None = UNSET
    response: LongText | UnsetType | None = UNSET
    status: ObjectionStatus | UnsetType = UNSET


class ObjectionOut(Output, kw_only=True):
    id: uuid.UUID
    lead_id: uuid.UUID
    type: ObjectionType
    statement: str
    handling_method: str | None
    response: str | None
    status: ObjectionStatus
    raised_by_id: uuid.UUID | None
    created_at: dt.datetime
    updated_at: dt.datetime
    version: int


# ---------------------------------------------------------------- people


class UserCreate(Input, kw_only=True):
    id: uuid.UUID | None = None
    email: Email
    name: Name
    role: Role = Role.REP
    team_id: uuid.UUID | None = None
    password: Annotated[str, Meta(min_length=8, max_length=200, pattern=_NO_NUL)]
    territory_ids: Annotated[list[uuid.UUID], Meta(max_length=100)] = msgspec.field(default_factory=list)


class UserUpdate(Input, kw_only=True):
    name: Name | UnsetType = UNSET
    role: Role | UnsetType = UNSET
    team_id: uuid.UUID | UnsetType | None = UNSET
    active: bool | UnsetType = UNSET
    password: Annotated[str, Meta(min_length=8, max_length=200, pattern=_NO_NUL)] | UnsetType = UNSET
    territory_ids: Annotated[list[uuid.UUID], Meta(max_length=100)] | UnsetType = UNSET


class UserOut(Output, kw_only=True):
    id: uuid.UUID
    email: str
    name: str
    role: Role
    team_id: uuid.UUID | None
    active: bool
    territory_ids: list[uuid.UUID]
    created_at: dt.datetime
    updated_at: dt.datetime
    version: int


class TeamCreate(Input, kw_only=True):
    id: uuid.UUID | None = None
    name: Name
    parent_id: uuid.UUID | None = None
    manager_id: uuid.UUID | None = None


class TeamUpdate(Input, kw_only=True):
    name: Name | UnsetType = UNSET
    manager_id: uuid.UUID | UnsetType | None = UNSET


class TeamOut(Output, kw_only=True):
    id: uuid.UUID
    name: str
    parent_id: uuid.UUID | None
    manager_id: uuid.UUID | None
    created_at: dt.datetime
    updated_at: dt.datetime
    version: int


class TerritoryCreate(Input, kw_only=True):
    id: uuid.UUID | None = None
    name: Name
    region: ShortText | None = None


class TerritoryOut(Output, kw_only=True):
    id: uuid.UUID
    name: str
    region: str | None
    created_at: dt.datetime
    updated_at: dt.datetime
    version: int


# ---------------------------------------------------------------- pages


class LeadPage(Output, kw_only=True):
    items: list[LeadOut]
    next_cursor: str | None


class AccountPage(Output, kw_only=True):
    items: list[AccountOut]
    next_cursor: str | None


class ContactPage(Output, kw_only=True):
    items: list[ContactOut]
    next_cursor: str | None


class ActivityPage(Output, kw_only=True):
    items: list[ActivityOut]
    next_cursor: str | None


class UserPage(Output, kw_only=True):
    items: list[UserOut]
    next_cursor: str | None
