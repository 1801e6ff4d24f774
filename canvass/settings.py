"""Configuration, read once from environment variables into a typed struct.

Safe defaults: an embedded SQLite file in the working directory, short-lived
tokens, and a signing key that is generated per process unless one is given
(fine for the demo; production sets ``CANVASS_SECRET_KEY`` so every API process
accepts every other's tokens).
"""

from __future__ import annotations

import os
import secrets
from functools import lru_cache

import msgspec

DEFAULT_DATABASE_URL = "sqlite:///canvass.db"


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    database_url: str
    secret_key: str
    access_token_minutes: int = 15
    refresh_token_days: int = 30
    max_body_bytes: int = 1024 * 1024
    # Database connections each API process keeps open for write transactions;
    # its read pool (every GET, and the REST writes that commit alone) keeps half
    # as many again (`read_pool_size`). Size it to the requests one process serves
    # at once: a request beyond waits for a connection. Two processes at 16 keep
    # 80 of PostgreSQL's default 100.
    db_pool_size: int = 16
    demo_password: str | None = None
    environment: str = "development"
    # Where each process keeps snapshots of large tenants' forecast history (see
    # canvass/forecasting/history_cache.py), so a new or restarted process does not read the
    # whole history again. None: no snapshots (CANVASS_HISTORY_SNAPSHOT_DIR="").
    history_snapshot_dir: str | None = None

    @property
    def async_database_url(self) -> str:
        """The URL with the async driver SQLAlchemy needs (asyncpg / aiosqlite)."""
        return to_async_url(self.database_url)

    @property
    def read_pool_size(self) -> int:
        return self.db_pool_size * 3 // 2

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


def to_async_url(url: str) -> str:
    if url.startswith("postgres://"):
        url = "postgresql://" + url.removeprefix("postgres://")
    for plain, driver in (
        ("postgresql://", "postgresql+asyncpg://"),
        ("postgresql+psycopg://", "postgresql+asyncpg://"),
        ("sqlite://", "sqlite+aiosqlite://"),
    ):
        if url.startswith(plain):
            return driver + url.removeprefix(plain)
    return url


# One key per process when none is configured. Stable within the process so that
# tokens issued by `canvass serve` keep working until it restarts.
_EPHEMERAL_KEY = secrets.token_urlsafe(32)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    env = os.environ
    return Settings(
        database_url=env.get("CANVASS_DATABASE_URL", DEFAULT_DATABASE_URL),
        secret_key=env.get("CANVASS_SECRET_KEY", _EPHEMERAL_KEY),
        access_token_minutes=int(env.get("CANVASS_ACCESS_TOKEN_MINUTES", "15")),
        refresh_token_days=int(env.get("CANVASS_REFRESH_TOKEN_DAYS", "30")),
        max_body_bytes=int(env.get("CANVASS_MAX_BODY_BYTES", str(1024 * 1024))),
        db_pool_size=int(env.get("CANVASS_DB_POOL_SIZE", "16")),
        demo_password=env.get("CANVASS_DEMO_PASSWORD") or None,
        environment=env.get("CANVASS_ENV", "development"),
        history_snapshot_dir=env.get("CANVASS_HISTORY_SNAPSHOT_DIR", _default_snapshot_dir()) or None,
    )


def _default_snapshot_dir() -> str:
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "canvass", "history")
