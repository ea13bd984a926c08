"""The SQLite store's writer thread: every write, in call order, group-committed.

The event loop enqueues ``(op, args, future)``; one thread owns the write
connection, drains whatever has queued up (up to ``batch_max``), applies it
in one transaction and resolves the batch's futures with a single
``call_soon_threadsafe``. While one transaction commits the next batch
accumulates, so durability costs throughput per transaction, not per write.

Decisions (fencing, idempotency, ``seq``) are made here, against the
database as it stands after every earlier write: the same answers the memory
store gives at call time, because writes are applied strictly in call order.
If a batch fails, it is rolled back and replayed one write per transaction,
so one bad write fails alone and the others still commit.
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any

from .._errors import StoreError
from .._types import Event, JobInfo, JobState
from ._memory import job_event_data

__all__ = ["JOB_COLUMNS", "Writer", "job_info", "store_error"]

log = logging.getLogger("laneway.store")

JOB_COLUMNS = (
    "id, session, handler, state, attempts, error, result, reason, payload, priority, lost, "
    "idempotency_key, created_at, updated_at, output"
)
_TERMINAL = ("succeeded", "failed", "timed_out", "cancelled", "dead")
_REQUEUEABLE = ("failed", "timed_out", "dead")
_SEQ_CACHE_MAX = 100_000
_STOP = object()

_encode = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode
_decode = json.JSONDecoder().decode

Result = tuple[bool, Any]


def job_info(row: tuple[Any, ...]) -> JobInfo:
    """A ``JobInfo`` from a row selected with ``JOB_COLUMNS``."""
    return JobInfo(
        id=row[0],
        session=row[1],
        handler=row[2],
        state=JobState(row[3]),
        attempts=row[4],
        error=row[5],
        result=_decode(row[6]),
        reason=row[7],
        payload=_decode(row[8]),
        priority=row[9],
        lost=row[10],
        idempotency_key=row[11],
        created_at=row[12],
        updated_at=row[13],
        output=bool(row[14]),
    )


def store_error(exc: BaseException, what: str) -> StoreError:
    """A ``StoreError`` that says what failed and why, in words a user can act on."""
    text = str(exc)
    if isinstance(exc, sqlite3.Error):
        if "disk is full" in text or "disk I/O" in text:
            text += " (is the disk full?)"
        elif "readonly" in text or "read-only" in text:
            text += " (is the path read-only?)"
        elif "not a database" in text or "malformed" in text:
            text += " (the file is corrupt or not a laneway database)"
    return StoreError(f"{what}: {text}")


class Writer:
    """One thread, one connection, every write in call order."""

    def __init__(
        self, conn: sqlite3.Connection, loop: asyncio.AbstractEventLoop, batch_max: int
    ) -> None:
        self.conn = conn
        self.loop = loop
        self.batch_max = batch_max
        self.queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.transactions = 0
        self.writes = 0
        self._seqs: dict[str, int] = {}
        self._thread = threading.Thread(target=self._run, name="laneway-sqlite-writer", daemon=True)

    # -- loop side ---------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def submit(self, op: Callable[..., Any], args: tuple[Any, ...]) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = self.loop.create_future()
        self.queue.put((op, args, fut))
        return fut

    def stop(self) -> None:
        self.queue.put(_STOP)

    def join(self) -> None:
        self._thread.join()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @staticmethod
    def _resolve(batch: list[tuple[Any, ...]], results: list[Result]) -> None:
        for (_op, _args, fut), (ok, value) in zip(batch, results, strict=True):
            if fut.done():  # the caller cancelled it; the write happened anyway
                continue
            if ok:
                fut.set_result(value)
            else:
                fut.set_exception(value)

    # -- writer thread -----------------------------------------------------------

    def _run(self) -> None:
        try:
            while self._drain_once():
                pass
        finally:
            self._fail_pending()
            self.conn.close()

    def _drain_once(self) -> bool:
        item = self.queue.get()
        if item is _STOP:
            return False
        batch = [item]
        more = True
        while len(batch) < self.batch_max:
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                more = False
                break
            batch.append(item)
        try:
            results = self._apply(batch)
        except BaseException as exc:  # never leave a caller waiting on a dead thread
            err = store_error(exc, "the SQLite writer failed")
            results = [(False, err)] * len(batch)
            more = False
        try:
            self.loop.call_soon_threadsafe(self._resolve, batch, results)
        except RuntimeError:  # the loop is closed; nobody is waiting any more
            return False
        return more

    def _fail_pending(self) -> None:
        left: list[tuple[Any, ...]] = []
        while True:
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                break
            if item is not _STOP:
                left.append(item)
        if left:
            err = StoreError("the store is closed")
            results: list[Result] = [(False, err)] * len(left)
            try:
                self.loop.call_soon_threadsafe(self._resolve, left, results)
            except RuntimeError:
                pass

    def _apply(self, batch: list[tuple[Any, ...]]) -> list[Result]:
        """Apply ``batch`` in one transaction; on failure, one write per transaction."""
        conn = self.conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            values = [op(self, *args) for op, args, _fut in batch]
            conn.execute("COMMIT")
        except Exception as exc:
            self._rollback()
            if len(batch) == 1:
                log.error("store.write_failed: %s", exc, extra={"error": repr(exc)})
                return [(False, store_error(exc, "a write to the SQLite store failed"))]
            return [self._apply([item])[0] for item in batch]
        self.transactions += 1
        self.writes += len(batch)
        return [(True, v) for v in values]

    def _rollback(self) -> None:
        self._seqs.clear()  # counters may include rolled-back events
        if self.conn.in_transaction:
            try:
                self.conn.execute("ROLLBACK")
            except sqlite3.Error:
                log.exception("store.rollback_failed")

    # -- helpers (writer thread) ---------------------------------------------------

    def _next_seq(self, session: str) -> int:
        seq = self._seqs.get(session)
        if seq is None:
            if len(self._seqs) >= _SEQ_CACHE_MAX:
                self._seqs.clear()
            conn = self.conn
            top = conn.execute(
                "SELECT max(seq) FROM events WHERE session = ?", (session,)
            ).fetchone()[0]
            floor = conn.execute(
                "SELECT seq_floor FROM sessions WHERE session = ?", (session,)
            ).fetchone()
            seq = max(top or 0, floor[0] if floor else 0)
        seq += 1
        self._seqs[session] = seq
        return seq

    def _event(
        self, session: str, job_id: str | None, kind: str, data: Any, encoded: str | None = None
    ) -> Event:
        if encoded is None:
            encoded = _encode(data)
        seq = self._next_seq(session)
        at = time.time()
        self.conn.execute(
            "INSERT INTO events (session, seq, job_id, kind, data, at) VALUES (?, ?, ?, ?, ?, ?)",
            (session, seq, job_id, kind, encoded, at),
        )
        return Event(seq, session, job_id, kind, data, at)

    def _row(self, job_id: str | None) -> tuple[Any, ...] | None:
        """``(num, session, state, attempts, output)`` of a job."""
        if job_id is None:
            return None
        row: tuple[Any, ...] | None = self.conn.execute(
            "SELECT num, session, state, attempts, output FROM jobs WHERE id = ?", (job_id,)
        ).fetchone()
        return row

    def _running(self, job_id: str | None, attempt: int) -> tuple[Any, ...] | None:
        row = self._row(job_id)
        if row is None or row[2] != "running" or row[3] != attempt:
            return None
        return row

    # -- the writes (writer thread; each returns what its future resolves to) ------

    def add_job(
        self,
        job_id: str,
        session: str,
        handler: str,
        payload: Any,
        priority: int,
        key: str | None,
    ) -> tuple[JobInfo, Event | None]:
        encoded = _encode(payload)
        conn = self.conn
        if key is not None:
            row = conn.execute(
                f"SELECT {JOB_COLUMNS} FROM jobs WHERE session = ? AND idempotency_key = ?",
                (session, key),
            ).fetchone()
            if row is not None:
                return job_info(row), None
        now = time.time()
        conn.execute(
            "INSERT INTO jobs (id, session, handler, payload, priority, idempotency_key, state,"
            " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, 'queued', ?, ?)",
            (job_id, session, handler, encoded, priority, key, now, now),
        )
        data = {"handler": handler, "payload": payload}
        event = self._event(
            session, job_id, "job.queued", data, f'{{"handler":{_encode(handler)},"payload":{encoded}}}'
        )
        info = JobInfo(
            id=job_id,
            session=session,
            handler=handler,
            state=JobState.QUEUED,
            attempts=0,
            error=None,
            result=None,
            reason=None,
            payload=payload,
            priority=priority,
            lost=0,
            idempotency_key=key,
            created_at=now,
            updated_at=now,
        )
        return info, event

    def start_attempt(self, job_id: str, attempt: int) -> Event | None:
        row = self._row(job_id)
        if row is None or row[2] != "queued" or attempt != row[3] + 1:
            return None
        self.conn.execute(
            "UPDATE jobs SET state = 'running', attempts = ?, output = 0, updated_at = ?"
            " WHERE num = ?",
            (attempt, time.time(), row[0]),
        )
        return self._event(row[1], job_id, "job.started", {"attempt": attempt})

    def append_event(
        self, session: str, job_id: str | None, kind: str, data: Any, attempt: int | None
    ) -> Event | None:
        encoded = _encode(data)
        if attempt is not None:
            row = self._running(job_id, attempt)
            if row is None:
                return None
            if not row[4]:
                self.conn.execute("UPDATE jobs SET output = 1 WHERE num = ?", (row[0],))
        return self._event(session, job_id, kind, data, encoded)

    def retry(
        self, job_id: str, attempt: int, error: str | None, reason: str, lost: bool, delay: float
    ) -> Event | None:
        row = self._running(job_id, attempt)
        if row is None:
            return None
        self.conn.execute(
            "UPDATE jobs SET state = 'queued', error = ?, reason = ?, lost = lost + ?,"
            " updated_at = ? WHERE num = ?",
            (error, reason, int(lost), time.time(), row[0]),
        )
        data = {"attempt": attempt, "reason": reason, "error": error, "delay": delay}
        return self._event(row[1], job_id, "job.retry", data)

    def finish(
        self,
        job_id: str,
        attempt: int,
        state: JobState,
        result: Any,
        error: str | None,
        reason: str | None,
        lost: bool,
    ) -> Event | None:
        encoded = _encode(result)
        row = self._row(job_id)
        if row is None or row[2] in _TERMINAL or row[3] != attempt:
            return None
        self.conn.execute(
            "UPDATE jobs SET state = ?, result = ?, error = ?, reason = ?, lost = lost + ?,"
            " updated_at = ? WHERE num = ?",
            (state.value, encoded, error, reason, int(lost), time.time(), row[0]),
        )
        data = job_event_data(state, attempts=attempt, result=result, error=error, reason=reason)
        return self._event(row[1], job_id, f"job.{state.value}", data)

    def requeue(self, job_id: str) -> tuple[JobInfo, Event] | None:
        conn = self.conn
        row = conn.execute(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None or row[3] not in _REQUEUEABLE:
            return None
        conn.execute(
            "UPDATE jobs SET state = 'queued', attempts = 0, lost = 0, result = 'null',"
            " error = NULL, reason = NULL, updated_at = ? WHERE id = ?",
            (time.time(), job_id),
        )
        info = job_info(
            conn.execute(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        )
        data = {"handler": info.handler, "payload": info.payload, "requeued_from": row[3]}
        return info, self._event(info.session, job_id, "job.queued", data)

    # -- upkeep (writer thread) ---------------------------------------------------

    def heartbeat(self, pid: int, host: str, since: float) -> None:
        now = time.time()
        self.conn.execute(
            "INSERT INTO owner (id, pid, host, since, heartbeat_at) VALUES (1, ?, ?, ?, ?)"
            " ON CONFLICT (id) DO UPDATE SET pid = excluded.pid, host = excluded.host,"
            " since = excluded.since, heartbeat_at = excluded.heartbeat_at",
            (pid, host, since, now),
        )

    def prune_jobs(self, before: float, limit: int) -> int:
        """Delete up to ``limit`` jobs that finished before ``before``."""
        cur = self.conn.execute(
            "DELETE FROM jobs WHERE num IN (SELECT num FROM jobs WHERE updated_at < ?"
            " AND state IN ('succeeded', 'failed', 'timed_out', 'cancelled', 'dead') LIMIT ?)",
            (before, limit),
        )
        return cur.rowcount

    def prune_events(self, before: float, limit: int) -> int:
        """Delete up to ``limit`` of the oldest events written before ``before``.

        The per-session ``seq_floor`` remembers the highest seq removed, so a
        session's seq keeps rising after its old events are gone.
        """
        conn = self.conn
        rows = conn.execute(
            "SELECT id, session, seq, at FROM events ORDER BY id LIMIT ?", (limit,)
        ).fetchall()
        doomed = []
        for row in rows:
            if row[3] >= before:
                break
            doomed.append(row)
        if not doomed:
            return 0
        floors: dict[str, int] = {}
        for _id, session, seq, _at in doomed:
            floors[session] = max(seq, floors.get(session, 0))
        conn.executemany(
            "INSERT INTO sessions (session, seq_floor) VALUES (?, ?) ON CONFLICT (session)"
            " DO UPDATE SET seq_floor = max(seq_floor, excluded.seq_floor)",
            floors.items(),
        )
        conn.execute("DELETE FROM events WHERE id <= ?", (doomed[-1][0],))
        return len(doomed)
