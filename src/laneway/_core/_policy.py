"""The policy: what becomes of a job once one of its attempts is over.

Pure and synchronous: ``decide(happened, rules)`` reads a small record of what
happened (how the attempt ended, which cancellation laneway issued, whether it
emitted output, how many attempts and losses the job has) and returns a
``Verdict``: the job's next state, the reason and error to record, the delay
before a retry, and whether the attempt counts as an attempt and as a loss.
The dispatcher applies verdicts when an attempt ends and recovery applies
them to attempts a dead owner left ``running``; neither decides on its own.

New rules (shutdown, interpreter exits, cancellations laneway did not issue,
crash suspects) are new ``Ended`` kinds or ``Happened`` fields and new
branches here; the appliers only read the verdict.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable
from typing import NamedTuple

from .._types import JobState, Reason, Retry

__all__ = ["ELSEWHERE", "SUCCEED", "Ended", "Happened", "Rules", "Verdict", "decide"]


class Ended(enum.Enum):
    """How an attempt's run ended, as the runner saw it."""

    RETURNED = "returned"  # the handler returned a (JSON-valid) result
    RAISED = "raised"  # the handler raised (or returned something invalid)
    CANCELLED = "cancelled"  # its task was cancelled or abandoned
    LOST = "lost"  # the process running it died (a worker, or the last owner)


class Happened(NamedTuple):
    """What happened to one attempt; the input of ``decide``."""

    ended: Ended
    #: The cancellation laneway issued to the attempt, if any.
    reason: Reason | None
    #: Type name and message of the error, for ``RAISED`` and ``LOST``.
    error_type: str | None
    error: str | None
    #: The attempt emitted events (a retry would replay them).
    output: bool
    #: Attempts run so far, this one included; losses counted before this one.
    attempts: int
    lost: int
    #: A stop or shutdown came after a limit already cancelled it: never retry.
    no_retry: bool = False
    #: Found ``running`` at start-up: the last owner died under it; retry at once.
    recovered: bool = False
    #: Lost beside other attempts on a node that died: it may not be the culprit,
    #: so the loss is not counted toward ``poison_after`` (nor as an attempt).
    bystander: bool = False


class Rules(NamedTuple):
    retry: Retry
    poison_after: int
    jitter: Callable[[], float] = random.random


class Verdict(NamedTuple):
    """The job's next state. ``QUEUED`` means retry at the head of its session."""

    state: JobState
    reason: str | None = None
    error: str | None = None
    delay: float = 0.0
    #: The attempt is one of the job's attempts (a given-back attempt is not).
    counts_attempt: bool = True
    #: The attempt counts as lost toward ``poison_after``.
    lost: bool = False


#: The verdict on a turn that returned: one object, so appliers can test ``is SUCCEED``.
SUCCEED = Verdict(JobState.SUCCEEDED)
_SHUTDOWN = Verdict(JobState.QUEUED, Reason.SHUTDOWN, "shutdown")
_STOPPED = Verdict(JobState.CANCELLED, Reason.STOPPED)
#: The node lost its lease: another node owns the attempt now and decides it.
ELSEWHERE = Verdict(JobState.RUNNING, Reason.LOST, "the node lost its lease")


def decide(what: Happened, rules: Rules) -> Verdict:
    """The verdict on one ended attempt."""
    reason = what.reason
    if reason is None and what.ended is Ended.RETURNED:
        return SUCCEED
    if reason is Reason.SHUTDOWN:
        return _SHUTDOWN
    if reason is Reason.LOST:
        return ELSEWHERE
    if reason is Reason.DEADLINE or reason is Reason.IDLE:
        return _failed(what, rules, JobState.TIMED_OUT, reason, f"{reason} limit exceeded")
    if reason is not None or what.ended is Ended.CANCELLED:
        return _STOPPED
    if what.ended is Ended.LOST:
        return _lost(what, rules)
    return _failed(what, rules, JobState.FAILED, what.error_type, what.error)


def may_retry(what: Happened, retry: Retry) -> bool:
    """Retry while attempts remain and, unless allowed, only if nothing was emitted."""
    return (
        not what.no_retry
        and what.attempts < retry.max_attempts
        and (not what.output or retry.retry_after_output)
    )


def _failed(
    what: Happened, rules: Rules, state: JobState, reason: str | None, error: str | None
) -> Verdict:
    if may_retry(what, rules.retry):
        delay = rules.retry.delay(what.attempts, rules.jitter())
        return Verdict(JobState.QUEUED, reason, error, delay)
    return Verdict(state, reason, error)


def _lost(what: Happened, rules: Rules) -> Verdict:
    """One more attempt lost: ``dead`` at ``poison_after``, else retry or ``failed``."""
    if what.bystander:
        return Verdict(JobState.QUEUED, Reason.LOST, what.error, counts_attempt=False)
    if what.lost + 1 >= rules.poison_after:
        return Verdict(JobState.DEAD, Reason.LOST, what.error, lost=True)
    if may_retry(what, rules.retry):
        delay = rules.retry.delay(what.attempts, rules.jitter()) if not what.recovered else 0.0
        return Verdict(JobState.QUEUED, Reason.LOST, what.error, delay, lost=True)
    return Verdict(JobState.FAILED, Reason.LOST, what.error, lost=True)
