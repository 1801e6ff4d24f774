"""Authentication and authorization at the HTTP edge.

Users log in with e-mail and password for a short-lived JWT (PyJWT through
Litestar's ``JWTAuth``) and a rotating refresh token. The access token carries
what scoping needs (tenant, user, role, team path), so an authenticated request
costs no database round trip; a disabled user loses access when the token
expires (minutes) because refreshing checks the user again.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from typing import Any, ClassVar

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware.authentication import AuthenticationResult
from litestar.security.jwt import JWTAuth, JWTAuthenticationMiddleware, Token

from canvass.pipeline.models import User
from canvass.pipeline.scope import Actor
from canvass.pipeline.vocabulary import Role
from canvass.settings import Settings

PUBLIC_PATHS = ["/schema", "/api/v1/auth/login", "/api/v1/auth/refresh", "/health"]


async def actor_from_token(token: Token, connection: ASGIConnection[Any, Any, Any, Any]) -> Actor:
    extras = token.extras
    try:
        return Actor(
            organization_id=uuid.UUID(extras["org"]),
            user_id=uuid.UUID(token.sub),
            role=Role(extras["role"]),
            team_path=extras.get("team"),
            device_id=connection.headers.get("x-device-id"),
        )
    except (KeyError, ValueError) as exc:
        raise NotAuthorizedException("The access token lacks Canvass claims.") from exc


class VerifiedTokenCache(JWTAuthenticationMiddleware):
    """Verifies each distinct access token once per process, then trusts the
    result until the token expires: a client sends the same token with every
    request, and the signature check is a measurable share of a cheap request.
    Bounded; expiry is still checked on every use."""

    _verified: ClassVar[dict[tuple[str, str], Token]] = {}
    _MAX_ENTRIES: ClassVar[int] = 10_000

    async def authenticate_token(
        self, encoded_token: str, connection: ASGIConnection[Any, Any, Any, Any]
    ) -> AuthenticationResult:
        key = (self.token_secret, encoded_token)  # a token is good only for the key that signed it
        token = self._verified.get(key)
        if token is None or token.exp <= dt.datetime.now(dt.UTC):
            self._verified.pop(key, None)
            result = await super().authenticate_token(encoded_token, connection)
            if len(self._verified) >= self._MAX_ENTRIES:
                self._verified.pop(next(iter(self._verified)))
            self._verified[key] = result.auth
            return result
        return AuthenticationResult(user=await actor_from_token(token, connection), auth=token)


def build_jwt_auth(settings: Settings) -> JWTAuth[Actor, Token]:
    return JWTAuth[Actor, Token](
        authentication_middleware_class=VerifiedTokenCache,
        retrieve_user_handler=actor_from_token,
        token_secret=settings.secret_key,
        default_token_expiration=dt.timedelta(minutes=settings.access_token_minutes),
        exclude=PUBLIC_PATHS,
        description="Access token from POST /api/v1/auth/login",
    )


def access_token(jwt_auth: JWTAuth[Actor, Token], user: User, team_path: str | None) -> str:
    return jwt_auth.create_token(
        identifier=str(user.id),
        token_extras={"org": str(user.organization_id), "role": user.role, "team": team_path},
    )


def requires_role(*roles: Role) -> Callable[[ASGIConnection[Any, Any, Any, Any], BaseRouteHandler], None]:
    """A guard: only these roles may call the handler."""
    allowed = frozenset(roles)

    def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        actor = connection.scope.get("user")
        if not isinstance(actor, Actor):
            raise NotAuthorizedException("Authentication required.")
        if actor.role not in allowed:
            raise PermissionDeniedException(
                f"This operation is for {', '.join(sorted(r.value for r in allowed))}; you are a {actor.role.value}."
            )

    return guard


admin_only = requires_role(Role.ADMIN)
managers_and_admins = requires_role(Role.MANAGER, Role.ADMIN)
