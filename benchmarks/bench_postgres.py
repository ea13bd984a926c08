"""PostgreSQL store benchmark (phase one: the store, before multi-node dispatch).

Everything runs against one throwaway PostgreSQL server started for the run
(``tests/pgserver.py``), each round in a fresh schema, rounds alternating so
machine drift hits every leg alike; medians of ``--rounds`` are printed with
ratios.

- runtime: N no-op jobs over S sessions through ``Laneway`` on
  ``postgresql://``, on ``sqlite:///`` and on ``memory://`` (today's dispatcher,
  one node), from the first submit until every success is committed.
- claims: a backlog of N no-op jobs over S sessions in a lane capped at 64,
  drained by 1 and by 2 store nodes through ``claim()`` + ``finish()``; against
  the same claim transaction run unbatched (one job per claim, ``batch_max=1``:
  one transaction per state change, the reference design's shape).

    python benchmarks/bench_postgres.py                  # 5,000 jobs, 1,000 sessions
    python benchmarks/bench_postgres.py --jobs 2000 --rounds 1
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.pgserver import PostgresServer

from laneway import JobState, Laneway, TurnContext
from laneway.stores._postgres import PostgresStore

CAP = 64
LANES = {"noop": ["llm"]}
_schemas = itertools.count()


def fresh(dsn: str, extra: str = "") -> str:
    return f"{dsn}?schema=b{next(_schemas)}{extra}"


async def runtime(url: str, jobs: int, sessions: int) -> float:
    lw = Laneway(url, watchdog_threshold=None, max_queued=jobs + 1)

    @lw.handler("noop")
    async def noop(ctx: TurnContext, payload: Any) -> None:
        return None

    async with lw:
        start = time.perf_counter()
        await asyncio.gather(*(lw.submit(f"s{i % sessions}", "noop") for i in range(jobs)))
        await lw.join()
        return jobs / (time.perf_counter() - start)


async def _drain(store: PostgresStore, total: int, done: list[int], per_claim: int) -> None:
    running: set[asyncio.Future[Any]] = set()

    def ended(fut: asyncio.Future[Any]) -> None:
        running.discard(fut)
        done[0] += 1

    while done[0] < total:
        room = min(per_claim, CAP - len(running))
        claimed = await store.claim(room, LANES) if room > 0 else []
        for c in claimed:
            fut = store.finish(c.job.id, c.attempt, JobState.SUCCEEDED, result=None,
                               error=None, reason=None, lost=False)  # fmt: skip
            running.add(fut)
            fut.add_done_callback(ended)
        if not claimed:
            await asyncio.sleep(0.001)


async def claims(url: str, jobs: int, sessions: int, nodes: int, batched: bool) -> float:
    opts = "" if batched else "&batch_max=1"
    stores = [PostgresStore(url + opts) for _ in range(nodes)]
    for store in stores:
        await store.open()
    try:
        await stores[0].set_lanes({"llm": CAP})
        await asyncio.gather(
            *(
                stores[0].add_job(
                    job_id=f"j{i}",
                    session=f"s{i % sessions}",
                    handler="noop",
                    payload=None,
                    priority=0,
                    idempotency_key=None,
                )
                for i in range(jobs)
            )
        )
        done = [0]
        start = time.perf_counter()
        per_claim = CAP if batched else 1
        await asyncio.gather(*(_drain(s, jobs, done, per_claim) for s in stores))
        return jobs / (time.perf_counter() - start)
    finally:
        for store in stores:
            await store.close()


def median(runs: list[float]) -> float:
    return statistics.median(runs)


async def main(args: argparse.Namespace) -> None:
    server = PostgresServer().start()
    try:
        dsn = server.dsn()
        legs: dict[str, Callable[[], Awaitable[float]]] = {
            "runtime postgresql": lambda: runtime(fresh(dsn), args.jobs, args.sessions),
            "runtime sqlite": lambda: runtime(
                f"sqlite:///{tempfile.mkdtemp()}/b.db", args.jobs, args.sessions
            ),
            "runtime memory": lambda: runtime("memory://", args.jobs, args.sessions),
            "claims 1 node": lambda: claims(fresh(dsn), args.jobs, args.sessions, 1, True),
            "claims 2 nodes": lambda: claims(fresh(dsn), args.jobs, args.sessions, 2, True),
            "claims 1 node unbatched": lambda: claims(
                fresh(dsn), args.jobs, args.sessions, 1, False
            ),
        }
        results: dict[str, list[float]] = {name: [] for name in legs}
        for _ in range(args.rounds):
            for name, leg in legs.items():
                results[name].append(await leg())
    finally:
        server.stop()
    m = {name: median(runs) for name, runs in results.items()}
    print(f"{args.jobs} no-op jobs over {args.sessions} sessions, median of {args.rounds}")
    for name, value in m.items():
        print(f"  {name:26} {value:9.0f} jobs/s")
    print(f"  postgresql / sqlite runtime   {m['runtime postgresql'] / m['runtime sqlite']:.2f}x")
    print(
        f"  batched / unbatched claims    {m['claims 1 node'] / m['claims 1 node unbatched']:.1f}x"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=5_000)
    parser.add_argument("--sessions", type=int, default=1_000)
    parser.add_argument("--rounds", type=int, default=3)
    asyncio.run(main(parser.parse_args()))
