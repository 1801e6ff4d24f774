"""Devices: registration, the lookup every push and pull starts from, and the
freshness managers see."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence

import msgspec
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from canvass.db import utcnow
from canvass.errors import Forbidden, NotFound
from canvass.pipeline.models import User
from canvass.pipeline.scope import Actor, visible_owner
from canvass.sync.models import Device
from canvass.sync.wire import DeviceRegistration


class DeviceOut(msgspec.Struct, kw_only=True):
    device_id: str
    user_id: uuid.UUID
    user_name: str | None = None
    name: str | None
    platform: str | None
    registered_at: dt.datetime
    last_push_at: dt.datetime | None
    last_pull_at: dt.datetime | None
    last_applied_seq: int
    oldest_pending_age_s: int | None
    # Seconds since the device last pushed or pulled, whichever is later.
    silent_for_s: int | None


def device_out(device: Device, user_name: str | None = None, now: dt.datetime | None = None) -> DeviceOut:
    seen = max((t for t in (device.last_push_at, device.last_pull_at) if t is not None), default=None)
    silent = None if seen is None else int(((now or utcnow()) - seen).total_seconds())
    return DeviceOut(
        device_id=device.device_id,
        user_id=device.user_id,
        user_name=user_name,
        name=device.name,
        platform=device.platform,
        registered_at=device.registered_at,
        last_push_at=device.last_push_at,
        last_pull_at=device.last_pull_at,
        last_applied_seq=device.last_applied_seq,
        oldest_pending_age_s=device.oldest_pending_age_s,
        silent_for_s=silent,
    )


async def register_device(session: AsyncSession, actor: Actor, data: DeviceRegistration) -> tuple[Device, bool]:
    """Register a device to the caller; registering it again is harmless.
    Returns the device and whether it is new."""
    device = await session.get(Device, (actor.organization_id, data.device_id))
    if device is not None:
        if device.user_id != actor.user_id:
            raise Forbidden("This device is registered to another user.", field="device_id")
        device.name = data.name or device.name
        device.platform = data.platform or device.platform
        await session.flush()
        return device, False
    device = Device(
        organization_id=actor.organization_id,
        device_id=data.device_id,
        user_id=actor.user_id,
        name=data.name,
        platform=data.platform,
        last_applied_seq=0,
        registered_at=utcnow(),
    )
    session.add(device)
    await session.flush()
    return device, True


async def own_device(session: AsyncSession, actor: Actor, device_id: str, *, for_update: bool = False) -> Device:
    """The caller's device. Locked for a push: pushes of one device apply one
    after the other, so a seq is never applied twice."""
    stmt = select(Device).where(Device.organization_id == actor.organization_id, Device.device_id == device_id)
    if for_update:
        stmt = stmt.with_for_update()
    device = await session.scalar(stmt)
    if device is None:
        raise NotFound(
            f"Device {device_id} is not registered; register it at POST /api/v1/sync/devices.",
            resource="device",
            id=device_id,
            field="device_id",
        )
    if device.user_id != actor.user_id:
        raise Forbidden("This device is registered to another user.", field="device_id")
    return device


async def list_devices(session: AsyncSession, actor: Actor) -> Sequence[DeviceOut]:
    """Devices of the people the caller can see: a rep their own, a manager the
    team subtree's, an admin the tenant's."""
    rows = (
        await session.execute(
            select(Device, User.name)
            .join(User, (User.organization_id == Device.organization_id) & (User.id == Device.user_id))
            .where(Device.organization_id == actor.organization_id, visible_owner(actor, Device.user_id))
            .order_by(User.name, Device.device_id)
        )
    ).all()
    now = utcnow()
    return [device_out(device, name, now) for device, name in rows]


async def silent_owners(session: AsyncSession, actor: Actor, since: dt.datetime) -> set[uuid.UUID] | None:
    """People in the caller's scope who sync from devices but none of whose
    devices has pushed or pulled since ``since``. None when nobody in scope has a
    registered device (the team works online: there is nothing to wait for)."""
    rows = (
        await session.execute(
            select(
                Device.user_id,
                func.max(Device.registered_at),
                func.max(Device.last_push_at),
                func.max(Device.last_pull_at),
            )
            .where(Device.organization_id == actor.organization_id, visible_owner(actor, Device.user_id))
            .group_by(Device.user_id)
        )
    ).all()
    if not rows:
        return None
    silent = set()
    for user_id, registered, push, pull in rows:
        # A device that never synced counts from its registration.
        seen = max(t for t in (push, pull, registered) if t is not None)
        if seen < since:
            silent.add(user_id)
    return silent
