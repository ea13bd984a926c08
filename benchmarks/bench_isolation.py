"""Process isolation overhead: a no-op job in a worker process vs the same job as a task.

Run: ``python benchmarks/bench_isolation.py`` (``--quick`` for a smaller run).

- sequential: one job at a time (submit, then await the result), rounds
  alternating between ``isolation="task"`` and ``isolation="process"`` in the
  same process; per-job latency p50/p99 and the extra milliseconds per job.
- concurrent: ``--sessions`` sessions each submitting jobs back to back;
  per-job latency and throughput. The isolated handler takes a shared lane
  capped at the pool size (the recommended setup), so jobs queue in laneway.

The pool has ``os.cpu_count()`` workers (the default).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time

# Run as a script, this directory is on sys.path, so workers import the handler too.
from isolation_handlers import noop
from laneway import Laneway, ProcessPool


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def _make() -> Laneway:
    size = os.cpu_count() or 1
    lw = Laneway(
        lanes={"workers": size},
        watchdog_threshold=None,
        max_queued=1_000_000,
        max_queued_per_session=1_000_000,
        process_pool=ProcessPool(size=size, max_jobs=None),
    )
    lw.handler("task", isolation="task")(noop)
    lw.handler("process", isolation="process", lanes=("workers",))(noop)
    return lw


async def sequential(lw: Laneway, handler: str, jobs: int) -> list[float]:
    out = []
    for i in range(jobs):
        t = time.perf_counter()
        await (await lw.submit("seq", handler, i)).result()
        out.append(time.perf_counter() - t)
    return out


async def concurrent(
    lw: Laneway, handler: str, sessions: int, per_session: int
) -> tuple[list[float], float]:
    lat: list[float] = []

    async def client(s: int) -> None:
        for i in range(per_session):
            t = time.perf_counter()
            await (await lw.submit(f"c{s}", handler, i)).result()
            lat.append(time.perf_counter() - t)

    t0 = time.perf_counter()
    await asyncio.gather(*(client(s) for s in range(sessions)))
    return lat, sessions * per_session / (time.perf_counter() - t0)


def _row(name: str, lat: list[float]) -> str:
    return f"{name:<8} p50 {_pct(lat, 0.5) * 1e3:7.3f} ms   p99 {_pct(lat, 0.99) * 1e3:7.3f} ms"


async def main(rounds: int, jobs: int, sessions: int, per_session: int) -> None:
    lw = _make()
    async with lw:
        await sequential(lw, "process", 200)  # start the pool, warm both paths
        await sequential(lw, "task", 200)
        seq: dict[str, list[float]] = {"task": [], "process": []}
        for _ in range(rounds):
            for handler in ("task", "process"):
                seq[handler] += await sequential(lw, handler, jobs)
        print(f"sequential: {rounds} rounds x {jobs} jobs each, alternating")
        for handler, lat in seq.items():
            print("  " + _row(handler, lat))
        extra = statistics.median(seq["process"]) - statistics.median(seq["task"])
        print(
            f"  process/task p50 ratio {_pct(seq['process'], 0.5) / _pct(seq['task'], 0.5):.2f}x,"
            f" extra per job (p50) {extra * 1e3:.3f} ms (goal <= 1 ms)"
        )

        conc: dict[str, tuple[list[float], float]] = {}
        thr: dict[str, list[float]] = {"task": [], "process": []}
        lats: dict[str, list[float]] = {"task": [], "process": []}
        for _ in range(rounds):
            for handler in ("task", "process"):
                lat, rate = await concurrent(lw, handler, sessions, per_session)
                lats[handler] += lat
                thr[handler].append(rate)
        for handler in ("task", "process"):
            conc[handler] = (lats[handler], statistics.median(thr[handler]))
        print(
            f"concurrent: {sessions} sessions x {per_session} jobs, {rounds} rounds, "
            f"{os.cpu_count()} workers"
        )
        for handler, (lat, rate) in conc.items():
            print(f"  {_row(handler, lat)}   {rate:9.0f} jobs/s (median)")
        ratio = conc["task"][1] / conc["process"][1]
        print(f"  isolated throughput {conc['process'][1]:.0f} jobs/s; task/process {ratio:.2f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        asyncio.run(main(rounds=3, jobs=200, sessions=16, per_session=25))
    else:
        asyncio.run(main(rounds=5, jobs=1000, sessions=64, per_session=50))
