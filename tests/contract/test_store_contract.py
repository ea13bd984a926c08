"""The store contract, run against every store (see ``conftest.KITS``).

What the runtime relies on: writes applied in call order, fencing by attempt
number, exactly one terminal write, idempotency keys, per-session ``seq``,
and recovery of unfinished jobs in acceptance order after a restart.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from laneway import Event, JobInfo, JobState
from laneway.stores import Store
from laneway.stores._base import Write

from .conftest import StoreKit

_counter = iter(range(1_000_000))


async def add(
    store: Store,
    session: str = "s",
    *,
    key: str | None = None,
    payload: Any = None,
    priority: int = 0,
) -> tuple[JobInfo, Event | None]:
    fut = store.add_job(
        job_id=f"job-{next(_counter)}",
        session=session,
        handler="h",
        payload=payload,
        priority=priority,
        idempotency_key=key,
    )
    return await fut


async def started(store: Store, session: str = "s") -> JobInfo:
    info, _ = await add(store, session)
    assert await store.start_attempt(info.id, 1) is not None
    return info


def finish(
    store: Store,
    job_id: str,
    attempt: int,
    state: JobState = JobState.SUCCEEDED,
    result: Any = None,
) -> Write[Event | None]:
    return store.finish(job_id, attempt, state, result=result, error=None, reason=None, lost=False)


# -- accepting jobs ---------------------------------------------------------------


async def test_add_job_commits_the_job_and_its_queued_event(store: Store) -> None:
    info, event = await add(store, "alice", payload={"text": "hi", "n": [1, 2]})
    assert info.state is JobState.QUEUED
    assert info.attempts == 0
    assert info.payload == {"text": "hi", "n": [1, 2]}
    assert event is not None
    assert (event.seq, event.session, event.job_id, event.kind) == (
        1,
        "alice",
        info.id,
        "job.queued",
    )
    assert event.data == {"handler": "h", "payload": {"text": "hi", "n": [1, 2]}}
    stored = await store.get_job(info.id)
    assert stored is not None
    assert (stored.state, stored.session, stored.payload) == (
        JobState.QUEUED,
        "alice",
        info.payload,
    )


async def test_idempotency_key_returns_the_first_job_and_writes_nothing(store: Store) -> None:
    first, _ = await add(store, "alice", key="k1", payload=1)
    again, event = await add(store, "alice", key="k1", payload=2)
    assert event is None
    assert again.id == first.id
    assert again.payload == 1
    other_session, other_event = await add(store, "bob", key="k1")
    assert other_event is not None
    assert other_session.id != first.id
    assert [e.kind for e in await store.read_events("alice")] == ["job.queued"]


async def test_idempotency_key_holds_after_the_job_finished(store: Store) -> None:
    first, _ = await add(store, key="k")
    await store.start_attempt(first.id, 1)
    await finish(store, first.id, 1)
    again, event = await add(store, key="k")
    assert (again.id, event, again.state) == (first.id, None, JobState.SUCCEEDED)


async def test_writes_apply_in_call_order_without_awaiting(store: Store) -> None:
    added = store.add_job(
        job_id="ordered", session="s", handler="h", payload=None, priority=0, idempotency_key=None
    )
    start = store.start_attempt("ordered", 1)
    emit = store.append_event("s", "ordered", "delta", {"t": 1}, attempt=1)
    done = finish(store, "ordered", 1, result="ok")
    late = store.append_event("s", "ordered", "delta", {"t": 2}, attempt=1)
    await asyncio.gather(added, start, emit, done, late)
    events = [start.result(), emit.result(), done.result()]
    assert [e.seq if e is not None else None for e in events] == [2, 3, 4]
    assert late.result() is None
    kinds = [e.kind for e in await store.read_events("s")]
    assert kinds == ["job.queued", "job.started", "delta", "job.succeeded"]


# -- attempts and fencing -----------------------------------------------------------


async def test_start_attempt_is_fenced_by_the_attempt_number(store: Store) -> None:
    info, _ = await add(store)
    assert await store.start_attempt(info.id, 2) is None
    event = await store.start_attempt(info.id, 1)
    assert event is not None
    assert (event.kind, event.data) == ("job.started", {"attempt": 1})
    assert await store.start_attempt(info.id, 1) is None  # already running
    assert await store.start_attempt(info.id, 2) is None  # not queued
    assert await store.start_attempt("no-such-job", 1) is None
    stored = await store.get_job(info.id)
    assert stored is not None
    assert (stored.state, stored.attempts) == (JobState.RUNNING, 1)


async def test_append_event_is_fenced_and_marks_output(store: Store) -> None:
    info = await started(store)
    assert await store.append_event("s", info.id, "delta", {"a": 1}, attempt=2) is None
    assert await store.append_event("s", "no-such-job", "delta", None, attempt=1) is None
    event = await store.append_event("s", info.id, "delta", {"a": 1}, attempt=1)
    assert event is not None
    assert event.data == {"a": 1}
    stored = await store.get_job(info.id)
    assert stored is not None
    assert stored.output
    # Without an attempt (runtime notes) nothing is fenced, not even a missing job.
    note = await store.append_event("s", None, "note", "x", attempt=None)
    assert note is not None
    assert note.job_id is None


async def test_late_write_of_an_old_attempt_is_refused(store: Store) -> None:
    info = await started(store)
    retried = store.retry(info.id, 1, error="boom", reason="RuntimeError", lost=False, delay=0.0)
    assert await retried is not None
    assert await store.start_attempt(info.id, 2) is not None
    # The zombie of attempt 1 writes late: refused, attempt 2 untouched.
    assert await store.append_event("s", info.id, "delta", None, attempt=1) is None
    assert await finish(store, info.id, 1, JobState.FAILED) is None
    assert await store.retry(info.id, 1, error=None, reason="x", lost=False, delay=0) is None
    stored = await store.get_job(info.id)
    assert stored is not None
    assert (stored.state, stored.attempts) == (JobState.RUNNING, 2)


async def test_retry_requeues_and_counts_lost_attempts(store: Store) -> None:
    info = await started(store)
    await store.append_event("s", info.id, "delta", None, attempt=1)
    event = await store.retry(info.id, 1, error="lost", reason="lost", lost=True, delay=1.5)
    assert event is not None
    assert event.kind == "job.retry"
    assert event.data == {"attempt": 1, "reason": "lost", "error": "lost", "delay": 1.5}
    stored = await store.get_job(info.id)
    assert stored is not None
    assert (stored.state, stored.attempts, stored.lost, stored.reason) == (
        JobState.QUEUED,
        1,
        1,
        "lost",
    )
    assert await store.retry(info.id, 1, error=None, reason="x", lost=True, delay=0) is None
    assert await store.start_attempt(info.id, 2) is not None
    again = await store.get_job(info.id)
    assert again is not None
    assert not again.output


# -- terminal states ----------------------------------------------------------------


async def test_finish_writes_exactly_one_terminal_state(store: Store) -> None:
    info = await started(store)
    first = finish(store, info.id, 1, result={"answer": 42})
    second = store.finish(
        info.id, 1, JobState.FAILED, result=None, error="late", reason="x", lost=False
    )
    event, refused = await asyncio.gather(first, second)
    assert refused is None
    assert event is not None
    assert event.kind == "job.succeeded"
    assert event.data == {
        "state": "succeeded",
        "reason": None,
        "error": None,
        "result": {"answer": 42},
        "attempts": 1,
    }
    stored = await store.get_job(info.id)
    assert stored is not None
    assert (stored.state, stored.result) == (JobState.SUCCEEDED, {"answer": 42})
    terminal = [e for e in await store.read_events("s") if e.job_id == info.id]
    assert [e.kind for e in terminal].count("job.succeeded") == 1


async def test_finish_of_a_queued_job_and_stale_attempts(store: Store) -> None:
    info, _ = await add(store)
    assert await finish(store, info.id, 1, JobState.CANCELLED) is None  # never started
    event = store.finish(
        info.id, 0, JobState.CANCELLED, result=None, error=None, reason="stopped", lost=False
    )
    assert (await event) is not None
    assert await finish(store, "no-such-job", 0) is None
    stored = await store.get_job(info.id)
    assert stored is not None
    assert (stored.state, stored.reason) == (JobState.CANCELLED, "stopped")


@pytest.mark.parametrize("state", [JobState.FAILED, JobState.TIMED_OUT, JobState.DEAD])
async def test_requeue_sends_a_failed_job_back(store: Store, state: JobState) -> None:
    info = await started(store)
    lost = state is JobState.DEAD
    ended = store.finish(info.id, 1, state, result=None, error="e", reason="r", lost=lost)
    assert await ended is not None
    requeued = await store.requeue(info.id)
    assert requeued is not None
    new_info, event = requeued
    assert (new_info.state, new_info.attempts, new_info.lost, new_info.error) == (
        JobState.QUEUED,
        0,
        0,
        None,
    )
    # A new run of the same job: the run it closes is summed up, not reset silently.
    assert event.kind == "job.requeued"
    assert event.data == {
        "handler": "h",
        "payload": None,
        "requeued_from": state.value,
        "attempts": 1,
        "lost": int(lost),
    }
    assert await store.start_attempt(info.id, 1) is not None


async def test_requeue_refuses_live_succeeded_and_unknown_jobs(store: Store) -> None:
    queued, _ = await add(store)
    running = await started(store, "other")
    done = await started(store, "third")
    await finish(store, done.id, 1)
    for job_id in (queued.id, running.id, done.id, "no-such-job"):
        assert await store.requeue(job_id) is None


# -- reading ----------------------------------------------------------------------


async def test_list_jobs_newest_first_with_filters(store: Store) -> None:
    a1, _ = await add(store, "a")
    b1, _ = await add(store, "b")
    a2 = await started(store, "a")
    await finish(store, a2.id, 1, JobState.FAILED)
    assert [j.id for j in await store.list_jobs()] == [a2.id, b1.id, a1.id]
    assert [j.id for j in await store.list_jobs(session="a")] == [a2.id, a1.id]
    assert [j.id for j in await store.list_jobs(state=JobState.FAILED)] == [a2.id]
    assert [j.id for j in await store.list_jobs(state=JobState.QUEUED, session="b")] == [b1.id]
    assert [j.id for j in await store.list_jobs(limit=1)] == [a2.id]
    assert await store.get_job("no-such-job") is None


async def test_a_namespace_lists_all_its_jobs_in_pages(store: Store) -> None:
    mine = [(await add(store, f"alice/s{i % 2}"))[0].id for i in range(5)]
    for i in range(30):  # newer jobs of other namespaces never hide alice's
        await add(store, f"bob/s{i}")
    await add(store, "alice")  # no namespace: not alice's
    await add(store, "alicex/s")  # a longer name sharing the start
    pages: list[list[str]] = []
    before = None
    while page := [j.id for j in await store.list_jobs(prefix="alice/", before=before, limit=2)]:
        pages.append(page)
        before = page[-1]
    assert pages == [mine[4:2:-1], mine[2:0:-1], mine[:1]]


async def test_a_namespace_listing_filters_by_state_and_pages(store: Store) -> None:
    failed = []
    for i in range(4):
        info = await started(store, "alice/s")
        await finish(store, info.id, 1, JobState.FAILED if i % 2 else JobState.SUCCEEDED)
        failed += [info.id] if i % 2 else []
        await finish(store, (await started(store, "bob/s")).id, 1, JobState.FAILED)
    listed = await store.list_jobs(state=JobState.FAILED, prefix="alice/", limit=1)
    assert [j.id for j in listed] == failed[-1:]
    rest = await store.list_jobs(state=JobState.FAILED, prefix="alice/", before=listed[0].id)
    assert [j.id for j in rest] == failed[:1]


async def test_any_prefix_filters_and_an_unknown_cursor_lists_nothing(store: Store) -> None:
    ab = (await add(store, "ab/c/d"))[0].id
    await add(store, "ax")
    assert [j.id for j in await store.list_jobs(prefix="ab/c")] == [ab]
    assert await store.list_jobs(prefix="a", before="no-such-job") == []


async def test_seq_rises_by_one_per_session(store: Store) -> None:
    for i in range(3):
        await add(store, "a", payload=i)
        await add(store, "b", payload=i)
    for session in ("a", "b"):
        events = await store.read_events(session)
        assert [e.seq for e in events] == [1, 2, 3]
        assert [e.data["payload"] for e in events] == [0, 1, 2]
        assert all(e.session == session for e in events)


async def test_read_events_after_and_history_before(store: Store) -> None:
    info = await started(store)
    for i in range(5):
        await store.append_event("s", info.id, "delta", {"i": i}, attempt=1)
    # seq: 1 queued, 2 started, 3..7 deltas
    assert [e.seq for e in await store.read_events("s", after=4)] == [5, 6, 7]
    assert [e.seq for e in await store.read_events("s", after=2, limit=2)] == [3, 4]
    assert await store.read_events("s", after=7) == []
    assert await store.read_events("nobody") == []
    assert [e.seq for e in await store.history("s", before=6, limit=3)] == [3, 4, 5]
    assert [e.seq for e in await store.history("s", before=3, limit=10)] == [1, 2]
    assert await store.history("s", before=1, limit=10) == []


async def test_a_cancelled_write_future_does_not_stop_the_store(store: Store) -> None:
    fut = store.add_job(
        job_id="cancelled-caller",
        session="s",
        handler="h",
        payload=None,
        priority=0,
        idempotency_key=None,
    )
    fut.cancel()
    info, event = await add(store)
    assert event is not None
    # The write itself was already accepted: the job exists, in call order.
    assert [j.id for j in await store.list_jobs()] == [info.id, "cancelled-caller"]


# -- restart ------------------------------------------------------------------------


async def test_reopen_returns_unfinished_jobs_in_acceptance_order(kit: StoreKit) -> None:
    store = await kit.open()
    q1, _ = await add(store, "a", payload={"n": 1})
    running = await started(store, "b")
    await store.append_event("b", running.id, "delta", None, attempt=1)
    done = await started(store, "c")
    await finish(store, done.id, 1)
    q2, _ = await add(store, "a", payload={"n": 2}, priority=5)
    retried = await started(store, "d")
    await store.retry(retried.id, 1, error="x", reason="lost", lost=True, delay=0)

    store, unfinished = await kit.reopen(store)
    assert [j.id for j in unfinished] == [q1.id, running.id, q2.id, retried.id]
    by_id = {j.id: j for j in unfinished}
    assert by_id[q1.id].payload == {"n": 1}
    assert (by_id[running.id].state, by_id[running.id].attempts) == (JobState.RUNNING, 1)
    assert by_id[running.id].output
    assert by_id[q2.id].priority == 5
    assert (by_id[retried.id].state, by_id[retried.id].lost) == (JobState.QUEUED, 1)


async def test_reopen_keeps_seq_keys_and_fencing(kit: StoreKit) -> None:
    store = await kit.open()
    keyed, _ = await add(store, "a", key="once")
    running = await started(store, "a")
    store, _ = await kit.reopen(store)
    again, event = await add(store, "a", key="once")
    assert (again.id, event) == (keyed.id, None)
    # The attempt that was running is still the one the store fences on.
    assert await store.start_attempt(running.id, 2) is None
    lost = await store.retry(running.id, 1, error="lost", reason="lost", lost=True, delay=0)
    assert lost is not None
    assert lost.seq == 4
    assert [e.seq for e in await store.read_events("a")] == [1, 2, 3, 4]
