"""Public value types: limits, retry policy, job states, outcomes, events, snapshots."""

from __future__ import annotations

import enum
import math
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from ._errors import ConfigError

__all__ = [
    "DEFAULT_LIMITS",
    "Event",
    "JobInfo",
    "JobState",
    "LaneStats",
    "Limits",
    "Outcome",
    "ProcessPool",
    "ProcessResult",
    "Reason",
    "Retry",
    "RunningJob",
    "Snapshot",
    "StartMethod",
    "StopResult",
    "TERMINAL_STATES",
    "Zombie",
]


class _Unset(enum.Enum):
    UNSET = "UNSET"

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Final = _Unset.UNSET
LimitValue = float | None | _Unset


def _check_seconds(name: str, value: LimitValue, *, allow_zero: bool = False) -> None:
    if value is UNSET or value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"Limits.{name} must be a number of seconds or None, got {value!r}")
    if math.isnan(value) or value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"Limits.{name} must be > 0 seconds (or None to disable), got {value!r}")


@dataclass(frozen=True, slots=True)
class Limits:
    """Time limits of one attempt, in seconds.

    ``None`` disables a limit explicitly; a field left out inherits from the
    enclosing level (handler -> Laneway -> built-in defaults).

    - ``deadline``: hard cap on one attempt's run time.
    - ``idle``: max seconds without progress (emit, progress, a stream item).
    - ``queue_wait``: max seconds a job may wait queued, else ``timed_out``.
    - ``cancel_grace``: how long a cancelled attempt may take to unwind before
      it is abandoned as a zombie (its slots are free at that moment anyway).
    """

    deadline: LimitValue = UNSET
    idle: LimitValue = UNSET
    queue_wait: LimitValue = UNSET
    cancel_grace: LimitValue = UNSET

    def __post_init__(self) -> None:
        _check_seconds("deadline", self.deadline)
        _check_seconds("idle", self.idle)
        _check_seconds("queue_wait", self.queue_wait)
        _check_seconds("cancel_grace", self.cancel_grace, allow_zero=True)
        if self.cancel_grace is None:
            raise ConfigError("Limits.cancel_grace cannot be None: a slot must never wait forever")

    def merged(self, base: Limits) -> Limits:
        """These limits, with unset fields taken from ``base``."""
        return Limits(
            deadline=base.deadline if self.deadline is UNSET else self.deadline,
            idle=base.idle if self.idle is UNSET else self.idle,
            queue_wait=base.queue_wait if self.queue_wait is UNSET else self.queue_wait,
            cancel_grace=base.cancel_grace if self.cancel_grace is UNSET else self.cancel_grace,
        )

    def value(self, name: str) -> float | None:
        """A resolved field (``None`` = disabled); raises if it is still unset."""
        v = getattr(self, name)
        if v is UNSET:
            raise ConfigError(f"Limits.{name} is unresolved")
        return None if v is None else float(v)


DEFAULT_LIMITS: Final = Limits(deadline=900.0, idle=300.0, queue_wait=None, cancel_grace=5.0)


