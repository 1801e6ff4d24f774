"""The learned forecast with the history cache (canvass/forecasting/history_cache.py), over HTTP.

Against an already loaded scale tenant (``bench/forecast_scale.py --keep`` prints its URL), one
server (``canvass serve --workers N``, default 1 so every request meets the same cache):

1. the first (cold) admin forecast for the next quarter: the whole history is read (the snapshot
   directory starts empty: ``--snapshot-dir``, default a new temporary one), and the arrays are
   written to a snapshot file;
2. ``--repeats`` warm ones: the clock is read, the answer given on this version is given again;
   then 30/60/90 days on the same cached arrays (the maths runs);
3. a median rep's forecast (own login): the tenant's arrays masked by owner;
4. ``--writes`` stage moves through the API (a lead the rules do not let move is marked lost
   instead: a stage change either way), then a forecast (the written leads are spliced in),
   then a warm one again; ``--rounds`` times;
5. ``--writes`` title edits (nothing a forecast reads), then a forecast: the written leads are
   re-read and found unchanged, the answer already given stands;
6. the peak resident memory (VmHWM) of every server process;
7. ``--restarts`` times: the server is stopped and a new one started on the same snapshot
   directory; its first forecast (cold: each worker loads the snapshot and splices the leads
   written since — the writes above) and a second one.

    python bench/forecast_cache_bench.py --url postgresql://postgres@127.0.0.1:5432/canvass_scale_...

Every HTTP call has a timeout; the server is always stopped. Results: stdout and
bench/results/forecast_cache_<db>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from forecast_scale import ADMIN, _existing, _get, _memory
from http_bench import PASSWORD, ROOT, free_port, http_json, machine, wait_until_up

FORECAST = "/api/v1/forecasts/revenue"
NEXT_STAGE = {
    "prospecting": "qualify",
    "qualify": "approach",
    "approach": "negotiate",
    "negotiate": "handle_objections",
    "handle_objections": "close",
}


def _post(port: int, path: str, token: str, body: dict[str, Any], timeout: float, method: str = "POST") -> int:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method=method,
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as error:
        error.read()
        return int(error.code)


async def _open_leads(url: str, count: int, seed: int) -> list[tuple[uuid.UUID, str]]:
    """``count`` open leads in a stage with a next one, spread over the tenant."""
    import asyncpg

    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"), timeout=30)
    try:
        rows = await conn.fetch(
            "SELECT id, stage FROM leads TABLESAMPLE SYSTEM (1) REPEATABLE ($2) "
            "WHERE status = 'open' AND deleted_at IS NULL AND stage = ANY($3::text[]) LIMIT $1",
            count,
            seed,
            list(NEXT_STAGE),
        )
    finally:
        await conn.close()
    return [(r["id"], r["stage"]) for r in rows]


def _forecast(port: int, token: str, timeout: float, horizons: tuple[int, ...] = (90,)) -> tuple[float, dict[str, Any]]:
    elapsed, body = _get(port, FORECAST, token, [("horizons", h) for h in horizons], timeout)
    data = json.loads(body)
    return elapsed, {"version": data.get("history_version"), "leads": data["leads_in_history"]}


@contextlib.contextmanager
def _server(env: dict[str, str], workers: int) -> Iterator[tuple[int, int]]:
    """``canvass serve`` on a free port; (port, pid); always stopped."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "canvass.cli", "serve", "--port", str(port), "--workers", str(workers),
         "--log-level", "warning"],
        env=env, cwd=ROOT, start_new_session=True,
    )  # fmt: skip
    try:
        wait_until_up(port, timeout=60)
        yield port, server.pid
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)


