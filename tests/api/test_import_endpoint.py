"""NDJSON bulk import over HTTP: bad lines are reported by line number and field,
good lines land with their history."""

from __future__ import annotations

import json
from typing import Any

from litestar.testing import TestClient

from tests.conftest import Tenant


def _line(ref: str, **fields: Any) -> str:
    row = {
        "external_ref": ref,
        "title": f"Imported {ref}",
        "amount": 900.0,
        "history": [
            {"to_stage": "prospecting", "at": "2025-01-05T09:00:00Z"},
            {"to_stage": "approach", "at": "2025-01-20T09:00:00Z"},
        ],
    }
    row.update(fields)
    return json.dumps(row)


def test_ndjson_import_reports_lines_and_keeps_history(client: TestClient[Any], tenant: Tenant) -> None:
    body = "\n".join(
        [
            _line("a", owner_email=tenant.rep_a.email),
            "{not json",
            _line("b", currency="dollars"),
            "",
            _line("c", owner_email="ghost@nowhere.example"),
            _line("d", owner_id=str(tenant.rep_a1.id)),
        ]
    )
    r = client.post(
        "/api/v1/imports/leads",
        content=body.encode(),
        headers={**tenant.manager_a.headers, "content-type": "application/x-ndjson"},
    )
    assert r.status_code == 200, r.text
    report = r.json()
    assert report["accepted"] == 2 and report["stage_changes"] == 4
    assert [(x["row"], x["field"]) for x in report["rejected"]] == [(2, "line"), (3, "currency"), (5, "owner_email")]
    leads = client.get("/api/v1/leads", params={"q": "Imported"}, headers=tenant.manager_a.headers).json()["items"]
    assert sorted(lead["external_ref"] for lead in leads) == ["a", "d"]
    history = client.get(f"/api/v1/leads/{leads[0]['id']}/stage-history", headers=tenant.manager_a.headers).json()
    assert [c["to_stage"] for c in history] == ["prospecting", "approach"] and all(c["imported"] for c in history)


def test_reps_do_not_import(client: TestClient[Any], tenant: Tenant) -> None:
    r = client.post("/api/v1/imports/leads", content=_line("x").encode(), headers=tenant.rep_a.headers)
    assert r.status_code == 403
