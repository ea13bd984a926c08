"""TurnContext: what a handler sees of its attempt, written once for every runner.

The context talks to a ``TurnHost``: in task isolation the attempt itself
(``_attempt.Attempt``), in process isolation the worker's link to its parent
(``_isolation._worker``). ``emit``, ``progress``, ``stream``, ``run_sync``,
``run_process`` and ``history`` are implemented here only; a host supplies
the few primitives they stand on.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Awaitable, Callable
from functools import partial
from typing import Any, Protocol, TypeVar

from .._errors import InvalidPayload
from .._types import UNSET, Event, LimitValue, ProcessResult
from ._json import check_json
from ._proc import ProcessHost, run_process
from ._proc_stream import MAX_LINE, stream_process

__all__ = ["TurnContext", "TurnHost"]

T = TypeVar("T")


class TurnHost(ProcessHost, Protocol):
    """The primitives behind a ``TurnContext``."""

    @property
    def job_id(self) -> str: ...
    @property
    def session(self) -> str: ...
    @property
    def handler(self) -> str: ...
    @property
    def number(self) -> int: ...
    @property
    def payload(self) -> Any: ...
    @property
    def reason(self) -> str | None: ...
    @property
    def cancelled(self) -> bool: ...
    @property
    def idle_limit(self) -> float | None: ...
    @property
    def max_event_bytes(self) -> int: ...

    def set_idle_limit(self, idle: float | None) -> None: ...

    def emit_event(self, kind: str, data: Any) -> Awaitable[Event | None]: ...

    def read_history(self, limit: int, before: int | None) -> Awaitable[list[Event]]: ...

    def run_in_thread(self, call: Callable[[], T]) -> Awaitable[T]: ...


class TurnContext:
    """One attempt of one job, as its handler sees it.

    ``emit``, ``progress`` and every item of ``stream`` count as progress and
    reset the idle timer. After the attempt ended (timed out, stopped,
    abandoned) its emits are discarded: a late writer cannot touch the log.
    """

    __slots__ = ("_host",)

    def __init__(self, host: TurnHost) -> None:
        self._host = host

    def __repr__(self) -> str:
        return f"<TurnContext job={self.job_id} session={self.session!r} attempt={self.attempt}>"

    @property
    def job_id(self) -> str:
        return self._host.job_id

    @property
    def session(self) -> str:
        return self._host.session

    @property
    def handler(self) -> str:
        return self._host.handler

    @property
    def attempt(self) -> int:
        return self._host.number

    @property
    def payload(self) -> Any:
        return self._host.payload

    @property
    def cancelled(self) -> bool:
        """True once the attempt was told to stop (deadline, idle, stop, shutdown)."""
        return self._host.cancelled

    @property
    def reason(self) -> str | None:
        return self._host.reason

    def progress(self) -> None:
        """Record progress: resets the idle timer."""
        self._host.progress()

    async def emit(self, kind: str, data: Any = None) -> Event | None:
        """Append an event to the session's log; returns it, or None if discarded."""
        if not isinstance(kind, str) or not kind or len(kind) > 64:
            raise InvalidPayload(f"event kind must be a non-empty string (<= 64 chars): {kind!r}")
        if kind.startswith("job."):
            raise InvalidPayload(f"event kinds starting with 'job.' are reserved: {kind!r}")
        check_json(data, "event data", self._host.max_event_bytes)
        return await self._host.emit_event(kind, data)

    async def stream(self, source: AsyncIterable[T], idle: LimitValue = UNSET) -> AsyncIterator[T]:
        """Iterate ``source``; each item is progress. ``idle`` overrides the idle
        limit while waiting for items (``None`` disables it for the stream)."""
        host = self._host
        restore = host.idle_limit
        if idle is not UNSET:
            host.set_idle_limit(None if idle is None else float(idle))
        it = aiter(source)
        try:
            while True:
                try:
                    item = await anext(it)
                except StopAsyncIteration:
                    return
                host.progress()
                yield item
        finally:
            if idle is not UNSET:
                host.set_idle_limit(restore)
            aclose = getattr(it, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()

    async def run_sync(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run blocking ``fn(*args, **kwargs)`` in a thread.

        In task isolation the pool is bounded (``sync_workers``); if the attempt
        ends first the thread cannot be stopped: it is listed as a zombie until
        it returns, and holds no slot. In a worker it dies with the worker.
        """
        return await self._host.run_in_thread(partial(fn, *args, **kwargs))

    async def run_process(
        self,
        *argv: str,
        input: bytes | None = None,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
    ) -> ProcessResult:
        """Run a subprocess in its own process group; output counts as progress.

        The whole group is killed (TERM, grace, KILL) when this call is
        cancelled and again when the attempt ends, however it ends.
        """
        return await run_process(self._host, argv, input=input, cwd=cwd, env=env)

    def stream_process(
        self,
        *argv: str,
        input: bytes | None = None,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        idle: LimitValue = UNSET,
        max_line: int = MAX_LINE,
    ) -> AsyncGenerator[str, None]:
        """Iterate a subprocess's stdout lines as they come (newline stripped,
        longer than ``max_line`` characters split); each line is progress.

        The child runs in its own process group, killed (TERM, grace, KILL)
        when the iteration ends, is abandoned or cancelled, and when the
        attempt ends. A non-zero exit raises ``ProcessFailed`` with the stderr
        tail. ``idle`` overrides the idle limit for the stream, as in ``stream``.
        """
        return stream_process(
            self._host, argv, input=input, cwd=cwd, env=env, idle=idle, max_line=max_line
        )

    async def history(self, limit: int = 50, *, before: int | None = None) -> list[Event]:
        """Up to ``limit`` earlier events of this session (before this attempt started).

        ``before`` pages further back: pass the ``seq`` of the oldest event
        already read to get the ones before it."""
        return await self._host.read_history(limit, before)
