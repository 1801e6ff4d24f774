"""The issue's reference point, measured on this machine: a bare Litestar +
msgspec + SQLAlchemy (asyncpg) service with no auth, no scoping, no ETags, no
change feed, served like Canvass (uvicorn, 2 workers, uvloop, httptools) and
loaded like it (wrk, 32 connections, 2 threads).

The pipeline API's bars are absolute figures; this machine's speed is not. Run
this beside ``bench/http_bench.py`` (alternating) and compare ratios: what the
bare stack reaches here says how much of a bar the hardware leaves for
everything Canvass adds.

    python bench/reference_bare.py                      # 100,000 rows, 10 s per operation
    python bench/reference_bare.py --duration 20 --rounds 2

The app below is also what the server runs (``bench.reference_bare:app``).
It reads ``REFERENCE_DATABASE_URL``. Loopback only; bounded loops; the server
and the database are always removed.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
from litestar import Litestar, get, post
from litestar.exceptions import NotFoundException
from sqlalchemy import DateTime, Integer, Numeric, String, Uuid, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.http_bench import PG_ADMIN, _pg, free_port, run_wrk, stop  # noqa: E402


class Base(DeclarativeBase):
    pass


class Item(Base):
    """About the shape of a lead's hot columns."""

    __tablename__ = "items"
    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    title: Mapped[str] = mapped_column(String(200))
    stage: Mapped[str] = mapped_column(String(30), index=True)
    owner: Mapped[int] = mapped_column(Integer, index=True)
    amount: Mapped[float] = mapped_column(Numeric(14, 2, asdecimal=False))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), index=True)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    version: Mapped[int] = mapped_column(Integer, default=1)


class ItemIn(msgspec.Struct, forbid_unknown_fields=True):
    title: str
    owner: int
    amount: float


class StageIn(msgspec.Struct, forbid_unknown_fields=True):
    stage: str


class ItemOut(msgspec.Struct):
    id: uuid.UUID
    title: str
    stage: str
    owner: int
    amount: float
    created_at: dt.datetime
    updated_at: dt.datetime
    version: int


def _out(item: Item) -> ItemOut:
    return ItemOut(
        id=item.id,
        title=item.title,
        stage=item.stage,
        owner=item.owner,
        amount=item.amount,
        created_at=item.created_at,
        updated_at=item.updated_at,
        version=item.version,
    )


_engine = None
_sessions: async_sessionmaker[AsyncSession] | None = None


async def _connect() -> None:
    global _engine, _sessions
    _engine = create_async_engine(os.environ["REFERENCE_DATABASE_URL"], pool_size=20, max_overflow=0)
    _sessions = async_sessionmaker(_engine, expire_on_commit=False)


async def provide_session() -> AsyncIterator[AsyncSession]:
    assert _sessions is not None
    async with _sessions() as session:
        yield session


@get("/items/{item_id:uuid}")
async def get_item(session: AsyncSession, item_id: uuid.UUID) -> ItemOut:
    item = await session.get(Item, item_id)
    if item is None:
        raise NotFoundException()
    return _out(item)


@get("/items")
async def list_items(session: AsyncSession) -> list[ItemOut]:
    items = await session.scalars(select(Item).order_by(Item.created_at.desc(), Item.id).limit(50))
    return [_out(i) for i in items]


@post("/items")
async def create_item(session: AsyncSession, data: ItemIn) -> ItemOut:
    now = dt.datetime.now(dt.UTC)
    item = Item(
        title=data.title, owner=data.owner, amount=data.amount, stage="prospecting", created_at=now, updated_at=now
    )
    session.add(item)
    await session.commit()
    return _out(item)


@post("/items/{item_id:uuid}/stage", status_code=200)
async def move_item(session: AsyncSession, item_id: uuid.UUID, data: StageIn) -> ItemOut:
    """The nearest bare equivalent of a stage move: one UPDATE ... RETURNING."""
    item = await session.scalar(
        update(Item)
        .where(Item.id == item_id)
        .values(stage=data.stage, updated_at=dt.datetime.now(dt.UTC), version=Item.version + 1)
        .returning(Item)
    )
    if item is None:
        raise NotFoundException()
    await session.commit()
    return _out(item)


app = Litestar(
    [get_item, list_items, create_item, move_item],
    dependencies={"session": provide_session},
    on_startup=[_connect],
    openapi_config=None,
)

