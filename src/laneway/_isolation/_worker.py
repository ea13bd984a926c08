"""The worker process: runs isolated jobs one at a time for the parent.

The handler sees a ``WorkerContext``: the one ``TurnContext`` implementation
on a worker host whose ``emit``, ``progress``, ``history`` and idle overrides
travel to the parent, which applies them through the attempt's real context
(so the idle timer, fencing and the event log behave as in task mode).
``stream`` iterates here and reports each item as progress; ``run_sync`` and
``run_process`` run here.

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
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from .._core._context import TurnContext
from .._errors import InvalidPayload, LanewayError
from .._types import Event
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
        ctx = WorkerContext(_WorkerHost(self, msg))
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

    __slots__ = ()

    def __repr__(self) -> str:
        return (
            f"<WorkerContext job={self.job_id} session={self.session!r} "
            f"attempt={self.attempt} pid={os.getpid()}>"
        )


class _WorkerHost:
    """A turn's ``TurnHost`` in a worker: requests travel to the parent, which
    applies them through the attempt's real context (idle timer, fencing, log)."""

    __slots__ = (
        "_idle",
        "_server",
        "handler",
        "job_id",
        "kill_grace",
        "max_event_bytes",
        "number",
        "payload",
        "session",
    )

    #: A worker is killed, never told: while this code runs, it is not cancelled.
    cancelled = False
    reason = None
    #: Children stay in the worker's session (the parent kills it whole), each in its own group.
    own_session = False

    def __init__(self, server: _Server, msg: dict[str, Any]) -> None:
        job = msg["job"]
        self._server = server
        self._idle: float | None = msg["idle"]
        self.kill_grace: float = msg["kill_grace"]
        self.max_event_bytes: int = msg["max_event_bytes"]
        self.job_id: str = job["id"]
        self.session: str = job["session"]
        self.handler: str = job["handler"]
        self.number: int = job["attempt"]
        self.payload: Any = job["payload"]

    @property
    def idle_limit(self) -> float | None:
        return self._idle

    def set_idle_limit(self, idle: float | None) -> None:
        self._idle = idle
        self._server.send(encode({"op": "idle", "value": idle}))

    def progress(self) -> None:
        self._server.send(_PROGRESS)

    async def emit_event(self, kind: str, data: Any) -> Event | None:
        raw = await self._server.request({"op": "emit", "kind": kind, "data": data}, "event data")
        return event_from_wire(raw)

    async def read_history(self, limit: int, before: int | None) -> list[Event]:
        msg = {"op": "history", "limit": limit, "before": before}
        raw = await self._server.request(msg, "history request")
        return [e for e in map(event_from_wire, raw) if e is not None]

    def run_in_thread(self, call: Callable[[], T]) -> Awaitable[T]:
        """A thread of this worker (it dies with the worker)."""
        return asyncio.get_running_loop().run_in_executor(None, call)

    def adopt(self, proc: asyncio.subprocess.Process) -> None:
        """Nothing to track: the parent kills this worker's whole session."""

    def release(self, proc: asyncio.subprocess.Process) -> None:
        """See ``adopt``."""
