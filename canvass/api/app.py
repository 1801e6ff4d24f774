"""The Litestar application factory."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from litestar import Litestar, get
from litestar.di import Provide
from litestar.openapi.config import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin, SwaggerRenderPlugin
from litestar.openapi.spec import Contact as OpenAPIContact
from litestar.static_files import create_static_files_router
from openapi_ui_bundles import swagger_ui
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from canvass.api.controllers.accounts import AccountController, ContactController
from canvass.api.controllers.activities import ActivityController, ObjectionController
from canvass.api.controllers.auth import AuthController
from canvass.api.controllers.forecasts import ForecastController
from canvass.api.controllers.imports import ImportController
from canvass.api.controllers.leads import LeadController
from canvass.api.controllers.people import (
    SettingsController,
    TeamController,
    TerritoryController,
    UserController,
)
from canvass.api.controllers.reports import ReportController
from canvass.api.controllers.sync import ConflictController, SyncController
from canvass.api.deps import provide_actor, provide_db
from canvass.api.problems import exception_handlers
from canvass.api.security import build_jwt_auth
from canvass.db import WriteTurns, create_engine, session_factory
from canvass.forecasting import history_cache
from canvass.settings import Settings, get_settings
from canvass.sync import feed, warm  # feed: publishes every write to the change feed

API_DESCRIPTION = """
Canvass manages leads through a seven-stage pipeline (prospecting → qualify →
approach → negotiate → handle_objections → close → after_sale) for sales reps in
the field. Log in at `POST /api/v1/auth/login` and send the access token as
`Authorization: Bearer <token>`. Errors are RFC 9457 problem documents with a
stable `type`; refusals by a business rule name the `rule`.
"""

# Swagger UI served from a Python package, so the docs work without internet.
_SWAGGER_ASSETS = "/schema/assets"


@get("/health", operation_id="health", tags=["meta"], security=[], include_in_schema=True)
async def health() -> dict[str, str]:
    return {"status": "ok"}


log = logging.getLogger("canvass.api")


def _settle_garbage_collector() -> None:
    """What exists once the app has started (modules, routes, models, the OpenAPI
    schema: ~125,000 objects) lives as long as the process. Frozen out of the
    collector's reach, a full collection no longer walks it: measured under a
    GET load (gc callbacks around bench/request_cpu.py), a full collection
    paused the worker 117 ms mid-run, a p99 of its own; after the freeze none
    ran in the same 10,000 requests."""
    gc.collect()
    gc.freeze()


def create_app(settings: Settings | None = None, engine: AsyncEngine | None = None) -> Litestar:
    settings = settings or get_settings()
    jwt_auth = build_jwt_auth(settings)

    @asynccontextmanager
    async def database(app: Litestar) -> AsyncIterator[None]:
        own_engine = engine is None
        db_engine = engine or create_engine(settings.async_database_url, pool_size=settings.db_pool_size)
        # Reads get their own pool of autocommit connections (no BEGIN/COMMIT
        # round trips, and no isolation-level switching on every checkout).
        read_engine = create_engine(settings.async_database_url, pool_size=settings.read_pool_size, autocommit=True)
        # Every pooled connection opened and its backend's catalog caches filled
        # now, not by the first minute of load (canvass/sync/warm.py).
        try:
            for pool, size in ((db_engine, settings.db_pool_size), (read_engine, settings.read_pool_size)):
                await warm.warm_connections(pool, size)
        except (OSError, DBAPIError) as exc:  # the database may come up after us
            log.warning("could not warm the database connections at start: %s", exc)
        # On PostgreSQL a REST create or stage move may commit alone, as one
        # statement on an autocommit connection (canvass.db.write_alone).
        app.state.sessionmaker = session_factory(db_engine, driver=read_engine, alone_writes=feed.ALONE_WRITES)
        app.state.read_sessionmaker = session_factory(read_engine, publish_on=db_engine, driver=read_engine)
        app.state.write_turns = WriteTurns(db_engine)
        app.state.publisher = feed.Publisher(app.state.sessionmaker)
        publisher = asyncio.create_task(app.state.publisher.run(), name="canvass-feed-publisher")
        # Large tenants' forecast history from their snapshots, before the first forecast asks.
        warming = asyncio.create_task(history_cache.warm(app.state.read_sessionmaker), name="canvass-history-warm")
        _settle_garbage_collector()
        try:
            yield
        finally:
            for task in (warming, publisher):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await read_engine.dispose()
            if own_engine:
                await db_engine.dispose()

    openapi = OpenAPIConfig(
        title="Canvass",
        version="0.1.0",
        description=API_DESCRIPTION.strip(),
        contact=OpenAPIContact(name="Canvass"),
        path="/schema",
        render_plugins=[
            SwaggerRenderPlugin(
                path="/",
                js_url=f"{_SWAGGER_ASSETS}/swagger-ui-bundle.js",
                css_url=f"{_SWAGGER_ASSETS}/swagger-ui.css",
                standalone_preset_js_url=f"{_SWAGGER_ASSETS}/swagger-ui-standalone-preset.js",
                favicon="",
            ),
            JsonRenderPlugin(path="/openapi.json"),
        ],
        use_handler_docstrings=True,
    )
    app = Litestar(
        route_handlers=[
            health,
            AuthController,
            LeadController,
            AccountController,
            ContactController,
            ActivityController,
            ObjectionController,
            UserController,
            TeamController,
            TerritoryController,
            SettingsController,
            ReportController,
            ForecastController,
            ImportController,
            SyncController,
            ConflictController,
            create_static_files_router(
                path=_SWAGGER_ASSETS, directories=[swagger_ui.static_path], include_in_schema=False
            ),
        ],
        dependencies={"db": Provide(provide_db), "actor": Provide(provide_actor, sync_to_thread=False)},
        exception_handlers=exception_handlers,
        on_app_init=[jwt_auth.on_app_init],
        lifespan=[database],
        openapi_config=openapi,
        request_max_body_size=settings.max_body_bytes,
        debug=False,
    )
    app.state.settings = settings
    app.state.jwt_auth = jwt_auth
    return app
