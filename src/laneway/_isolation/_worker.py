"""The worker process: runs isolated jobs one at a time for the parent.

The handler sees a ``WorkerContext``, a ``TurnContext`` whose ``emit``,
``progress``, ``history`` and idle overrides travel to the parent, which
applies them through the attempt's real context (so the idle timer, fencing
and the event log behave as in task mode). ``stream`` iterates here and
reports each item as progress; ``run_sync`` and ``run_process`` run here.

The worker makes itself a session leader first, so its process group and
session hold everything it starts: the parent kills them all at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import itertools
import os
import signal
import socket
import sys
import traceback
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

from .._core._context import TurnContext
from .._core._proc import kill_group
from .._errors import InvalidPayload, LanewayError
from .._types import Event, ProcessResult
from ._wire import LINE_LIMIT, decode, encode, event_from_wire

__all__ = ["WorkerContext", "main", "resolve"]

T = TypeVar("T")

_PROGRESS = encode({"op": "progress"})
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def main(sock: socket.socket) -> None:
    """Entry point of a worker process."""
    os.setsid()  # own session and group: killing the group kills the handler's children
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when a worker ends
    try:
        asyncio.run(_Server(sock).serve())
    finally:
        # Threads left by run_sync must not keep a worker alive without a parent.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def _die_with_parent() -> None:
    """On Linux, take SIGKILL when the process that started us exits."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(Exception):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def resolve(module: str, qualname: str) -> Any:
    """The object a worker finds at ``module.qualname``."""
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _rss_mb() -> float | None:
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE / 1_048_576
    except (OSError, ValueError, IndexError):
        return None


class _Server:
    """One connection to the parent: requests in, one job at a time."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._writer: asyncio.StreamWriter | None = None
        self._rids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._targets: dict[tuple[str, str], Callable[..., Any]] = {}
        self._job: asyncio.Task[None] | None = None

    async def serve(self) -> None:
        reader, self._writer = await asyncio.open_unix_connection(sock=self._sock, limit=LINE_LIMIT)
        self.send(encode({"op": "ready", "pid": os.getpid()}))
        while line := await reader.readline():
            msg = decode(line)
            op = msg["op"]
            if op == "run":
                self._job = asyncio.create_task(self._run(msg))
            elif op == "reply":
                self._answer(msg)
        # The parent closed the connection: it is gone or retiring us.

    def send(self, line: bytes) -> None:
        assert self._writer is not None
        self._writer.write(line)

    async def request(self, msg: dict[str, Any], what: str) -> Any:
        rid = next(self._rids)
        msg["rid"] = rid
        line = encode(msg, what)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        try:
            self.send(line)
            assert self._writer is not None
            await self._writer.drain()
            return await fut
        finally:
            self._pending.pop(rid, None)

    def _answer(self, msg: dict[str, Any]) -> None:
        fut = self._pending.pop(msg["rid"], None)
        if fut is None or fut.done():
            return
        err = msg.get("err")
        if err is None:
            fut.set_result(msg.get("ok"))
        elif err[0] == "InvalidPayload":
            fut.set_exception(InvalidPayload(err[1]))
        else:
            fut.set_exception(LanewayError(f"{err[0]}: {err[1]}"))

    def _target(self, target: list[str]) -> Callable[..., Any]:
        key = (target[0], target[1])
        fn = self._targets.get(key)
        if fn is None:
            fn = self._targets[key] = resolve(*key)
        return fn

    async def _run(self, msg: dict[str, Any]) -> None:
        ctx = WorkerContext(self, msg)
        try:
            result = await self._target(msg["target"])(ctx, ctx.payload)
            line = encode({"op": "done", "ok": result, "rss": _rss_mb()}, "the handler's result")
        except (Exception, asyncio.CancelledError) as exc:
            err = [type(exc).__name__, str(exc) or repr(exc), traceback.format_exc()]
            line = encode({"op": "done", "err": err, "rss": _rss_mb()})
        self.send(line)
        assert self._writer is not None
        await self._writer.drain()


class WorkerContext(TurnContext):
    """The ``TurnContext`` of a job running in a worker process."""

    __slots__ = ("_idle", "_kill_grace", "_server")

    def __init__(self, server: _Server, msg: dict[str, Any]) -> None:
        # No Laneway lives in this process: the parent applies what we send.
        job = msg["job"]
        self._server = server
        self._idle: float | None = msg["idle"]
        self._kill_grace: float = msg["kill_grace"]
        self.job_id = job["id"]
        self.session = job["session"]
        self.handler = job["handler"]
        self.attempt = job["attempt"]
        self.payload = job["payload"]

    def __repr__(self) -> str:
        return (
            f"<WorkerContext job={self.job_id} session={self.session!r} "
            f"attempt={self.attempt} pid={os.getpid()}>"
        )

    @property
    def cancelled(self) -> bool:
        # A worker is killed, never told: while this code runs, it is not cancelled.
        return False

    @property
    def reason(self) -> str | None:
        return None

    def progress(self) -> None:
        self._server.send(_PROGRESS)

    async def emit(self, kind: str, data: Any = None) -> Event | None:
        raw = await self._server.request({"op": "emit", "kind": kind, "data": data}, "event data")
        return event_from_wire(raw)

    async def history(self, limit: int = 50, *, before: int | None = None) -> list[Event]:
        msg = {"op": "history", "limit": limit, "before": before}
        raw = await self._server.request(msg, "history request")
        return [e for e in map(event_from_wire, raw) if e is not None]

    def _idle_limit(self) -> float | None:
        return self._idle

    def _set_idle_limit(self, idle: float | None) -> None:
        self._idle = idle
        self._server.send(encode({"op": "idle", "value": idle}))

    # Process streams: the parent kills this worker's whole session with the attempt.
    _OWN_SESSION = False

    def _adopt(self, proc: asyncio.subprocess.Process) -> None:
        pass

    def _release(self, proc: asyncio.subprocess.Process) -> None:
        pass

    def _process_grace(self) -> float:
        return self._kill_grace

    async def run_sync(self, fn: Callable[..., T], *args: Any) -> T:
        """Run blocking ``fn(*args)`` in a thread of this worker (it dies with the worker)."""
        return await asyncio.get_running_loop().run_in_executor(None, partial(fn, *args))

    async def run_process(
        self,
        *argv: str,
        input: bytes | None = None,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
    ) -> ProcessResult:
        """Run a subprocess in its own process group inside this worker's session.

        The group is killed (TERM, grace, KILL) when the call ends; if the
        worker is killed, the parent kills every process of its session.
        """
        if not argv:
            raise ValueError("run_process needs a program to run")
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE if input is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=cwd,
            env=env,
            process_group=0,
        )
        try:
            out, err, _ = await asyncio.gather(
                self._drain(proc.stdout), self._drain(proc.stderr), self._feed(proc, input)
            )
            returncode = await proc.wait()
        finally:
            await kill_group(proc, self._kill_grace)
        return ProcessResult(returncode, out, err)
