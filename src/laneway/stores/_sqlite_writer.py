"""The SQLite store's writer thread: every write, in call order, group-committed.

The event loop enqueues ``(op, args, future)``; one thread owns the write
connection, drains whatever has queued up (up to ``batch_max``), applies it
in one transaction and resolves the batch's futures with a single
``call_soon_threadsafe``. While one transaction commits the next batch
accumulates, so durability costs throughput per transaction, not per write.

Decisions (fencing by the rulebook in ``_rules``, idempotency, ``seq``) are
made here, against the database as it stands after every earlier write: the
same answers the memory store gives at call time, because writes are applied
strictly in call order. Values arrive already encoded (``_codec``, on the
loop, where a bad value is refused at the call), so this thread only binds text.
If a batch fails, it is rolled back and replayed one write per transaction,
so one bad write fails alone and the others still commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from .._codec import decode as _decode
from .._errors import StoreError
from .._types import Event, JobInfo, JobState
from . import _rules as rules

__all__ = ["JOB_COLUMNS", "Writer", "job_info", "store_error"]

log = logging.getLogger("laneway.store")

JOB_COLUMNS = (
    "id, session, handler, state, attempts, error, result, reason, payload, priority, lost, "
    "idempotency_key, created_at, updated_at, output"
)
_SEQ_CACHE_MAX = 100_000
_STOP = object()

_json_encode = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode
_encode_str: Callable[[str], str] = json.encoder.encode_basestring


def _encode(value: Any) -> str:
    """laneway's own fields (strings, numbers); user values arrive encoded by ``_codec``."""
    if value is None:
        return "null"
    if type(value) is str:
        return _encode_str(value)
    return _json_encode(value)


def _terminal_data(
    state: JobState, attempt: int, result: str, error: str | None, reason: str | None
) -> str:
    return (
        f'{{"state":"{state.value}","reason":{_encode(reason)},"error":{_encode(error)},'
        f'"result":{result},"attempts":{attempt}}}'
    )


Result = tuple[bool, Any]


_STATES = {state.value: state for state in JobState}


def _by_num(row: tuple[Any, ...]) -> int:
    return int(row[15])


