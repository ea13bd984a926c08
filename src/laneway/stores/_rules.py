"""The store rulebook: which writes a store accepts, and what its job events say.

Every store (memory, SQLite, PostgreSQL) asks these functions instead of
restating the rules, so they refuse exactly the same writes. They are pure:
plain values in (the job's current state and attempt count, the attempt a
write names), a decision out; no I/O, no store types.

Fencing: ``attempts`` is the job's fencing token, the number of its latest
attempt. A write about a running attempt names that number; a store refuses
it unless it is the current attempt of a running job, so a zombie's or a dead
worker's late write never lands on a newer attempt or on a terminal job.

``state`` may be a ``JobState`` or its string value (``"running"``): a
``JobState`` is a ``StrEnum``, so both compare and hash alike.
"""

from __future__ import annotations

from typing import Any, Final

from .._types import TERMINAL_STATES, JobState

__all__ = [
    "LIVE_STATES",
    "REQUEUEABLE_STATES",
    "TERMINAL_STATES",
    "may_finish",
    "may_requeue",
    "may_retry",
    "may_start",
    "may_write",
    "queued_data",
    "requeued_data",
    "retry_data",
    "started_data",
    "terminal_data",
    "terminal_kind",
]

#: States a job can still leave on its own (recovery reloads these).
LIVE_STATES: Final = frozenset({JobState.QUEUED, JobState.RUNNING})
#: States ``requeue`` may send back to ``queued``; ``succeeded`` and ``cancelled``
#: were decided by their caller and are not re-run.
REQUEUEABLE_STATES: Final = frozenset({JobState.FAILED, JobState.TIMED_OUT, JobState.DEAD})

_QUEUED: Final = JobState.QUEUED
_RUNNING: Final = JobState.RUNNING
_KINDS: Final = {state: f"job.{state.value}" for state in JobState}


def may_start(state: str | None, attempts: int, attempt: int) -> bool:
    """A queued job starts only as its next attempt (``attempts + 1``)."""
    return state == _QUEUED and attempt == attempts + 1


def may_write(state: str | None, attempts: int, attempt: int | None) -> bool:
    """An event fenced on ``attempt`` lands only while that attempt is running.

    ``attempt=None`` is an unfenced session note (the runtime's own), always
    accepted, even for a job that is gone; ``state=None`` means no such job.
    """
    if attempt is None:
        return True
    return state == _RUNNING and attempts == attempt


def may_retry(state: str | None, attempts: int, attempt: int) -> bool:
    """Only the running attempt itself can be sent back to the queue."""
    return state == _RUNNING and attempts == attempt


def may_finish(state: str | None, attempts: int, attempt: int) -> bool:
    """A live job ends once, and only by its current attempt.

    ``attempt`` is 0 for a job that never started (a stop or ``queue_wait``
    ending it in the queue), so a queued job between attempts (after a retry)
    is finished with the number of the attempt that ran last.
    """
    return state in LIVE_STATES and attempts == attempt


def may_requeue(state: str | None) -> bool:
    """Failed, timed-out and dead jobs may run again; nothing else."""
    return state in REQUEUEABLE_STATES


# -- the data of laneway's own events (every store writes the same) -------------


def queued_data(handler: str, payload: Any) -> dict[str, Any]:
    return {"handler": handler, "payload": payload}


def started_data(attempt: int) -> dict[str, Any]:
    return {"attempt": attempt}


def retry_data(
    attempt: int, reason: str, error: str | None, delay: float, counts_attempt: bool = True
) -> dict[str, Any]:
    """``job.retry``; an attempt given back uncounted (a shutdown, a crash's
    bystander) says so, and the job's attempt count goes back to ``attempt - 1``."""
    data: dict[str, Any] = {"attempt": attempt, "reason": reason, "error": error, "delay": delay}
    if not counts_attempt:
        data["counted"] = False
    return data


def retried_attempts(attempt: int, counts_attempt: bool) -> int:
    """The job's attempt count after a retry of ``attempt``."""
    return attempt if counts_attempt else attempt - 1


#: The kind of the event that opens a new run of a requeued job.
REQUEUED_KIND = "job.requeued"


def requeued_data(
    handler: str, payload: Any, previous: str, attempts: int = 0, lost: int = 0
) -> dict[str, Any]:
    """``job.requeued``: it opens a new run of the job. The run it closes said how it
    ended; this keeps how many attempts and losses it had (the new run counts from 0)."""
    return {
        "handler": handler,
        "payload": payload,
        "requeued_from": str(previous),
        "attempts": attempts,
        "lost": lost,
    }


def terminal_kind(state: JobState) -> str:
    """``job.<state>``."""
    return _KINDS[state]


def terminal_data(
    state: JobState, *, attempts: int, result: Any, error: str | None, reason: str | None
) -> dict[str, Any]:
    """The data of a terminal ``job.<state>`` event."""
    return {
        "state": str(state),
        "reason": reason,
        "error": error,
        "result": result,
        "attempts": attempts,
    }
