"""Leads: CRUD, stage moves, outcomes, reopen and stage history."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Literal

from litestar import Controller, Response, delete, get, patch, post
from litestar.params import JSONBody
from litestar.status_codes import HTTP_201_CREATED, HTTP_204_NO_CONTENT
from sqlalchemy.ext.asyncio import AsyncSession

from canvass.api.deps import CurrentActor, Cursor, Db, IfMatch, Limit, SearchText, etag, parse_if_match, to_out
from canvass.api.problems import PROBLEM_RESPONSES
from canvass.pipeline.schemas import (
    LeadCreate,
    LeadOut,
    LeadPage,
    LeadUpdate,
    OutcomeRecord,
    Reopen,
    StageChangeOut,
    StageMove,
)
from canvass.pipeline.scope import Actor
from canvass.pipeline.services import leads as service
from canvass.pipeline.services.organizations import cached_pipeline_config
from canvass.pipeline.vocabulary import LeadStatus, Stage

LeadSort = Literal["created_at", "-created_at", "updated_at", "-updated_at", "title", "-title"]
Search = SearchText  # in the lead's title or its account's name


async def _reply(db: AsyncSession, actor: Actor, lead: service.StoredLead, status_code: int = 200) -> Response[LeadOut]:
    config = await cached_pipeline_config(db, actor.organization_id)
    out = service.to_lead_out(lead, config)
    return Response(out, status_code=status_code, headers={"ETag": etag(out.version)})


class LeadController(Controller):
    path = "/api/v1/leads"
    tags = ["leads"]

    @get(operation_id="listLeads", responses=PROBLEM_RESPONSES, summary="List leads in your scope")
    async def list_leads(
        self,
        db: Db,
        actor: CurrentActor,
        owner_id: uuid.UUID | None = None,
        stage: Stage | None = None,
        status: LeadStatus | None = None,
        account_id: uuid.UUID | None = None,
        updated_since: dt.datetime | None = None,
        q: Search = None,
        sort: LeadSort = "created_at",
        limit: Limit = 50,
        cursor: Cursor = None,
    ) -> LeadPage:
        """Open and closed leads the caller may see (rep: own; manager: team subtree;
        admin: tenant), filtered and sorted, a keyset page at a time."""
        filters = service.LeadFilters(
            owner_id=owner_id, stage=stage, status=status, account_id=account_id, updated_since=updated_since, q=q
        )
        rows, next_cursor = await service.list_leads(db, actor, filters, sort=sort, limit=limit, cursor=cursor)
        config = await cached_pipeline_config(db, actor.organization_id)
        return LeadPage(items=[service.to_lead_out(r, config) for r in rows], next_cursor=next_cursor)

    @post(operation_id="createLead", responses=PROBLEM_RESPONSES, status_code=HTTP_201_CREATED)
    async def create_lead(self, db: Db, actor: CurrentActor, data: JSONBody[LeadCreate]) -> Response[LeadOut]:
        """Create a lead in `prospecting`. The id may be made by the client (UUIDv7)."""
        lead = await service.create_lead_now(db, actor, data)
        return await _reply(db, actor, lead, HTTP_201_CREATED)

    @get("/{lead_id:uuid}", operation_id="getLead", responses=PROBLEM_RESPONSES)
    async def get_lead(self, db: Db, actor: CurrentActor, lead_id: uuid.UUID) -> Response[LeadOut]:
        config = await cached_pipeline_config(db, actor.organization_id)
        out = await service.read_lead(db, actor, lead_id, config)
        return Response(out, headers={"ETag": etag(out.version)})

    @patch("/{lead_id:uuid}", operation_id="updateLead", responses=PROBLEM_RESPONSES)
    async def update_lead(
        self, db: Db, actor: CurrentActor, lead_id: uuid.UUID, data: JSONBody[LeadUpdate], if_match: IfMatch = None
    ) -> Response[LeadOut]:
        """Edit a lead's fields (send only what changes). Stage and status change
        only through stage moves and outcomes."""
        lead = await service.update_lead(db, actor, lead_id, data, if_match=parse_if_match(if_match))
        return await _reply(db, actor, lead)

    @delete("/{lead_id:uuid}", operation_id="deleteLead", responses=PROBLEM_RESPONSES, status_code=HTTP_204_NO_CONTENT)
    async def delete_lead(self, db: Db, actor: CurrentActor, lead_id: uuid.UUID, if_match: IfMatch = None) -> None:
        await service.delete_lead(db, actor, lead_id, if_match=parse_if_match(if_match))

    @post("/{lead_id:uuid}/stage-moves", operation_id="moveLeadStage", responses=PROBLEM_RESPONSES, status_code=200)
    async def move_stage(
        self, db: Db, actor: CurrentActor, lead_id: uuid.UUID, data: JSONBody[StageMove], if_match: IfMatch = None
    ) -> Response[LeadOut]:
        """Move the lead forward. Refused with 409 naming the rule when a gate is
        not met (e.g. `gate.qualify.score`) or the move skips a stage (`stage.order`)."""
        lead = await service.move_stage_now(db, actor, lead_id, data, if_match=parse_if_match(if_match))
        return await _reply(db, actor, lead)

    @post("/{lead_id:uuid}/outcome", operation_id="recordLeadOutcome", responses=PROBLEM_RESPONSES, status_code=200)
    async def record_outcome(
        self, db: Db, actor: CurrentActor, lead_id: uuid.UUID, data: JSONBody[OutcomeRecord], if_match: IfMatch = None
    ) -> Response[LeadOut]:
        """Record `won` (in close, with amount), `lost` (from any open stage, with
        reason and competitor) or `disqualified` (from prospecting or qualify)."""
        lead = await service.record_outcome(db, actor, lead_id, data, if_match=parse_if_match(if_match))
        return await _reply(db, actor, lead)

    @post("/{lead_id:uuid}/reopen", operation_id="reopenLead", responses=PROBLEM_RESPONSES, status_code=200)
    async def reopen(
        self, db: Db, actor: CurrentActor, lead_id: uuid.UUID, data: JSONBody[Reopen], if_match: IfMatch = None
    ) -> Response[LeadOut]:
        """A manager reopens a lost lead: it goes back to the stage it was lost in."""
        lead = await service.reopen_lead(db, actor, lead_id, data, if_match=parse_if_match(if_match))
        return await _reply(db, actor, lead)

    @get("/{lead_id:uuid}/stage-history", operation_id="listLeadStageHistory", responses=PROBLEM_RESPONSES)
    async def stage_history(self, db: Db, actor: CurrentActor, lead_id: uuid.UUID) -> list[StageChangeOut]:
        """Every move of the lead, oldest first (append-only)."""
        changes = await service.stage_history(db, actor, lead_id)
        return [to_out(StageChangeOut, c) for c in changes]
