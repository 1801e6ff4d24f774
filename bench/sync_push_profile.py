"""In-process profile of one sync push (issue 3): statements, wall and CPU time.

A fresh PostgreSQL database at the head migration, bench/sync_bench.py's tenant
(without its 10,000 leads: only what a push touches), then per run a fresh rep
with 150 fresh leads whose device pushes the 1,000 mutations of an offline day
(bench/sync_bench.py's generator), straight into ``canvass.sync.push.push`` in
one transaction — no HTTP, no server process, so the figures are the push's
own. Counts the SQL statements by kind (a ``before_cursor_execute`` listener).

    python bench/sync_push_profile.py --runs 3
    python bench/sync_push_profile.py --runs 3 --refused 20       # some refused
    python bench/sync_push_profile.py --runs 1 --pyinstrument /tmp/push.html
    python bench/sync_push_profile.py --root /tmp/old-checkout   # another version of the code
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="measured runs (after one warm-up)")
    parser.add_argument("--refused", type=int, default=0, help="mutations replaced by check-ins of unknown visits")
    parser.add_argument("--pyinstrument", type=Path, default=None, help="HTML profile of the last run")
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent, help="the code to run")
    parser.add_argument("--statements", action="store_true", help="print the most frequent statements")
    return parser.parse_args()


ARGS = _parse()
sys.path.insert(0, str(ARGS.root))

import msgspec  # noqa: E402
from alembic import command  # noqa: E402
from sqlalchemy import event, select  # noqa: E402

from bench.http_bench import PG_ADMIN, _pg  # noqa: E402
from bench.sync_bench import DAY_MS, PUSH_LEADS, Device, Tenant, _now_ms  # noqa: E402
from canvass.db import session_factory  # noqa: E402
from canvass.migrations import alembic_config  # noqa: E402
from canvass.pipeline.models import Lead  # noqa: E402
from canvass.pipeline.scope import Actor  # noqa: E402
from canvass.pipeline.services.leads import to_lead_out  # noqa: E402
from canvass.pipeline.vocabulary import Role  # noqa: E402
from canvass.sync import push as sync_push  # noqa: E402
from canvass.sync.devices import register_device  # noqa: E402
from canvass.sync.wire import DeviceRegistration, PushRequest  # noqa: E402

KINDS: Counter[str] = Counter()
TEXTS: Counter[str] = Counter()


def _count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
    KINDS[statement.split()[0].upper()] += 1
    if ARGS.statements:
        TEXTS[" ".join(statement.split())[:140]] += 1


async def _device_of(tenant: Tenant, run: int) -> tuple[Actor, Device]:
    """A fresh rep with fresh leads, and a device that knows them (as after a pull)."""
    ((user_id, _email),) = await tenant.add_reps("push", 1)
    await tenant.load(tenant.rows(user_id, PUSH_LEADS, open_only=True))
    actor = Actor(organization_id=tenant.boot.organization_id, user_id=user_id, role=Role.REP)
    device = Device(None, "", 1000 + run)  # type: ignore[arg-type]  # never speaks HTTP here
    async with session_factory(tenant.engine)() as session, session.begin():
        await register_device(session, actor, DeviceRegistration(device_id=device.id))
        for lead in (await session.scalars(select(Lead).where(Lead.owner_id == user_id))).all():
            data = msgspec.to_builtins(to_lead_out(lead))
            device.leads[data["id"]] = data
            if data["status"] == "open":
                device.stage[data["id"]] = data["stage"]
    return actor, device


async def main(url: str) -> None:
    tenant = Tenant(url)
    await tenant.create()
    event.listen(tenant.engine.sync_engine, "before_cursor_execute", _count)
    walls, cpus, totals = [], [], []
    try:
        for run in range(ARGS.runs + 1):
            actor, device = await _device_of(tenant, run)
            now = _now_ms()
            batch = device.mutations(1000, now - DAY_MS, now - 60_000)
            for i in random.Random(run).sample(range(len(batch)), ARGS.refused):
                unknown = {"id": str(uuid.uuid4()), "latitude": 1.0, "longitude": 1.0}
                batch[i] = {**batch[i], "name": "activity.check_in", "args": unknown}
            body = msgspec.json.encode({"device_id": device.id, "mutations": batch, "oldest_pending_age_s": 86_400})
            request = msgspec.json.decode(body, type=PushRequest)
            KINDS.clear()
            TEXTS.clear()
            profiler = None
            if ARGS.pyinstrument is not None and run == ARGS.runs:
                from pyinstrument import Profiler

                profiler = Profiler(async_mode="enabled", interval=0.0005)
                profiler.start()
            wall, cpu = time.perf_counter(), time.process_time()
            async with session_factory(tenant.engine)() as session, session.begin():
                response = await sync_push.push(session, actor, request)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            if profiler is not None:
                profiler.stop()
                profiler.write_html(str(ARGS.pyinstrument))
            statuses = Counter(r.status.value for r in response.receipts)
            total = sum(KINDS.values())
            label = "warm-up" if run == 0 else f"run {run}"
            print(
                f"{label}: {wall:.3f} s wall, {cpu:.3f} s CPU, {total} statements {dict(KINDS.most_common())},"
                f" receipts {dict(statuses)}, load {os.getloadavg()[0]:.2f}",
                flush=True,
            )
            if run:
                walls.append(wall)
                cpus.append(cpu)
                totals.append(total)
        for text, n in TEXTS.most_common(20):
            print(f"{n:5d} {text}")
        print(
            f"median of {ARGS.runs}: {statistics.median(walls):.3f} s wall, {statistics.median(cpus):.3f} s CPU,"
            f" {statistics.median(totals):.0f} statements per 1,000 mutations"
        )
    finally:
        await tenant.engine.dispose()


if __name__ == "__main__":
    name = f"canvass_pushprof_{uuid.uuid4().hex[:8]}"
    url = PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    asyncio.run(_pg(f'CREATE DATABASE "{name}"'))
    try:
        command.upgrade(alembic_config(url), "head")  # outside any event loop (env.py runs its own)
        asyncio.run(main(url))
    finally:
        asyncio.run(_pg(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
