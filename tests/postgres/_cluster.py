"""Node processes on one database, and what their shared log says about them."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from laneway.stores._postgres import PostgresStore

from .._helpers import SRC
from ._db import fetch

NODE = Path(__file__).with_name("_cluster_node.py")


@dataclass
class Run:
    """One attempt as a node logged it: ``end`` is None if the node died under it."""

    job: str
    session: str
    index: int
    attempt: int
    start: float
    end: float | None = None


@dataclass
class Node:
    url: str
    log: Path
    cap: int
    limit: int = 1
    proc: asyncio.subprocess.Process | None = None
    kills: list[float] = field(default_factory=list)

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, str(NODE), self.url, str(self.log), str(self.cap), str(self.limit),
            env={**os.environ, "PYTHONPATH": SRC}, stdout=subprocess.PIPE,
        )  # fmt: skip
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), 30)
        assert line.strip() == b"ready", line

    async def kill(self) -> float:
        """SIGKILL it; returns the wall time of the kill."""
        import time

        assert self.proc is not None
        at = time.time()
        self.proc.kill()
        await self.proc.wait()
        self.proc = None
        self.kills.append(at)
        return at

    async def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 20)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def stop_all(nodes: list[Node]) -> None:
    for node in nodes:
        if node.proc is not None:
            node.proc.kill()
            await node.proc.wait()
            node.proc = None


async def submit(url: str, jobs: list[tuple[str, int]], ms: float) -> list[str]:
    """Accept ``(session, index)`` jobs of handler ``work`` from outside any node."""
    store = PostgresStore(url)
    await store.open()
    try:
        futs = [
            store.add_job(
                job_id=f"{session}-{i}",
                session=session,
                handler="work",
                payload={"i": i, "ms": ms},
                priority=0,
                idempotency_key=None,
            )
            for session, i in jobs
        ]
        return [info.id for info, _ in await asyncio.gather(*futs)]
    finally:
        await store.close()


async def wait_terminal(url: str, count: int, within: float) -> None:
    async with asyncio.timeout(within):
        while True:
            rows = await fetch(url, "SELECT count(*) FROM jobs WHERE state = 'succeeded'")
            if rows[0][0] >= count:
                return
            await asyncio.sleep(0.2)


def runs(logs: list[Path], kills: dict[Path, list[float]]) -> list[Run]:
    """Every logged attempt; one cut short by a kill ends at that kill."""
    out: list[Run] = []
    for path in logs:
        if not path.exists():
            continue
        open_runs: dict[tuple[str, int], Run] = {}
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) != 6:
                continue  # a line cut by SIGKILL
            mark, job, session, index, attempt, at = parts
            key = (job, int(attempt))
            if mark == "S":
                run = Run(job, session, int(index), int(attempt), float(at))
                open_runs[key] = run
                out.append(run)
            elif key in open_runs:
                open_runs.pop(key).end = float(at)
        for run in open_runs.values():
            later = [k for k in kills.get(path, []) if k >= run.start]
            run.end = min(later) if later else float("inf")
    return out


def most_at_once(spans: list[tuple[float, float]]) -> int:
    """Most spans open at one instant (an end at t comes before a start at t)."""
    edges = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    most = now = 0
    for _t, step in edges:
        now += step
        most = max(most, now)
    return most


def check_order(all_runs: list[Run]) -> None:
    """Per session, every attempt of job k+1 starts after job k's last attempt ended."""
    by_session: dict[str, dict[int, list[Run]]] = defaultdict(lambda: defaultdict(list))
    for run in all_runs:
        by_session[run.session][run.index].append(run)
    for session, jobs in by_session.items():
        indexes = sorted(jobs)
        for a, b in itertools.pairwise(indexes):
            last_end = max(r.end or 0.0 for r in jobs[a])
            first_start = min(r.start for r in jobs[b])
            assert first_start >= last_end, (session, a, b, last_end, first_start)
