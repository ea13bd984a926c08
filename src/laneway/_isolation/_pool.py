"""The parent side of process isolation: a pool of worker processes.

A worker is booting, idle or busy, then killed or dead. Workers start on the
first isolated job; after any death (a limit, stop, cancel, a crash, a kill
from outside, recycling) a replacement starts at once, so the pool returns to
its size. The attempt task drives its worker: it sends the job, applies the
worker's ``progress``/``emit``/``history`` through the attempt's real
``TurnContext`` and returns the result. When the runtime cancels that task
(deadline, idle, stop, cancel, shutdown) the worker's process group is killed
there and then, and every other process of its session is swept up after it:
nothing a killed worker sends afterwards is read. A worker that dies on its
own ends the attempt with ``WorkerLost``, which the runtime counts as lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from collections import Counter, deque
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, cast

from .._core._context import TurnContext, TurnHost
from .._core._proc import signal_group
from .._errors import Closed, ConfigError, WorkerLost
from .._types import ProcessPool
from ._targets import importable_target
from ._wire import decode, encode, event_to_wire
from ._worker import main as worker_main
from ._worker import resolve

if TYPE_CHECKING:
    from multiprocessing.process import BaseProcess


__all__ = ["HandlerError", "ProcessRunner", "sweep_session"]

log = logging.getLogger("laneway.isolation")


class HandlerError(Exception):
    """An exception a handler raised in a worker; its class bears the original's name."""


_REMOTE_TYPES: dict[str, type[HandlerError]] = {}


def _remote_error(name: str, text: str) -> HandlerError:
    # The runtime names a failure after the exception's type: keep the original name.
    cls = _REMOTE_TYPES.get(name)
    if cls is None:
        cls = _REMOTE_TYPES[name] = type(name, (HandlerError,), {"__module__": __name__})
    return cls(text)


def _describe(code: int | None) -> str:
    if code is None:
        return "exit status unknown"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def sweep_session(sid: int, rounds: int = 3) -> int:
    """SIGKILL every live process of session ``sid`` (Linux /proc); how many were hit.

    A handler's subprocesses have their own process groups but stay in the
    worker's session, so this finds them after the worker is gone.
    """
    hit = 0
    for _ in range(rounds):
        found = 0
        try:
            entries = os.listdir("/proc")
        except OSError:
            return hit
        for entry in entries:
            if entry.isdigit() and _in_session(entry, sid):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(int(entry), signal.SIGKILL)
                    found += 1
        hit += found
        if not found:
            break
        time.sleep(0.01)  # let a process that was forking show its child
    return hit


