"""`canvass forecast backtest` over the configured database: the demo tenant's
history, read back through the query layer, scored per method and horizon."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
from click.testing import CliRunner
from litestar.testing import TestClient

from canvass.cli import main
from canvass.pipeline.demo import load_demo
from canvass.settings import Settings, get_settings
from tests.conftest import Tenant


@pytest.fixture
def demo_database(client: TestClient[Any], settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    client.blocking_portal.call(load_demo, settings, None)
    monkeypatch.setenv("CANVASS_DATABASE_URL", settings.database_url)
    get_settings.cache_clear()
    yield settings.database_url
    get_settings.cache_clear()


def test_backtest_json_contract(demo_database: str) -> None:
    args = [
        "forecast",
        "backtest",
        "--org",
        "demo",
        "--json",
        "--horizons",
        "30,60,90",
        "--from",
        "2017-04-01",
        "--to",
        "2018-01-01",
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    report = msgspec.json.decode(result.output)
    assert report["as_of"][0] == "2017-04-01" and len(report["as_of"]) == 9
    counts = {(r["method"], r["horizon_days"]): r["n"] for r in report["results"]}
    for method in ("learned", "naive_last_h", "weighted_pipeline"):
        assert (counts[(method, 30)], counts[(method, 60)], counts[(method, 90)]) == (9, 8, 7)
    origins = report["origins"]
    assert len(origins) == 3 * (9 + 8 + 7)
    for o in origins:
        assert o["p10"] <= o["p50"] <= o["p90"]
    # The actuals are the demo's won revenue, whatever the method.
    actual = {(o["horizon_days"], o["as_of"]): o["actual"] for o in origins if o["method"] == "naive_last_h"}
    assert all(o["actual"] == actual[(o["horizon_days"], o["as_of"])] for o in origins)
    assert actual[(30, "2017-04-01")] > 0


def test_backtest_needs_a_known_organization(demo_database: str) -> None:
    result = CliRunner().invoke(main, ["forecast", "backtest", "--org", "nope"])
    assert result.exit_code != 0 and "demo" in result.output


@pytest.fixture
def cli_database(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("CANVASS_DATABASE_URL", settings.database_url)
    get_settings.cache_clear()
    yield settings.database_url
    get_settings.cache_clear()


def test_users_create_adds_a_user_who_can_log_in(cli_database: str, client: TestClient[Any], tenant: Tenant) -> None:
    email = f"new.rep@{tenant.slug}.example"
    args = ["users", "create", "--org", tenant.slug, "--email", email, "--name", "New Rep", "--role", "rep"]
    result = CliRunner().invoke(main, args, input="a good password\na good password\n")
    assert result.exit_code == 0, result.output
    assert f"created rep {email}" in result.output
    login = client.post("/api/v1/auth/login", json={"email": email, "password": "a good password"})
    assert login.status_code == 200
    again = CliRunner().invoke(main, args, input="a good password\na good password\n")
    assert again.exit_code == 1 and "exists" in again.output


def test_the_api_backtest_matches_the_command(demo_database: str, client: TestClient[Any], settings: Settings) -> None:
    known = Settings(
        **{**{f: getattr(settings, f) for f in settings.__struct_fields__}, "demo_password": "backtest pw"}
    )
    client.blocking_portal.call(load_demo, known, None)
    token = client.post("/api/v1/auth/login", json={"email": "admin@demo.example", "password": "backtest pw"}).json()
    params = {"from": "2017-06-01", "to": "2017-10-01", "horizons": [30, 60]}
    r = client.get(
        "/api/v1/forecasts/backtest", params=params, headers={"Authorization": f"Bearer {token['access_token']}"}
    )
    assert r.status_code == 200, r.text
    args = [
        "forecast",
        "backtest",
        "--org",
        "demo",
        "--json",
        "--horizons",
        "30,60",
        "--from",
        "2017-06-01",
        "--to",
        "2017-10-01",
    ]
    cli = msgspec.json.decode(CliRunner().invoke(main, args).output)
    assert r.json()["as_of"] == cli["as_of"] == ["2017-06-01", "2017-07-01", "2017-08-01", "2017-09-01"]
    assert r.json()["results"] == cli["results"]
