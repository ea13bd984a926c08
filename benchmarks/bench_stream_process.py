"""Subprocess streams: ``ctx.stream_process`` against reading the pipe directly, and
how fast a silent agent CLI is recovered.

Run: ``python benchmarks/bench_stream_process.py`` (``--quick`` for a smaller run).

- lines/s: a child prints ``--lines`` lines of 80 characters as fast as it can;
  read (a) with ``asyncio`` directly (``async for raw in proc.stdout``, decoded,
  newline stripped: the bare pipe), (b) 64 KiB reads split by hand (the floor:
  no per-line await), (c) with ``ctx.stream_process`` in a task-mode turn (each
  line also resets the idle timer), (d) the same in a worker process
  (``isolation="process"``: each line's progress crosses to the parent). Rounds
  alternate; medians, the ratio to the pipe, and the extra microseconds per line.
- recovery: the ``cli`` model runs a fake agent CLI that prints two lines and goes
  silent; idle 2 s, cancel_grace 5 s (the defaults' grace: TERM, then KILL 2.5 s
  later). From the CLI's last line to the turn's ``job.timed_out`` and to the next
  message's ``job.started``, for a CLI that ignores SIGTERM and one that honours it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import time
from typing import Any

# Run as a script, this directory is on sys.path, so workers import the handler too.
from isolation_handlers import count_lines
from laneway import Event, Laneway, Limits, ProcessPool, Retry, TurnContext
from laneway.handlers import register_cli
from laneway.testing import fake_agent_cli

WIDTH = 80


def _producer(lines: int) -> list[str]:
    return ["sh", "-c", f"yes {'x' * (WIDTH - 1)} | head -n {lines}"]


async def pipe(lines: int) -> int:
    """The baseline: the pipe read directly, as a hand-written gateway would."""
    proc = await asyncio.create_subprocess_exec(
        *_producer(lines), stdout=asyncio.subprocess.PIPE, start_new_session=True
    )
    assert proc.stdout is not None
    n = 0
    async for raw in proc.stdout:
        raw.decode().rstrip("\n")
        n += 1
    await proc.wait()
    return n


async def chunked(lines: int) -> int:
    """The floor: big reads split into lines by hand, no laneway, no idle timer."""
    proc = await asyncio.create_subprocess_exec(
        *_producer(lines), stdout=asyncio.subprocess.PIPE, start_new_session=True
    )
    assert proc.stdout is not None
    n, pending = 0, ""
    while chunk := await proc.stdout.read(65536):
        parts = (pending + chunk.decode()).split("\n")
        pending = parts.pop()
        n += len(parts)
    await proc.wait()
    return n + (1 if pending else 0)


async def stream_lines(ctx: TurnContext, payload: list[str]) -> int:
    n = 0
    async for _line in ctx.stream_process(*payload):
        n += 1
    return n


async def _rate(run: Any, lines: int) -> float:
    t = time.perf_counter()
    got = await run()
    assert got == lines, got
    return lines / (time.perf_counter() - t)


async def throughput(rounds: int, lines: int) -> None:
    lw = Laneway(
        watchdog_threshold=None,
        limits=Limits(idle=30, deadline=600),
        process_pool=ProcessPool(size=1, max_jobs=None),
    )
    lw.handler("task")(stream_lines)
    lw.handler("process", isolation="process")(count_lines)
    argv = _producer(lines)

    async def via(handler: str) -> int:
        result: int = await (await lw.submit("bench", handler, argv)).result()
        return result

    runs = {
        "pipe": lambda: pipe(lines),
        "chunked": lambda: chunked(lines),
        "task": lambda: via("task"),
        "process": lambda: via("process"),
    }
    rates: dict[str, list[float]] = {name: [] for name in runs}
    async with lw:
        for run in runs.values():  # warm up (and start the worker)
            await _rate(run, lines)
        for _ in range(rounds):
            for name, run in runs.items():
                rates[name].append(await _rate(run, lines))
    base = statistics.median(rates["pipe"])
    floor = statistics.median(rates["chunked"])
    print(f"lines/s: {lines} lines of {WIDTH} chars, {rounds} rounds alternating (medians)")
    for name, values in rates.items():
        med = statistics.median(values)
        print(
            f"  {name:<8} {med:12,.0f} lines/s   {med / base:5.2f}x the pipe "
            f"({(1 / med - 1 / base) * 1e6:+6.2f} us/line)   {med / floor:5.2f}x the floor "
            f"({(1 / med - 1 / floor) * 1e6:+6.2f} us/line)   "
            f"min {min(values):,.0f}, max {max(values):,.0f}"
        )


class _Clock:
    def __init__(self) -> None:
        self.seen: list[tuple[float, Event]] = []

    def __call__(self, event: Event) -> None:
        self.seen.append((time.monotonic(), event))

    def first(self, job_id: str, kind: str) -> float:
        return next(t for t, e in self.seen if e.job_id == job_id and e.kind == kind)

    def last(self, job_id: str, kind: str) -> float:
        return [t for t, e in self.seen if e.job_id == job_id and e.kind == kind][-1]


# "/hang": two lines, then silent in a process that dies on TERM; else echo the text ($0).
SILENT_POLITE = [
    "sh",
    "-c",
    '[ "$0" = /hang ] && { echo one; echo two; exec sleep 1000; }; echo "$0"',
]


async def recovery_once(command: list[str]) -> tuple[float, float]:
    lw = Laneway(
        watchdog_threshold=None,
        limits=Limits(deadline=120, idle=2.0, cancel_grace=5.0),
        retry=Retry(max_attempts=3),
    )
    register_cli(lw, command=command)
    clock = _Clock()
    lw.add_listener(clock)
    async with lw:
        stuck = await lw.submit("alice", "cli", {"text": "/hang"})
        following = await lw.submit("alice", "cli", {"text": "next"})
        await stuck.wait()
        await following.wait()
    last_line = clock.last(stuck.id, "delta")
    return (
        clock.first(stuck.id, "job.timed_out") - last_line,
        clock.first(following.id, "job.started") - last_line,
    )


async def recovery(rounds: int) -> None:
    print(f"recovery: idle 2 s, cancel_grace 5 s, {rounds} runs each (medians)")
    for name, command in (
        ("ignores SIGTERM", fake_agent_cli()),
        ("honours SIGTERM", SILENT_POLITE),
    ):
        runs = [await recovery_once(command) for _ in range(rounds)]
        timed_out = statistics.median(r[0] for r in runs)
        started = statistics.median(r[1] for r in runs)
        print(
            f"  CLI {name}: last line -> timed_out {timed_out:.3f} s, "
            f"-> next message started {started:.3f} s"
        )


async def main(rounds: int, lines: int, recoveries: int) -> None:
    await throughput(rounds, lines)
    await recovery(recoveries)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    logging.getLogger("laneway").setLevel(logging.ERROR)  # the timeouts are the point here
    if args.quick:
        asyncio.run(main(rounds=3, lines=50_000, recoveries=1))
    else:
        asyncio.run(main(rounds=7, lines=200_000, recoveries=3))
