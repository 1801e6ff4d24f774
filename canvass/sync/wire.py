"""What travels between a device and the server: the sync protocol's wire structs.

This module is the whole contract (see PROTOCOL.md). It depends on nothing but
msgspec, so the reference offline client in ``canvass.clients`` — and a mobile
team mirroring it — can use it without the server's ORM or web framework.
Records travel as plain JSON objects: a device stores what it is sent.
"""

from __future__ import annotations

import enum
import uuid
from typing import Annotated, Any

import msgspec
from msgspec import Meta

MAX_MUTATIONS_PER_PUSH = 1000
DEFAULT_PULL_LIMIT = 500
MAX_PULL_LIMIT = 5000

# "<wall ms>-<counter>-<node>": see canvass.sync.hlc
HlcText = Annotated[str, Meta(pattern=r"^\d{1,15}-\d{1,9}-[A-Za-z0-9._:-]{1,100}$", max_length=130)]
DeviceId = Annotated[str, Meta(pattern=r"^[A-Za-z0-9._:-]{1,100}$")]
Seq = Annotated[int, Meta(ge=1, le=2**53)]
# "<entity>:<uuid>" -> the row version (the record's ETag) the device last saw
BaseKey = Annotated[str, Meta(pattern=r"^[a-z_]{1,20}:[0-9a-fA-F-]{36}$")]


class MutationName(enum.StrEnum):
    """Every intent a device can queue. Arguments are the REST API's own input
    structs (``canvass.pipeline.schemas``), so a rule refuses the same way online
    and offline; ``id`` names the record for everything but creates, whose id the
    device makes (UUIDv7)."""

    ACCOUNT_CREATE = "account.create"  # args: AccountCreate (with id)
    ACCOUNT_UPDATE = "account.update"  # args: {id, fields: AccountUpdate}
    ACCOUNT_DELETE = "account.delete"  # args: {id}
    CONTACT_CREATE = "contact.create"  # args: ContactCreate (with id)
    CONTACT_UPDATE = "contact.update"  # args: {id, fields: ContactUpdate}
    CONTACT_DELETE = "contact.delete"  # args: {id}
    LEAD_CREATE = "lead.create"  # args: LeadCreate (with id)
    LEAD_UPDATE = "lead.update"  # args: {id, fields: LeadUpdate}
    LEAD_DELETE = "lead.delete"  # args: {id}
    LEAD_MOVE_STAGE = "lead.move_stage"  # args: {id, to_stage, note?, override_reason?, at?}
    LEAD_RECORD_OUTCOME = "lead.record_outcome"  # args: {id, outcome, amount?, loss_reason?, …}
    ACTIVITY_LOG = "activity.log"  # args: ActivityCreate (with id)
    ACTIVITY_CHECK_IN = "activity.check_in"  # args: {id, latitude, longitude, at?}
    ACTIVITY_CHECK_OUT = "activity.check_out"  # args: {id, latitude, longitude, at?}
    ACTIVITY_COMPLETE = "activity.complete"  # args: {id, at?, notes?}
    OBJECTION_ADD = "objection.add"  # args: {lead_id, …ObjectionCreate (with id)}
    OBJECTION_UPDATE = "objection.update"  # args: {id, fields: ObjectionUpdate}


class Entity(enum.StrEnum):
    """The kinds of record a device holds."""

    ACCOUNT = "account"
    CONTACT = "contact"
    LEAD = "lead"
    STAGE_CHANGE = "stage_change"
    ACTIVITY = "activity"
    OBJECTION = "objection"
    CONFLICT = "conflict"


class ReceiptStatus(enum.StrEnum):
    APPLIED = "applied"  # done as asked
    MERGED = "merged"  # done, but some field kept or took another edit's value (see fields)
    CONFLICT = "conflict"  # a person must decide; the losing value is in the conflict
    REJECTED = "rejected"  # a rule refused it; nothing of it was applied


class Mutation(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    seq: Seq
    name: MutationName
    args: dict[str, Any]
    hlc: HlcText
    base: dict[BaseKey, Annotated[int, Meta(ge=0)]] = msgspec.field(default_factory=dict)


class PushRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    device_id: DeviceId
    # At most MAX_MUTATIONS_PER_PUSH: more is refused with 413 (checked by the
    # server, so the refusal says what to do rather than failing validation).
    mutations: Annotated[list[Mutation], Meta(description=f"In seq order; at most {MAX_MUTATIONS_PER_PUSH} per push.")]
    # Age in seconds of the oldest mutation still in the device's outbox
    # (including this push): how stale the server's picture of this rep may be.
    oldest_pending_age_s: Annotated[int, Meta(ge=0)] | None = None


class Receipt(msgspec.Struct, kw_only=True, omit_defaults=True):
    seq: int
    status: ReceiptStatus
    # merged / conflict: the fields concerned
    fields: list[str] = msgspec.field(default_factory=list)
    conflict_id: uuid.UUID | None = None
    # rejected: the rule (or error code) and a message a person can read
    rule: str | None = None
    message: str | None = None


class PushResponse(msgspec.Struct, kw_only=True):
    device_id: str
    last_applied_seq: int
    receipts: list[Receipt]


class Change(msgspec.Struct, kw_only=True):
    """A record as the server has it now (the whole record, not a diff)."""

    entity: Entity
    id: uuid.UUID
    server_version: int
    data: dict[str, Any]


class RemovalReason(enum.StrEnum):
    DELETED = "deleted"
    OUT_OF_SCOPE = "out_of_scope"  # e.g. the lead was reassigned to another rep


class Removal(msgspec.Struct, kw_only=True):
    """A record the device must drop. Dropping a lead drops its stage changes,
    activities and objections with it; dropping an account drops its contacts."""

    entity: Entity
    id: uuid.UUID
    server_version: int
    reason: RemovalReason


class PullResponse(msgspec.Struct, kw_only=True):
    changes: list[Change]
    removals: list[Removal]
    # Pass back as `cursor` for the next page; when `has_more` is false the
    # device is up to date as of this cursor.
    cursor: str
    has_more: bool
    last_applied_seq: int


class DeviceRegistration(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    device_id: DeviceId
    name: Annotated[str, Meta(max_length=200, pattern=r"^[^\x00]*$")] | None = None
    platform: Annotated[str, Meta(max_length=50, pattern=r"^[^\x00]*$")] | None = None


def base_key(entity: Entity | str, record_id: uuid.UUID | str) -> str:
    return f"{entity}:{record_id}"
