"""`canvass simulate` against a real server process: simulated reps on the
reference offline client, offline rounds, a summary at the end."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from canvass.cli import main
from canvass.settings import Settings
from tests.conftest import TEST_PASSWORD, Tenant
from tests.sync.test_fault import Server

pytestmark = pytest.mark.slow


def test_simulate_command(settings: Settings, tenant: Tenant, tmp_path: Path) -> None:
    server = Server(settings, tmp_path / "server.log")
    server.start()
    try:
        args = ["simulate", "--url", server.url, "--reps", "3", "--rounds", "3", "--password", TEST_PASSWORD]
        args += ["--admin-email", tenant.admin.email, "--seed", "5", "--workdir", str(tmp_path / "replicas"), "--json"]
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, result.output
        summary: dict[str, Any] = json.loads(result.output.strip().splitlines()[-1])
    finally:
        server.stop()
    assert summary["errors"] == [] and summary["pending_left"] == 0
    assert summary["reps"] == 3 and summary["devices"] >= 3
    assert summary["mutations_made"] > 0
    # every mutation answered exactly once (re-sends are answered from stored receipts, not recounted)
    assert sum(summary["receipts"].values()) == summary["mutations_made"]
    assert len(list((tmp_path / "replicas").glob("*.sqlite"))) == summary["devices"]
