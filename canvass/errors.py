"""Errors are values with a stable code, an HTTP status and a human message.

The domain raises them; the API turns each into an RFC 9457 problem document whose
``type`` is ``https://canvass.dev/problems/<code>``. The sync layer turns the same
errors into ``rejected`` receipts, so a rule refuses the same way everywhere.
"""

from __future__ import annotations

from typing import Any

PROBLEM_BASE = "https://canvass.dev/problems/"


class CanvassError(Exception):
    status: int = 400
    code: str = "bad-request"
    title: str = "Bad request"

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra

    @property
    def type_uri(self) -> str:
        return PROBLEM_BASE + self.code


class NotFound(CanvassError):
    status, code, title = 404, "not-found", "Not found"


class Unauthorized(CanvassError):
    status, code, title = 401, "unauthorized", "Authentication required"


class Forbidden(CanvassError):
    status, code, title = 403, "forbidden", "Not allowed"


class AlreadyExists(CanvassError):
    status, code, title = 409, "already-exists", "Already exists"


class StaleWrite(CanvassError):
    """If-Match named a version that is no longer current."""

    status, code, title = 412, "stale-write", "The record changed since you read it"


class InvalidReference(CanvassError):
    """A referenced record (account, contact, owner, …) does not exist in scope."""

    status, code, title = 422, "invalid-reference", "Referenced record not found"


class InvalidValue(CanvassError):
    status, code, title = 422, "invalid-value", "Invalid value"


class RuleViolation(CanvassError):
    """A business rule refused the change. ``rule`` names it, e.g.
    ``gate.qualify.score`` or ``stage.order``; ``missing`` lists what is lacking."""

    status, code, title = 409, "rule-violation", "A business rule refused the change"

    def __init__(self, rule: str, detail: str, **extra: Any) -> None:
        super().__init__(detail, rule=rule, **extra)
        self.rule = rule


class SeqGap(CanvassError):
    """A push whose first new mutation is not the one after the last applied."""

    status, code, title = 409, "seq-gap", "Mutations are missing before this push"


class BatchTooLarge(CanvassError):
    status, code, title = 413, "batch-too-large", "Too many mutations in one push"