def _in_session(pid: str, sid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    # Fields after the command (which may hold spaces): state ppid pgrp session ...
    fields = stat[stat.rfind(b")") + 2 :].split()
    return len(fields) > 3 and fields[0] != b"Z" and int(fields[3]) == sid


# What a worker imports from the standard library, loaded once in the fork
# server so that forked workers inherit it. Not laneway itself: on Python < 3.13
# the fork server ignores the parent's sys.path, so it could load another copy.
_PRELOAD = ("asyncio", "concurrent.futures", "ctypes", "json", "socket", "traceback")


def _mp_context(method: str) -> Any:  # a multiprocessing context (typeshed lacks .Process)
    import multiprocessing

    ctx = multiprocessing.get_context(method)
    if method == "forkserver":
        # Keep what others asked for; this has no effect once the server runs.
        from multiprocessing import forkserver

        current = getattr(getattr(forkserver, "_forkserver", None), "_preload_modules", None)
        preload = list(current) if isinstance(current, list) else ["__main__"]
        ctx.set_forkserver_preload([*preload, *(m for m in _PRELOAD if m not in preload)])
    return ctx


async def _request(ctx: TurnContext, op: str, msg: dict[str, Any]) -> Any:
    """Apply a worker's request through the attempt's real context."""
    if op == "emit":
        return event_to_wire(await ctx.emit(msg["kind"], msg["data"]))
    if op == "history":
        events = await ctx.history(msg["limit"], before=msg.get("before"))
        return [event_to_wire(e) for e in events]
    raise ValueError(f"unknown request {op!r}")


class _Conn(asyncio.Protocol):
    """Messages from one worker, queued for the task that drives its job."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.inbox: deque[dict[str, Any]] = deque()
        self.closed = False
        self._buf = bytearray()
        self._scanned = 0
        self._waiter: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        start, pos = 0, self._scanned
        try:
            while (end := buf.find(b"\n", pos)) >= 0:
                self.inbox.append(decode(buf[start:end]))
                start = pos = end + 1
        except ValueError:
            log.exception("worker.garbled: a worker sent a malformed message")
            self.abort()
        del buf[:start]
        self._scanned = len(buf)
        self._wake()

    def eof_received(self) -> bool:
        self.close()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.close()

    def close(self) -> None:
        self.closed = True
        self._wake()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
        self.close()

    def send(self, msg: dict[str, Any]) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(encode(msg))

    async def get(self) -> dict[str, Any] | None:
        """The next message; None once the worker is gone and nothing is left."""
        while not self.inbox:
            if self.closed:
                return None
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        return self.inbox.popleft()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class _Worker:
    __slots__ = ("busy", "conn", "dead", "jobs", "killed", "pid", "process", "ready")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.process: BaseProcess | None = None
        self.pid = 0
        self.conn = _Conn()
        self.ready = False
        self.busy = False
        self.killed = False
        self.jobs = 0
        self.dead: asyncio.Future[int | None] = loop.create_future()  # exit code, once reaped

    @property
    def usable(self) -> bool:
        return not self.killed and not self.conn.closed


class ProcessRunner:
    """Runs the turns of ``isolation="process"`` handlers in a worker pool."""

    def __init__(self, config: ProcessPool) -> None:
        self.config = config
        self.size = config.workers
        self.stats: Counter[str] = Counter()  # started, cancelled, lost, died, recycled, ...
        self._targets: dict[str, tuple[list[str], Callable[..., Any]]] = {}
        self._verified: set[str] = set()
        self._workers: set[_Worker] = set()  # booting, idle or busy
        self._unreaped: set[_Worker] = set()
        self._idle: deque[_Worker] = deque()
        self._waiters: deque[asyncio.Future[_Worker]] = deque()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._mp: Any = None
        self._thread: ThreadPoolExecutor | None = None
        self._used = False
        self._closed = False

    @property
    def pids(self) -> list[int]:
        """Process ids of the workers that are up (idle or busy)."""
        return sorted(w.pid for w in self._workers if w.ready and w.usable)

    def register(self, name: str, fn: Callable[..., Any]) -> None:
        """Accept ``fn`` if a worker can import it (else ``ConfigError``)."""
        module, qualname = importable_target(name, fn)
        self._targets[name] = ([module, qualname], fn)

    # -- running a turn ----------------------------------------------------------

    async def run(self, turn: TurnHost, ctx: TurnContext) -> Any:
        """Run the attempt in a worker; the worker dies if this is cancelled."""
        if self._closed:
            raise Closed("the process pool is closed")
        target = self._target(turn.handler)
        worker = await self._acquire()
        try:
            done = await self._drive(worker, turn, ctx, target)
        except BaseException as exc:
            self._kill(worker, "cancelled" if isinstance(exc, asyncio.CancelledError) else "error")
            raise
        self._release(worker, done)
        err = done.get("err")
        if err is None:
            return done.get("ok")
        log.debug("worker.handler_error: %s", err[1], extra={"traceback": err[2]})
        raise _remote_error(err[0], err[1])

    def _target(self, name: str) -> list[str]:
        target, fn = self._targets[name]
        if name not in self._verified:
            # Registration may run while the handler's module is still executing;
            # by the first turn the name must be bound to the registered function.
            try:
                found = resolve(*target)
            except Exception:
                found = None
            if found is not fn:
                raise ConfigError(
                    f"handler {name!r}: {target[0]}.{target[1]} is not the registered "
                    "function, so a worker would run something else"
                )
            self._verified.add(name)
        return target

    async def _drive(
        self, w: _Worker, turn: TurnHost, ctx: TurnContext, target: list[str]
    ) -> dict[str, Any]:
        w.conn.send(
            {
                "op": "run",
                "target": target,
                "idle": turn.idle_limit,
                "kill_grace": turn.kill_grace,
                "max_event_bytes": turn.max_event_bytes,
                "job": {
                    "id": turn.job_id,
                    "session": turn.session,
                    "handler": turn.handler,
                    "attempt": turn.number,
                    "payload": turn.payload,
                },
            }
        )
        while True:
            msg = await w.conn.get()
            if msg is None:
                raise await self._lost(w, turn.job_id)
            op = msg["op"]
            if op == "progress":
                turn.progress()
            elif op == "done":
                return msg
            elif op == "idle":
                turn.set_idle_limit(msg["value"])
            else:
                await self._answer(w, ctx, msg)

    async def _answer(self, w: _Worker, ctx: TurnContext, msg: dict[str, Any]) -> None:
        rid, op = msg.get("rid"), msg["op"]
        try:
            ok = await _request(ctx, op, msg)
        except Exception as exc:
            w.conn.send({"op": "reply", "rid": rid, "err": [type(exc).__name__, str(exc)]})
        else:
            w.conn.send({"op": "reply", "rid": rid, "ok": ok})

    async def _lost(self, w: _Worker, job_id: str) -> WorkerLost:
        self._kill(w, "lost")
        code = None
        with contextlib.suppress(TimeoutError):
            code = await asyncio.wait_for(asyncio.shield(w.dead), 2.0)
        why = _describe(code)
        log.warning(
            "worker.lost: worker %d died running %s (%s)",
            w.pid,
            job_id,
            why,
            extra={"pid": w.pid, "job_id": job_id, "exitcode": code},
        )
        return WorkerLost(f"worker process {w.pid} died ({why})")

    # -- the pool ------------------------------------------------------------------

    async def _acquire(self) -> _Worker:
        while self._idle:
            w = self._idle.popleft()
            if w.usable:
                w.busy = True
                return w
            self._kill(w, "lost")
        self._fill()
        fut: asyncio.Future[_Worker] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            w = await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self._offer(fut.result())
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(fut)
            raise
        w.busy = True
        return w

    def _release(self, w: _Worker, done: dict[str, Any]) -> None:
        w.busy = False
        w.jobs += 1
        cfg = self.config
        rss = done.get("rss")
        if not w.usable:
            self._kill(w, "lost")
        elif cfg.max_jobs is not None and w.jobs >= cfg.max_jobs:
            self._recycle(w, f"{w.jobs} jobs done")
        elif cfg.max_rss_mb is not None and rss is not None and rss > cfg.max_rss_mb:
            self._recycle(w, f"resident memory {rss:.0f} MB > {cfg.max_rss_mb:g} MB")
        else:
            self._offer(w)

    def _recycle(self, w: _Worker, why: str) -> None:
        log.info("worker.recycled: worker %d (%s)", w.pid, why, extra={"pid": w.pid})
        self._kill(w, "recycled")

    def _offer(self, w: _Worker) -> None:
        if not w.usable:
            return
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(w)
                return
        self._idle.append(w)

    def _fill(self) -> None:
        """Start workers until the pool has its size again."""
        if self._closed:
            return
        self._used = True
        while len(self._workers) < self.size:
            w = _Worker(asyncio.get_running_loop())
            self._workers.add(w)
            self._spawn(self._boot(w))

    async def _boot(self, w: _Worker) -> None:
        try:
            await self._start_process(w)
            msg = await asyncio.wait_for(w.conn.get(), self.config.start_timeout)
        except Exception as exc:
            self._boot_failed(w, exc)
            return
        if msg is None or msg.get("op") != "ready":
            self._boot_failed(w, WorkerLost(f"worker process {w.pid} ended before it was ready"))
            return
        w.ready = True
        self.stats["started"] += 1
        self._offer(w)

    def _boot_failed(self, w: _Worker, exc: BaseException) -> None:
        if w.killed:  # the pool closed under it
            return
        self.stats["failed_start"] += 1
        log.error("worker.start_failed: %s", exc, extra={"error": repr(exc)})
        self._kill(w, "failed", refill=False)  # no retry loop: the next job tries again
        self._fail_one(WorkerLost(f"a worker process failed to start: {exc}"))

    async def _start_process(self, w: _Worker) -> None:
        loop = asyncio.get_running_loop()
        if self._mp is None:
            self._mp = _mp_context(self.config.method)
        parent, child = socket.socketpair()
        try:
            process: BaseProcess = self._mp.Process(
                target=worker_main, args=(child,), name="laneway-worker", daemon=True
            )
            # Starting blocks for a fork (and the first time for the fork server):
            # not on the loop. One thread starts and reaps, so those never race.
            await loop.run_in_executor(self._executor(), process.start)
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()
        w.process, w.pid = process, cast(int, process.pid)
        self._unreaped.add(w)
        loop.add_reader(process.sentinel, self._on_exit, w)
        await loop.create_unix_connection(lambda: w.conn, sock=parent)
        if w.killed:  # the pool closed while it was starting
            self._signal(w)

    def _on_exit(self, w: _Worker) -> None:
        """The worker process ended (its sentinel is readable)."""
        assert w.process is not None
        asyncio.get_running_loop().remove_reader(w.process.sentinel)
        w.conn.close()
        self._spawn(self._reap(w))
        if not w.killed and w.ready and not w.busy:
            # Died while idle: nobody else will notice. (A busy one's turn sees the
            # connection close and ends as lost; a booting one fails its boot.)
            log.warning("worker.died: idle worker %d ended on its own", w.pid)
            self._kill(w, "died")

    async def _reap(self, w: _Worker) -> None:
        process = w.process
        assert process is not None
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor(), process.join)
            code = process.exitcode
            process.close()
        finally:
            self._unreaped.discard(w)
        if not w.dead.done():
            w.dead.set_result(code)

    def _kill(self, w: _Worker, why: str, *, refill: bool = True) -> None:
        """Kill the worker, its group and its session; start a replacement."""
        if w.killed:
            return
        w.killed = True
        self.stats[why] += 1
        self._workers.discard(w)
        with contextlib.suppress(ValueError):
            self._idle.remove(w)
        if w.pid:
            self._signal(w)
        w.conn.abort()
        if refill and self._used:
            self._fill()

    def _signal(self, w: _Worker) -> None:
        signal_group(w.pid, signal.SIGKILL)
        if not w.ready and not w.dead.done():
            # It may not have made its own group yet.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(w.pid, signal.SIGKILL)
        self._spawn(asyncio.to_thread(sweep_session, w.pid))

    def _fail_one(self, exc: BaseException) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_exception(exc)
                return

    def _executor(self) -> ThreadPoolExecutor:
        if self._thread is None:
            self._thread = ThreadPoolExecutor(1, thread_name_prefix="laneway-workers")
        return self._thread

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task: asyncio.Task[Any] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Kill every worker and wait until they are reaped."""
        if self._closed:
            return
        self._closed = True
        for w in list(self._workers):
            self._kill(w, "closed", refill=False)
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_exception(Closed("the process pool closed"))
        deadline = asyncio.get_running_loop().time() + 10.0
        while self._tasks or self._unreaped:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                log.error("worker.close_timeout: workers not reaped within 10s")
                break
            waits: list[asyncio.Future[Any]] = [*self._tasks, *(w.dead for w in self._unreaped)]
            await asyncio.wait(waits, timeout=left)
        if self._thread is not None:
            self._thread.shutdown(wait=False)
