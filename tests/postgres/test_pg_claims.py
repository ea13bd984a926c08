"""Claims, slots, leases and the reaper with two nodes (stores) on one database,
including the bugs users of other PostgreSQL queues have reported: the last
slot of a cap taken twice, a reaper racing a late finish, a retry losing its
place, a batch holding two jobs of one session, a chatty session starving others."""

from __future__ import annotations

import asyncio
import random
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any

import pytest

from laneway import JobState
from laneway.stores._postgres import PostgresStore
from laneway.stores._postgres_claim import Claimed, claim, reap
from laneway.stores._postgres_writes import Batch

from ._db import connect, fetch, wait_lapsed

LANES = {"llm": ["llm"], "tool": ["llm", "tools"], "tools": ["tools"], "free": []}


@pytest.fixture
async def nodes(postgres_url: str) -> AsyncIterator[tuple[PostgresStore, PostgresStore]]:
    a = PostgresStore(postgres_url + "&lease=1s")
    b = PostgresStore(postgres_url)
    await a.open()
    await b.open()
    await a.set_lanes({"llm": 1, "tools": 1})
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()


_ids = iter(range(10**9))


async def add(store: PostgresStore, session: str, handler: str = "llm") -> str:
    info, _ = await store.add_job(
        job_id=f"j{next(_ids)}", session=session, handler=handler, payload=None, priority=0,
        idempotency_key=None,
    )  # fmt: skip
    return info.id


def done(store: PostgresStore, c: Claimed, state: JobState = JobState.SUCCEEDED) -> Any:
    return store.finish(
        c.job.id, c.attempt, state, result=None, error=None, reason=None, lost=False
    )


async def test_two_claimers_racing_for_the_last_slot_one_gets_nothing(
    nodes: tuple[PostgresStore, PostgresStore], postgres_url: str
) -> None:
    a, b = nodes
    first = await add(a, "x")
    one, two = await connect(postgres_url), await connect(postgres_url)
    try:
        async with one.transaction():
            got = await claim(one, Batch(a.epoch), 5, LANES)
            second = await add(b, "y")  # a head the first claimer has not seen
            async with two.transaction():  # the first claim is not committed yet
                raced = claim(two, Batch(b.epoch), 5, LANES)
                assert await asyncio.wait_for(raced, 5) == []  # neither waits nor doubles
        assert [c.job.id for c in got] == [first]
        async with two.transaction():  # committed: the slot is taken
            assert await claim(two, Batch(b.epoch), 5, LANES) == []
    finally:
        await one.close()
        await two.close()
    # Through the stores, at the same moment: exactly one of the two heads.
    await done(a, got[0])
    await add(a, "z")
    won = await asyncio.gather(a.claim(5, LANES), b.claim(5, LANES))
    assert [c.job.id for w in won for c in w] == [second]


async def test_a_job_takes_every_slot_it_needs_or_none(
    nodes: tuple[PostgresStore, PostgresStore], postgres_url: str
) -> None:
    a, b = nodes
    busy = await add(a, "t", "tools")
    [running] = await a.claim(5, LANES)
    assert running.job.id == busy
    both = await add(a, "x", "tool")  # needs llm and tools: tools is taken
    llm_only = await add(b, "y", "llm")
    claimed = await b.claim(5, LANES)
    assert [c.job.id for c in claimed] == [llm_only]
    slots = await fetch(postgres_url, "SELECT lane, job_id FROM slots ORDER BY lane")
    assert [tuple(s) for s in slots] == [("llm", llm_only), ("tools", busy)]  # `both` holds none
    await done(a, running)
    await done(b, claimed[0])
    [later] = await a.claim(5, LANES)
    assert (later.job.id, later.slots) == (both, (("llm", 1), ("tools", 1)))


async def test_a_chatty_session_does_not_delay_another_sessions_job(
    nodes: tuple[PostgresStore, PostgresStore],
) -> None:
    a, b = nodes
    chatty = await asyncio.gather(*(add(a, "chatty", "free") for _ in range(10_000)))
    single = await add(b, "single", "free")
    claimed = await b.claim(2, LANES)
    assert [c.job.id for c in claimed] == [chatty[0], single]
    # While the chatty session's head runs, its 9,999 older jobs are not in the way.
    late = await add(b, "late", "free")
    assert [c.job.id for c in await a.claim(1, LANES)] == [late]


async def test_heads_waiting_on_a_full_lane_do_not_hide_one_that_can_run(
    nodes: tuple[PostgresStore, PostgresStore],
) -> None:
    a, b = nodes
    busy = await add(a, "first", "llm")
    [running] = await a.claim(5, LANES)
    assert running.job.id == busy
    await asyncio.gather(*(add(a, f"wait{i}", "llm") for i in range(100)))  # older, all blocked
    ready = await add(b, "younger", "free")
    assert [c.job.id for c in await b.claim(5, LANES)] == [ready]


