"""Tables the sync layer keeps beside the pipeline's own (see PROTOCOL.md).

Same tenant rules as every other table (SPEC §7): the primary key starts with
``organization_id`` and so does every index, so the whole change feed of a tenant
lives on one shard.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import BigInteger, ForeignKeyConstraint, Index, Integer, LargeBinary, String, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from canvass.db import Base, JSONType, UTCDateTime, utcnow
from canvass.pipeline.models import Synced, TenantMixin, Versioned


class SyncClock(Base):
    """The tenant's change-feed position: advanced once per publication of the
    tenant's written rows, under this row's lock until that publication commits
    (so versions become visible in order — PROTOCOL.md, "Change feed")."""

    __tablename__ = "sync_clocks"

    organization_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger, default=0)


class Device(Base):
    """One installation of the app, registered to one user. It keeps the
    exactly-once state (the last seq applied) and what managers see of its
    freshness."""

    __tablename__ = "sync_devices"

    organization_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    device_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    user_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    name: Mapped[str | None] = mapped_column(String(200))
    platform: Mapped[str | None] = mapped_column(String(50))
    last_applied_seq: Mapped[int] = mapped_column(BigInteger, default=0)
    registered_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_push_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    last_pull_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    # As reported with the last push: age of the oldest mutation still unsynced.
    oldest_pending_age_s: Mapped[int | None] = mapped_column(Integer)

    __table_args__ = (
        ForeignKeyConstraint(["organization_id", "user_id"], ["users.organization_id", "users.id"]),
        Index("ix_sync_devices_org_user", "organization_id", "user_id"),
    )


class SyncReceipt(Base):
    """The stored answer to one applied mutation: a repeated push is answered
    from here and applies nothing again. Written in the same transaction as the
    mutation's effects."""

    __tablename__ = "sync_receipts"

    organization_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    device_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    receipt: Mapped[bytes] = mapped_column(LargeBinary)  # the wire Receipt, as JSON
    applied_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        ForeignKeyConstraint(
            ["organization_id", "device_id"], ["sync_devices.organization_id", "sync_devices.device_id"]
        ),
    )


class SyncConflict(TenantMixin, Synced, Versioned, Base):
    """Two edits of the same field (or an edit and a delete) that met on the
    server: both values, who made each and when. ``open`` ones wait for a person;
    ``auto_resolved`` ones were settled by the field's policy and are kept so no
    value anyone typed is ever lost."""

    __tablename__ = "sync_conflicts"

    entity: Mapped[str] = mapped_column(String(20))
    record_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    owner_id: Mapped[uuid.UUID] = mapped_column(Uuid)  # the record's owner: who sees the conflict
    field: Mapped[str | None] = mapped_column(String(50))  # null: edit versus delete
    policy: Mapped[str] = mapped_column(String(20))
    status: Mapped[str] = mapped_column(String(16))
    server_value: Mapped[Any] = mapped_column(JSONType, nullable=True)
    device_value: Mapped[Any] = mapped_column(JSONType, nullable=True)
    server_hlc: Mapped[str | None] = mapped_column(String(130))
    device_hlc: Mapped[str] = mapped_column(String(130))
    device_id: Mapped[str] = mapped_column(String(100))
    seq: Mapped[int] = mapped_column(BigInteger)
    pushed_by_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    winner: Mapped[str | None] = mapped_column(String(16))  # server | device | new_value
    resolved_value: Mapped[Any] = mapped_column(JSONType, nullable=True)
    resolved_by_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    resolved_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        ForeignKeyConstraint(["organization_id", "owner_id"], ["users.organization_id", "users.id"]),
        Index("ix_sync_conflicts_org_server_version", "organization_id", "server_version", "id"),
        Index("ix_sync_conflicts_org_owner_status", "organization_id", "owner_id", "status"),
        Index("ix_sync_conflicts_org_record", "organization_id", "record_id"),
    )


class SyncDeparture(TenantMixin, Synced, Base):
    """A record whose owner changed: devices of people who could see it through
    the former owner must drop it if they no longer can (PROTOCOL.md, "Pull")."""

    __tablename__ = "sync_departures"

    entity: Mapped[str] = mapped_column(String(20))
    record_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    from_owner_id: Mapped[uuid.UUID] = mapped_column(Uuid)

    __table_args__ = (Index("ix_sync_departures_org_server_version", "organization_id", "server_version", "id"),)
