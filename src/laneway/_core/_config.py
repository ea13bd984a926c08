"""Configuration: every check made at the call, and the frozen values the engine reads.

``Config`` is a Laneway's settings after validation; ``HandlerSpec`` is one
registered handler with its limits merged field by field over the Laneway's
and resolved once into ``ResolvedLimits`` (named seconds, ``None`` = off), so
nothing on the hot path re-reads a ``Limits`` or indexes a tuple.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from .._errors import ConfigError, InvalidSession
from .._types import DEFAULT_LIMITS, Limits, ProcessPool, Retry
from ._policy import Rules

__all__ = [
    "MAX_SESSION_LEN",
    "Config",
    "HandlerSpec",
    "Isolation",
    "ResolvedLimits",
    "check_handler",
    "check_session",
    "check_submit",
    "make_config",
]

MAX_SESSION_LEN = 256
Isolation = Literal["task", "process"]
Handler = Callable[..., Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class ResolvedLimits:
    """One handler's limits in seconds; ``None`` disables a limit."""

    deadline: float | None
    idle: float | None
    queue_wait: float | None
    cancel_grace: float
    #: Seconds after the start when a limit can first have passed (None: never).
    first_check: float | None = field(init=False)

    def __post_init__(self) -> None:
        first = self.idle if self.deadline is None else self.deadline
        if self.deadline is not None and self.idle is not None:
            first = min(self.deadline, self.idle)
        object.__setattr__(self, "first_check", first)

    @classmethod
    def of(cls, limits: Limits) -> ResolvedLimits:
        return cls(
            deadline=limits.value("deadline"),
            idle=limits.value("idle"),
            queue_wait=limits.value("queue_wait"),
            cancel_grace=limits.value("cancel_grace") or 0.0,
        )

    @property
    def kill_grace(self) -> float:
        """TERM-to-KILL grace for the attempt's process groups: half the cancel grace."""
        return max(0.05, self.cancel_grace / 2)


@dataclass(frozen=True, slots=True)
class HandlerSpec:
    name: str
    fn: Handler
    lanes: tuple[str, ...]
    limits: Limits
    retry: Retry
    isolation: Isolation
    poison_after: int = 3
    resolved: ResolvedLimits = field(init=False)
    #: What the policy needs to decide this handler's endings.
    rules: Rules = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "resolved", ResolvedLimits.of(self.limits))
        object.__setattr__(self, "rules", Rules(self.retry, self.poison_after))


@dataclass(frozen=True, slots=True)
class Config:
    """A Laneway's settings, validated."""

    lanes: Mapping[str, int]
    session_limit: int
    limits: Limits
    retry: Retry
    poison_after: int
    max_queued: int
    max_queued_per_session: int
    watchdog_threshold: float | None
    exit_after: float | None
    wait_warn: float
    sync_workers: int
    process_pool: ProcessPool | None
    max_event_bytes: int
    #: Seconds ``close()`` lets running turns finish before cancelling them (``shutdown``).
    shutdown_grace: float = 30.0


