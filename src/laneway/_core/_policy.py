"""The policy: what becomes of a job once one of its attempts is over.

Pure and synchronous: ``decide(happened, rules)`` reads a small record of what
happened (how the attempt ended, which cancellation laneway issued, whether it
emitted output, how many attempts and losses the job has) and returns a
``Verdict``: the job's next state, the reason and error to record, the delay
before a retry, and whether the attempt counts as an attempt and as a loss.
The dispatcher applies verdicts when an attempt ends and recovery applies
them to attempts a dead owner left ``running``; neither decides on its own.

Endings laneway did not decide are not endings: a shutdown gives a turn
without output back (not counted as an attempt), a cancellation laneway did
not issue (the loop torn down) is treated as a shutdown, and a process death
with several attempts in flight blames nobody until ``blame()`` can name the
one job that was running alone among the suspects (see ``blame``).
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable
from typing import NamedTuple

from .._types import JobState, Reason, Retry

__all__ = [
    "ELSEWHERE",
    "SUCCEED",
    "SUSPECT_LANE",
    "SUSPECT_MARKS",
    "Ended",
    "Happened",
    "Rules",
    "Verdict",
    "blame",
    "decide",
]


class Ended(enum.Enum):
    """How an attempt's run ended, as the runner saw it."""

    RETURNED = "returned"  # the handler returned a (JSON-valid) result
    RAISED = "raised"  # the handler raised (or returned something invalid)
    CANCELLED = "cancelled"  # its task was cancelled or abandoned
    #: Its task was cancelled by someone else than laneway (the loop torn down, Ctrl-C).
    TORN_DOWN = "torn_down"
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
    #: For a recovered attempt: the crash is its own (see ``blame``). Live losses
    #: (a worker process running only this attempt died) are always its own; an
    #: attempt lost beside others on a node that died is not (``blamed=False``).
    blamed: bool = True


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
_GIVEN_BACK = Verdict(JobState.QUEUED, Reason.SHUTDOWN, "shutdown", counts_attempt=False)
_SHUTDOWN_FAILED = Verdict(
    JobState.FAILED, Reason.SHUTDOWN, "shut down after the turn emitted output"
)
_STOPPED = Verdict(JobState.CANCELLED, Reason.STOPPED)
#: The reasons a non-terminal job carries while it is a crash suspect (see ``blame``).
SUSPECT_MARKS = frozenset({Reason.LOST.value, Reason.SUSPECT.value})
#: The hidden shared lane of cap 1 that crash suspects also need (not a user lane name).
SUSPECT_LANE = "laneway:suspects"
#: The node lost its lease: another node owns the attempt now and decides it.
ELSEWHERE = Verdict(JobState.RUNNING, Reason.LOST, "the node lost its lease")


def decide(what: Happened, rules: Rules) -> Verdict:
    """The verdict on one ended attempt."""
    reason = what.reason
    ended = what.ended
    if reason is None and ended is Ended.RETURNED:
        return SUCCEED
    if reason is Reason.SHUTDOWN or (reason is None and ended is Ended.TORN_DOWN):
        return _shutdown(what, rules)
    if reason is Reason.LOST:
        return ELSEWHERE
    if reason is Reason.DEADLINE or reason is Reason.IDLE:
        return _failed(what, rules, JobState.TIMED_OUT, reason, f"{reason} limit exceeded")
    if reason is not None or ended is Ended.CANCELLED:
        return _STOPPED
    if ended is Ended.LOST:
        return _lost(what, rules) if what.blamed else _bystander(what, rules)
    return _failed(what, rules, JobState.FAILED, what.error_type, what.error)


def blame(in_flight: list[tuple[str, bool]]) -> str | None:
    """The job a process death is blamed on, from ``(job_id, was_suspect)`` of every
    attempt it left in flight; ``None`` blames nobody.

    An attempt alone in flight is blamed. Otherwise the crash is blamed on the
    one suspect among them: suspects run one at a time, so a crash during a
    suspect's run is its own. With no suspect (or, after a change of rules,
    several) nobody is blamed: every attempt in flight becomes a suspect, and
    the suspects' solo runs find the culprit.
    """
    if len(in_flight) == 1:
        return in_flight[0][0]
    suspects = [job_id for job_id, suspect in in_flight if suspect]
    return suspects[0] if len(suspects) == 1 else None


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


def _shutdown(what: Happened, rules: Rules) -> Verdict:
    """Shut down under the attempt: given back unless a retry would replay output."""
    if not what.output or rules.retry.retry_after_output:
        return _GIVEN_BACK
    return _SHUTDOWN_FAILED


def _bystander(what: Happened, rules: Rules) -> Verdict:
    """In flight at a crash it is not blamed for: a suspect, given back uncounted."""
    if what.output and not rules.retry.retry_after_output:
        return Verdict(JobState.FAILED, Reason.LOST, what.error)
    return Verdict(JobState.QUEUED, Reason.SUSPECT, what.error, counts_attempt=False)


def _lost(what: Happened, rules: Rules) -> Verdict:
    """One more attempt lost: ``dead`` at ``poison_after``, else retry or ``failed``."""
    if what.lost + 1 >= rules.poison_after:
        return Verdict(JobState.DEAD, Reason.LOST, what.error, lost=True)
    if may_retry(what, rules.retry):
        delay = rules.retry.delay(what.attempts, rules.jitter()) if not what.recovered else 0.0
        return Verdict(JobState.QUEUED, Reason.LOST, what.error, delay, lost=True)
    return Verdict(JobState.FAILED, Reason.LOST, what.error, lost=True)
