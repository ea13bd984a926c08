"""Durable throughput, submit latency and recovery time of the SQLite store.

Three legs in one run, each repeated and reported as the median:

- laneway on ``sqlite:///`` (group commit) and on ``memory://``: N no-op jobs
  over S sessions, from the first submit until every success is committed;
  submit latency (submit call -> job committed) p50/p99 under that load;
- a naive durable queue: plain ``sqlite3``, the same WAL mode and
  ``synchronous`` setting, one transaction per state change (accept, start,
  succeed; each with its event), run in a tight loop with no event loop;
- laneway with group commit turned off (``batch_max=1``: one transaction per
  write, the same runtime), one run;
- laneway and the naive queue again with ``synchronous=full`` (an fsync per commit), where one
  transaction per state change costs most and group commit saves most.

Then recovery: a child process fills a database with Q queued jobs and is
killed with SIGKILL; a fresh process opens it and we time how long until it
is serving again (a new job submitted and finished).

    python benchmarks/bench_durable.py                # 50,000 jobs, 1,000 sessions
    python benchmarks/bench_durable.py --jobs 5000 --full-jobs 2000 --queued 20000  # quick
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from laneway import Laneway, TurnContext
from laneway.stores._sqlite import SQLiteStore


@dataclass
class Run:
    label: str
    jobs: int
    seconds: float
    p50_ms: float | None = None
    p99_ms: float | None = None

    @property
    def rate(self) -> float:
        return self.jobs / self.seconds


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def laneway_run(url: str, jobs: int, sessions: int, submitters: int) -> Run:
    lw = Laneway(
        url,
        watchdog_threshold=None,
        max_queued=jobs * 2,
        max_queued_per_session=jobs,
    )

    @lw.handler("noop")
    async def noop(ctx: TurnContext, payload: Any) -> None:
        return None

    latencies: list[float] = []
    work = iter(range(jobs))

    async def submitter() -> None:
        clock = time.perf_counter
        for i in work:
            t0 = clock()
            await lw.submit(f"s{i % sessions}", "noop", i)
            latencies.append(clock() - t0)

    async with lw:
        t0 = time.perf_counter()
        await asyncio.gather(*(submitter() for _ in range(submitters)))
        await lw.join()
        elapsed = time.perf_counter() - t0
    label = "laneway " + url.split("?")[0].split("://")[0] + "://"
    return Run(label, jobs, elapsed, _pct(latencies, 0.5) * 1e3, _pct(latencies, 0.99) * 1e3)


_NAIVE_SCHEMA = """
CREATE TABLE jobs (id INTEGER PRIMARY KEY, session TEXT, payload TEXT, state TEXT,
                   attempts INTEGER, result TEXT, updated_at REAL);
CREATE TABLE events (id INTEGER PRIMARY KEY, session TEXT, seq INTEGER, job_id INTEGER,
                     kind TEXT, data TEXT, at REAL);
CREATE UNIQUE INDEX events_seq ON events (session, seq);
"""


def naive_run(path: Path, jobs: int, sessions: int, synchronous: str) -> Run:
    """One transaction per state change, the way a first durable queue is written."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    conn.executescript(_NAIVE_SCHEMA)
    seqs: dict[str, int] = {}

    def change(session: str, job: int, sql: str, params: tuple[Any, ...], kind: str) -> None:
        seq = seqs[session] = seqs.get(session, 0) + 1
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(sql, params)
        conn.execute(
            "INSERT INTO events (session, seq, job_id, kind, data, at) VALUES (?,?,?,?,?,?)",
            (session, seq, job, kind, "{}", time.time()),
        )
        conn.execute("COMMIT")

    t0 = time.perf_counter()
    for i in range(jobs):
        session = f"s{i % sessions}"
        change(
            session,
            i,
            "INSERT INTO jobs VALUES (?, ?, ?, 'queued', 0, NULL, ?)",
            (i, session, json.dumps(i), time.time()),
            "job.queued",
        )
        change(
            session,
            i,
            "UPDATE jobs SET state = 'running', attempts = 1, updated_at = ? WHERE id = ?",
            (time.time(), i),
            "job.started",
        )
        change(
            session,
            i,
            "UPDATE jobs SET state = 'succeeded', result = 'null', updated_at = ? WHERE id = ?",
            (time.time(), i),
            "job.succeeded",
        )
    elapsed = time.perf_counter() - t0
    conn.close()
    return Run("naive sqlite3 (txn per change)", jobs, elapsed)


