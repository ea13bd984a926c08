"""Two and three node processes on one database: the lanes hold cluster-wide.

Every node appends its attempts' start and end times to its own log; the
test replays all logs together: per-session FIFO, ``session_limit`` and the
shared cap are never exceeded across nodes, and every job ends exactly once.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from pathlib import Path

import pytest

from ._cluster import Node, check_order, most_at_once, runs, stop_all, submit, wait_terminal
from ._db import fetch


def _fast(url: str, lease: str = "1s") -> str:
    return f"{url}&lease={lease}&poll=200ms" if "?" in url else f"{url}?lease={lease}&poll=200ms"


async def _terminal_once(url: str, count: int) -> None:
    rows = await fetch(
        url, "SELECT job_id, count(*) FROM events WHERE kind LIKE 'job.%' AND kind NOT IN"
        " ('job.queued', 'job.started', 'job.retry') GROUP BY job_id",
    )  # fmt: skip
    assert len(rows) == count
    assert {row[1] for row in rows} == {1}


@pytest.mark.slow
@pytest.mark.parametrize(("nodes", "limit", "cap"), [(2, 1, 4), (3, 2, 5)])
async def test_order_and_caps_hold_across_nodes(
    postgres_url: str, tmp_path: Path, nodes: int, limit: int, cap: int
) -> None:
    url = _fast(postgres_url, "5s") + "&capacity=2"  # no node can take every slot
    cluster = [Node(url, tmp_path / f"n{i}.log", cap, limit) for i in range(nodes)]
    try:
        for node in cluster:
            await node.start()
        jobs = [(f"s{i % 12}", i // 12) for i in range(360)]
        await submit(url, jobs, ms=15)
        await wait_terminal(url, len(jobs), within=90)
    finally:
        await stop_all(cluster)
    logged = runs([n.log for n in cluster], {})
    assert len({r.job for r in logged}) == len(jobs)
    assert sum(1 for n in cluster if n.log.exists() and n.log.stat().st_size) >= 2  # shared
    spans = [(r.start, r.end or float("inf")) for r in logged]
    assert most_at_once(spans) <= cap
    for session in {s for s, _ in jobs}:
        mine = [(r.start, r.end or float("inf")) for r in logged if r.session == session]
        assert most_at_once(mine) <= limit
    if limit == 1:
        check_order(logged)
    await _terminal_once(url, len(jobs))


@pytest.mark.slow
async def test_chaos_a_node_killed_ten_times(postgres_url: str, tmp_path: Path) -> None:
    """3 nodes, 5,000 jobs over 200 sessions; one node SIGKILLed 10 times and restarted."""
    lease, poll = 1.0, 0.2
    url = _fast(postgres_url) + "&capacity=6"  # every node gets a share of the 16 slots
    cap = 16
    steady = [Node(url, tmp_path / f"steady{i}.log", cap) for i in range(2)]
    victims: list[Node] = []
    jobs = [(f"c{i % 200}", i // 200) for i in range(5000)]
    rng = random.Random(7)
    try:
        for node in steady:
            await node.start()
        await submit(url, jobs, ms=30)
        for k in range(10):
            victim = Node(url, tmp_path / f"victim{k}.log", cap)
            victims.append(victim)
            await victim.start()
            await asyncio.sleep(rng.uniform(0.3, 0.8))
            await victim.kill()
        await wait_terminal(url, len(jobs), within=120)
    finally:
        await stop_all(steady + victims)
    kills = {v.log: v.kills for v in victims}
    logged = runs([n.log for n in steady + victims], kills)
    assert most_at_once([(r.start, r.end or float("inf")) for r in logged]) <= cap
    check_order(logged)
    await _terminal_once(url, len(jobs))
    states = await fetch(url, "SELECT state, count(*) FROM jobs GROUP BY state")
    assert {row[0]: row[1] for row in states} == {
        "succeeded": len(jobs)
    }  # bystanders are never quarantined
    # The dead node's turns ran again within lease + poll (and a little scheduling).
    cut = [r for v in victims for r in runs([v.log], kills) if r.end in v.kills]
    assert cut, "no kill hit a running turn"
    again = {
        r.job: min(x.start for x in logged if x.job == r.job and x.start > r.start) for r in cut
    }
    delays = [again[r.job] - (r.end or 0.0) for r in cut]
    assert max(delays) <= lease + poll + 1.5, sorted(delays)[-5:]


@pytest.mark.slow
async def test_a_killed_node_back_within_its_lease_leaks_no_slot(
    postgres_url: str, tmp_path: Path
) -> None:
    plain = _fast(postgres_url, "30s")
    url = plain + "&node=comeback"
    node = Node(url, tmp_path / "n.log", cap=3)
    try:
        await node.start()
        await submit(plain, [("a", 0), ("b", 0)], ms=60_000)  # two of three slots, for a minute
        async with asyncio.timeout(20):
            while len(runs([node.log], {})) < 2:
                await asyncio.sleep(0.05)
        await node.kill()
        began = time.time()
        await node.start()  # the same name: it takes its old attempts back at once
        # a and b died together: suspects, they run one at a time (a first, b waits for
        # the suspects' slot); c and d take the other two slots, so no dead slot leaked.
        await submit(plain, [("c", 0), ("d", 0)], ms=1)
        async with asyncio.timeout(20):
            while {r.session for r in runs([node.log], {})} < {"a", "b", "c", "d"}:
                await asyncio.sleep(0.05)
            while len([r for r in runs([node.log], {}) if r.session == "a"]) < 2:
                await asyncio.sleep(0.05)
        assert time.time() - began < 15  # far inside the 30 s lease
    finally:
        await stop_all([node])
    busy = await fetch(url, "SELECT count(*) FROM slots WHERE lane = 'llm' AND job_id IS NOT NULL")
    attempts = Counter(r.session for r in runs([node.log], {node.log: node.kills}))
    assert attempts["a"] == 2  # resumed, not leaked
    assert attempts["b"] == 1  # the second suspect never ran beside the first
    assert busy[0][0] <= 3
