"""The PostgreSQL store's writer: every write of one node, in call order, group-committed.

Callers enqueue ``(op, args)`` and get a future; one task owns the write
connection, takes whatever has queued up (up to ``batch_max``) and applies it
in one transaction, then resolves the futures. While one transaction
commits, the next batch accumulates.

Deadlock freedom across nodes: a batch first locks the ``sessions`` rows of
every session it will touch, in sorted order, in one statement; after that its
writes only take locks that no other batch can hold without first holding one
of those rows (or that claims take with ``SKIP LOCKED``, which never waits).
A batch that still fails on a deadlock or serialization error is retried
whole; one that fails otherwise is replayed one write per transaction, so one
bad write fails alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg

from .._errors import StoreError
from ._postgres_writes import BULK, Batch

__all__ = ["Op", "Writer"]

log = logging.getLogger("laneway.store")

_RETRIES = 5
_CACHE_MAX = 100_000
_NOTIFY_MAX = 7_000  # bytes; PostgreSQL's payload limit is 8,000
_STOP: Any = object()
# The connection is gone (or the server is going away): the commit's outcome is unknown.
_LOST = (
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.InterfaceError,
    asyncpg.OperatorInterventionError,
    asyncpg.PostgresConnectionError,
    OSError,
)
_CONFLICT = (asyncpg.DeadlockDetectedError, asyncpg.SerializationError)

# ON CONFLICT DO UPDATE locks every conflicting row, also those its WHERE leaves
# unchanged; skipping the no-op update spares a dead row version per session per batch.
_LOCK = (
    "INSERT INTO sessions (session, lim) SELECT s, $2 FROM unnest($1::text[]) AS s ORDER BY s"
    " ON CONFLICT (session) DO UPDATE SET lim = excluded.lim"
    " WHERE sessions.lim IS DISTINCT FROM excluded.lim"
)

OpFn = Callable[..., Awaitable[Any]]


class _Unavailable(StoreError):
    """No connection could be made: the batch fails at once, not write by write."""


@dataclass(slots=True)
class Op:
    fn: OpFn
    args: tuple[Any, ...]
    sessions: tuple[str, ...]
    job_id: str | None
    future: asyncio.Future[Any]


def notify_payload(batch: Batch) -> str:
    """``work`` and/or the sessions that got events (``*`` when too many to list)."""
    head = "work" if batch.runnable else "-"
    sessions = " ".join(sorted(batch.events))
    if len(sessions.encode()) > _NOTIFY_MAX:
        sessions = "*"
    return f"{head} {sessions}".rstrip()


async def _run_ops(conn: asyncpg.Connection, state: Batch, batch: list[Op]) -> list[Any]:
    """Every op, each session's in call order; answers in call order.

    Writes to different sessions commute, so the batch runs as *waves* (see
    ``_waves``), and within a wave the calls of one kind go to the server as one
    bulk statement (``BULK``) instead of one round trip each.
    """
    values: list[Any] = [None] * len(batch)
    for wave in _waves(batch):
        groups: dict[OpFn, list[int]] = {}
        for i in wave:
            groups.setdefault(batch[i].fn, []).append(i)
        for fn, members in groups.items():
            bulk = BULK.get(fn)
            if bulk is not None and len(members) > 1:
                got = await bulk.fn(conn, state, [batch[i].args for i in members])
                for i, value in zip(members, got, strict=True):
                    values[i] = value
                continue
            for i in members:
                values[i] = await fn(conn, state, *batch[i].args)
    return values


def _waves(batch: list[Op]) -> list[list[int]]:
    """Ops grouped so that each wave holds at most one kind of write per session.

    An op goes to the wave after its session's latest op, or into that same
    wave when both are the same bulk write that allows it (submits). An op that
    names no session (a claim, an unknown job) is a wave of its own that
    nothing later passes.
    """
    waves: list[list[int]] = []
    latest: dict[str, tuple[int, OpFn]] = {}
    floor = 0
    for i, op in enumerate(batch):
        if len(op.sessions) != 1:
            waves.append([i])
            floor = len(waves)
            continue
        session = op.sessions[0]
        wave = floor
        seen = latest.get(session)
        if seen is not None:
            bulk = BULK.get(op.fn)
            joins = seen[1] is op.fn and bulk is not None and bulk.same_session
            wave = max(floor, seen[0] if joins else seen[0] + 1)
        while len(waves) <= wave:
            waves.append([])
        waves[wave].append(i)
        latest[session] = (wave, op.fn)
    return waves


class Writer:
    """One task, one connection, every write in call order."""

    def __init__(
        self,
        conn: asyncpg.Connection,
        reconnect: Callable[[], Awaitable[asyncpg.Connection]],
        *,
        epoch: int,
        channel: str,
        batch_max: int,
        session_limit: int = 1,
    ) -> None:
        self.conn: asyncpg.Connection | None = conn
        self.epoch = epoch
        self.session_limit = session_limit
        self.transactions = 0
        self.writes = 0
        self._reconnect = reconnect
        self._channel = channel
        self._batch_max = batch_max
        self._queue: asyncio.Queue[Op] = asyncio.Queue()
        self._sessions: dict[str, str] = {}  # job id -> session; a job never changes session
        self._task: asyncio.Task[None] | None = None
        self.dead = False

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="laneway-pg-writer")

    async def stop(self) -> None:
        """Apply what is queued, then stop and close the connection."""
        task = self._task
        if task is not None and not task.done():
            self._queue.put_nowait(_STOP)
            await asyncio.shield(task)
        if self.conn is not None:
            with contextlib.suppress(*_LOST, asyncpg.PostgresError):
                await self.conn.close(timeout=5)
            self.conn = None

    def submit(
        self,
        fn: OpFn,
        args: tuple[Any, ...],
        *,
        sessions: tuple[str, ...] = (),
        job_id: str | None = None,
        new_job: tuple[str, str] | None = None,
    ) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self.dead:
            fut.set_exception(StoreError("the store is closed"))
            return fut
        if new_job is not None:
            if len(self._sessions) >= _CACHE_MAX:
                self._sessions.clear()
            self._sessions[new_job[0]] = new_job[1]
        self._queue.put_nowait(Op(fn, args, sessions, job_id, fut))
        return fut

    # -- the task ----------------------------------------------------------------

    async def _run(self) -> None:
        try:
            while await self._drain_once():
                pass
        finally:
            self.dead = True
            self._fail_pending(StoreError("the store is closed"))

    async def _drain_once(self) -> bool:
        first = await self._queue.get()
        if first is _STOP:
            return False
        batch, more = [first], True
        while len(batch) < self._batch_max and not self._queue.empty():
            item = self._queue.get_nowait()
            if item is _STOP:
                more = False
                break
            batch.append(item)
        results = await self._apply(batch)
        for op, (ok, value) in zip(batch, results, strict=True):
            if op.future.done():  # the caller cancelled it; the write happened anyway
                continue
            if ok:
                op.future.set_result(value)
            else:
                op.future.set_exception(value)
        return more

    def _fail_pending(self, err: StoreError) -> None:
        while not self._queue.empty():
            op = self._queue.get_nowait()
            if op is not _STOP and not op.future.done():
                op.future.set_exception(err)

    async def _apply(self, batch: list[Op]) -> list[tuple[bool, Any]]:
        """Commit ``batch`` in one transaction, or each write alone if that fails."""
        try:
            values = await self._committed(batch)
        except _Unavailable as exc:
            return [(False, exc)] * len(batch)
        except Exception as exc:
            if isinstance(exc, _LOST) or self.conn is None or self.conn.is_closed():
                await self._restore_connection()
                err = StoreError(f"the connection to PostgreSQL was lost (outcome unknown): {exc}")
                return [(False, err)] * len(batch)
            if len(batch) == 1:
                log.error(  # noqa: TRY400 - the cause is in the message; no traceback wanted
                    "store.write_failed: %s", exc, extra={"error": repr(exc)}
                )
                return [(False, StoreError(f"a write to the PostgreSQL store failed: {exc}"))]
            return [(await self._apply([op]))[0] for op in batch]
        self.transactions += 1
        self.writes += len(batch)
        return [(True, v) for v in values]

    async def _committed(self, batch: list[Op]) -> list[Any]:
        for tries in range(_RETRIES):
            try:
                return await self._transaction(batch)
            except _CONFLICT:
                if tries == _RETRIES - 1:
                    raise
                log.info("store.batch_retried: a lock conflict with another node")
        raise AssertionError("unreachable")

    async def _transaction(self, batch: list[Op]) -> list[Any]:
        conn = self.conn
        if conn is None or conn.is_closed():
            await self._restore_connection()
            conn = self.conn
            if conn is None:
                raise _Unavailable("no connection to PostgreSQL; the write was not made")
        state = Batch(self.epoch, self.session_limit)
        async with conn.transaction():
            await self._lock_sessions(conn, batch)
            values = await _run_ops(conn, state, batch)
            if state.events or state.runnable:
                await conn.execute("SELECT pg_notify($1, $2)", self._channel, notify_payload(state))
        return values

    async def _lock_sessions(self, conn: asyncpg.Connection, batch: list[Op]) -> None:
        sessions = {s for op in batch for s in op.sessions}
        unknown = [
            op.job_id for op in batch if op.job_id is not None and op.job_id not in self._sessions
        ]
        if unknown:
            rows = await conn.fetch("SELECT id, session FROM jobs WHERE id = ANY($1)", unknown)
            self._sessions.update((row[0], row[1]) for row in rows)
        for op in batch:
            if op.job_id is not None and op.job_id in self._sessions:
                op.sessions = (self._sessions[op.job_id],)
                sessions.add(op.sessions[0])
        if sessions:
            await conn.execute(_LOCK, sorted(sessions), self.session_limit)

    async def _restore_connection(self) -> None:
        old, self.conn = self.conn, None
        if old is not None:
            old.terminate()
        try:
            self.conn = await self._reconnect()
        except StoreError as exc:
            log.error("store.reconnect_failed: %s", exc)  # noqa: TRY400
