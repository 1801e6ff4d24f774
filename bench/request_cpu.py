"""CPU time the API process spends per request, measured in-process.

wrk figures on this shared 2-core machine move with whatever else runs; the CPU
seconds one request costs the server process do not (much). This drives the
ASGI app directly — no HTTP client or socket in the process, so the figure is
the server's own: routing, auth, dependency injection, the service, SQLAlchemy
and the driver's client side (the database server's CPU is not included) —
and prints CPU microseconds per request for each operation, with a py-spy-free
cProfile summary of the top functions on request (`--profile`).

    python bench/request_cpu.py --url postgresql://postgres@127.0.0.1:5432/<db> \\
        --email manager@bench.example --password bench-password-1 --ids ids.txt --moves moves.txt

Works on a database seeded by bench/http_bench.py's `seed()`.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import pstats
import time
from typing import Any

import msgspec

from canvass.api.app import create_app
from canvass.settings import Settings


class _Collect:
    def __init__(self) -> None:
        self.status = 0
        self.body = b""

    async def __call__(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        elif message["type"] == "http.response.body":
            self.body += message.get("body", b"")


async def call(app: Any, method: str, path: str, token: str | None, body: bytes = b"") -> tuple[int, bytes]:
    query = b""
    if "?" in path:
        path, q = path.split("?", 1)
        query = q.encode()
    headers = [(b"host", b"127.0.0.1"), (b"content-type", b"application/json")]
    if token:
        headers.append((b"authorization", b"Bearer " + token.encode()))
    headers.append((b"content-length", str(len(body)).encode()))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            await asyncio.sleep(3600)
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    out = _Collect()
    await app(scope, receive, out)
    return out.status, out.body


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True)
    parser.add_argument("--email", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--ids", required=True, help="file of lead ids in the caller's scope, one a line")
    parser.add_argument(
        "--moves",
        required=True,
        help="file of lead ids in prospecting with account and contact (the moved ones are taken out)",
    )
    parser.add_argument("-n", type=int, default=2000, help="requests per operation")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--profile", choices=["get", "list", "create", "move"], help="cProfile this operation")
    parser.add_argument("--sort", default="tottime", help="cProfile sort key (tottime, cumulative)")
    parser.add_argument("--top", type=int, default=30, help="functions to list")
    parser.add_argument("--only", help="comma-separated operations to run (default: all)")
    args = parser.parse_args()
    settings = Settings(database_url=args.url, secret_key="request-cpu-" + "x" * 32)
    app = create_app(settings)
    with open(args.ids) as f:
        ids = f.read().split()
    with open(args.moves) as f:
        moves = f.read().split()
    async with _lifespan(app):
        _, body = await call(
            app,
            "POST",
            "/api/v1/auth/login",
            None,
            json.dumps({"email": args.email, "password": args.password}).encode(),
        )
        token = json.loads(body)["access_token"]
        create_body = msgspec.json.encode({"title": "CPU bench lead", "amount": 1200.0})
        move_body = msgspec.json.encode({"to_stage": "qualify"})
        operations = {
            "get": lambda i: call(app, "GET", f"/api/v1/leads/{ids[i % len(ids)]}", token),
            "list": lambda i: call(app, "GET", "/api/v1/leads?limit=50", token),
            "create": lambda i: call(app, "POST", "/api/v1/leads", token, create_body),
            "move": lambda i: call(app, "POST", f"/api/v1/leads/{moves.pop()}/stage-moves", token, move_body),
        }
        results = {}
        for name, op in operations.items():
            if args.only and name not in args.only.split(","):
                continue
            n = min(args.n, len(moves) - 10) if name == "move" else args.n
            for i in range(50):  # warm caches, pools, prepared statements
                await op(i)
            profiler = cProfile.Profile() if args.profile == name else None
            wall, cpu = time.perf_counter(), time.process_time()
            if profiler:
                profiler.enable()
            bad = await _drive(op, n, args.concurrency)
            if profiler:
                profiler.disable()
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            results[name] = {
                "requests": n,
                "errors": bad,
                "cpu_us_per_request": round(cpu / n * 1e6),
                "wall_s": round(wall, 2),
            }
            print(
                f"{name:7s} {results[name]['cpu_us_per_request']:6d} µs CPU/request  ({n} requests, {bad} errors, {wall:.1f} s wall)"
            )
            if profiler:
                pstats.Stats(profiler).sort_stats(args.sort).print_stats(args.top)
    with open(args.moves, "w") as remaining:  # a lead moves out of prospecting once
        remaining.write("\n".join(moves) + "\n")


async def _drive(op: Any, n: int, concurrency: int) -> int:
    """``n`` calls of ``op`` by ``concurrency`` tasks; the number of error answers."""
    queue = iter(range(n))
    bad = 0

    async def worker() -> None:
        nonlocal bad
        for i in queue:
            status, body = await op(i)
            if status >= 400:
                if not bad:
                    print(f"first error: {status} {body[:300]!r}")
                bad += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return bad


def _lifespan(app: Any) -> Any:
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def run() -> Any:
        messages: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        sent: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        await messages.put({"type": "lifespan.startup"})
        task = asyncio.create_task(
            app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, messages.get, sent.put)
        )
        started = await sent.get()
        assert started["type"] == "lifespan.startup.complete", started
        try:
            yield
        finally:
            await messages.put({"type": "lifespan.shutdown"})
            await sent.get()
            await task

    return run()


if __name__ == "__main__":
    import uvloop

    uvloop.run(main())