async def test_a_retried_job_keeps_its_head(nodes: tuple[PostgresStore, PostgresStore]) -> None:
    a, b = nodes
    first, second = await add(a, "s", "free"), await add(a, "s", "free")
    [c] = await a.claim(5, LANES)
    assert c.job.id == first
    back = await a.retry(first, 1, error="boom", reason="RuntimeError", lost=False, delay=0.5)
    assert back is not None
    assert await b.claim(5, LANES) == []  # the head waits out its backoff; no overtaking
    for _ in range(100):
        claimed = await b.claim(5, LANES)
        if claimed:
            break
        await asyncio.sleep(0.05)
    assert [(c.job.id, c.attempt) for c in claimed] == [(first, 2)]
    assert second not in {c.job.id for c in claimed}


async def test_a_batch_claim_never_holds_two_jobs_of_one_session(postgres_url: str) -> None:
    store = PostgresStore(postgres_url)
    await store.open()
    try:
        await store.set_lanes({}, session_limit=2)
        jobs = [await add(store, "s", "free") for _ in range(5)]
        other = await add(store, "o", "free")
        first = await store.claim(10, LANES)
        assert [c.job.id for c in first] == [jobs[0], other]
        second = await store.claim(10, LANES)
        assert [c.job.id for c in second] == [jobs[1]]
        assert await store.claim(10, LANES) == []  # session_limit 2 reached
        await done(store, first[0])
        assert [c.job.id for c in await store.claim(10, LANES)] == [jobs[2]]
    finally:
        await store.close()


async def test_a_reaper_racing_a_late_finish_leaves_exactly_one_terminal_event(
    nodes: tuple[PostgresStore, PostgresStore], postgres_url: str
) -> None:
    a, b = nodes
    jobs = [await add(a, f"s{i}", "free") for i in range(2)]
    claimed = {c.job.id: c for c in await a.claim(5, LANES)}
    assert sorted(claimed) == sorted(jobs)
    await wait_lapsed(postgres_url, a.epoch)
    # The reaper goes first and holds its transaction open: the late finish waits, then is refused.
    conn = await connect(postgres_url)
    try:
        tx = conn.transaction()
        await tx.start()
        reaped = await reap(conn, epoch=b.epoch)
        late = [done(a, claimed[job]) for job in jobs]
        await asyncio.sleep(0.2)
        assert not any(f.done() for f in late)
        await tx.commit()
    finally:
        await conn.close()
    assert [r.job.id for r in reaped] == jobs
    assert [r.in_flight for r in reaped] == [2, 2]  # two in flight: neither alone to blame
    assert await asyncio.gather(*late) == [None, None]
    for r in reaped:
        end = b.finish(r.job.id, 1, JobState.FAILED, result=None, error="lost", reason="lost",
                       lost=True)  # fmt: skip
        assert await end is not None
    for job in jobs:
        assert await _terminal_events(postgres_url, job) == 1


async def test_a_late_finish_that_commits_first_leaves_nothing_to_reap(
    nodes: tuple[PostgresStore, PostgresStore], postgres_url: str
) -> None:
    a, b = nodes
    job = await add(a, "s", "free")
    [c] = await a.claim(5, LANES)
    await wait_lapsed(postgres_url, a.epoch)
    assert await done(a, c) is not None  # the lease lapsed but nobody took over: still its own
    assert await b.reap() == []
    assert await _terminal_events(postgres_url, job) == 1


@pytest.mark.slow
async def test_two_nodes_hold_caps_and_session_order_cluster_wide(postgres_url: str) -> None:
    nodes = [PostgresStore(postgres_url) for _ in range(2)]
    for node in nodes:
        await node.open()
    await nodes[0].set_lanes({"llm": 3})
    log: list[tuple[str, str, float, float]] = []
    try:
        expected: dict[str, list[str]] = defaultdict(list)
        for i in range(120):
            session = f"s{i % 12}"
            expected[session].append(await add(nodes[i % 2], session, "llm"))
        await asyncio.gather(*(_work(node, log, 120) for node in nodes))
    finally:
        for node in nodes:
            await node.close()
    assert len(log) == 120
    assert _most_at_once([(start, end) for _j, _s, start, end in log]) <= 3
    for session, ids in expected.items():
        runs = sorted((start, end, job) for job, s, start, end in log if s == session)
        assert [job for _start, _end, job in runs] == ids
        assert _most_at_once([(start, end) for start, end, _job in runs]) == 1


async def _work(store: PostgresStore, log: list[tuple[str, str, float, float]], total: int) -> None:
    async def run(c: Claimed) -> None:
        start = time.monotonic()
        await asyncio.sleep(random.uniform(0.001, 0.01))
        log.append((c.job.id, c.job.session, start, time.monotonic()))
        await done(store, c)

    tasks: set[asyncio.Task[None]] = set()
    while len(log) < total:
        for c in await store.claim(4, LANES):
            task = asyncio.create_task(run(c))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.sleep(0.002)
    await asyncio.gather(*tasks)


def _most_at_once(intervals: list[tuple[float, float]]) -> int:
    points = sorted([(s, 1) for s, _e in intervals] + [(e, -1) for _s, e in intervals])
    most = now = 0
    for _t, step in points:
        now += step
        most = max(most, now)
    return most


