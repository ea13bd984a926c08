"""TurnContext: what a handler sees of its attempt."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from .._errors import InvalidPayload
from .._types import UNSET, Event, LimitValue, ProcessResult
from ._json import check_json
from ._proc import kill_group

if TYPE_CHECKING:
    from ._runtime import Attempt, Laneway

__all__ = ["TurnContext"]

T = TypeVar("T")

_READ_CHUNK = 64 * 1024


class TurnContext:
    """One attempt of one job, as its handler sees it.

    ``emit``, ``progress`` and every item of ``stream`` count as progress and
    reset the idle timer. After the attempt ended (timed out, stopped,
    abandoned) its emits are discarded: a late writer cannot touch the log.
    """

    __slots__ = ("_att", "_lw", "attempt", "handler", "job_id", "payload", "session")

    def __init__(self, lw: Laneway, att: Attempt) -> None:
        self._lw = lw
        self._att = att
        self.job_id = att.job.id
        self.session = att.job.session
        self.handler = att.job.handler
        self.attempt = att.number
        self.payload = att.job.payload

    def __repr__(self) -> str:
        return f"<TurnContext job={self.job_id} session={self.session!r} attempt={self.attempt}>"

    @property
    def cancelled(self) -> bool:
        """True once the attempt was told to stop (deadline, idle, stop, shutdown)."""
        return self._att.reason is not None or self._att.ended

    @property
    def reason(self) -> str | None:
        return self._att.reason

    def progress(self) -> None:
        """Record progress: resets the idle timer."""
        self._att.last_progress = self._lw._loop_time()

    async def emit(self, kind: str, data: Any = None) -> Event | None:
        """Append an event to the session's log; returns it, or None if discarded."""
        if not isinstance(kind, str) or not kind or len(kind) > 64:
            raise InvalidPayload(f"event kind must be a non-empty string (<= 64 chars): {kind!r}")
        if kind.startswith("job."):
            raise InvalidPayload(f"event kinds starting with 'job.' are reserved: {kind!r}")
        check_json(data, "event data", self._lw.max_event_bytes)
        return await self._lw._emit(self._att, kind, data)

    async def stream(self, source: AsyncIterable[T], idle: LimitValue = UNSET) -> AsyncIterator[T]:
        """Iterate ``source``; each item is progress. ``idle`` overrides the idle
        limit while waiting for items (``None`` disables it for the stream)."""
        restore = self._idle_limit()
        if idle is not UNSET:
            self._set_idle_limit(None if idle is None else float(idle))
        it = aiter(source)
        try:
            while True:
                try:
                    item = await anext(it)
                except StopAsyncIteration:
                    return
                self.progress()
                yield item
        finally:
            if idle is not UNSET:
                self._set_idle_limit(restore)
            aclose = getattr(it, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()

    def _idle_limit(self) -> float | None:
        return self._att.idle

    def _set_idle_limit(self, idle: float | None) -> None:
        self._lw._set_idle(self._att, idle)

    async def run_sync(self, fn: Callable[..., T], *args: Any) -> T:
        """Run blocking ``fn(*args)`` in the bounded thread pool.

        If the attempt ends first the thread cannot be stopped: it is listed as
        a zombie until it returns, and holds no slot.
        """
        cf = self._lw._executor_submit(fn, *args)
        self._att.threads.add(cf)
        cf.add_done_callback(self._att.threads.discard)
        return await asyncio.wrap_future(cf)

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
        if not argv:
            raise ValueError("run_process needs a program to run")
        spawn = asyncio.ensure_future(
            asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE if input is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd=cwd,
                env=env,
                start_new_session=True,
            )
        )
        try:
            proc = await asyncio.shield(spawn)
        except asyncio.CancelledError:
            # The child may already run (and have children of its own): a
            # cancelled spawn only kills the leader, so kill its whole group
            # once the spawn completes.
            spawn.add_done_callback(self._kill_spawned)
            raise
        self._att.procs.add(proc)
        try:
            out, err, _ = await asyncio.gather(
                self._drain(proc.stdout), self._drain(proc.stderr), self._feed(proc, input)
            )
            returncode = await proc.wait()
        finally:
            await kill_group(proc, self._lw._kill_grace(self._att))
            self._att.procs.discard(proc)
        return ProcessResult(returncode, out, err)

    def _kill_spawned(self, spawn: asyncio.Future[asyncio.subprocess.Process]) -> None:
        if not spawn.cancelled() and spawn.exception() is None:
            self._lw._spawn(self._lw._kill_and_track(self._att, spawn.result()))

    async def history(self, limit: int = 50, *, before: int | None = None) -> list[Event]:
        """Up to ``limit`` earlier events of this session (before this attempt started).

        ``before`` pages further back: pass the ``seq`` of the oldest event
        already read to get the ones before it."""
        if before is None:
            return await self._lw._history(self._att, limit)
        start = self._att.start_seq
        before = min(before, start) if start else before
        return await self._lw.store.history(self.session, before=before, limit=limit)

    async def _drain(self, reader: asyncio.StreamReader | None) -> bytes:
        if reader is None:
            return b""
        chunks: list[bytes] = []
        while chunk := await reader.read(_READ_CHUNK):
            chunks.append(chunk)
            self.progress()
        return b"".join(chunks)

    @staticmethod
    async def _feed(proc: asyncio.subprocess.Process, data: bytes | None) -> None:
        if data is None or proc.stdin is None:
            return
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            proc.stdin.write(data)
            await proc.stdin.drain()
        proc.stdin.close()
