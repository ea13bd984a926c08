"""Every store decides every write by the rulebook (``laneway.stores._rules``).

A job is brought into each state a job can be in; then each fenced write is
tried with the current attempt, a stale one and a future one. The store must
accept exactly what the rule accepts, write an event for each accepted write,
and leave the job and the log untouched by each refused one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from laneway import Event, JobInfo, JobState
from laneway.stores import Store
from laneway.stores import _rules as rules
from laneway.stores._base import Write

from .test_store_contract import add, finish

# What was done to a job before the write under test: (op, attempt, state).
Step = tuple[str, int, JobState | None]
SITUATIONS: dict[str, list[Step]] = {
    "queued": [],
    "running": [("start", 1, None)],
    "queued_after_retry": [("start", 1, None), ("retry", 1, None)],
    "running_second_attempt": [("start", 1, None), ("retry", 1, None), ("start", 2, None)],
    "cancelled_in_queue": [("finish", 0, JobState.CANCELLED)],
    **{
        state.value: [("start", 1, None), ("finish", 1, state)]
        for state in (
            JobState.SUCCEEDED,
            JobState.FAILED,
            JobState.TIMED_OUT,
            JobState.CANCELLED,
            JobState.DEAD,
        )
    },
}

WriteOp = Callable[[Store, str, int], "Write[Any]"]
WRITES: dict[str, WriteOp] = {
    "start": lambda store, job, n: store.start_attempt(job, n),
    "write": lambda store, job, n: store.append_event("s", job, "delta", {"n": n}, attempt=n),
    "retry": lambda store, job, n: store.retry(
        job, n, error="e", reason="r", lost=False, delay=0.0
    ),
    "finish": lambda store, job, n: finish(store, job, n, JobState.FAILED),
}
RULES: dict[str, Callable[[str, int, int], bool]] = {
    "start": rules.may_start,
    "write": rules.may_write,
    "retry": rules.may_retry,
    "finish": rules.may_finish,
}


async def _bring(store: Store, steps: list[Step]) -> JobInfo:
    info, _ = await add(store)
    for op, attempt, state in steps:
        if op == "finish":
            assert state is not None
            done = await finish(store, info.id, attempt, state)
        else:
            done = await WRITES[op](store, info.id, attempt)
        assert done is not None, (op, attempt)
    stored = await store.get_job(info.id)
    assert stored is not None
    return stored


async def _log(store: Store, job_id: str) -> list[Event]:
    return [e for e in await store.read_events("s", limit=100_000) if e.job_id == job_id]


@pytest.mark.parametrize("write", sorted(WRITES))
@pytest.mark.parametrize("situation", sorted(SITUATIONS))
async def test_fenced_writes_follow_the_rulebook(store: Store, situation: str, write: str) -> None:
    for offset in (-1, 0, 1):
        before = await _bring(store, SITUATIONS[situation])
        attempt = before.attempts + offset
        if write == "start":
            attempt += 1  # a start names the attempt it begins
        events = await _log(store, before.id)
        allowed = RULES[write](before.state, before.attempts, attempt)
        done = await WRITES[write](store, before.id, attempt)
        assert (done is not None) == allowed, (situation, write, attempt)
        after = await store.get_job(before.id)
        assert after is not None
        grown = await _log(store, before.id)
        if allowed:
            assert grown[:-1] == events
            assert grown[-1] == done
        else:
            assert (after.state, after.attempts, after.lost) == (
                before.state,
                before.attempts,
                before.lost,
            )
            assert grown == events


@pytest.mark.parametrize("situation", sorted(SITUATIONS))
async def test_requeue_follows_the_rulebook(store: Store, situation: str) -> None:
    before = await _bring(store, SITUATIONS[situation])
    done = await store.requeue(before.id)
    assert (done is not None) == rules.may_requeue(before.state)
    after = await store.get_job(before.id)
    assert after is not None
    if done is None:
        assert after.state is before.state
    else:
        info, event = done
        assert info.state is after.state is JobState.QUEUED
        assert event.kind == rules.REQUEUED_KIND  # a new run opens; the old one ended
        assert event.data == rules.requeued_data(
            "h", None, before.state, before.attempts, before.lost
        )


async def test_a_zombie_cannot_end_a_job_twice(store: Store) -> None:
    """The named cases of the table: stale attempt, second terminal, event after the end."""
    info = await _bring(store, SITUATIONS["running_second_attempt"])
    assert await finish(store, info.id, 1, JobState.FAILED) is None  # attempt 1 is stale
    assert await finish(store, info.id, 2) is not None
    assert await finish(store, info.id, 2, JobState.FAILED) is None  # a second terminal
    assert await store.append_event("s", info.id, "delta", None, attempt=2) is None
    assert await store.retry(info.id, 2, error=None, reason="r", lost=True, delay=0) is None
    assert await store.requeue(info.id) is None  # succeeded is not requeueable
    kinds = [e.kind for e in await _log(store, info.id)]
    assert kinds == ["job.queued", "job.started", "job.retry", "job.started", "job.succeeded"]


def test_the_rules_are_plain_functions_of_plain_values() -> None:
    # A PostgreSQL store reads state as text: the rules take the strings too.
    assert rules.may_start("queued", 0, 1)
    assert not rules.may_start("queued", 0, 2)
    assert rules.may_write("running", 3, 3)
    assert not rules.may_write("running", 3, 2)
    assert rules.may_write(None, 0, None)  # an unfenced note needs no job
    assert not rules.may_write(None, 0, 1)
    assert rules.may_finish("queued", 0, 0)
    assert not rules.may_finish("succeeded", 1, 1)
    assert [s for s in JobState if rules.may_requeue(s.value)] == [
        JobState.FAILED,
        JobState.TIMED_OUT,
        JobState.DEAD,
    ]
    data = rules.terminal_data(JobState.DEAD, attempts=3, result=None, error="e", reason="lost")
    assert data == {"state": "dead", "reason": "lost", "error": "e", "result": None, "attempts": 3}
    assert rules.terminal_kind(JobState.TIMED_OUT) == "job.timed_out"