@dataclass(frozen=True, slots=True)
class Retry:
    """When a failed attempt runs again.

    An attempt that raised, timed out or was lost is retried while fewer than
    ``max_attempts`` attempts ran and, unless ``retry_after_output`` is set,
    only if it emitted no output (a half-streamed reply is not re-streamed).
    The delay grows as ``backoff * 2**(n-1)`` up to ``max_backoff``, with jitter.
    ``Retry(max_attempts=1)`` disables retries.
    """

    max_attempts: int = 3
    backoff: float = 1.0
    max_backoff: float = 60.0
    retry_after_output: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int):
            raise ConfigError(f"Retry.max_attempts must be an int, got {self.max_attempts!r}")
        if self.max_attempts < 1:
            raise ConfigError(f"Retry.max_attempts must be >= 1, got {self.max_attempts}")
        for name in ("backoff", "max_backoff"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or math.isnan(v) or v < 0:
                raise ConfigError(f"Retry.{name} must be a number >= 0, got {v!r}")

    def delay(self, attempt: int, jitter: float) -> float:
        """Backoff before attempt ``attempt + 1``; ``jitter`` in [0, 1) spreads it."""
        base = min(float(self.max_backoff), float(self.backoff) * 2.0 ** max(0, attempt - 1))
        return base / 2 + base / 2 * jitter


class Reason(enum.StrEnum):
    """Why laneway ended or put back an attempt. ``Outcome.reason`` is one of
    these or, for a handler that raised, the error's type name."""

    DEADLINE = "deadline"
    IDLE = "idle"
    QUEUE_WAIT = "queue_wait"
    STOPPED = "stopped"
    LOST = "lost"
    SHUTDOWN = "shutdown"
    #: Given back after a crash it was not blamed for; it now runs alone among suspects.
    SUSPECT = "suspect"


class JobState(enum.StrEnum):
    """Where a job is: queued, running, or exactly one terminal state."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"
    DEAD = "dead"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES: Final = frozenset(
    {JobState.SUCCEEDED, JobState.FAILED, JobState.TIMED_OUT, JobState.CANCELLED, JobState.DEAD}
)


@dataclass(slots=True)
class Outcome:
    """How a job ended. ``reason`` says why: ``deadline``, ``idle``, ``queue_wait``,
    ``stopped``, ``lost``, or the handler error's type name."""

    job_id: str
    state: JobState
    result: Any = None
    error: str | None = None
    reason: str | None = None
    attempts: int = 0


@dataclass(slots=True)
class JobInfo:
    """A job as the store and the runtime know it."""

    id: str
    session: str
    handler: str
    state: JobState
    attempts: int
    error: str | None
    result: Any
    reason: str | None
    payload: Any
    priority: int
    lost: int
    idempotency_key: str | None
    created_at: float
    updated_at: float
    output: bool = False  # the latest attempt emitted events (decides retries after a crash)


@dataclass(slots=True)
class Event:
    """One entry of a session's append-only log; ``seq`` rises by one per session."""

    seq: int
    session: str
    job_id: str | None
    kind: str
    data: Any
    at: float


@dataclass(frozen=True, slots=True)
class LaneStats:
    """One lane. For a shared lane, ``queued`` counts only jobs waiting for its
    slots; ``behind_session`` counts those that need it but wait for their own
    session's turn first (a busy session's later messages)."""

    name: str
    limit: int
    active: int
    queued: int
    oldest_active_s: float | None
    oldest_queued_s: float | None
    behind_session: int = 0


@dataclass(frozen=True, slots=True)
class Zombie:
    """Work that was abandoned (its slots are free) but has not ended yet."""

    job_id: str
    session: str
    kind: str  # "task", "thread" or "process"
    age_s: float


@dataclass(frozen=True, slots=True)
class RunningJob:
    """A turn running now, and the node that runs it."""

    job_id: str
    session: str
    handler: str
    attempt: int
    node: str
    age_s: float


@dataclass(frozen=True, slots=True)
class Snapshot:
    """``node`` is this node's name; ``running`` the turns running now, oldest first:
    this node's, and with a store shared by many nodes (PostgreSQL) every node's, as
    of the last poll tick."""

    lanes: list[LaneStats]
    jobs_queued: int
    jobs_running: int
    zombies: list[Zombie]
    loop_lag: float
    loop_blocks: int
    node: str = ""
    running: list[RunningJob] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class StopResult:
    cancelled: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class ProcessResult:
    returncode: int
    stdout: bytes
    stderr: bytes


StartMethod = Literal["forkserver", "spawn", "fork"]


def _methods() -> list[str]:
    import multiprocessing  # only when isolation is configured: it is a heavy import

    return multiprocessing.get_all_start_methods()


def _default_start_method() -> StartMethod:
    if sys.platform.startswith("linux") and "forkserver" in _methods():
        return "forkserver"
    return "spawn"


@dataclass(frozen=True, slots=True)
class ProcessPool:
    """Worker processes that run ``isolation="process"`` handlers.

    - ``size``: how many workers (default: the CPU count). Workers start on the
      first isolated job; the pool returns to this size after every death.
      An isolated job that finds every worker busy waits for one *while its
      limits run*: give such handlers a shared lane capped at ``size``
      (``lanes={"cpu": size}``) so the waiting happens in laneway's queue.
    - ``max_jobs``: a worker is replaced after this many jobs (``None``: never).
    - ``max_rss_mb``: a worker whose resident memory exceeds this after a job is
      replaced (``None``: never).
    - ``start_method``: how workers are started (``multiprocessing`` start
      methods); ``forkserver`` on Linux, ``spawn`` elsewhere.
    - ``start_timeout``: seconds a new worker may take to report ready.

    Each worker runs in its own session and process group; a deadline, idle
    limit, stop or cancel kills the whole group with SIGKILL, and with it every
    subprocess the handler started.
    """

    size: int | None = None
    max_jobs: int | None = 1_000
    max_rss_mb: float | None = None
    start_method: StartMethod | None = None
    start_timeout: float = 30.0

    def __post_init__(self) -> None:
        for name in ("size", "max_jobs"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ConfigError(f"ProcessPool.{name} must be an int >= 1 or None, got {v!r}")
        for name in ("max_rss_mb", "start_timeout"):
            v = getattr(self, name)
            if v is None and name == "max_rss_mb":
                continue
            if isinstance(v, bool) or not isinstance(v, int | float) or not v > 0:
                raise ConfigError(f"ProcessPool.{name} must be a number > 0, got {v!r}")
        method = self.start_method
        if method is not None and method not in _methods():
            raise ConfigError(
                f"ProcessPool.start_method must be one of {_methods()}, got {method!r}"
            )

    @property
    def workers(self) -> int:
        """The resolved pool size."""
        return self.size if self.size is not None else (os.cpu_count() or 1)

    @property
    def method(self) -> StartMethod:
        """The resolved start method."""
        return self.start_method if self.start_method is not None else _default_start_method()
