"""Login, token refresh."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, post
from litestar.datastructures import State
from litestar.params import JSONBody
from msgspec import Meta

from canvass.api.deps import Db
from canvass.api.problems import PROBLEM_RESPONSES
from canvass.api.security import access_token
from canvass.pipeline.models import User
from canvass.pipeline.services import people
from canvass.pipeline.vocabulary import Role


class LoginRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    email: Annotated[str, Meta(min_length=1, max_length=320)]
    password: Annotated[str, Meta(min_length=1, max_length=200)]


class RefreshRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    refresh_token: Annotated[str, Meta(min_length=1, max_length=300)]


class TokenPair(msgspec.Struct, kw_only=True):
    access_token: str
    refresh_token: str
    token_type: str
    expires_in: int
    user_id: str
    organization_id: str
    role: Role


async def _tokens(request: Request[Any, Any, Any], db: Db, user: User, team_path: str | None) -> TokenPair:
    state: State = request.app.state
    settings = state.settings
    refresh = await people.issue_refresh_token(db, user, days=settings.refresh_token_days)
    return TokenPair(
        access_token=access_token(state.jwt_auth, user, team_path),
        refresh_token=refresh,
        token_type="bearer",
        expires_in=settings.access_token_minutes * 60,
        user_id=str(user.id),
        organization_id=str(user.organization_id),
        role=Role(user.role),
    )


class AuthController(Controller):
    path = "/api/v1/auth"
    tags = ["auth"]
    security = []  # type: ignore[var-annotated]

    @post("/login", operation_id="login", responses=PROBLEM_RESPONSES, status_code=200)
    async def login(self, request: Request[Any, Any, Any], db: Db, data: JSONBody[LoginRequest]) -> TokenPair:
        """E-mail and password for a short-lived access token and a refresh token."""
        user, team_path = await people.authenticate(db, data.email, data.password)
        return await _tokens(request, db, user, team_path)

    @post("/refresh", operation_id="refreshToken", responses=PROBLEM_RESPONSES, status_code=200)
    async def refresh(self, request: Request[Any, Any, Any], db: Db, data: JSONBody[RefreshRequest]) -> TokenPair:
        """Trade a refresh token (good once) for a new pair."""
        user, team_path = await people.redeem_refresh_token(db, data.refresh_token)
        return await _tokens(request, db, user, team_path)
