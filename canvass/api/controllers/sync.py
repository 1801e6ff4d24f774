"""Offline sync: devices, push, pull (PROTOCOL.md) and the conflicts they leave."""

from __future__ import annotations

import uuid
from typing import Annotated

from litestar import Controller, Response, get, post
from litestar.datastructures import State
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import JSONBody, Parameter
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED

from canvass.api.deps import CurrentActor, Cursor, Db, Limit, to_out
from canvass.api.problems import PROBLEM_RESPONSES
from canvass.sync import conflicts, devices, pull, push
from canvass.sync.conflicts import ConflictOut, ConflictPage, Resolution
from canvass.sync.devices import DeviceOut
from canvass.sync.merge import ConflictStatus
from canvass.sync.wire import (
    DEFAULT_PULL_LIMIT,
    MAX_PULL_LIMIT,
    DeviceRegistration,
    PullResponse,
    PushRequest,
    PushResponse,
)

# A full outbox (1,000 mutations) with notes and visit reports fits in 5 MiB.
MAX_PUSH_BYTES = 5 * 1024 * 1024

DeviceParam = Annotated[
    str, Parameter(pattern=r"^[A-Za-z0-9._:-]{1,100}$", description="The device's own id, as registered.")
]
FeedCursor = Annotated[
    str,
    Parameter(
        pattern=r"^\d{1,18}(\.\d\.[0-9a-fA-F-]{36})?$",
        description="`cursor` from the previous pull; `0` to bootstrap a new device.",
    ),
]
PullLimit = Annotated[int, Parameter(ge=1, le=MAX_PULL_LIMIT, description=f"Records per page (1–{MAX_PULL_LIMIT}).")]


class SyncController(Controller):
    path = "/api/v1/sync"
    tags = ["sync"]

    @post(
        "/devices",
        operation_id="registerDevice",
        responses={
            **PROBLEM_RESPONSES,
            200: ResponseSpec(data_container=DeviceOut, description="Already registered to you: confirmed"),
        },
        status_code=HTTP_201_CREATED,
    )
    async def register_device(
        self, db: Db, actor: CurrentActor, data: JSONBody[DeviceRegistration]
    ) -> Response[DeviceOut]:
        """Register this device to the caller (201), or confirm it (200)."""
        device, new = await devices.register_device(db, actor, data)
        return Response(devices.device_out(device), status_code=HTTP_201_CREATED if new else HTTP_200_OK)

    @get("/devices", operation_id="listDevices", responses=PROBLEM_RESPONSES)
    async def list_devices(self, db: Db, actor: CurrentActor) -> list[DeviceOut]:
        """When each device in your scope last pushed and pulled, and how old its
        oldest unsynced edit is: how fresh the server's picture of each rep is."""
        return list(await devices.list_devices(db, actor))

    @post(
        "/push",
        operation_id="pushMutations",
        responses=PROBLEM_RESPONSES,
        status_code=HTTP_200_OK,
        request_max_body_size=MAX_PUSH_BYTES,
    )
    async def push(self, db: Db, actor: CurrentActor, data: JSONBody[PushRequest], state: State) -> PushResponse:
        """Apply the device's queued mutations exactly once, in seq order; one
        receipt per mutation. A repeated push is answered from stored receipts."""
        response = await push.push(db, actor, data)
        # Commit, then wait for the process's publisher to publish what the push
        # wrote (one round for every push committed meanwhile), so that the
        # device's next pull finds its own changes. The push is applied once
        # committed: if publishing fails or is slow, a later round or pull
        # publishes it, and the receipts still go back.
        await db.commit()
        await state.publisher.published(actor.organization_id)
        return response

    @get("/pull", operation_id="pullChanges", responses=PROBLEM_RESPONSES)
    async def pull(
        self,
        db: Db,
        actor: CurrentActor,
        device_id: DeviceParam,
        cursor: FeedCursor = "0",
        limit: PullLimit = DEFAULT_PULL_LIMIT,
    ) -> PullResponse:
        """Records in your scope changed since `cursor`, and the ones to drop."""
        return await pull.pull(db, actor, device_id, cursor, limit)


class ConflictController(Controller):
    path = "/api/v1/conflicts"
    tags = ["sync"]

    @get(operation_id="listConflicts", responses=PROBLEM_RESPONSES)
    async def list_conflicts(
        self,
        db: Db,
        actor: CurrentActor,
        status: ConflictStatus | None = None,
        limit: Limit = 50,
        cursor: Cursor = None,
    ) -> ConflictPage:
        """Conflicts on your records (a manager: the team's), newest first."""
        rows, next_cursor = await conflicts.list_conflicts(db, actor, status=status, limit=limit, cursor=cursor)
        return ConflictPage(items=[to_out(ConflictOut, r) for r in rows], next_cursor=next_cursor)

    @get("/{conflict_id:uuid}", operation_id="getConflict", responses=PROBLEM_RESPONSES)
    async def get_conflict(self, db: Db, actor: CurrentActor, conflict_id: uuid.UUID) -> ConflictOut:
        return to_out(ConflictOut, await conflicts.get_conflict(db, actor, conflict_id))

    @post(
        "/{conflict_id:uuid}/resolve",
        operation_id="resolveConflict",
        responses=PROBLEM_RESPONSES,
        status_code=HTTP_200_OK,
    )
    async def resolve(
        self, db: Db, actor: CurrentActor, conflict_id: uuid.UUID, data: JSONBody[Resolution]
    ) -> ConflictOut:
        """Keep the server's value, take the device's, or enter a new one. The
        resolution is a change like any other: it reaches every device."""
        return to_out(ConflictOut, await conflicts.resolve_conflict(db, actor, conflict_id, data))