_WRK = {
    "get": """
local ids = {}
function init(args) for line in io.lines(args[1]) do ids[#ids + 1] = line end end
function request() return wrk.format("GET", "/items/" .. ids[math.random(#ids)]) end
""",
    "list": 'function request() return wrk.format("GET", "/items") end',
    "create": """
function init(args) wrk.headers["Content-Type"] = "application/json" end
function request()
  return wrk.format("POST", "/items", nil, '{"title": "A new deal", "owner": 3, "amount": 1200.5}')
end
""",
    # Threads take alternate ids, so no row is moved twice.
    "move": """
local ids = {}
local counter = 0
function setup(thread) thread:set("tid", counter); counter = counter + 1 end
function init(args)
  for line in io.lines(args[1]) do ids[#ids + 1] = line end
  wrk.headers["Content-Type"] = "application/json"
  i = tid + 1
end
function request()
  local id = ids[i]
  i = i + 2
  return wrk.format("POST", "/items/" .. id .. "/stage", nil, '{"stage": "qualify"}')
end
""",
}


async def _seed(url: str, rows: int) -> list[str]:
    engine = create_async_engine(url)
    async with engine.begin() as connection:
        await connection.run_sync(Base.metadata.create_all)
    start = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    ids = [uuid.uuid4() for _ in range(rows)]
    async with engine.begin() as connection:
        for first in range(0, rows, 5000):
            await connection.execute(
                insert(Item),
                [
                    {
                        "id": ids[i],
                        "title": f"Deal {i}",
                        "stage": "prospecting",
                        "owner": i % 20,
                        "amount": float(500 + i % 50_000),
                        "created_at": start + dt.timedelta(minutes=i),
                        "updated_at": start + dt.timedelta(minutes=i),
                        "version": 1,
                    }
                    for i in range(first, min(first + 5000, rows))
                ],
            )
    await engine.dispose()
    return [str(i) for i in ids]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    name = f"reference_bare_{uuid.uuid4().hex[:8]}"
    asyncio.run(_pg(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://") + f"/{name}"
    tmp = Path(tempfile.mkdtemp(prefix="reference-bare-"))
    server = None
    try:
        ids = asyncio.run(_seed(url, args.rows))
        asyncio.run(_pg("VACUUM (ANALYZE)", database=name))
        (tmp / "ids.txt").write_text("\n".join(ids) + "\n")
        for kind, text in _WRK.items():
            (tmp / f"{kind}.lua").write_text(text)
        port = free_port()
        server = subprocess.Popen(
            [
                sys.executable, "-m", "uvicorn", "bench.reference_bare:app", "--port", str(port),
                "--workers", str(args.workers), "--loop", "uvloop", "--http", "httptools",
                "--log-level", "warning", "--no-access-log",
            ],
            env={**os.environ, "REFERENCE_DATABASE_URL": url},
            cwd=ROOT,
            start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while subprocess.run(["curl", "-sf", "-o", "/dev/null", f"http://127.0.0.1:{port}/items"]).returncode:
            if time.monotonic() > deadline:
                raise RuntimeError("the reference server did not start")
            time.sleep(0.3)
        ids_file = str(tmp / "ids.txt")
        run_wrk(port, tmp / "get.lua", [ids_file], 3)  # warm-up
        rounds = []
        for _ in range(args.rounds):
            rounds.append(
                {
                    "get": run_wrk(port, tmp / "get.lua", [ids_file], args.duration),
                    "list_50": run_wrk(port, tmp / "list.lua", [], args.duration),
                    "create": run_wrk(port, tmp / "create.lua", [], args.duration),
                    "move": run_wrk(port, tmp / "move.lua", [ids_file], args.duration),
                }
            )
        print(f"{'operation':<10} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
        for number, result in enumerate(rounds, 1):
            for operation, figures in result.items():
                print(
                    f"{operation:<10} {figures['requests_per_s']:>8.0f} {figures['p50_ms']:>8.1f} "
                    f"{figures['p99_ms']:>8.1f} {figures['errors']:>7}  (round {number})"
                )
        out = ROOT / "bench" / "results" / "reference_bare.json"
        out.write_text(json.dumps({"rows": args.rows, "workers": args.workers, "rounds": rounds}, indent=2) + "\n")
    finally:
        if server is not None:
            stop(server)
        asyncio.run(_pg(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


if __name__ == "__main__":
    main()
