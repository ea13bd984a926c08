"""laneway on PostgreSQL beside procrastinate and DBOS Transact: one server, one run.

One throwaway PostgreSQL server (``tests/pgserver.py``) serves every leg, each
leg in a fresh schema (laneway) or a fresh database (the peers). Every system
runs no-op jobs over S sessions with per-session order, two worker processes
("nodes") and a cap of 64 where it can express one:

- laneway: the legs of ``bench_postgres_cluster.py`` (nodes from
  ``tests/postgres/_cluster_node.py``): 2 nodes with lane ``llm`` capped at 64,
  1 node, and 2 nodes without a cap, so the cost of coordination shows.
- procrastinate: 2 workers (``peer_worker.py`` running ``peer_apps.py``), each
  job deferred with ``lock=session`` (a session's jobs never overlap and run in
  id order). It has no cap shared across workers: each worker runs
  ``concurrency=32``, a static split of 64 that one idle worker cannot lend to
  the other.
- DBOS Transact: 2 workers on a queue with ``partition_concurrency=1`` (partition
  key = session) and ``global_concurrency=64`` across workers, polled every
  ``--dbos-poll`` seconds (DBOS's default, 1 s); a second row without the global
  cap takes DBOS's batched dequeue for partition concurrency 1.

Legs, as in the cluster benchmark: live (workers running while N jobs are
submitted, 200 in flight; jobs/s from the first submit to the last end; the
submit p99), drain (N jobs queued first, then the workers start; jobs/s from
the first start to the last end) and start (idle workers, 200 jobs one at a
time; submit-to-start p50). Per-session order is checked on the start/end log
every worker writes; violations are counted and printed, not hidden. Each
process gets 10 connections (laneway's ``pool`` default). Medians of
``--rounds``.

    pip install -e '.[bench]'          # procrastinate and dbos
    flock /tmp/laneway-bench.lock python benchmarks/bench_postgres_peers.py    # ~7 min
    python benchmarks/bench_postgres_peers.py --rounds 3 --kills 20            # ~16 min
    python benchmarks/bench_postgres_peers.py --only laneway,procrastinate --peer-jobs 2000
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import math
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Protocol

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import asyncpg
from dbos import DBOS, DBOSClient, EnqueueOptions
from tests.pgserver import PostgresServer
from tests.postgres._cluster import Run, runs

import bench_postgres_cluster as cluster
import peer_apps

WORKER = Path(__file__).with_name("peer_worker.py")
CAP = 64
IN_FLIGHT = 200
_databases = itertools.count()


class Side(Protocol):
    """The submitting side of a peer: its schema, one enqueue, what counts as done."""

    done_sql: str

    async def open(self, url: str) -> None: ...
    async def add(self, job: str, session: str, i: int) -> None: ...
    async def close(self) -> None: ...


class Procrastinate:
    done_sql = "SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'"

    async def open(self, url: str) -> None:
        self.app, self.task = peer_apps.procrastinate_app(url)
        await self.app.open_async()
        await self.app.schema_manager.apply_schema_async()  # each leg has a fresh database

    async def add(self, job: str, session: str, i: int) -> None:
        await self.task.configure(lock=session).defer_async(job=job, session=session, i=i)

    async def close(self) -> None:
        await self.app.close_async()


class Dbos:
    done_sql = "SELECT count(*) FROM dbos.workflow_status WHERE status = 'SUCCESS'"

    def __init__(self, global_cap: int, poll: float) -> None:
        self.global_cap = global_cap
        self.poll = poll

    async def open(self, url: str) -> None:
        await asyncio.to_thread(DBOS.migrate, url)  # a client never creates the schema
        self.client = DBOSClient(
            system_database_url=url,
            application_name=peer_apps.APP,
            system_database_pool_size=peer_apps.POOL,
        )
        await self.client.register_queue_async(
            peer_apps.QUEUE,
            partition_concurrency=1,
            global_concurrency=self.global_cap or None,
            polling_interval_sec=self.poll,
        )

    async def add(self, job: str, session: str, i: int) -> None:
        options: EnqueueOptions = {
            "workflow_name": peer_apps.WORK,
            "queue_name": peer_apps.QUEUE,
            "queue_partition_key": session,
            "workflow_id": job,
            "app_version": peer_apps.APP,
        }
        await self.client.enqueue_async(options, job, session, i)

    async def close(self) -> None:
        self.client.destroy()


@dataclass
class Peer:
    key: str  # for --only
    row: str
    kind: str  # peer_worker.py's first argument
    make: Callable[[], Side]
    worker_args: list[str]


@dataclass
class Worker:
    argv: list[str]
    log: Path
    proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self.log.with_suffix(".err").open("ab") as err:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, str(WORKER), *self.argv, stdout=subprocess.PIPE, stderr=err
            )
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), 120)
        if line.strip() != b"ready":
            raise RuntimeError(f"worker did not start; see {self.log.with_suffix('.err')}")

    async def kill(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.returncode is None:
            proc.kill()
            await proc.wait()


async def _scalar(url: str, sql: str) -> object:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


@dataclass
class Database:
    """A fresh database for one peer leg, dropped afterwards."""

    dsn: str
    name: str = field(default_factory=lambda: f"peer{next(_databases)}")

    @property
    def url(self) -> str:
        return f"{self.dsn.rsplit('/', 1)[0]}/{self.name}"

    async def __aenter__(self) -> Database:
        await _scalar(self.dsn, f"CREATE DATABASE {self.name}")
        return self

    async def __aexit__(self, *_: object) -> None:
        await _scalar(self.dsn, f"DROP DATABASE {self.name} WITH (FORCE)")


async def _workers(peer: Peer, url: str, count: int) -> list[Worker]:
    logs = Path(tempfile.mkdtemp())
    workers = [
        Worker(
            [peer.kind, url, str(logs / f"w{k}.log"), f"w{k}", *peer.worker_args],
            logs / f"w{k}.log",
        )
        for k in range(count)
    ]
    try:
        await asyncio.gather(*(w.start() for w in workers))
    except BaseException:
        for w in workers:
            await w.kill()
        raise
    return workers


async def _submit(side: Side, jobs: list[tuple[str, int]], in_flight: int) -> dict[str, float]:
    """Enqueue every job, a session's jobs one after another (as a session's messages
    arrive), so its order is the order the checks expect; returns each job's submit
    latency (seconds)."""
    took: dict[str, float] = {}
    gate = asyncio.Semaphore(in_flight)
    added = {f"{s}-{i}": asyncio.Event() for s, i in jobs}

    async def one(session: str, i: int) -> None:
        if i > 0:
            await added[f"{session}-{i - 1}"].wait()
        async with gate:
            began = time.perf_counter()
            await side.add(f"{session}-{i}", session, i)
            took[f"{session}-{i}"] = time.perf_counter() - began
        added[f"{session}-{i}"].set()

    await asyncio.gather(*(one(s, i) for s, i in jobs))
    return took


def _jobs(n: int, sessions: int) -> list[tuple[str, int]]:
    """Round-robin over sessions, as the cluster benchmark submits them."""
    return [(f"s{i % sessions}", i // sessions) for i in range(n)]


async def _until_done(url: str, sql: str, count: int, within: float) -> None:
    conn = await asyncpg.connect(url)
    try:
        async with asyncio.timeout(within):
            while await conn.fetchval(sql) < count:
                await asyncio.sleep(0.1)
    finally:
        await conn.close()


def order_violations(logged: list[Run], expected: int) -> str:
    """``ok``, or how many session pairs overlapped or ran out of order, and lost or
    repeated jobs."""
    by_session: dict[str, dict[int, list[Run]]] = defaultdict(lambda: defaultdict(list))
    for run in logged:
        by_session[run.session][run.index].append(run)
    overlaps = 0
    for jobs in by_session.values():
        for a, b in itertools.pairwise(sorted(jobs)):
            if min(r.start for r in jobs[b]) < max(r.end or math.inf for r in jobs[a]):
                overlaps += 1
    distinct = {r.job for r in logged}
    problems = {
        "out of order": overlaps,
        "not run": expected - len(distinct),
        "run twice": len(logged) - len(distinct),
    }
    found = [f"{n} {what}" for what, n in problems.items() if n]
    return ", ".join(found) or "ok"


@dataclass
class Figures:
    live: float = math.nan
    drain: float = math.nan
    p99: float = math.nan
    start: float = math.nan
    order: list[str] = field(default_factory=list)


async def peer_live(dsn: str, peer: Peer, n: int, sessions: int, out: Figures) -> None:
    async with Database(dsn) as db:
        side = peer.make()
        await side.open(db.url)
        workers = await _workers(peer, db.url, 2)
        try:
            began = time.time()
            took = await _submit(side, _jobs(n, sessions), IN_FLIGHT)
            await _until_done(db.url, side.done_sql, n, 900)
        finally:
            await side.close()
            for w in workers:
                await w.kill()
    logged = runs([w.log for w in workers], {})
    out.order.append(order_violations(logged, n))
    out.live = n / (max(r.end or 0.0 for r in logged) - began)
    out.p99 = statistics.quantiles(took.values(), n=100)[98]


async def peer_drain(dsn: str, peer: Peer, n: int, sessions: int, out: Figures) -> None:
    async with Database(dsn) as db:
        side = peer.make()
        await side.open(db.url)
        try:
            await _submit(side, _jobs(n, sessions), IN_FLIGHT)
        finally:
            await side.close()
        workers = await _workers(peer, db.url, 2)
        try:
            await _until_done(db.url, side.done_sql, n, 900)
        finally:
            for w in workers:
                await w.kill()
    logged = runs([w.log for w in workers], {})
    out.order.append(order_violations(logged, n))
    out.drain = n / (max(r.end or 0.0 for r in logged) - min(r.start for r in logged))


async def peer_start(dsn: str, peer: Peer, out: Figures) -> None:
    async with Database(dsn) as db:
        side = peer.make()
        await side.open(db.url)
        workers = await _workers(peer, db.url, 2)
        submitted: dict[str, float] = {}
        try:
            for i in range(200):
                submitted[f"d{i}-0"] = time.time()
                await side.add(f"d{i}-0", f"d{i}", 0)
                await asyncio.sleep(0.01)
            await _until_done(db.url, side.done_sql, 200, 300)
        finally:
            await side.close()
            for w in workers:
                await w.kill()
    logged = runs([w.log for w in workers], {})
    out.start = statistics.median(r.start - submitted[r.job] for r in logged)


async def laneway_legs(dsn: str, count: int, cap: int, n: int, sessions: int) -> Figures:
    out = Figures()
    try:
        out.live, out.p99 = await cluster.live(dsn, n, sessions, count, cap)
        out.order.append("ok")
    except AssertionError as exc:  # check_order names the first session out of order
        out.order.append(f"live out of order {exc}")
    try:
        out.drain = await cluster.drain(dsn, n, sessions, count, cap)
        out.order.append("ok")
    except AssertionError as exc:
        out.order.append(f"drain out of order {exc}")
    out.start = await cluster.start_delay(dsn, count, cap)
    return out


async def peer_legs(dsn: str, peer: Peer, n: int, sessions: int) -> Figures:
    out = Figures()
    await peer_live(dsn, peer, n, sessions, out)
    await peer_drain(dsn, peer, n, sessions, out)
    await peer_start(dsn, peer, out)
    return out


def _peers(args: argparse.Namespace) -> list[Peer]:
    poll = ["--poll", str(args.dbos_poll)]
    return [
        Peer(
            "procrastinate",
            "procrastinate, 2x32, lock",
            "procrastinate",
            Procrastinate,
            ["--concurrency", str(CAP // 2)],
        ),
        Peer(
            "dbos",
            "DBOS, partition 1, cap 64",
            "dbos",
            lambda: Dbos(CAP, args.dbos_poll),
            ["--global-cap", str(CAP), *poll],
        ),
        Peer(
            "dbos-nocap",
            "DBOS, partition 1, no cap",
            "dbos",
            lambda: Dbos(0, args.dbos_poll),
            ["--global-cap", "0", *poll],
        ),
    ]


LANEWAY = (("laneway", "laneway, 2 nodes, cap 64", 2, CAP),
           ("laneway-1", "laneway, 1 node, cap 64", 1, CAP),
           ("laneway-nocap", "laneway, 2 nodes, no cap", 2, cluster.NO_CAP))  # fmt: skip
KEYS = [k for k, *_ in LANEWAY] + ["procrastinate", "dbos", "dbos-nocap"]


def _wanted(args: argparse.Namespace, key: str) -> bool:
    return not args.only or key in args.only.split(",")


async def run_rounds(
    args: argparse.Namespace,
) -> tuple[dict[str, list[Figures]], dict[str, int], list[float]]:
    server = PostgresServer().start()
    results: dict[str, list[Figures]] = defaultdict(list)
    sizes: dict[str, int] = {}
    try:
        dsn = server.dsn()
        legs: dict[str, Callable[[], Awaitable[Figures]]] = {}
        for key, row, count, cap in LANEWAY:
            if not _wanted(args, key):
                continue
            legs[row] = partial(laneway_legs, dsn, count, cap, args.jobs, args.sessions)
            sizes[row] = args.jobs
        for peer in (p for p in _peers(args) if _wanted(args, p.key)):
            legs[peer.row] = partial(peer_legs, dsn, peer, args.peer_jobs, args.sessions)
            sizes[peer.row] = args.peer_jobs
        for _ in range(args.rounds):  # rounds alternate, so drift hits every system alike
            for row, leg in legs.items():
                try:
                    results[row].append(await leg())
                except Exception as exc:
                    print(f"  {row}: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
                    results[row].append(Figures(order=[f"failed: {type(exc).__name__}"]))
        recovery = await cluster.kill_recovery(dsn, args.kills) if args.kills else []
    finally:
        server.stop()
    return results, sizes, recovery


def _median(values: list[float]) -> float:
    got = [v for v in values if not math.isnan(v)]
    return statistics.median(got) if got else math.nan


def _ms(seconds: float) -> str:
    return "n/a" if math.isnan(seconds) else f"{seconds * 1000:.1f}ms"


def report(
    args: argparse.Namespace,
    results: dict[str, list[Figures]],
    sizes: dict[str, int],
    recovery: list[float],
) -> None:
    print(
        f"no-op jobs over {args.sessions} sessions, per-session order, one PostgreSQL server,"
        f" median of {args.rounds}; (N) = jobs in the leg"
    )
    heads = ("live jobs/s", 17), ("drain jobs/s", 17), ("submit p99", 11), ("start p50", 10)
    print(f"  {'':28} " + " ".join(f"{h:>{w}}" for h, w in heads) + "  order")
    m: dict[str, Figures] = {}
    for row, rounds in results.items():
        f = m[row] = Figures(
            live=_median([r.live for r in rounds]),
            drain=_median([r.drain for r in rounds]),
            p99=_median([r.p99 for r in rounds]),
            start=_median([r.start for r in rounds]),
            order=sorted({o for r in rounds for o in r.order}),
        )
        n = sizes[row]
        print(
            f"  {row:28} {f.live:9.0f} ({n:>5}) {f.drain:9.0f} ({n:>5}) {_ms(f.p99):>11}"
            f" {_ms(f.start):>10}  {'; '.join(f.order)}"
        )
    lane = m.get(LANEWAY[0][1])
    for peer in _peers(args):
        p = m.get(peer.row)
        if lane is not None and p is not None:
            print(
                f"  {LANEWAY[0][1]} / {peer.row}: live {lane.live / p.live:.1f}x,"
                f" drain {lane.drain / p.drain:.1f}x (goal >= 10x)"
            )
    print(
        "  caps: laneway's lane cap is shared by every node; procrastinate has none shared"
        " (its concurrency is per worker: 2 x 32);"
    )
    print(f"  DBOS's global_concurrency is shared; DBOS polls its queue every {args.dbos_poll:g} s")
    if recovery:
        p99 = statistics.quantiles(recovery, n=100)[98] if len(recovery) >= 20 else max(recovery)
        print(
            f"  laneway, a killed node's turn running again: p50 {statistics.median(recovery):.2f}s"
            f" p99 {p99:.2f}s over {len(recovery)} kills (lease 1 s, poll 200 ms; goal <= 2 s)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20_000, help="laneway's legs")
    parser.add_argument("--peer-jobs", type=int, default=5_000, help="procrastinate's and DBOS's")
    parser.add_argument("--sessions", type=int, default=1_000)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--dbos-poll", type=float, default=1.0, help="DBOS queue poll, seconds")
    parser.add_argument("--only", default="", help=f"rows, comma-separated: {','.join(KEYS)}")
    parser.add_argument("--kills", type=int, default=0, help="laneway's kill leg, as the cluster's")
    args = parser.parse_args()
    results, sizes, recovery = asyncio.run(run_rounds(args))
    report(args, results, sizes, recovery)


if __name__ == "__main__":
    main()
