"""What admission costs a PostgreSQL submit: far from the queue bounds, and near them.

One node on a throwaway PostgreSQL server (``tests/pgserver.py``), a fresh
schema per round; ``--concurrency`` tasks submit ``--jobs`` jobs over
``--sessions`` sessions (no handler runs: nothing leaves the queue). Legs:

- ``far``: the default bounds; every submit is admitted by the node alone.
- ``near``: ``max_queued_per_session`` below the nearness margin, so every
  submit is counted in the database in its own write (the slowest case: a
  cluster whose every session is near its bound).

Prints submits per second and submit latency p50/p99 (ms), medians of ``--rounds``.

    flock /tmp/laneway-bench.lock python benchmarks/bench_postgres_admission.py
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.pgserver import PostgresServer

from laneway import Laneway, TurnContext

_schemas = itertools.count()
#: max_queued_per_session of each leg (50 is within the nearness margin of 64).
LEGS = {"far": 1_000, "near": 50}


async def leg(dsn: str, per_session: int, args: argparse.Namespace) -> tuple[float, ...]:
    # capacity=1 and a turn that never ends: the node claims nothing else, so the
    # writer does submits only and the queue only grows.
    url = f"{dsn}?schema=a{next(_schemas)}&capacity=1"
    lw = Laneway(
        url,
        watchdog_threshold=None,
        shutdown_grace=0,
        max_queued_per_session=per_session,
    )
    release = asyncio.Event()
    began_block = asyncio.Event()

    @lw.handler("block")
    async def block(ctx: TurnContext, payload: Any) -> None:
        began_block.set()
        await release.wait()

    @lw.handler("queued")
    async def queued(ctx: TurnContext, payload: Any) -> None:
        return None

    latencies: list[float] = []
    seq = itertools.count()

    async def submitter() -> None:
        while (i := next(seq)) < args.jobs:
            began = time.perf_counter()
            await lw.submit(f"s{i % args.sessions}", "queued")
            latencies.append(time.perf_counter() - began)

    async with lw:
        await lw.submit("block", "block")
        await began_block.wait()
        start = time.perf_counter()
        await asyncio.gather(*(submitter() for _ in range(args.concurrency)))
        took = time.perf_counter() - start
        release.set()
    latencies.sort()
    p50 = latencies[len(latencies) // 2] * 1000
    p99 = latencies[int(len(latencies) * 0.99)] * 1000
    return args.jobs / took, p50, p99


async def main(args: argparse.Namespace) -> None:
    server = PostgresServer().start()
    try:
        results: dict[str, list[tuple[float, ...]]] = {name: [] for name in LEGS}
        for _ in range(args.rounds):
            for name, per_session in LEGS.items():  # alternating: drift hits both alike
                results[name].append(await leg(server.dsn(), per_session, args))
    finally:
        server.stop()
    print(
        f"{args.jobs} submits over {args.sessions} sessions, {args.concurrency} at once,"
        f" median of {args.rounds}"
    )
    for name, runs in results.items():
        rate, p50, p99 = (statistics.median(column) for column in zip(*runs, strict=True))
        print(f"  {name:5} {rate:8.0f} submits/s   p50 {p50:6.2f} ms   p99 {p99:6.2f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=5_000)
    parser.add_argument("--sessions", type=int, default=1_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    asyncio.run(main(parser.parse_args()))