def job_info(row: tuple[Any, ...]) -> JobInfo:
    """A ``JobInfo`` from a row selected with ``JOB_COLUMNS``."""
    return JobInfo(
        id=row[0],
        session=row[1],
        handler=row[2],
        state=_STATES[row[3]],
        attempts=row[4],
        error=row[5],
        result=None if row[6] == "null" else _decode(row[6]),
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


# Bulk statements: one statement per chunk of rows rather than one per row,
# because every statement step releases and re-takes the GIL, and re-taking it
# from a busy event loop costs far more than the step itself.
_JOB_FIELDS = (
    "num, id, session, handler, payload, priority, idempotency_key, state,"
    " attempts, lost, output, result, error, reason, created_at, updated_at"
)
_UPDATE_SET = (
    "state = v.column2, attempts = v.column3, lost = v.column4, output = v.column5,"
    " result = v.column6, error = v.column7, reason = v.column8, updated_at = v.column9"
)
_BULK = {
    "job": (f"INSERT INTO jobs ({_JOB_FIELDS}) VALUES ", 16, ""),
    "update": (
        "UPDATE jobs SET " + _UPDATE_SET + " FROM (VALUES ",
        9,
        ") AS v WHERE jobs.num = v.column1",
    ),
    "event": ("INSERT INTO events (session, seq, job_id, kind, data, at) VALUES ", 6, ""),
}
_CHUNKS = (512, 128, 32, 8, 1)


@functools.cache
def _bulk_sql(kind: str, rows: int) -> str:
    head, width, tail = _BULK[kind]
    one = "(" + ", ".join("?" * width) + ")"
    return head + ", ".join([one] * rows) + tail


def _bulk(conn: sqlite3.Connection, kind: str, rows: list[tuple[Any, ...]]) -> None:
    """Write ``rows`` with as few statements as possible (chunk sizes from ``_CHUNKS``)."""
    at = 0
    left = len(rows)
    for size in _CHUNKS:
        while left >= size:
            chunk = rows[at : at + size]
            conn.execute(_bulk_sql(kind, size), [v for row in chunk for v in row])
            at += size
            left -= size


class _Live:
    """The writer's copy of a job it may still change (queued, running, or changed in
    the current batch): decisions are made on it and it is written at commit."""

    __slots__ = (
        "attempts",
        "created_at",
        "error",
        "handler",
        "id",
        "key",
        "lost",
        "new",
        "num",
        "output",
        "payload",
        "priority",
        "reason",
        "result",
        "session",
        "state",
        "updated_at",
    )

    def __init__(
        self,
        num: int,
        job_id: str,
        session: str,
        state: str,
        attempts: int,
        lost: int,
        output: int,
        result: str,
        error: str | None,
        reason: str | None,
        now: float,
    ) -> None:
        self.num = num
        self.id = job_id
        self.session = session
        self.state = state
        self.attempts = attempts
        self.lost = lost
        self.output = output
        self.result = result
        self.error = error
        self.reason = reason
        self.created_at = self.updated_at = now
        self.new = False
        self.handler = ""
        self.payload = "null"
        self.priority = 0
        self.key: str | None = None

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> _Live:
        """From ``JOB_COLUMNS, num``."""
        rec = cls(
            row[15],
            row[0],
            row[1],
            row[3],
            row[4],
            row[10],
            row[14],
            row[6],
            row[5],
            row[7],
            row[13],
        )
        rec.created_at = row[12]
        rec.handler, rec.payload, rec.priority, rec.key = row[2], row[8], row[9], row[11]
        return rec

    def insert_row(self) -> tuple[Any, ...]:
        return (
            self.num,
            self.id,
            self.session,
            self.handler,
            self.payload,
            self.priority,
            self.key,
            self.state,
            self.attempts,
            self.lost,
            self.output,
            self.result,
            self.error,
            self.reason,
            self.created_at,
            self.updated_at,
        )

    def update_row(self) -> tuple[Any, ...]:
        return (
            self.num,
            self.state,
            self.attempts,
            self.lost,
            self.output,
            self.result,
            self.error,
            self.reason,
            self.updated_at,
        )


def _nothing(conn: sqlite3.Connection) -> None:
    pass


class Writer:
    """One thread, one connection, every write in call order."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        loop: asyncio.AbstractEventLoop,
        batch_max: int,
        after_commit: Callable[[sqlite3.Connection], None] | None = None,
    ) -> None:
        self.conn = conn
        self.loop = loop
        self.batch_max = batch_max
        self._after_commit = after_commit or _nothing
        self.queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.transactions = 0
        self.writes = 0
        self._seqs: dict[str, int] = {}
        self._live: dict[str, _Live] = {}
        self._dirty: dict[str, _Live] = {}
        self._events: list[tuple[Any, ...]] = []
        self._num = 0
        self.dead = False
        self._gate = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="laneway-sqlite-writer", daemon=True)

    # -- loop side ---------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def submit(self, op: Callable[..., Any], args: tuple[Any, ...]) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = self.loop.create_future()
        with self._gate:
            if self.dead:
                fut.set_exception(StoreError("the store's writer has stopped"))
            else:
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
            with self._gate:
                self.dead = True
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
            with contextlib.suppress(RuntimeError):
                self.loop.call_soon_threadsafe(self._resolve, left, results)

    def _apply(self, batch: list[tuple[Any, ...]]) -> list[Result]:
        """Apply ``batch`` in one transaction; on failure, one write per transaction."""
        conn = self.conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            if len(self._seqs) >= _SEQ_CACHE_MAX:
                self._seqs.clear()
            values = [op(self, *args) for op, args, _fut in batch]
            self._flush()
            conn.execute("COMMIT")
        except Exception as exc:
            self._rollback()
            if len(batch) == 1:
                log.error(  # noqa: TRY400 - the cause is in the message; no traceback wanted
                    "store.write_failed: %s", exc, extra={"error": repr(exc)}
                )
                return [(False, store_error(exc, "a write to the SQLite store failed"))]
            return [self._apply([item])[0] for item in batch]
        self.transactions += 1
        self.writes += len(batch)
        self._after_commit(conn)
        return [(True, v) for v in values]

    def _rollback(self) -> None:
        """Undo the transaction and forget what it changed in memory (the caches
        refill from the database on demand)."""
        if self.conn.in_transaction:
            try:
                self.conn.execute("ROLLBACK")
            except sqlite3.Error:
                log.exception("store.rollback_failed")
        self._live.clear()
        self._dirty.clear()
        self._events.clear()
        self._seqs.clear()
        self._num = self.conn.execute("SELECT coalesce(max(num), 0) FROM jobs").fetchone()[0]

    # -- helpers (writer thread) ---------------------------------------------------

    def load(self) -> list[JobInfo]:
        """Every unfinished job, in acceptance order; resets the in-memory caches."""
        conn = self.conn
        # Sorting here is cheaper than SQLite's temporary b-tree for ORDER BY.
        rows = conn.execute(
            f"SELECT {JOB_COLUMNS}, num FROM jobs WHERE state IN ('queued', 'running')"
        ).fetchall()
        rows.sort(key=_by_num)
        self._live.clear()  # filled again lazily, by _job()
        self._num = conn.execute("SELECT coalesce(max(num), 0) FROM jobs").fetchone()[0]
        self._dirty.clear()
        self._events.clear()
        self._seqs.clear()
        return [job_info(row) for row in rows]

    def _flush(self) -> None:
        """Write what this batch changed so far (inside its transaction)."""
        conn = self.conn
        dirty = self._dirty
        if dirty:
            new = [r.insert_row() for r in dirty.values() if r.new]
            old = [r.update_row() for r in dirty.values() if not r.new]
            for r in dirty.values():
                r.new = False
            dirty.clear()
            if new:
                _bulk(conn, "job", new)
            if old:
                _bulk(conn, "update", old)
        if self._events:
            _bulk(conn, "event", self._events)
            self._events.clear()

    def _next_seq(self, session: str) -> int:
        seq = self._seqs.get(session)
        if seq is None:
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

    def _event(self, session: str, job_id: str | None, kind: str, data: Any, encoded: str) -> Event:
        seq = self._next_seq(session)
        at = time.time()
        self._events.append((session, seq, job_id, kind, encoded, at))
        return Event(seq, session, job_id, kind, data, at)

    def _touch(self, rec: _Live, now: float) -> None:
        rec.updated_at = now
        self._dirty[rec.id] = rec

    def _job(self, job_id: str | None) -> _Live | None:
        """The job if it is live (queued or running), from memory or the database."""
        if job_id is None:
            return None
        rec = self._live.get(job_id)
        if rec is not None or job_id in self._dirty:  # dirty and not live: finished just now
            return rec
        row = self.conn.execute(
            f"SELECT {JOB_COLUMNS}, num FROM jobs WHERE id = ? AND state IN ('queued', 'running')",
            (job_id,),
        ).fetchone()
        if row is None:
            return None
        rec = self._live[job_id] = _Live.from_row(row)
        return rec

    # -- the writes (writer thread; each returns what its future resolves to) ------

    def add_job(
        self,
        job_id: str,
        session: str,
        handler: str,
        payload: Any,
        encoded: str,
        priority: int,
        key: str | None,
    ) -> tuple[JobInfo, Event | None]:
        if key is not None:
            self._flush()
            row = self.conn.execute(
                f"SELECT {JOB_COLUMNS} FROM jobs WHERE session = ? AND idempotency_key = ?",
                (session, key),
            ).fetchone()
            if row is not None:
                return job_info(row), None
        if job_id in self._live or job_id in self._dirty:
            raise StoreError(f"job id {job_id!r} is already in use")
        now = time.time()
        self._num += 1
        rec = _Live(self._num, job_id, session, "queued", 0, 0, 0, "null", None, None, now)
        rec.new = True
        rec.handler, rec.payload, rec.priority, rec.key = handler, encoded, priority, key
        self._live[job_id] = rec
        self._dirty[job_id] = rec
        data = rules.queued_data(handler, payload)
        event = self._event(
            session,
            job_id,
            "job.queued",
            data,
            f'{{"handler":{_encode(handler)},"payload":{encoded}}}',
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
        rec = self._job(job_id)
        if rec is None or not rules.may_start(rec.state, rec.attempts, attempt):
            return None
        rec.state, rec.attempts, rec.output = "running", attempt, 0
        self._touch(rec, time.time())
        data = rules.started_data(attempt)
        return self._event(rec.session, job_id, "job.started", data, f'{{"attempt":{attempt}}}')

    def append_event(
        self,
        session: str,
        job_id: str | None,
        kind: str,
        data: Any,
        encoded: str,
        attempt: int | None,
    ) -> Event | None:
        if attempt is not None:
            rec = self._job(job_id)
            if rec is None or not rules.may_write(rec.state, rec.attempts, attempt):
                return None
            if not rec.output:
                rec.output = 1
                self._dirty[rec.id] = rec
        return self._event(session, job_id, kind, data, encoded)

    def retry(
        self,
        job_id: str,
        attempt: int,
        error: str | None,
        reason: str,
        lost: bool,
        delay: float,
        counts_attempt: bool,
    ) -> Event | None:
        rec = self._job(job_id)
        if rec is None or not rules.may_retry(rec.state, rec.attempts, attempt):
            return None
        rec.state, rec.error, rec.reason = "queued", error, reason
        rec.lost += int(lost)
        rec.attempts = rules.retried_attempts(attempt, counts_attempt)
        self._touch(rec, time.time())
        data = rules.retry_data(attempt, reason, error, delay, counts_attempt)
        return self._event(rec.session, job_id, "job.retry", data, _json_encode(data))

    def finish(
        self,
        job_id: str,
        attempt: int,
        state: JobState,
        result: Any,
        encoded: str,
        error: str | None,
        reason: str | None,
        lost: bool,
    ) -> Event | None:
        rec = self._job(job_id)  # None unless live (queued or running)
        if rec is None or not rules.may_finish(rec.state, rec.attempts, attempt):
            return None
        rec.state, rec.result, rec.error, rec.reason = state.value, encoded, error, reason
        rec.lost += int(lost)
        self._touch(rec, time.time())
        del self._live[job_id]
        data = rules.terminal_data(
            state, attempts=attempt, result=result, error=error, reason=reason
        )
        text = _terminal_data(state, attempt, encoded, error, reason)
        return self._event(rec.session, job_id, rules.terminal_kind(state), data, text)

    def requeue(self, job_id: str) -> tuple[JobInfo, Event] | None:
        if self._job(job_id) is not None:
            return None
        self._flush()
        row = self.conn.execute(
            f"SELECT {JOB_COLUMNS}, num FROM jobs WHERE id = ?", (job_id,)
        ).fetchone()
        if row is None or not rules.may_requeue(row[3]):
            return None
        rec = _Live.from_row(row)
        previous, attempts, lost = rec.state, rec.attempts, rec.lost
        rec.state, rec.attempts, rec.lost = "queued", 0, 0
        rec.result, rec.error, rec.reason = "null", None, None
        self._touch(rec, time.time())
        self._live[job_id] = rec
        info = replace(
            job_info(row),
            state=JobState.QUEUED,
            attempts=0,
            lost=0,
            result=None,
            error=None,
            reason=None,
            updated_at=rec.updated_at,
        )
        data = rules.requeued_data(rec.handler, info.payload, previous, attempts, lost)
        return info, self._event(rec.session, job_id, rules.REQUEUED_KIND, data, _json_encode(data))

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
        """Delete up to ``limit`` jobs that finished before ``before``.

        ``num`` follows acceptance time, so only rows accepted before ``before``
        are scanned (no index on the finish time: it would cost every write).
        """
        self._flush()
        conn = self.conn
        bound = conn.execute(
            "SELECT num FROM jobs WHERE created_at >= ? ORDER BY num LIMIT 1", (before,)
        ).fetchone()
        cur = conn.execute(
            "DELETE FROM jobs WHERE num IN (SELECT num FROM jobs WHERE num < ? AND updated_at < ?"
            " AND state IN ('succeeded', 'failed', 'timed_out', 'cancelled', 'dead') LIMIT ?)",
            (bound[0] if bound else self._num + 1, before, limit),
        )
        return cur.rowcount

    def prune_events(self, before: float, limit: int) -> int:
        """Delete up to ``limit`` of the oldest events written before ``before``.

        The per-session ``seq_floor`` remembers the highest seq removed, so a
        session's seq keeps rising after its old events are gone.
        """
        self._flush()
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