async def _terminal_events(url: str, job: str) -> int:
    rows = await fetch(
        url,
        "SELECT count(*) FROM events WHERE job_id = $1 AND kind = ANY($2)",
        job,
        [f"job.{s.value}" for s in JobState if s.terminal],
    )
    return int(rows[0][0])


@pytest.mark.slow
async def test_a_long_turn_keeps_its_slot_while_its_node_heartbeats(
    nodes: tuple[PostgresStore, PostgresStore], postgres_url: str
) -> None:
    a, b = nodes  # a's lease is 1 s; the turn runs three leases long
    job = await add(a, "long", "llm")
    [c] = await a.claim(5, LANES)
    waiting = await add(b, "next", "llm")
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        await a.maintain()
        assert await b.reap() == []
        assert await b.claim(5, LANES) == []
        await asyncio.sleep(a.settings.lease / 3)  # what the runtime does
    assert await a.append_event("long", job, "delta", {}, attempt=c.attempt) is not None
    await done(a, c)
    assert [x.job.id for x in await b.claim(5, LANES)] == [waiting]


async def test_a_node_freeing_slots_leaves_a_waiting_node_its_share(postgres_url: str) -> None:
    """Finishes and the next claim share a batch, so a busy node would take back every
    slot it freed; while another node wants the lane, it tops up to half of it."""
    a, b = PostgresStore(postgres_url), PostgresStore(postgres_url)
    await a.open()
    await b.open()
    llm = {"llm": ["llm"]}
    try:
        await a.set_lanes({"llm": 4})
        ids = [await add(a, f"f{i}") for i in range(12)]
        first = await a.claim(8, llm)  # nobody else wants the lane yet: all four
        assert [c.job.id for c in first] == ids[:4]
        assert await b.claim(8, llm) == []  # the lane is full: b now wants it
        finished = [done(a, c) for c in first]
        again = a.claim(8, llm)  # in the batch with its finishes
        await asyncio.gather(*finished)
        assert [c.job.id for c in await again] == ids[4:6]
        theirs = await b.claim(8, llm)
        assert [c.job.id for c in theirs] == ids[6:8]  # oldest first still
        await asyncio.gather(*(done(b, c) for c in theirs))
        assert await a.claim(8, llm) == []  # a holds its share; b still wants the lane
        # A node that is full (or gone) wants nothing: the other may take the whole lane.
        await fetch(postgres_url, "UPDATE nodes SET wants = '{}' WHERE epoch = $1", b.epoch)
        assert [c.job.id for c in await a.claim(8, llm)] == ids[8:10]
    finally:
        await a.close()
        await b.close()


SUSPECTS = {"lost": "laneway:suspects", "suspect": "laneway:suspects"}


async def test_two_suspects_never_run_at_once_on_two_nodes_and_the_rest_passes_them(
    postgres_url: str,
) -> None:
    """Crash suspects take the one slot of the suspects' lane in the database, so a
    second suspect waits for the first on every node; heads behind it do not."""
    a, b = PostgresStore(postgres_url), PostgresStore(postgres_url)
    await a.open()
    await b.open()
    llm = {"llm": ["llm"]}
    try:
        await a.set_lanes({"llm": 20, "laneway:suspects": 1})
        suspects = [await add(a, f"p{i}") for i in range(20)]  # more than a claim locks
        one, two = suspects[:2]
        rest = [await add(a, f"q{i}") for i in range(3)]
        for c in await a.claim(20, llm, SUSPECTS):  # in flight at a crash, given back
            await a.retry(
                c.job.id, c.attempt, error=None, reason="suspect", lost=False, delay=0.0,
                counts_attempt=False,
            )  # fmt: skip
        await a.set_lanes({"llm": 8, "laneway:suspects": 1})
        first = await a.claim(8, llm, SUSPECTS)  # the oldest head, the first suspect
        assert ("laneway:suspects", 1) in first[0].slots
        # The suspects' slot is taken: the other suspects wait, the heads behind them run.
        first += await a.claim(8, llm, SUSPECTS)
        assert [c.job.id for c in first] == [one, *rest]
        late = await add(b, "q9")
        assert [c.job.id for c in await b.claim(8, llm, SUSPECTS)] == [late]  # not held back
        await done(a, first[0])
        second = await b.claim(8, llm, SUSPECTS)
        assert [c.job.id for c in second] == [two]  # its turn, on the other node
        assert ("laneway:suspects", 1) in second[0].slots
    finally:
        await a.close()
        await b.close()


async def test_a_prioritized_head_beyond_the_claim_window_goes_first(
    nodes: tuple[PostgresStore, PostgresStore], postgres_url: str
) -> None:
    a, _b = nodes
    # 40 older heads without priority: more than a claim of one free slot looks at.
    for i in range(40):
        await add(a, f"plain{i}")
    urgent, _ = await a.add_job(
        job_id="urgent", session="vip", handler="llm", payload=None, priority=5,
        idempotency_key=None,
    )  # fmt: skip
    conn = await connect(postgres_url)
    try:
        async with conn.transaction():
            got = await claim(conn, Batch(a.epoch), 1, LANES)
    finally:
        await conn.close()
    assert [c.job.id for c in got] == [urgent.id]