def _median_run(runs: list[Run]) -> Run:
    runs = sorted(runs, key=lambda r: r.seconds)
    mid = runs[len(runs) // 2]
    p50 = [r.p50_ms for r in runs if r.p50_ms is not None]
    p99 = [r.p99_ms for r in runs if r.p99_ms is not None]
    return Run(
        mid.label,
        mid.jobs,
        mid.seconds,
        statistics.median(p50) if p50 else None,
        statistics.median(p99) if p99 else None,
    )


# -- recovery -----------------------------------------------------------------


async def _fill(path: str, queued: int, sessions: int) -> None:
    """Child: accept ``queued`` jobs through the store, then wait to be killed."""
    store = SQLiteStore(f"sqlite:///{path}")
    await store.open()
    step = 5_000
    for start in range(0, queued, step):
        futs = [
            store.add_job(
                job_id=f"fill-{i}",
                session=f"s{i % sessions}",
                handler="noop",
                payload={"i": i},
                priority=0,
                idempotency_key=None,
            )
            for i in range(start, min(queued, start + step))
        ]
        await asyncio.gather(*futs)
    # A few attempts in flight at the kill, as in a real crash.
    await asyncio.gather(*(store.start_attempt(f"fill-{i}", 1) for i in range(min(50, queued))))
    print("ready", flush=True)
    await asyncio.sleep(3600)


async def _recover(path: str, queued: int) -> None:
    """Child: open the killed database and serve a new job; print the timings."""
    t0 = time.perf_counter()
    lw = Laneway(
        f"sqlite:///{path}",
        watchdog_threshold=None,
        max_queued=queued * 2,
        max_queued_per_session=queued,
    )
    started = asyncio.Event()

    @lw.handler("noop")
    async def noop(ctx: TurnContext, payload: Any) -> None:
        if ctx.session == "fresh":
            started.set()
        else:
            await started.wait()  # keep the backlog from racing the new job

    await lw.start()
    t_start = time.perf_counter() - t0
    job = await lw.submit("fresh", "noop", None)
    await job.wait()
    t_serving = time.perf_counter() - t0
    recovered = lw.snapshot().jobs_queued + lw.snapshot().jobs_running
    print(json.dumps({"start": t_start, "serving": t_serving, "recovered": recovered}), flush=True)
    os._exit(0)  # the measurement is done; do not wait for the backlog


def recovery_run(queued: int, sessions: int, tmp: Path) -> dict[str, float]:
    path = tmp / "recovery.db"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    me = [sys.executable, __file__]
    fill = subprocess.Popen(
        [*me, "--child-fill", str(path), "--queued", str(queued), "--sessions", str(sessions)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert fill.stdout is not None
    assert fill.stdout.readline().strip() == "ready"
    fill.send_signal(signal.SIGKILL)
    fill.wait()
    t0 = time.perf_counter()
    out = subprocess.run(
        [*me, "--child-recover", str(path), "--queued", str(queued)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    wall = time.perf_counter() - t0
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    result["process"] = wall
    return result


# -- report -------------------------------------------------------------------


def _row(run: Run, base: Run) -> str:
    p50 = f"{run.p50_ms:8.2f}" if run.p50_ms is not None else "       -"
    p99 = f"{run.p99_ms:8.2f}" if run.p99_ms is not None else "       -"
    return (
        f"{run.label:34} {run.jobs:>8,} {run.seconds:9.2f} {run.rate:11,.0f} "
        f"{run.rate / base.rate:8.1f}x {p50} {p99}"
    )


def _full_legs(args: argparse.Namespace, tmp: Path) -> tuple[Run, Run]:
    """synchronous=FULL: every commit is fsynced, where group commit matters most."""
    url = f"sqlite:///{tmp}/full.db?synchronous=full"
    grouped = asyncio.run(laneway_run(url, args.full_jobs, args.sessions, args.submitters))
    grouped.label = "laneway sqlite:// (sync=full)"
    naive = naive_run(tmp / "naive-full.db", args.naive_full_jobs, args.sessions, "full")
    naive.label = "naive sqlite3 (sync=full)"
    return grouped, naive


def _ungrouped_leg(args: argparse.Namespace, tmp: Path) -> Run:
    """The same runtime and store with group commit off (``batch_max=1``)."""
    url = f"sqlite:///{tmp}/ungrouped.db?synchronous={args.synchronous}&batch_max=1"
    run = asyncio.run(laneway_run(url, args.jobs, args.sessions, args.submitters))
    run.label = "laneway sqlite:// batch_max=1"
    return run


def _legs(args: argparse.Namespace, tmp: Path) -> tuple[Run, Run, Run]:
    url = f"sqlite:///{tmp}/bench-%d.db?synchronous={args.synchronous}"
    sqlite_runs, memory_runs, naive_runs = [], [], []
    naive_jobs = min(args.jobs, args.naive_jobs)
    for n in range(args.repeat):
        sqlite_runs.append(
            asyncio.run(laneway_run(url % n, args.jobs, args.sessions, args.submitters))
        )
        memory_runs.append(
            asyncio.run(laneway_run("memory://", args.jobs, args.sessions, args.submitters))
        )
        naive_runs.append(
            naive_run(tmp / f"naive-{n}.db", naive_jobs, args.sessions, args.synchronous)
        )
        print(f"  run {n + 1}/{args.repeat} done", file=sys.stderr, flush=True)
    return _median_run(sqlite_runs), _median_run(memory_runs), _median_run(naive_runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=50_000)
    parser.add_argument("--sessions", type=int, default=1_000)
    parser.add_argument("--submitters", type=int, default=16, help="concurrent submitting tasks")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--synchronous", default="normal", choices=["normal", "full"])
    parser.add_argument("--naive-jobs", type=int, default=50_000, help="cap for the naive leg")
    parser.add_argument("--queued", type=int, default=100_000, help="jobs queued at the kill")
    parser.add_argument("--full-jobs", type=int, default=10_000, help="jobs in the sync=full leg")
    parser.add_argument("--naive-full-jobs", type=int, default=500, help="naive sync=full cap")
    parser.add_argument("--child-fill", help=argparse.SUPPRESS)
    parser.add_argument("--child-recover", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_fill:
        asyncio.run(_fill(args.child_fill, args.queued, args.sessions))
        return
    if args.child_recover:
        asyncio.run(_recover(args.child_recover, args.queued))
        return

    with tempfile.TemporaryDirectory(prefix="laneway-bench-") as tmpdir:
        tmp = Path(tmpdir)
        print(
            f"durable throughput: {args.jobs:,} no-op jobs over {args.sessions:,} sessions, "
            f"{args.submitters} concurrent submitters, synchronous={args.synchronous}, "
            f"median of {args.repeat}",
            file=sys.stderr,
        )
        sqlite_run, memory_run, naive = _legs(args, tmp)
        ungrouped = _ungrouped_leg(args, tmp)
        full_run, naive_full = _full_legs(args, tmp)
        recovery = recovery_run(args.queued, args.sessions, tmp)

    print()
    print(
        f"{'':34} {'jobs':>8} {'seconds':>9} {'jobs/s':>11} {'vs naive':>9} "
        f"{'p50 ms':>8} {'p99 ms':>8}"
    )
    for run in (sqlite_run, memory_run, naive, ungrouped):
        print(_row(run, naive))
    print()
    print(f"sqlite / memory throughput:  {sqlite_run.rate / memory_run.rate:.2f}")
    print(f"sqlite / naive throughput:   {sqlite_run.rate / naive.rate:.1f}x")
    print(f"group commit / batch_max=1:  {sqlite_run.rate / ungrouped.rate:.1f}x (one run)")
    ok = sqlite_run.rate >= 2.0 * naive.rate and (sqlite_run.p99_ms or 0.0) <= 10.0
    print(
        f"sqlite://: {'meets' if ok else 'MISSES'} the goal (>= 2.0x the naive queue, "
        "submit p99 <= 10 ms)"
    )
    print()
    print("with synchronous=full (an fsync per commit; one run each):")
    for run in (full_run, naive_full):
        print(_row(run, naive_full))
    print(f"sqlite / naive throughput:   {full_run.rate / naive_full.rate:.1f}x")
    print()
    print(
        f"recovery after SIGKILL with {args.queued:,} queued jobs "
        f"({int(recovery['recovered']):,} recovered):"
    )
    print(f"  Laneway.start() (open + recover):        {recovery['start']:.2f} s")
    print(f"  until a new job finished (in process):   {recovery['serving']:.2f} s")
    print(f"  process spawn -> serving (incl. imports): {recovery['process']:.2f} s")


if __name__ == "__main__":
    main()
