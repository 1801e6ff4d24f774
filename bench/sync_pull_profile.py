"""In-process profile of sync pulls (issue 3): statements, wall and CPU per pull.

A fresh PostgreSQL database at the head migration, bench/sync_bench.py's tenant,
a fresh rep with 150 fresh leads and a device that bootstrapped. Then, per run:

- empty: an incremental pull with nothing new (the cursor is current);
- own: the device pushes 50 mutations (one transaction), then pulls them back
  (~100 records: what a device of the 50-device phase pulls after each push);
- page100: a page of 100 records from inside the last push's version;
- boot: a bootstrap page (cursor 0, limit 500) of the rep's records.

Each pull runs ``canvass.sync.pull.pull`` straight in its own session (no HTTP),
so the figures are the pull's own; statements are counted with a
``before_cursor_execute`` listener.

    python bench/sync_pull_profile.py --runs 20
    python bench/sync_pull_profile.py --runs 5 --pyinstrument /tmp/pull.html
    python bench/sync_pull_profile.py --root /tmp/old-checkout   # another version of the code
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20, help="measured runs of each pull (after one warm-up)")
    parser.add_argument("--pyinstrument", type=Path, default=None, help="profile of the last run's pull (.txt: text)")
    parser.add_argument("--profile", default="own", choices=("empty", "own", "page100", "boot"), help="which pull")
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent, help="the code to run")
    parser.add_argument("--keep", action="store_true", help="keep the database (its name is printed)")
    parser.add_argument("--statements", action="store_true", help="print the statements of the last pulls")
    return parser.parse_args()


ARGS = _parse()
sys.path.insert(0, str(ARGS.root))

import msgspec  # noqa: E402
from alembic import command  # noqa: E402
from sqlalchemy import event  # noqa: E402

from bench.http_bench import PG_ADMIN, _pg  # noqa: E402
from bench.sync_bench import DAY_MS, PUSH_LEADS, Device, Tenant, _now_ms  # noqa: E402
from canvass.db import session_factory  # noqa: E402
from canvass.migrations import alembic_config  # noqa: E402
from canvass.pipeline.scope import Actor  # noqa: E402
from canvass.pipeline.vocabulary import Role  # noqa: E402
from canvass.sync import push as sync_push  # noqa: E402
from canvass.sync.devices import register_device  # noqa: E402
from canvass.sync.pull import pull  # noqa: E402
from canvass.sync.wire import DeviceRegistration, PushRequest  # noqa: E402

COUNT = [0]
TEXTS: Counter[str] = Counter()


STARTED: list[float] = []
SLOW: Counter[str] = Counter()  # statement -> total seconds (with --statements)


def _count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
    COUNT[0] += 1
    if ARGS.statements:
        TEXTS[" ".join(statement.split())[:160]] += 1
        STARTED.append(time.perf_counter())


def _done(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
    if ARGS.statements and STARTED:
        SLOW[" ".join(statement.split())[:100]] += time.perf_counter() - STARTED.pop()


async def main(url: str) -> None:
    tenant = Tenant(url)
    await tenant.create()
    event.listen(tenant.engine.sync_engine, "before_cursor_execute", _count)
    event.listen(tenant.engine.sync_engine, "after_cursor_execute", _done)
    factory = session_factory(tenant.engine)
    results: dict[str, list[tuple[float, float, int, int]]] = defaultdict(list)
    try:
        ((user_id, _email),) = await tenant.add_reps("pull", 1)
        await tenant.load(tenant.rows(user_id, PUSH_LEADS, open_only=True))
        actor = Actor(organization_id=tenant.boot.organization_id, user_id=user_id, role=Role.REP)
        device = Device(None, "", 7)  # type: ignore[arg-type]  # never speaks HTTP here
        async with factory() as session, session.begin():
            await register_device(session, actor, DeviceRegistration(device_id=device.id))

        async def timed(label: str, cursor: str, limit: int, last: bool = False) -> Any:
            profiler = None
            if ARGS.pyinstrument is not None and last and label == ARGS.profile:
                from pyinstrument import Profiler

                profiler = Profiler(async_mode="enabled", interval=0.0002)
                profiler.start()
            COUNT[0] = 0
            TEXTS.clear()
            wall, cpu = time.perf_counter(), time.process_time()
            async with factory() as session, session.begin():
                response = await pull(session, actor, device.id, cursor, limit)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            results[label].append((wall, cpu, COUNT[0], len(response.changes) + len(response.removals)))
            if profiler is not None:
                profiler.stop()
                if ARGS.pyinstrument.suffix == ".txt":
                    ARGS.pyinstrument.write_text(profiler.output_text(show_all=False))
                else:
                    profiler.write_html(str(ARGS.pyinstrument))
            return response

        cursor = "0"
        while True:  # the device bootstraps
            async with factory() as session, session.begin():
                page = await pull(session, actor, device.id, cursor, 500)
            for change in page.changes:
                if change.entity == "lead":
                    device.leads[str(change.id)] = change.data
                    if change.data["status"] == "open":
                        device.stage[str(change.id)] = change.data["stage"]
            cursor = page.cursor
            if not page.has_more:
                break
        async with tenant.engine.connect() as connection:  # plans from statistics, as a live database has
            await connection.exec_driver_sql("ANALYZE")
            await connection.commit()
        for run in range(ARGS.runs + 1):
            await timed("empty", cursor, 500, run == ARGS.runs)
            now = _now_ms()
            batch = device.mutations(50, now - 3_600_000, now - 60_000)
            body = msgspec.json.encode({"device_id": device.id, "mutations": batch, "oldest_pending_age_s": 60})
            async with factory() as session, session.begin():
                await sync_push.push(session, actor, msgspec.json.decode(body, type=PushRequest))
            before = cursor
            last = run == ARGS.runs
            page = await timed("own", cursor, 500, last)
            cursor = page.cursor
            await timed("page100", before, 100, last)
            await timed("boot", "0", 500, last)
            if run == 0:
                for values in results.values():
                    values.clear()
        if ARGS.statements:
            for text, n in TEXTS.most_common(20):
                print(f"{n:5d} {text}")
            for text, seconds in SLOW.most_common(8):
                print(f"{seconds:8.3f} s in all runs: {text}")
        print(f"PUSH_LEADS={PUSH_LEADS} DAY_MS={DAY_MS} load {os.getloadavg()[0]:.2f}")
        for label, values in results.items():
            walls, cpus, stmts, records = zip(*values, strict=True)
            print(
                f"{label:8s} median of {len(values)}: {statistics.median(walls) * 1000:7.2f} ms wall,"
                f" {statistics.median(cpus) * 1000:7.2f} ms CPU, {statistics.median(stmts):4.0f} statements,"
                f" {statistics.median(records):4.0f} records"
            )
    finally:
        await tenant.engine.dispose()


if __name__ == "__main__":
    name = f"canvass_pullprof_{uuid.uuid4().hex[:8]}"
    url = PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    asyncio.run(_pg(f'CREATE DATABASE "{name}"'))
    try:
        command.upgrade(alembic_config(url), "head")  # outside any event loop (env.py runs its own)
        asyncio.run(main(url))
    finally:
        if ARGS.keep:
            print(f"kept database {name}")
        else:
            asyncio.run(_pg(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