def make_config(
    *,
    lanes: Any,
    session_limit: Any,
    limits: Any,
    retry: Any,
    poison_after: Any,
    max_queued: Any,
    max_queued_per_session: Any,
    watchdog_threshold: Any,
    exit_after: Any,
    wait_warn: Any,
    sync_workers: Any,
    process_pool: Any,
    max_event_bytes: Any,
    shutdown_grace: Any = 30.0,
) -> Config:
    """Validate a Laneway's keyword arguments; ``ConfigError`` names the bad one."""
    _check_type("limits", limits, Limits)
    _check_type("retry", retry, Retry)
    _check_type("process_pool", process_pool, ProcessPool)
    for name, value in (("watchdog_threshold", watchdog_threshold), ("exit_after", exit_after)):
        if value is not None and (not isinstance(value, int | float) or value <= 0):
            raise ConfigError(f"{name} must be > 0 seconds or None, got {value!r}")
    if not isinstance(wait_warn, int | float) or wait_warn <= 0:
        raise ConfigError(f"wait_warn must be > 0 seconds, got {wait_warn!r}")
    if isinstance(shutdown_grace, bool) or not isinstance(shutdown_grace, int | float):
        raise ConfigError(f"shutdown_grace must be >= 0 seconds, got {shutdown_grace!r}")
    if not 0 <= shutdown_grace < float("inf"):
        raise ConfigError(f"shutdown_grace must be >= 0 seconds, got {shutdown_grace!r}")
    return Config(
        lanes=_check_lanes(lanes or {}),
        session_limit=positive_int("session_limit", session_limit),
        limits=(limits or Limits()).merged(DEFAULT_LIMITS),
        retry=retry or Retry(),
        poison_after=positive_int("poison_after", poison_after),
        max_queued=positive_int("max_queued", max_queued),
        max_queued_per_session=positive_int("max_queued_per_session", max_queued_per_session),
        watchdog_threshold=watchdog_threshold,
        exit_after=exit_after,
        wait_warn=float(wait_warn),
        sync_workers=positive_int("sync_workers", sync_workers),
        process_pool=process_pool,
        max_event_bytes=positive_int("max_event_bytes", max_event_bytes),
        shutdown_grace=float(shutdown_grace),
    )


def positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be an int >= 1, got {value!r}")
    return value


def _check_type(name: str, value: Any, kind: type) -> None:
    if value is not None and not isinstance(value, kind):
        raise ConfigError(f"{name} must be a {kind.__name__}, got {value!r}")


def _check_lanes(lanes: Any) -> dict[str, int]:
    if not isinstance(lanes, dict):
        raise ConfigError(f"lanes must be a dict of name -> cap, got {lanes!r}")
    for name, cap in lanes.items():
        if not isinstance(name, str) or not name or name.startswith(("session:", "laneway:")):
            raise ConfigError(
                f"lane names must be non-empty and not 'session:...' or 'laneway:...': {name!r}"
            )
        positive_int(f"lane {name!r} cap", cap)
    return dict(lanes)


def check_handler(
    config: Config,
    registered: Mapping[str, HandlerSpec],
    name: Any,
    lanes: Any,
    limits: Any,
    retry: Any,
    isolation: Any,
) -> tuple[str, ...]:
    """Check a handler registration; returns its shared lanes, deduplicated."""
    if not isinstance(name, str) or not name:
        raise ConfigError(f"handler name must be a non-empty string, got {name!r}")
    if name in registered:
        raise ConfigError(f"handler {name!r} is already registered")
    if isinstance(lanes, str):
        raise ConfigError(f"lanes must be a tuple of lane names, got the string {lanes!r}")
    wanted = tuple(dict.fromkeys(lanes))
    for lane in wanted:
        if lane not in config.lanes:
            raise ConfigError(f"handler {name!r} needs lane {lane!r}, which is not configured")
    _check_type("limits", limits, Limits)
    _check_type("retry", retry, Retry)
    if isolation not in ("task", "process"):
        raise ConfigError(f"isolation must be 'task' or 'process', got {isolation!r}")
    return wanted


def check_handler_fn(name: str, fn: Any) -> None:
    if not inspect.iscoroutinefunction(inspect.unwrap(fn)):
        raise ConfigError(f"handler {name!r} must be an async function")


def check_session(session: Any) -> None:
    if not isinstance(session, str) or not session:
        raise InvalidSession(f"session key must be a non-empty string, got {session!r}")
    if len(session) > MAX_SESSION_LEN:
        raise InvalidSession(f"session key is longer than {MAX_SESSION_LEN} characters")
    if not session.isprintable():
        raise InvalidSession(f"session key contains control characters: {session!r}")


def check_submit(idempotency_key: Any, priority: Any) -> None:
    if idempotency_key is not None and (
        not isinstance(idempotency_key, str) or not 0 < len(idempotency_key) <= 256
    ):
        raise InvalidSession("idempotency_key must be a string of 1..256 characters")
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise ConfigError(f"priority must be an int, got {priority!r}")
