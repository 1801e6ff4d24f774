"""Users, teams and territories (admin), and the organization's pipeline settings."""

from __future__ import annotations

import uuid

from litestar import Controller, Response, get, patch, post, put
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
from canvass.api.security import admin_only
from canvass.pipeline.config import PipelineConfig
from canvass.pipeline.schemas import (
    TeamCreate,
    TeamOut,
    TeamUpdate,
    TerritoryCreate,
    TerritoryOut,
    UserCreate,
    UserOut,
    UserPage,
    UserUpdate,
)
from canvass.pipeline.services import people as service
from canvass.pipeline.services.organizations import pipeline_config, update_pipeline_config


class UserController(Controller):
    path = "/api/v1/users"
    tags = ["users"]

    @get(operation_id="listUsers", responses=PROBLEM_RESPONSES)
    async def list_users(self, db: Db, actor: CurrentActor, limit: Limit = 50, cursor: Cursor = None) -> UserPage:
        """Admin: everyone; manager: their team subtree; rep: themselves."""
        rows, next_cursor = await service.list_users(db, actor, limit=limit, cursor=cursor)
        return UserPage(items=await service.users_out(db, actor.organization_id, rows), next_cursor=next_cursor)

    @get("/me", operation_id="getCurrentUser", responses=PROBLEM_RESPONSES)
    async def me(self, db: Db, actor: CurrentActor) -> UserOut:
        user = await service.get_user(db, actor, actor.user_id)
        return (await service.users_out(db, actor.organization_id, [user]))[0]

    @post(operation_id="createUser", responses=PROBLEM_RESPONSES, status_code=HTTP_201_CREATED, guards=[admin_only])
    async def create_user(self, db: Db, actor: CurrentActor, data: JSONBody[UserCreate]) -> Response[UserOut]:
        user = await service.create_user(db, actor, data)
        return with_etag((await service.users_out(db, actor.organization_id, [user]))[0], HTTP_201_CREATED)

    @get("/{user_id:uuid}", operation_id="getUser", responses=PROBLEM_RESPONSES)
    async def get_user(self, db: Db, actor: CurrentActor, user_id: uuid.UUID) -> Response[UserOut]:
        user = await service.get_user(db, actor, user_id)
        return with_etag((await service.users_out(db, actor.organization_id, [user]))[0])

    @patch("/{user_id:uuid}", operation_id="updateUser", responses=PROBLEM_RESPONSES, guards=[admin_only])
    async def update_user(
        self, db: Db, actor: CurrentActor, user_id: uuid.UUID, data: JSONBody[UserUpdate], if_match: IfMatch = None
    ) -> Response[UserOut]:
        user = await service.update_user(db, actor, user_id, data, if_match=parse_if_match(if_match))
        return with_etag((await service.users_out(db, actor.organization_id, [user]))[0])


class TeamController(Controller):
    path = "/api/v1/teams"
    tags = ["teams"]

    @get(operation_id="listTeams", responses=PROBLEM_RESPONSES)
    async def list_teams(self, db: Db, actor: CurrentActor) -> list[TeamOut]:
        """The organization's team tree, parents before children."""
        return [to_out(TeamOut, t) for t in await service.list_teams(db, actor)]

    @post(operation_id="createTeam", responses=PROBLEM_RESPONSES, status_code=HTTP_201_CREATED, guards=[admin_only])
    async def create_team(self, db: Db, actor: CurrentActor, data: JSONBody[TeamCreate]) -> Response[TeamOut]:
        return with_etag(to_out(TeamOut, await service.create_team(db, actor, data)), HTTP_201_CREATED)

    @get("/{team_id:uuid}", operation_id="getTeam", responses=PROBLEM_RESPONSES)
    async def get_team(self, db: Db, actor: CurrentActor, team_id: uuid.UUID) -> Response[TeamOut]:
        return with_etag(to_out(TeamOut, await service.get_team(db, actor, team_id)))

    @patch("/{team_id:uuid}", operation_id="updateTeam", responses=PROBLEM_RESPONSES, guards=[admin_only])
    async def update_team(
        self, db: Db, actor: CurrentActor, team_id: uuid.UUID, data: JSONBody[TeamUpdate], if_match: IfMatch = None
    ) -> Response[TeamOut]:
        team = await service.update_team(db, actor, team_id, data, if_match=parse_if_match(if_match))
        return with_etag(to_out(TeamOut, team))


class TerritoryController(Controller):
    path = "/api/v1/territories"
    tags = ["territories"]

    @get(operation_id="listTerritories", responses=PROBLEM_RESPONSES)
    async def list_territories(self, db: Db, actor: CurrentActor) -> list[TerritoryOut]:
        return [to_out(TerritoryOut, t) for t in await service.list_territories(db, actor)]

    @post(
        operation_id="createTerritory", responses=PROBLEM_RESPONSES, status_code=HTTP_201_CREATED, guards=[admin_only]
    )
    async def create_territory(
        self, db: Db, actor: CurrentActor, data: JSONBody[TerritoryCreate]
    ) -> Response[TerritoryOut]:
        return with_etag(to_out(TerritoryOut, await service.create_territory(db, actor, data)), HTTP_201_CREATED)


class SettingsController(Controller):
    path = "/api/v1/organization/pipeline-settings"
    tags = ["organization"]

    @get(operation_id="getPipelineSettings", responses=PROBLEM_RESPONSES)
    async def get_settings(self, db: Db, actor: CurrentActor) -> PipelineConfig:
        """Gates (on/off, thresholds), stage probabilities, follow-up cadence."""
        return await pipeline_config(db, actor.organization_id)

    @put(operation_id="replacePipelineSettings", responses=PROBLEM_RESPONSES, guards=[admin_only])
    async def put_settings(self, db: Db, actor: CurrentActor, data: JSONBody[PipelineConfig]) -> PipelineConfig:
        return await update_pipeline_config(db, actor.organization_id, data)
