"""RFC 9457 problem details: every error leaves the API in this one shape.

``type`` is stable per error (``https://canvass.dev/problems/<code>``); clients
switch on it. Validation errors list each offending field by its path
(``body.amount``, ``query.limit``) so a form can highlight it.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.exceptions import (
    HTTPException,
    NotAuthorizedException,
    PermissionDeniedException,
    SerializationException,
    ValidationException,
)
from litestar.openapi.datastructures import ResponseSpec
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm.exc import StaleDataError

from canvass.errors import PROBLEM_BASE, CanvassError

log = logging.getLogger("canvass.api")

PROBLEM_MEDIA_TYPE = "application/problem+json"


class FieldError(msgspec.Struct, kw_only=True):
    field: str
    message: str


class Problem(msgspec.Struct, kw_only=True, omit_defaults=True):
    """An error response (RFC 9457). Beside the standard members, a refusal by a
    business rule names the ``rule`` and what is ``missing``; validation errors
    list ``errors`` by field."""

    type: str
    title: str
    status: int
    detail: str
    instance: str | None = None
    rule: str | None = None
    missing: list[str] | None = None
    field: str | None = None
    errors: list[FieldError] | None = None
    current_version: int | None = None
    expected_seq: int | None = None  # sync push refused for a gap: resend from this seq


def problem_response(
    request: Request[Any, Any, Any],
    *,
    status: int,
    code: str,
    title: str,
    detail: str,
    headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> Response[dict[str, Any]]:
    """The problem document; ``extra`` members never replace the standard ones."""
    body: dict[str, Any] = {k: v for k, v in (extra or {}).items() if v is not None}
    body.update(
        type=PROBLEM_BASE + code,
        title=title,
        status=status,
        detail=detail,
        instance=request.url.path,
    )
    return Response(body, status_code=status, media_type=PROBLEM_MEDIA_TYPE, headers=headers)


def _canvass_error(request: Request[Any, Any, Any], exc: CanvassError) -> Response[dict[str, Any]]:
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    return problem_response(
        request, status=exc.status, code=exc.code, title=exc.title, detail=exc.detail, headers=headers, extra=exc.extra
    )


_UNKNOWN_FIELD = re.compile(r"unknown field `([^`]+)`")


def _field_path(error: dict[str, Any]) -> str:
    """``body.amount``, ``query.limit``: where the offending value is."""
    source = error.get("source") or "body"
    source = getattr(source, "value", source)  # Litestar passes an enum for parameters
    key = str(error.get("key") or "")
    if key == "data":  # the body as a whole: the message names the field, if any
        key = ""
    unknown = _UNKNOWN_FIELD.search(str(error.get("message", "")))
    if unknown:
        key = f"{key}.{unknown.group(1)}" if key else unknown.group(1)
    return f"{source}.{key}" if key else str(source)


def _validation_error(request: Request[Any, Any, Any], exc: ValidationException) -> Response[dict[str, Any]]:
    raw = exc.extra if isinstance(exc.extra, list) else []
    errors = [{"field": _field_path(e), "message": str(e.get("message", ""))} for e in raw if isinstance(e, dict)]
    detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors) or str(exc.detail)
    return problem_response(
        request,
        status=422,
        code="validation-failed",
        title="Invalid request",
        detail=detail,
        extra={"errors": errors or None, "field": errors[0]["field"] if errors else None},
    )


_HTTP_CODES = {
    400: ("bad-request", "Bad request"),
    401: ("unauthorized", "Authentication required"),
    403: ("forbidden", "Not allowed"),
    404: ("not-found", "Not found"),
    405: ("method-not-allowed", "Method not allowed"),
    413: ("body-too-large", "Request body too large"),
    415: ("unsupported-media-type", "Unsupported media type"),
    429: ("rate-limited", "Too many requests"),
}


def _http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[dict[str, Any]]:
    status = exc.status_code
    code, title = _HTTP_CODES.get(status, ("http-error", "Request failed"))
    if status == 400 and isinstance(exc.__cause__, SerializationException):
        code, title = "malformed-body", "Malformed request body"
    headers = dict(exc.headers or {})
    if isinstance(exc, NotAuthorizedException):
        headers.setdefault("WWW-Authenticate", "Bearer")
    return problem_response(
        request, status=status, code=code, title=title, detail=str(exc.detail), headers=headers or None
    )


def _stale(request: Request[Any, Any, Any], exc: StaleDataError) -> Response[dict[str, Any]]:
    return problem_response(
        request,
        status=412,
        code="stale-write",
        title="The record changed since you read it",
        detail="Someone else changed the record at the same time; fetch it again and re-apply your change.",
    )


def _integrity(request: Request[Any, Any, Any], exc: IntegrityError) -> Response[dict[str, Any]]:
    log.warning("integrity error on %s: %s", request.url.path, exc.orig)
    return problem_response(
        request,
        status=409,
        code="conflict",
        title="Conflicts with existing data",
        detail="The change conflicts with existing data (a duplicate id or a reference that no longer exists).",
    )


# Serialization failures and deadlocks (PostgreSQL), and SQLite's single writer
# staying busy beyond the wait: nothing was written, and the same request will
# succeed when tried again (the sync client retries on 503).
_RETRYABLE_SQLSTATES = {"40001", "40P01"}


def _database_error(request: Request[Any, Any, Any], exc: DBAPIError) -> Response[dict[str, Any]]:
    orig = exc.orig
    sqlstate = getattr(orig, "sqlstate", None) or getattr(getattr(orig, "__cause__", None), "sqlstate", None)
    if sqlstate in _RETRYABLE_SQLSTATES or "database is locked" in str(orig):
        log.info("retryable database error on %s: %s", request.url.path, orig)
        return problem_response(
            request,
            status=503,
            code="busy",
            title="Busy",
            detail="The change collided with concurrent writes and was not applied; retry it in a moment.",
            headers={"Retry-After": "1"},
        )
    return _internal(request, exc)


def _internal(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem_response(
        request,
        status=500,
        code="internal",
        title="Internal error",
        detail="An unexpected error occurred; it was logged.",
    )


exception_handlers: dict[type[Exception] | int, Any] = {
    CanvassError: _canvass_error,
    ValidationException: _validation_error,
    NotAuthorizedException: _http_error,
    PermissionDeniedException: _http_error,
    HTTPException: _http_error,
    StaleDataError: _stale,
    IntegrityError: _integrity,
    DBAPIError: _database_error,
    Exception: _internal,
}


def _spec(description: str) -> ResponseSpec:
    return ResponseSpec(
        data_container=Problem, description=description, media_type=PROBLEM_MEDIA_TYPE, generate_examples=False
    )


# The error responses every authenticated operation may give, for the OpenAPI document.
PROBLEM_RESPONSES: dict[int, ResponseSpec] = {
    400: _spec("Malformed request body"),
    401: _spec("Missing, invalid or expired access token"),
    403: _spec("The caller's role or scope does not allow this"),
    404: _spec("No such record in the caller's scope"),
    409: _spec("Refused by a business rule (names the rule) or conflicts with existing data"),
    412: _spec("If-Match names a version that is no longer current"),
    413: _spec("Request body too large"),
    422: _spec("Invalid input; `errors` names each field"),
    503: _spec("The database is busy (embedded SQLite's single writer); retry after `Retry-After` seconds"),
}
