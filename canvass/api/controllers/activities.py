"""Activities (visits with check-in/out, calls, meetings, tasks…) and objections."""

from __future__ import annotations

import uuid
from typing import Literal

from litestar import Controller, Response, get, patch, post
from litestar.params import JSONBody
from litestar.status_codes import HTTP_201_CREATED

from canvass.api.deps import (
    CurrentActor,
    Cursor,
    Db,
    IfMatch,
    Limit,
    parse_if_match,
    to_out,
    with_etag,
)
from canvass.api.problems import PROBLEM_RESPONSES
from canvass.pipeline.schemas import (
    ActivityComplete,
    ActivityCreate,
    ActivityOut,
    ActivityPage,
    CheckIn,
    ObjectionCreate,
    ObjectionOut,
    ObjectionUpdate,
)
from canvass.pipeline.services import activities as service
from canvass.pipeline.vocabulary import ActivityKind


class ActivityController(Controller):
    path = "/api/v1/activities"
    tags = ["activities"]

    @get(operation_id="listActivities", responses=PROBLEM_RESPONSES)
    async def list_activities(
        self,
        db: Db,
        actor: CurrentActor,
        lead_id: uuid.UUID | None = None,
        account_id: uuid.UUID | None = None,
        owner_id: uuid.UUID | None = None,
        kind: ActivityKind | None = None,
        open_tasks: bool = False,
        sort: Literal["created_at", "-created_at"] = "-created_at",
        limit: Limit = 50,
        cursor: Cursor = None,
    ) -> ActivityPage:
        filters = service.ActivityFilters(
            lead_id=lead_id, account_id=account_id, owner_id=owner_id, kind=kind, open_tasks=open_tasks
        )
        rows, next_cursor = await service.list_activities(db, actor, filters, sort=sort, limit=limit, cursor=cursor)
        return ActivityPage(items=[to_out(ActivityOut, r) for r in rows], next_cursor=next_cursor)

    @post(operation_id="logActivity", responses=PROBLEM_RESPONSES, status_code=HTTP_201_CREATED)
    async def log_activity(self, db: Db, actor: CurrentActor, data: JSONBody[ActivityCreate]) -> Response[ActivityOut]:
        """Log a visit (with its plan), call, e-mail, meeting, demo, note or task on
        a lead or an account."""
        return with_etag(to_out(ActivityOut, await service.log_activity(db, actor, data)), HTTP_201_CREATED)

    @get("/{activity_id:uuid}", operation_id="getActivity", responses=PROBLEM_RESPONSES)
    async def get_activity(self, db: Db, actor: CurrentActor, activity_id: uuid.UUID) -> Response[ActivityOut]:
        return with_etag(to_out(ActivityOut, await service.get_activity(db, actor, activity_id)))

    @post("/{activity_id:uuid}/check-in", operation_id="checkInVisit", responses=PROBLEM_RESPONSES, status_code=200)
    async def check_in(
        self, db: Db, actor: CurrentActor, activity_id: uuid.UUID, data: JSONBody[CheckIn]
    ) -> Response[ActivityOut]:
        """The rep arrived at the visit: time and location."""
        return with_etag(to_out(ActivityOut, await service.check_in(db, actor, activity_id, data)))

    @post("/{activity_id:uuid}/check-out", operation_id="checkOutVisit", responses=PROBLEM_RESPONSES, status_code=200)
    async def check_out(
        self, db: Db, actor: CurrentActor, activity_id: uuid.UUID, data: JSONBody[CheckIn]
    ) -> Response[ActivityOut]:
        return with_etag(to_out(ActivityOut, await service.check_out(db, actor, activity_id, data)))

    @post("/{activity_id:uuid}/complete", operation_id="completeActivity", responses=PROBLEM_RESPONSES, status_code=200)
    async def complete(
        self, db: Db, actor: CurrentActor, activity_id: uuid.UUID, data: ActivityComplete
    ) -> Response[ActivityOut]:
        """Mark a task, call or meeting done."""
        return with_etag(to_out(ActivityOut, await service.complete_activity(db, actor, activity_id, data)))


class ObjectionController(Controller):
    path = "/api/v1"
    tags = ["objections"]

    @get("/leads/{lead_id:uuid}/objections", operation_id="listLeadObjections", responses=PROBLEM_RESPONSES)
    async def list_objections(self, db: Db, actor: CurrentActor, lead_id: uuid.UUID) -> list[ObjectionOut]:
        return [to_out(ObjectionOut, o) for o in await service.list_objections(db, actor, lead_id)]

    @post(
        "/leads/{lead_id:uuid}/objections",
        operation_id="addLeadObjection",
        responses=PROBLEM_RESPONSES,
        status_code=HTTP_201_CREATED,
    )
    async def add_objection(
        self, db: Db, actor: CurrentActor, lead_id: uuid.UUID, data: ObjectionCreate
    ) -> Response[ObjectionOut]:
        """Record an objection the customer raised (type, statement, handling method)."""
        return with_etag(to_out(ObjectionOut, await service.add_objection(db, actor, lead_id, data)), HTTP_201_CREATED)

    @get("/objections/{objection_id:uuid}", operation_id="getObjection", responses=PROBLEM_RESPONSES)
    async def get_objection(self, db: Db, actor: CurrentActor, objection_id: uuid.UUID) -> Response[ObjectionOut]:
        return with_etag(to_out(ObjectionOut, await service.get_objection(db, actor, objection_id)))

    @patch("/objections/{objection_id:uuid}", operation_id="updateObjection", responses=PROBLEM_RESPONSES)
    async def update_objection(
        self,
        db: Db,
        actor: CurrentActor,
        objection_id: uuid.UUID,
        data: JSONBody[ObjectionUpdate],
        if_match: IfMatch = None,
    ) -> Response[ObjectionOut]:
        """Record how it was handled and whether it is resolved."""
        objection = await service.update_objection(db, actor, objection_id, data, if_match=parse_if_match(if_match))
        return with_etag(to_out(ObjectionOut, objection))
