"""Streaming a subprocess's stdout line by line, killed with the attempt that reads it.

An agent CLI (Claude Code, Codex, Gemini CLI, aider) answers over minutes and
can go silent for good while alive (seed 004). ``stream_process`` yields its
stdout lines as they come, each one progress for the idle limit, and owns
the child's process group: TERM, a grace, then KILL when the iteration ends
for any reason (exhausted, abandoned, cancelled by a limit or a stop). The
attempt also *adopts* the child, so a group the stream could not kill itself
(a spawn cancelled mid-way, an iterator dropped without ``aclose``) dies when
the attempt ends.

It stands on ``_proc``'s ``ProcessHost`` (plus the idle limit) and its
``spawn``, like ``run_process``, so task-mode and worker-process turns share it.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
from collections.abc import AsyncGenerator
from typing import Protocol

from .._errors import ProcessFailed
from .._types import UNSET, LimitValue
from ._proc import ProcessHost, feed, kill_group, spawn

__all__ = ["MAX_LINE", "STDERR_TAIL", "LineSplitter", "StreamHost", "stream_process"]

MAX_LINE = 65_536  # characters; a longer line comes as several lines of at most this
STDERR_TAIL = 16_384  # bytes of stderr kept for ProcessFailed
_READ_CHUNK = 64 * 1024
_STDERR_AFTER_EXIT = 1.0  # seconds to finish reading stderr once the child has exited

Proc = asyncio.subprocess.Process


class StreamHost(ProcessHost, Protocol):
    """A process host whose idle limit a stream may override while it reads."""

    @property
    def idle_limit(self) -> float | None: ...

    def set_idle_limit(self, idle: float | None) -> None: ...


def stream_process(
    host: StreamHost,
    argv: tuple[str, ...],
    *,
    input: bytes | None = None,
    cwd: str | None = None,
    env: dict[str, str] | None = None,
    idle: LimitValue = UNSET,
    max_line: int = MAX_LINE,
) -> AsyncGenerator[str, None]:
    """The child's stdout lines (newline stripped), as they come; ``ProcessFailed``
    if it exits non-zero. ``idle`` overrides the idle limit while streaming.

    Nothing starts until the first line is asked for."""
    if not argv or not all(isinstance(a, str) for a in argv):
        raise ValueError(f"stream_process needs a program and string arguments, got {argv!r}")
    if isinstance(max_line, bool) or not isinstance(max_line, int) or max_line < 1:
        raise ValueError(f"max_line must be a positive int, got {max_line!r}")
    return _stream(host, argv, input, cwd, env, idle, max_line)


async def _stream(
    host: StreamHost,
    argv: tuple[str, ...],
    input: bytes | None,
    cwd: str | None,
    env: dict[str, str] | None,
    idle: LimitValue,
    max_line: int,
) -> AsyncGenerator[str, None]:
    restore = host.idle_limit
    if idle is not UNSET:
        host.set_idle_limit(None if idle is None else float(idle))
    try:
        proc = await spawn(host, argv, input is not None, cwd, env)
        async with _Child(host, proc, argv, input) as child:
            reader = proc.stdout
            assert reader is not None
            lines = LineSplitter(max_line)
            while chunk := await reader.read(_READ_CHUNK):
                for line in lines.feed(chunk):
                    host.progress()
                    yield line
            for line in lines.end():
                host.progress()
                yield line
            await child.finish()
    finally:
        if idle is not UNSET:
            host.set_idle_limit(restore)


async def _kill(host: ProcessHost, proc: Proc) -> None:
    try:
        await kill_group(proc, host.kill_grace)
    finally:
        host.release(proc)


class _Child:
    """The running child's stdin feeder and stderr tail; kills its group on exit."""

    def __init__(self, host: ProcessHost, proc: Proc, argv: tuple[str, ...], data: bytes | None):
        self.host = host
        self.proc = proc
        self.argv = argv
        self.tail = bytearray()
        self.reaped = False
        self.tasks = [asyncio.ensure_future(self._read_stderr())]
        if data is not None:
            self.tasks.append(asyncio.ensure_future(self._feed(data)))

    async def __aenter__(self) -> _Child:
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self.tasks:
            task.cancel()
        if self.reaped:  # its pid may be reused by now: never signal its group again
            self.host.release(self.proc)
        else:
            await _kill(self.host, self.proc)
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def finish(self) -> None:
        """stdout ended: wait for the exit; raise ``ProcessFailed`` if it failed."""
        returncode = await self.proc.wait()
        # Whatever the leader left in its group goes now, so stderr can end.
        await kill_group(self.proc, self.host.kill_grace)
        self.reaped = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.tasks[0]), _STDERR_AFTER_EXIT)
        if returncode != 0:
            stderr = self.tail.decode("utf-8", "replace")
            raise ProcessFailed(returncode=returncode, stderr=stderr, argv=self.argv)

    async def _read_stderr(self) -> None:
        reader = self.proc.stderr
        assert reader is not None
        tail = self.tail
        while chunk := await reader.read(_READ_CHUNK):
            tail += chunk
            if len(tail) > STDERR_TAIL:
                del tail[: len(tail) - STDERR_TAIL]

    async def _feed(self, data: bytes) -> None:
        await feed(self.proc, data)


class LineSplitter:
    """Bytes in, text lines out: UTF-8 (bad bytes replaced), newline and a trailing
    ``\\r`` stripped, each line at most ``max_line`` characters (longer ones split)."""

    __slots__ = ("_decode", "_max", "_pending")

    def __init__(self, max_line: int) -> None:
        self._decode = codecs.getincrementaldecoder("utf-8")("replace").decode
        self._max = max_line
        self._pending = ""

    def feed(self, chunk: bytes) -> list[str]:
        lines = (self._pending + self._decode(chunk)).split("\n")
        pending = lines.pop()
        out = [piece for line in lines for piece in self._bounded(line.removesuffix("\r"))]
        limit = self._max
        while len(pending) > limit:
            out.append(pending[:limit])
            pending = pending[limit:]
        self._pending = pending
        return out

    def end(self) -> list[str]:
        """The last line, if the output did not end with a newline."""
        rest = self._pending + self._decode(b"", True)
        self._pending = ""
        return self._bounded(rest.removesuffix("\r")) if rest else []

    def _bounded(self, line: str) -> list[str]:
        limit = self._max
        if len(line) <= limit:
            return [line]
        return [line[i : i + limit] for i in range(0, len(line), limit)]
