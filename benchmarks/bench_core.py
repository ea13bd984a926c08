"""Core runtime benchmark: throughput, scale, recovery and memory, against baselines.

Run: ``python benchmarks/bench_core.py`` (``--quick`` for a smaller run).

- throughput: N no-op jobs over S sessions through one shared lane capped at
  64, for laneway, (a) the naive pattern (per-session ``asyncio.Lock`` +
  shared ``Semaphore`` + ``wait_for`` per job) and (b) the floor (one
  ``create_task`` + await per job, no bookkeeping), in the same process,
  alternating rounds; medians reported with both ratios.
- scale: laneway's per-job cost with 100,000 sessions vs 10 sessions.
- recovery: 100 hung jobs whose tasks swallow cancellation; the time from each
  hung job's deadline to the start of the next job in its session.
- memory: bytes per queued job, and the lane table after 100k sessions drain.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import statistics
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from typing import Any

from laneway import Laneway, Limits, Retry, TurnContext
from laneway.testing import hang_ignoring_cancel

CAP = 64


async def _noop() -> None:
    return None


async def run_laneway(jobs: int, sessions: int) -> float:
    lw = Laneway(lanes={"llm": CAP}, max_queued=jobs + 1, max_queued_per_session=jobs + 1)

    @lw.handler("noop", lanes=("llm",))
    async def noop(ctx: TurnContext, payload: Any) -> None:
        return None

    async with lw:
        t0 = time.process_time()
        for i in range(jobs):
            await lw.submit(f"s{i % sessions}", "noop")
        await lw.join()
        return time.process_time() - t0


async def run_naive(jobs: int, sessions: int) -> float:
    locks = [asyncio.Lock() for _ in range(sessions)]
    sem = asyncio.Semaphore(CAP)

    async def one(i: int) -> None:
        async with locks[i % sessions], sem:
            await asyncio.wait_for(_noop(), timeout=900)

    t0 = time.process_time()
    tasks = [asyncio.create_task(one(i)) for i in range(jobs)]
    for t in tasks:
        await t
    return time.process_time() - t0


async def run_floor(jobs: int, sessions: int) -> float:
    t0 = time.process_time()
    tasks = [asyncio.create_task(_noop()) for _ in range(jobs)]
    for t in tasks:
        await t
    return time.process_time() - t0


def _rounds(fn: Callable[[int, int], Awaitable[float]], jobs: int, sessions: int) -> float:
    gc.collect()
    return asyncio.run(fn(jobs, sessions))  # type: ignore[arg-type]


def throughput(jobs: int, sessions: int, rounds: int) -> None:
    runners = {"laneway": run_laneway, "naive": run_naive, "floor": run_floor}
    times: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(rounds):
        for name, fn in runners.items():
            times[name].append(_rounds(fn, jobs, sessions))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\n## throughput: {jobs} no-op jobs, {sessions} sessions, shared cap {CAP}")
    print(f"   (median of {rounds} alternating rounds)")
    print(f"{'runner':<10}{'jobs/s':>12}{'us/job':>10}")
    for name in runners:
        print(f"{name:<10}{jobs / med[name]:>12,.0f}{med[name] / jobs * 1e6:>10.2f}")
    print(f"laneway / naive  = {med['naive'] / med['laneway']:.2f}x throughput (goal >= 2x)")
    print(f"laneway / floor  = {med['floor'] / med['laneway']:.2f}x of the floor's throughput")


def scale(jobs: int, rounds: int) -> None:
    print(f"\n## scale: per-job cost, {jobs} jobs (median of {rounds} alternating rounds)")
    sizes = (10, 100_000)
    runs: dict[int, list[float]] = {n: [] for n in sizes}
    for _ in range(rounds):
        for sessions in sizes:
            runs[sessions].append(_rounds(run_laneway, jobs, sessions))
    cost = {n: statistics.median(runs[n]) / jobs * 1e6 for n in sizes}
    for sessions in sizes:
        print(f"{sessions:>8} sessions: {cost[sessions]:.2f} us/job")
    print(f"100k / 10 sessions = {cost[100_000] / cost[10]:.2f} (goal <= 1.20)")


async def _recovery(n: int, deadline: float, grace: float) -> list[float]:
    lw = Laneway(limits=Limits(deadline=deadline, cancel_grace=grace), retry=Retry(max_attempts=1))
    starts: dict[str, float] = {}

    @lw.handler("hang")
    async def hang(ctx: TurnContext, payload: Any) -> None:
        starts[ctx.job_id] = time.perf_counter()
        await hang_ignoring_cancel(times=1)  # swallows laneway's cancel, not asyncio.run's

    @lw.handler("next")
    async def nxt(ctx: TurnContext, payload: Any) -> None:
        starts[ctx.job_id] = time.perf_counter()

    async with lw:
        pairs: list[tuple[str, str]] = []
        for i in range(n):
            h = await lw.submit(f"s{i}", "hang")
            x = await lw.submit(f"s{i}", "next")
            pairs.append((h.id, x.id))
        await lw.join()
        return [starts[x] - (starts[h] + deadline) for h, x in pairs]


def recovery(n: int) -> None:
    deadline, grace = 0.5, 0.2
    delays = asyncio.run(_recovery(n, deadline, grace))
    delays.sort()
    p50 = statistics.median(delays)
    p99 = delays[min(len(delays) - 1, int(len(delays) * 0.99))]
    print(f"\n## recovery: {n} hung jobs that swallow cancellation")
    print(f"deadline={deadline}s cancel_grace={grace}s: deadline -> next job's start")
    print(f"p50 = {p50 * 1e3:.1f} ms, p99 = {p99 * 1e3:.1f} ms, max = {delays[-1] * 1e3:.1f} ms")
    print(f"goal: p99 <= cancel_grace + 20 ms = {(grace + 0.02) * 1e3:.0f} ms")


async def _memory(queued: int, sessions: int) -> tuple[float, int, int]:
    lw = Laneway(lanes={"llm": 1}, max_queued=queued + 10, max_queued_per_session=queued + 10)
    gate = asyncio.Event()

    @lw.handler("wait", lanes=("llm",))
    async def wait(ctx: TurnContext, payload: Any) -> None:
        await gate.wait()

    async with lw:
        await lw.submit("warmup", "wait")
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        for i in range(queued):
            await lw.submit(f"s{i % sessions}", "wait")
        after = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        per_job = (after - before) / queued
        lanes_busy = _session_lanes(lw)
        gate.set()
        await lw.join()
        return per_job, lanes_busy, _session_lanes(lw)


def _session_lanes(lw: Laneway) -> int:
    return sum(1 for lane in lw.snapshot().lanes if lane.name.startswith("session:"))


def memory(queued: int) -> None:
    per_job, busy, drained = asyncio.run(_memory(queued, queued))
    print(f"\n## memory: {queued} queued jobs over {queued} sessions (memory store included)")
    print(f"bytes per queued job = {per_job:,.0f}")
    print(f"session lanes while queued = {busy:,}; after all drained = {drained} (goal 0)")


def main() -> None:
    logging.getLogger("laneway").setLevel(logging.ERROR)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes, fewer rounds")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    jobs, rounds, scale_jobs = (50_000, args.rounds, 100_000)
    if args.quick:
        jobs, rounds, scale_jobs = 10_000, 3, 20_000
    throughput(jobs, 1_000, rounds)
    scale(scale_jobs, max(3, rounds // 2 + 1))
    recovery(100)
    memory(100_000 if not args.quick else 20_000)


if __name__ == "__main__":
    main()
