"""The `canvass` command: serve the API, manage the database, load the demo."""

from __future__ import annotations

import asyncio
import os
import secrets
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from canvass.forecasting.history import LeadHistory

from canvass.settings import get_settings
from canvass.sync import feed  # publishes every write to the change feed


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

    async def load_and_publish() -> str:
        report = await load_demo(get_settings(), data_dir)
        await _publish_written()
        return report

    click.echo(asyncio.run(load_and_publish()))


async def _publish_written() -> None:
    """Publish to the change feed what this command wrote: on PostgreSQL an API
    process publishes its writes just after they commit; a command is not one."""
    from canvass.db import create_engine, session_factory

    engine = create_engine(get_settings().async_database_url)
    try:
        await feed.Publisher(session_factory(engine)).publish_now()
    finally:
        await engine.dispose()


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
    from canvass.errors import CanvassError
    from canvass.pipeline.demo import create_user_cli

    try:
        click.echo(asyncio.run(create_user_cli(get_settings(), org_slug, email, name, role, password)))
    except CanvassError as error:
        raise click.ClickException(error.detail) from error


@main.group()
def forecast() -> None:
    """Forecasts from the stored history."""


@forecast.command("backtest")
@click.option("--org", "org_slug", default=None, help="Organization slug (default: the only one in the database).")
@click.option("--horizons", default="30,60,90", show_default=True, help="Comma-separated horizons in days.")
@click.option("--from", "from_date", default=None, help="First as-of date (YYYY-MM-DD); default: the history's start.")
@click.option("--to", "to_date", default=None, help="End of the scored period (YYYY-MM-DD); default: the last record.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
def forecast_backtest(
    org_slug: str | None, horizons: str, from_date: str | None, to_date: str | None, as_json: bool
) -> None:
    """Replay the stored history at monthly as-of dates, using only what was
    knowable then, and score every method (WAPE, bias, P10–P90 coverage)."""
    import msgspec

    from canvass.forecasting.backtest import run_backtest

    try:
        steps = [int(h) for h in horizons.split(",") if h.strip()]
    except ValueError as exc:
        raise click.BadParameter("horizons are whole days, e.g. 30,60,90", param_hint="--horizons") from exc
    history = asyncio.run(_tenant_history(org_slug))
    report = run_backtest(history, horizons=steps, from_date=from_date, to_date=to_date)
    if as_json:
        click.echo(msgspec.json.encode(report).decode())
        return
    click.echo(f"as-of dates: {', '.join(report.as_of)}")
    click.echo(f"{'method':<20}{'h':>5}{'WAPE':>9}{'bias':>9}{'cover':>8}{'n':>4}")
    for r in report.results:
        cells = [_pct(r.wape), _pct(r.bias), _pct(r.coverage_p10_p90)]
        click.echo(f"{r.method:<20}{r.horizon_days:>5}{cells[0]:>9}{cells[1]:>9}{cells[2]:>8}{r.n:>4}")


@forecast.command("snapshot")
@click.option("--org", "org_slug", required=True, help="Organization slug.")
@click.option("--horizons", default="30,60,90", show_default=True)
def forecast_snapshot(org_slug: str, horizons: str) -> None:
    """Keep today's tenant-wide forecasts (run it daily or weekly from cron)."""
    steps = [int(h) for h in horizons.split(",") if h.strip()]
    click.echo(asyncio.run(_snapshot(org_slug, steps)))


async def _snapshot(org_slug: str, horizons: list[int]) -> str:
    import uuid

    from sqlalchemy import select

    from canvass.db import create_engine, session_factory
    from canvass.forecasting.reports import take_snapshot
    from canvass.pipeline.models import Organization
    from canvass.pipeline.scope import Actor
    from canvass.pipeline.vocabulary import Role

    engine = create_engine(get_settings().async_database_url)
    try:
        async with session_factory(engine)() as session, session.begin():
            org_id = await session.scalar(select(Organization.id).where(Organization.slug == org_slug))
            if org_id is None:
                raise click.UsageError(f"no organization {org_slug!r}")
            tenant = Actor(organization_id=org_id, user_id=uuid.uuid4(), role=Role.ADMIN)
            rows = await take_snapshot(session, tenant, horizons)
            return f"kept {len(rows)} forecasts as of {rows[0].as_of if rows else 'today'}"
    finally:
        await engine.dispose()


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


async def _tenant_history(org_slug: str | None) -> LeadHistory:
    from sqlalchemy import select

    from canvass.db import create_engine, session_factory
    from canvass.forecasting.queries import lead_history
    from canvass.pipeline.models import Organization

    engine = create_engine(get_settings().async_database_url)
    try:
        async with session_factory(engine)() as session:
            orgs = (await session.execute(select(Organization.id, Organization.slug))).all()
            chosen = [o for o in orgs if o.slug == org_slug] if org_slug else orgs
            if len(chosen) != 1:
                slugs = ", ".join(sorted(o.slug for o in orgs)) or "none"
                raise click.UsageError(f"name one organization with --org (found: {slugs})")
            return await lead_history(session, chosen[0].id)
    finally:
        await engine.dispose()


@main.command()
@click.option("--url", default="http://127.0.0.1:8000", show_default=True, help="The running server.")
@click.option("--reps", default=5, show_default=True, type=click.IntRange(1, 1000), help="Simulated reps.")
@click.option("--rounds", default=5, show_default=True, type=click.IntRange(0, 10_000), help="Edit rounds per rep.")
@click.option("--password", required=True, help="The reps' (and admin's) password, e.g. the demo password.")
@click.option("--seed", default=None, type=int, help="Random seed (same seed, same choices).")
@click.option(
    "--email", "emails", multiple=True, help="A rep to simulate (repeatable); default: reps listed by the admin."
)
@click.option("--admin-email", default="admin@demo.example", show_default=True, help="Lists the reps.")
@click.option(
    "--offline",
    "offline_probability",
    default=0.4,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="Chance a rep stays offline after a round.",
)
@click.option(
    "--workdir", default=None, type=click.Path(file_okay=False), help="Where the replicas go (default: a temp dir)."
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
def simulate(
    url: str,
    reps: int,
    rounds: int,
    password: str,
    seed: int | None,
    emails: tuple[str, ...],
    admin_email: str,
    offline_probability: float,
    workdir: str | None,
    as_json: bool,
) -> None:
    """Run N simulated reps on the reference offline client against a running
    server: random edits, offline periods, skewed clocks; print what happened."""
    import msgspec

    from canvass.clients.simulate import SimConfig, run_simulation

    config = SimConfig(
        url=url,
        password=password,
        reps=reps,
        rounds=rounds,
        seed=seed,
        emails=list(emails),
        admin_email=admin_email,
        offline_probability=offline_probability,
        workdir=workdir,
    )
    try:
        summary = run_simulation(config, echo=(lambda _line: None) if as_json else click.echo)
    except Exception as exc:
        raise click.ClickException(f"{type(exc).__name__}: {exc}") from exc
    if as_json:
        click.echo(msgspec.json.encode(summary).decode())
    else:
        for line in summary.lines():
            click.echo(line)
    if summary.errors:
        raise SystemExit(1)


def _redacted(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


if __name__ == "__main__":
    main()
