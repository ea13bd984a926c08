"""Laneway nodes on one PostgreSQL database: throughput, latency, order.

Node processes (``tests/postgres/_cluster_node.py``: handler ``work`` in lane
``llm``, ``session_limit`` 1) claim from one throwaway server; a submitter in
this process accepts no-op jobs over S sessions through the store. Every node
logs each attempt's start and end, so per-session order is checked on the
merged log of every leg and the start times give submit-to-start.

- live: nodes running while N jobs are submitted (200 submits in flight);
  jobs/s from the first submit to the last end, and the submit p99;
- drain: a backlog of N jobs queued first, then the nodes start; jobs/s from
  the first start to the last end;
- start: idle nodes, 200 jobs submitted one at a time; submit-to-start p50;
- each with 2 nodes and a cap of 64, with 1 node, and with 2 nodes and no cap;
- kill: a node SIGKILLed mid-turn (a 2 s turn, alone on it) and a new node
  (another name) started at once, ``--kills`` times, lease 1 s, poll 200 ms:
  seconds from the kill until the turn runs again (the goal is lease + 1 s).

    python benchmarks/bench_postgres_cluster.py              # 20,000 jobs, 1,000 sessions
    python benchmarks/bench_postgres_cluster.py --jobs 5000
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.pgserver import PostgresServer
from tests.postgres._cluster import Node, check_order, runs, stop_all
from tests.postgres._db import fetch

from laneway.stores._postgres import PostgresStore

_schemas = itertools.count()
NO_CAP = 100_000


def fresh(dsn: str, lease: str = "5s") -> str:
    return f"{dsn}?schema=c{next(_schemas)}&poll=200ms&lease={lease}"


def _ms(session: str) -> int:
    return 2_000 if session.startswith("k") else 0  # a kill leg's turn: killed mid-way


async def _submit(url: str, jobs: list[tuple[str, int]], in_flight: int) -> dict[str, float]:
    """Submit every job; returns each job's submit latency (seconds)."""
    store = PostgresStore(url)
    await store.open()
    took: dict[str, float] = {}
    todo = iter(jobs)

    # ``in_flight`` submitters, each taking the next job: not one task per job, whose
    # 20,000 first steps would run inside the first submits' measured latency.
    async def submitter() -> None:
        for session, i in todo:
            began = time.perf_counter()
            await store.add_job(
                job_id=f"{session}-{i}", session=session, handler="work",
                payload={"i": i, "ms": _ms(session)}, priority=0, idempotency_key=None,
            )  # fmt: skip
            took[f"{session}-{i}"] = time.perf_counter() - began

    try:
        await asyncio.gather(*(submitter() for _ in range(min(in_flight, len(jobs)))))
    finally:
        await store.close()
    return took


async def _nodes(url: str, count: int, cap: int, logs: Path) -> list[Node]:
    nodes = [Node(url, logs / f"n{next(_schemas)}.log", cap) for _ in range(count)]
    await asyncio.gather(*(n.start() for n in nodes))
    return nodes


async def _until_logged(nodes: list[Node], count: int) -> None:
    # Counted in the database, not by re-reading the logs: this process shares the two cores.
    url = nodes[0].url
    async with asyncio.timeout(600):
        while (await fetch(url, "SELECT count(*) FROM jobs WHERE state = 'succeeded'"))[0][
            0
        ] < count:
            await asyncio.sleep(0.1)


