"""Request-scoped dependencies: the database transaction, the acting user, and
the parsing of ETag preconditions and paging parameters shared by controllers."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Annotated, Any

import msgspec
from litestar import Request, Response
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import Parameter
from sqlalchemy.ext.asyncio import AsyncSession

from canvass.errors import StaleWrite
from canvass.pipeline.scope import Actor


async def provide_db(state: State, request: Request[Any, Any, Any]) -> AsyncIterator[AsyncSession]:
    """One request, one transaction: committed when the handler succeeds, rolled
    back when anything raises (the exception then becomes a problem response).

    Reads (GET) run without BEGIN/COMMIT: at READ COMMITTED each statement sees
    its own snapshot either way, and a single-query read then costs one round
    trip instead of three. Writes take their turn first (`canvass.db.WriteTurns`:
    SQLite's single writer, in arrival order)."""
    if request.method == "GET":
        async with state.read_sessionmaker() as session:
            yield session
        return
    async with state.sessionmaker() as session, state.write_turns.turn(session):
        try:
            yield session
            if session.in_transaction():  # not when the write committed alone (canvass.db.write_alone)
                await session.commit()
        except BaseException:
            await session.rollback()
            raise


def provide_actor(request: Request[Actor, Any, Any], db: AsyncSession) -> Actor:
    # ``db`` is not used: asking for it orders the two dependencies. Litestar
    # resolves independent dependencies concurrently, in a task group of their
    # own, which cost ~7 % of a GET's CPU; every handler with an actor also has
    # a session (opened lazily: no connection until a query).
    return request.user


_ETAG = re.compile(r'^\s*(?:W/)?"(\d{1,18})"\s*$')


def etag(version: int) -> str:
    return f'"{version}"'


def parse_if_match(value: str | None) -> int | None:
    """The version an If-Match header names; None when absent or ``*``."""
    if value is None or value.strip() == "*":
        return None
    match = _ETAG.match(value)
    if match is None:
        # An ETag we never issued can match no current version.
        raise StaleWrite("If-Match does not name a version of this record.", field="If-Match")
    return int(match.group(1))


IfMatch = Annotated[
    str | None,
    Parameter(header="If-Match", required=False, description="The ETag you read; 412 if the record changed since."),
]
# Free-text query parameters: bounded, and never a NUL (PostgreSQL refuses it).
SearchText = Annotated[
    str | None,
    Parameter(max_length=200, pattern=r"^[^\x00]*$", required=False, description="Text to search for."),
]
Limit = Annotated[int, Parameter(ge=1, le=200, description="Page size (1–200).")]
Cursor = Annotated[
    str | None, Parameter(max_length=500, description="`next_cursor` from the previous page.", required=False)
]


def to_out(struct_type: type[Any], record: object) -> Any:
    """A response struct from a stored record, field by field (never the ORM object)."""
    return msgspec.convert(record, struct_type, from_attributes=True)


def with_etag(out: Any, status_code: int = 200) -> Response[Any]:
    return Response(out, status_code=status_code, headers={"ETag": etag(out.version)})


# Named dependencies every handler receives (registered on the app).
Db = NamedDependency[AsyncSession]
CurrentActor = NamedDependency[Actor]