def run(
    url: str, workers: int, repeats: int, writes: int, rounds: int, timeout: float, snapshot_dir: str, restarts: int
) -> dict[str, Any]:
    conditions = machine()
    who, rep_leads, counts = asyncio.run(_existing(url))
    env = {
        **os.environ,
        "CANVASS_DATABASE_URL": url,
        "CANVASS_SECRET_KEY": "cache-" + uuid.uuid4().hex,
        "CANVASS_ACCESS_TOKEN_MINUTES": "240",
        "CANVASS_HISTORY_SNAPSHOT_DIR": snapshot_dir,
    }
    out: dict[str, Any] = {
        "machine": conditions,
        "url": url,
        "workers": workers,
        "snapshot_dir": snapshot_dir,
        **counts,
    }
    out["snapshots_before"] = sorted(os.listdir(snapshot_dir)) if os.path.isdir(snapshot_dir) else []
    with _server(env, workers) as (port, pid):
        base = f"http://127.0.0.1:{port}/api/v1"
        login = lambda email: http_json(f"{base}/auth/login", {"email": email, "password": PASSWORD})["access_token"]  # noqa: E731
        admin = login(ADMIN)
        order = sorted(range(len(rep_leads)), key=lambda i: int(rep_leads[i]))
        median_rep = order[len(order) // 2]
        rep = login(who.rep_emails[median_rep])
        out["load_1min_before"] = round(os.getloadavg()[0], 2)
        cold, info = _forecast(port, admin, timeout)
        out["cold_s"], out["cold"] = round(cold, 3), info
        warm = [_forecast(port, admin, timeout) for _ in range(repeats)]
        out["warm_s"] = [round(t, 3) for t, _ in warm]
        out["warm_median_s"] = round(statistics.median(t for t, _ in warm), 3)
        out["warm_versions"] = [i["version"] for _, i in warm]
        # Another question on the same cached history: no answer to reuse, the maths runs.
        other, _ = _forecast(port, admin, timeout, (30, 60, 90))
        out["warm_30_60_90_s"] = round(other, 3)
        rep_runs = [_forecast(port, rep, timeout) for _ in range(repeats)]
        out["rep_s"] = [round(t, 3) for t, _ in rep_runs]
        out["rep_leads"] = rep_runs[0][1]["leads"]
        out["rounds"] = []
        for r in range(rounds):
            leads = asyncio.run(_open_leads(url, writes, 17 + r))
            statuses: dict[str, int] = {}
            started = time.perf_counter()
            for lead_id, stage in leads:
                status = _post(
                    port, f"/api/v1/leads/{lead_id}/stage-moves", admin,
                    {"to_stage": NEXT_STAGE[stage], "override_reason": "bench"}, timeout,
                )  # fmt: skip
                if status >= 400:
                    status = _post(
                        port, f"/api/v1/leads/{lead_id}/outcome", admin,
                        {"outcome": "lost", "loss_reason": "bench"}, timeout,
                    )  # fmt: skip
                    statuses[f"lost {status}"] = statuses.get(f"lost {status}", 0) + 1
                else:
                    statuses[f"move {status}"] = statuses.get(f"move {status}", 0) + 1
            wrote = time.perf_counter() - started
            after, info_after = _forecast(port, admin, timeout)
            again, info_again = _forecast(port, admin, timeout)
            out["rounds"].append(
                {
                    "writes": statuses,
                    "writes_s": round(wrote, 2),
                    "after_writes_s": round(after, 3),
                    "after_writes": info_after,
                    "warm_again_s": round(again, 3),
                    "warm_again": info_again,
                }
            )
        # Writes a forecast does not read (titles): the written leads are re-read, found unchanged,
        # and the answer already given stands.
        leads = asyncio.run(_open_leads(url, writes, 99))
        started = time.perf_counter()
        codes = [
            _post(port, f"/api/v1/leads/{lead_id}", admin, {"title": f"Renamed {i}"}, timeout, "PATCH")
            for i, (lead_id, _) in enumerate(leads)
        ]
        wrote = time.perf_counter() - started
        after, info_after = _forecast(port, admin, timeout)
        out["title_edits"] = {
            "edits": len(codes),
            "ok": sum(c == 200 for c in codes),
            "writes_s": round(wrote, 2),
            "after_edits_s": round(after, 3),
            "after_edits": info_after,
        }
        out["server_memory_mib"] = _memory(pid)
        out["load_1min_after"] = round(os.getloadavg()[0], 2)
    out["snapshots_after_first_server"] = sorted(os.listdir(snapshot_dir)) if os.path.isdir(snapshot_dir) else []
    out["restarts"] = []
    for _ in range(restarts):
        with _server(env, workers) as (port, pid):
            admin = http_json(f"http://127.0.0.1:{port}/api/v1/auth/login", {"email": ADMIN, "password": PASSWORD})[
                "access_token"
            ]
            load = round(os.getloadavg()[0], 2)
            cold, info = _forecast(port, admin, timeout)
            again, info_again = _forecast(port, admin, timeout)
            out["restarts"].append(
                {
                    "load_1min_before": load,
                    "cold_s": round(cold, 3),
                    "cold": info,
                    "again_s": round(again, 3),
                    "again": info_again,
                    "server_memory_mib": _memory(pid),
                }
            )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True, help="an already loaded scale database (PostgreSQL)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--writes", type=int, default=100, help="stage moves per round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--snapshot-dir", help="history snapshots (default: a new temporary directory, removed after)")
    parser.add_argument("--restarts", type=int, default=2, help="new servers started on the snapshot directory")
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        directory = args.snapshot_dir or stack.enter_context(tempfile.TemporaryDirectory(prefix="canvass-history-"))
        report = run(
            args.url, args.workers, args.repeats, args.writes, args.rounds, args.timeout, directory, args.restarts
        )
    text = json.dumps(report, indent=2, default=str)
    print(text)
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "forecast_cache_postgresql.json").write_text(text + "\n")


if __name__ == "__main__":
    main()
