"""The `canvass` command: serve the API, manage the database, load the demo."""

from __future__ import annotations

import asyncio
import os
import secrets

import click

from canvass.settings import get_settings


@click.group()
def main() -> None:
    """Canvass: sales-force automation for reps who sell in the field."""


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--workers", default=1, show_default=True, type=int, help="Worker processes (production: one per core).")
@click.option("--log-level", default="info", show_default=True)
def serve(host: str, port: int, workers: int, log_level: str) -> None:
    """Serve the HTTP API."""
    import uvicorn

    # Every worker must sign and accept the same tokens.
    os.environ.setdefault("CANVASS_SECRET_KEY", secrets.token_urlsafe(32))
    get_settings.cache_clear()
    uvicorn.run(
        "canvass.api.asgi:app",
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
        access_log=False,
        loop="uvloop",
        http="httptools",
    )


@main.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@click.argument("revision", default="head")
def db_upgrade(revision: str) -> None:
    """Apply the Alembic migrations (to the latest by default)."""
    from alembic import command

    from canvass.migrations import alembic_config

    command.upgrade(alembic_config(get_settings().database_url), revision)
    click.echo(f"database at {revision}: {_redacted(get_settings().database_url)}")


@main.group()
def demo() -> None:
    """The demo tenant."""


@demo.command("load")
@click.option("--data-dir", type=click.Path(exists=True, file_okay=False), default=None, help="Maven CRM sample data.")
def demo_load(data_dir: str | None) -> None:
    """Load the demo tenant from the Maven CRM sample data (idempotent)."""
    from canvass.pipeline.demo import load_demo

    report = asyncio.run(load_demo(get_settings(), data_dir))
    click.echo(report)


@main.group()
def users() -> None:
    """Users of a tenant."""


@users.command("create")
@click.option("--org", "org_slug", required=True, help="Organization slug, e.g. demo.")
@click.option("--email", required=True)
@click.option("--name", required=True)
@click.option("--role", type=click.Choice(["rep", "manager", "admin"]), default="rep", show_default=True)
@click.option("--password", prompt=True, hide_input=True, confirmation_prompt=True)
def users_create(org_slug: str, email: str, name: str, role: str, password: str) -> None:
    """Create a user in an organization."""
    from canvass.pipeline.demo import create_user_cli

    click.echo(asyncio.run(create_user_cli(get_settings(), org_slug, email, name, role, password)))


def _redacted(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


if __name__ == "__main__":
    main()
