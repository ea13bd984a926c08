"""The laneway error tree.

Every error laneway raises derives from one root::

    LanewayError
    ├── Overloaded          a queue bound was hit; nothing accepted was lost (retry_after)
    ├── UnknownHandler      no handler is registered under that name   (also LookupError)
    ├── UnknownJob          no job has that id                          (also LookupError)
    ├── JobNotLive          the job is neither terminal nor run by this Laneway
    ├── NotRequeueable      requeue of a job that is not failed, timed_out or dead
    ├── InvalidPayload      payload, event data or result is not JSON    (also ValueError)
    ├── InvalidSession      empty, oversized or malformed session key    (also ValueError)
    ├── ConfigError         nonsense configuration: negative limits, zero caps (also ValueError)
    ├── StoreError          the store broke: unreachable, corrupt, owned by another process
    ├── Closed              you closed it (or never started it); not a failure
    ├── ProcessFailed       a subprocess exited non-zero (carries .returncode, .stderr tail)
    └── JobError            a job ended in a state other than ``succeeded`` (carries .outcome)
        ├── JobFailed       the handler raised and no retry was left
        ├── JobTimedOut     deadline, idle limit or queue_wait expired and no retry was left
        ├── JobCancelled    stop() or cancel() ended it
        └── JobDead         quarantined after ``poison_after`` attempts were lost to crashes

``WorkerLost`` is internal: the process that ran an attempt died, so the
attempt ends as lost (reason ``"lost"``); callers see the job's outcome.

Each class's docstring is its default message.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._types import Outcome

__all__ = [
    "Closed",
    "ConfigError",
    "InvalidPayload",
    "InvalidSession",
    "JobCancelled",
    "JobDead",
    "JobError",
    "JobFailed",
    "JobNotLive",
    "JobTimedOut",
    "LanewayError",
    "NotRequeueable",
    "Overloaded",
    "ProcessFailed",
    "StoreError",
    "UnknownHandler",
    "WorkerLost",
]


class LanewayError(Exception):
    """laneway failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message if message is not None else (self.__doc__ or "").strip())


class Overloaded(LanewayError):
    """The queue is full; try again later. Nothing already accepted was lost."""

    def __init__(self, message: str | None = None, *, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class UnknownHandler(LanewayError, LookupError):
    """No handler is registered under that name."""


class UnknownJob(LanewayError, LookupError):
    """No job has that id."""


class JobNotLive(LanewayError):
    """The job is not terminal, and this Laneway does not run it (another owner may)."""


class NotRequeueable(LanewayError):
    """Only failed, timed_out and dead jobs can be requeued."""


class InvalidPayload(LanewayError, ValueError):
    """The value is not JSON-serialisable (payloads, event data and results must be)."""


class InvalidSession(LanewayError, ValueError):
    """The session key is empty, too long, or contains control characters."""


class ConfigError(LanewayError, ValueError):
    """The configuration is invalid."""


class StoreError(LanewayError):
    """The store failed."""


class Closed(LanewayError):
    """This Laneway is closed (or was never started)."""


class ProcessFailed(LanewayError):
    """A subprocess exited with a non-zero status."""

    def __init__(
        self,
        message: str | None = None,
        *,
        returncode: int,
        stderr: str = "",
        argv: tuple[str, ...] = (),
    ) -> None:
        super().__init__(message or _process_failure(argv, returncode, stderr))
        self.returncode = returncode
        self.stderr = stderr  # the last few KiB the process wrote to stderr
        self.argv = argv


def _process_failure(argv: tuple[str, ...], returncode: int, stderr: str) -> str:
    program = os.path.basename(argv[0]) if argv else "the process"
    if returncode < 0:
        status = f"was killed by signal {-returncode}"
    else:
        status = f"exited with status {returncode}"
    last = next((line.strip() for line in reversed(stderr.splitlines()) if line.strip()), "")
    return f"{program} {status}: {last[:300]}" if last else f"{program} {status}"


class JobError(LanewayError):
    """The job did not succeed."""

    def __init__(self, outcome: Outcome, message: str | None = None) -> None:
        detail = f" ({outcome.reason})" if outcome.reason else ""
        default = f"job {outcome.job_id} ended {outcome.state.value}{detail}"
        if outcome.error:
            default += f": {outcome.error}"
        super().__init__(message or default)
        self.outcome = outcome


class JobFailed(JobError):
    """The handler raised and no retry was left."""


class JobTimedOut(JobError):
    """A deadline, idle limit or queue_wait expired and no retry was left."""


class JobCancelled(JobError):
    """The job was stopped or cancelled."""


class JobDead(JobError):
    """The job was quarantined after too many attempts were lost to crashes."""


class WorkerLost(LanewayError):
    """The worker process running the attempt died; the attempt is lost."""