def _jobs(n: int, sessions: int) -> list[tuple[str, int]]:
    return [(f"s{i % sessions}", i // sessions) for i in range(n)]


async def live(dsn: str, n: int, sessions: int, count: int, cap: int) -> tuple[float, float]:
    url = fresh(dsn)
    logs = Path(tempfile.mkdtemp())
    nodes = await _nodes(url, count, cap, logs)
    try:
        began = time.time()
        took = await _submit(url, _jobs(n, sessions), 200)
        await _until_logged(nodes, n)
    finally:
        await stop_all(nodes)
    logged = runs([node.log for node in nodes], {})
    check_order(logged)
    rate = n / (max(r.end or 0.0 for r in logged) - began)
    return rate, statistics.quantiles(took.values(), n=100)[98]


async def drain(dsn: str, n: int, sessions: int, count: int, cap: int) -> float:
    url = fresh(dsn)
    await _submit(url, _jobs(n, sessions), 500)
    nodes = await _nodes(url, count, cap, Path(tempfile.mkdtemp()))
    try:
        await _until_logged(nodes, n)
    finally:
        await stop_all(nodes)
    logged = runs([node.log for node in nodes], {})
    check_order(logged)
    return n / (max(r.end or 0.0 for r in logged) - min(r.start for r in logged))


async def start_delay(dsn: str, count: int, cap: int) -> float:
    url = fresh(dsn)
    nodes = await _nodes(url, count, cap, Path(tempfile.mkdtemp()))
    submitted: dict[str, float] = {}
    store = PostgresStore(url)
    await store.open()
    try:
        for i in range(200):
            submitted[f"d{i}-0"] = time.time()
            await store.add_job(
                job_id=f"d{i}-0", session=f"d{i}", handler="work",
                payload={"i": 0, "ms": 0}, priority=0, idempotency_key=None,
            )  # fmt: skip
            await asyncio.sleep(0.01)
        await _until_logged(nodes, 200)
    finally:
        await store.close()
        await stop_all(nodes)
    logged = runs([node.log for node in nodes], {})
    return statistics.median(r.start - submitted[r.job] for r in logged)


async def _started(node: Node, job: str) -> float:
    async with asyncio.timeout(30):
        while True:
            got = [r.start for r in runs([node.log], {}) if r.job == job]
            if got:
                return got[0]
            await asyncio.sleep(0.01)


async def _ended(url: str, job: str) -> None:
    async with asyncio.timeout(30):
        while (await fetch(url, "SELECT state FROM jobs WHERE id = $1", job))[0][0] != "succeeded":
            await asyncio.sleep(0.05)


async def kill_recovery(dsn: str, kills: int) -> list[float]:
    url = fresh(dsn, lease="1s")
    logs = Path(tempfile.mkdtemp())
    node = (await _nodes(url, 1, 64, logs))[0]
    delays: list[float] = []
    try:
        for k in range(kills):
            job = f"k{k}-0"
            await _submit(url, [(f"k{k}", 0)], 1)
            await _started(node, job)
            killed_at = await node.kill()
            node = (await _nodes(url, 1, 64, logs))[0]
            delays.append(await _started(node, job) - killed_at)
            # Each kill hits one turn alone on its node: turns left running from earlier
            # kills would be crash suspects of the next, and suspects run one at a time.
            await _ended(url, job)
    finally:
        await stop_all([node])
    return delays


async def main(args: argparse.Namespace) -> None:
    server = PostgresServer().start()
    rows: list[tuple[str, float, float, float, float]] = []
    try:
        dsn = server.dsn()
        for name, count, cap in (("2 nodes, cap 64", 2, 64), ("1 node, cap 64", 1, 64),
                                 ("2 nodes, no cap", 2, NO_CAP)):  # fmt: skip
            live_rate, p99 = await live(dsn, args.jobs, args.sessions, count, cap)
            drain_rate = await drain(dsn, args.jobs, args.sessions, count, cap)
            delay = await start_delay(dsn, count, cap)
            rows.append((name, live_rate, drain_rate, p99, delay))
        recovery = await kill_recovery(dsn, args.kills)
    finally:
        server.stop()
    print(f"{args.jobs} no-op jobs over {args.sessions} sessions, session order checked")
    print(
        f"  {'':18} {'live jobs/s':>12} {'drain jobs/s':>13} {'submit p99':>11} {'start p50':>10}"
    )
    for name, live_rate, drain_rate, p99, delay in rows:
        print(
            f"  {name:18} {live_rate:12.0f} {drain_rate:13.0f} {p99 * 1000:9.1f}ms"
            f" {delay * 1000:8.1f}ms"
        )
    p99_kill = max(recovery) if len(recovery) < 20 else statistics.quantiles(recovery, n=100)[98]
    print(
        f"  a killed node's turn running again: p50 {statistics.median(recovery):.2f}s"
        f" p99 {p99_kill:.2f}s over {len(recovery)} kills (lease 1 s, poll 200 ms)"
    )
    goal = (
        p99_kill <= 2.0
        and rows[0][1] >= 3000
        and rows[0][2] >= 3000
        and rows[0][3] <= 0.02
        and rows[0][4] <= 0.005
    )
    verdict = "met" if goal else "NOT met"
    print(f"  goals (3,000 jobs/s live and drain, p99 <= 20 ms, start <= 5 ms): {verdict}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--sessions", type=int, default=1_000)
    parser.add_argument("--kills", type=int, default=20)
    asyncio.run(main(parser.parse_args()))
