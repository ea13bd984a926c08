"""``sqlite:///path``: the durable store for one machine.

Writes go to one writer thread that group-commits them in call order (see
``_sqlite_writer``); reads run on separate connections in worker threads and
see committed data (WAL mode lets them run beside the writer). One process
owns a database at a time: an exclusive ``flock`` on ``<db>.lock``, which the
kernel releases when the owner dies, however it dies; a second opener gets a
``StoreError`` naming the owner. The lock alone is not trusted: the owner row
in the database carries a heartbeat (every ``maintain_interval``), and an
opener refuses while another live owner's heartbeat is fresh, even if the
lock file was removed. The owner checks at every heartbeat that its file is
still the one it opened: a database deleted or replaced under it makes the
store refuse writes and readiness, and readers never create a new file.

URL: ``sqlite:///relative.db`` or ``sqlite:////absolute.db``, optionally with
settings as query params (``?synchronous=full&retain_jobs=7d``); see
``SQLiteSettings`` for the list.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import fcntl
import json
import logging
import os
import queue
import socket
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, cast

from .._codec import canonical, clean_text
from .._codec import decode as _decode
from .._errors import StoreError
from .._types import Event, JobInfo, JobState
from ._base import Store, namespace_of
from ._sqlite_checkpoint import Checkpointer
from ._sqlite_owner import check_owner
from ._sqlite_schema import SQLiteSettings, migrate, parse_url
from ._sqlite_writer import JOB_COLUMNS, Writer, job_info, store_error

__all__ = ["SQLiteStore"]

T = TypeVar("T")

log = logging.getLogger("laneway.store")

_RETENTION_EVERY = 60.0
_PRUNE_CHUNK = 5_000
_PRUNE_CHUNKS = 20
_EVENT_COLUMNS = "seq, session, job_id, kind, data, at"
_NAMESPACE = "substr(session, 1, instr(session, '/'))"  # as in the jobs_namespace indexes


class SQLiteStore(Store):
    """Jobs and events in one SQLite database file (WAL), owned by one process."""

    def __init__(self, url: str = "sqlite:///laneway.db", **settings: Any) -> None:
        self.url = url
        self.settings: SQLiteSettings = parse_url(url, **settings)
        self.path = Path(self.settings.path).absolute()
        self.lock_path = Path(f"{self.path}.lock")
        self.maintain_interval = self.settings.maintain_interval
        self._writer: Writer | None = None
        self._checkpointer = Checkpointer(self._connect_checkpointer)
        self._lock_fd: int | None = None
        self._readers: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()
        self._closed = False
        self._since = 0.0
        self._last_retention = 0.0
        #: (st_dev, st_ino) of the database file this store opened.
        self._identity: tuple[int, int] | None = None
        #: Why the store stopped accepting writes (its file went away), if it did.
        self._gone: str | None = None

    def __repr__(self) -> str:
        return f"<SQLiteStore {self.path}>"

    @property
    def transactions(self) -> int:
        """Write transactions committed since open (group commit: fewer than writes)."""
        return self._writer.transactions if self._writer is not None else 0

    @property
    def writes(self) -> int:
        return self._writer.writes if self._writer is not None else 0

    # -- life ------------------------------------------------------------------

    async def open(self) -> list[JobInfo]:
        if self._writer is not None or self._closed:
            raise StoreError(f"{self.url} is already open (or was closed); make a new store")
        loop = asyncio.get_running_loop()
        writer, unfinished = await asyncio.to_thread(self._open_sync, loop)
        writer.start()
        self._checkpointer.start()
        self._writer = writer
        return unfinished

    def _open_sync(self, loop: asyncio.AbstractEventLoop) -> tuple[Writer, list[JobInfo]]:
        parent = self.path.parent
        if not parent.is_dir():
            raise StoreError(f"cannot open {self.url}: the directory {parent} does not exist")
        if self.path.is_dir():
            raise StoreError(f"cannot open {self.url}: {self.path} is a directory")
        self._lock_fd = self._take_ownership()
        try:
            conn = self._connect()
            try:
                self._prepare(conn)
                writer = Writer(
                    conn, loop, self.settings.batch_max, after_commit=self._checkpointer.committed
                )
                unfinished = writer.load()
            except BaseException:
                conn.close()
                raise
        except sqlite3.Error as exc:
            self._release()
            raise store_error(exc, f"cannot open {self.url}") from None
        except BaseException:
            self._release()
            raise
        return writer, unfinished

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(
            self.path,
            timeout=self.settings.busy_timeout,
            isolation_level=None,
            check_same_thread=False,
        )

    def _connect_checkpointer(self) -> sqlite3.Connection:
        conn = self._connect()
        conn.execute(f"PRAGMA synchronous = {self.settings.synchronous.upper()}")
        return conn

    def _connect_reader(self) -> sqlite3.Connection:
        # mode=rw: a reader never creates a file where the database was removed.
        return sqlite3.connect(
            f"{self.path.as_uri()}?mode=rw",
            uri=True,
            timeout=self.settings.busy_timeout,
            isolation_level=None,
            check_same_thread=False,
        )

    def _prepare(self, conn: sqlite3.Connection) -> None:
        # The first statement reads the header: a corrupt file fails here, before any write.
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StoreError(f"cannot open {self.url}: WAL mode unavailable (got {mode!r})")
        conn.execute(f"PRAGMA synchronous = {self.settings.synchronous.upper()}")
        conn.execute("PRAGMA cache_size = -32000")
        conn.execute("PRAGMA temp_store = MEMORY")
        conn.execute("PRAGMA wal_autocheckpoint = 0")  # the Checkpointer's job
        migrate(conn)
        check_owner(conn, self.url, self._stale_after())
        self._since = time.time()
        self._identity = _identity(self.path)
        conn.execute(
            "INSERT INTO owner (id, pid, host, since, heartbeat_at) VALUES (1, ?, ?, ?, ?)"
            " ON CONFLICT (id) DO UPDATE SET pid = excluded.pid, host = excluded.host,"
            " since = excluded.since, heartbeat_at = excluded.heartbeat_at",
            (os.getpid(), socket.gethostname(), self._since, self._since),
        )

    # -- ownership ---------------------------------------------------------------

    def _take_ownership(self) -> int:
        try:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise StoreError(
                f"cannot open {self.url}: cannot create the lock file {self.lock_path}: "
                f"{exc.strerror} (is the path read-only?)"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            owner = self._describe_owner(fd)
            os.close(fd)
            raise StoreError(
                f"{self.url} is owned by another process ({owner}); stop it first or use "
                "another database file"
            ) from None
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
        with contextlib.suppress(OSError):  # the lock holds even if the note cannot be written
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(me).encode(), 0)
        return fd

    def _describe_owner(self, fd: int) -> str:
        try:
            owner = json.loads(os.pread(fd, 4096, 0) or b"{}")
            since = datetime.datetime.fromtimestamp(owner["since"], datetime.UTC)
            return (
                f"pid {owner['pid']} on host {owner['host']} since "
                f"{since.isoformat(timespec='seconds')}"
            )
        except (OSError, ValueError, KeyError, TypeError):
            return f"it holds {self.lock_path}"

    def _release(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)  # closing the descriptor drops the flock

    def _stale_after(self) -> float:
        """A heartbeat older than this is a dead owner's."""
        return 3 * (self.maintain_interval or 5.0)

    async def close(self) -> None:
        writer = self._writer
        self._closed = True
        if writer is None:
            self._release()
            return
        writer.stop()
        await asyncio.to_thread(writer.join)
        await asyncio.to_thread(self._checkpointer.stop)
        self._writer = None
        if self._gone is None:
            await asyncio.to_thread(self._disown)
        while True:
            try:
                self._readers.get_nowait().close()
            except queue.Empty:
                break
        self._release()

    def _disown(self) -> None:
        # A clean close says so, so the next opener need not wait for the heartbeat to age.
        with contextlib.suppress(sqlite3.Error), contextlib.closing(self._connect()) as conn:
            conn.execute("UPDATE owner SET heartbeat_at = 0 WHERE pid = ?", (os.getpid(),))

    async def ping(self) -> None:
        if self._writer is None or not self._writer.alive:
            raise StoreError(f"{self.url} is not open")
        self._check_file()
        await self._read(lambda conn: conn.execute("SELECT 1").fetchone())

    def _check_file(self) -> None:
        """Raise (and refuse writes from now on) if our database file is gone or replaced."""
        if self._gone is None and _identity(self.path) != self._identity:
            self._gone = (
                f"{self.url}: the database file {self.path} was deleted or replaced while "
                "this store had it open; refusing writes (restore it and restart)"
            )
            log.error("store.file_lost: %s", self._gone, extra={"path": str(self.path)})
        if self._gone is not None:
            raise StoreError(self._gone)

    async def maintain(self) -> None:
        """Check the database file, renew the owner row's heartbeat; every minute,
        apply retention."""
        self._check_file()
        await self._write(Writer.heartbeat, (os.getpid(), socket.gethostname(), self._since))
        now = time.time()
        if now - self._last_retention >= _RETENTION_EVERY:
            self._last_retention = now
            await self.retain(now=now)

    async def retain(self, *, now: float | None = None) -> tuple[int, int]:
        """Delete finished jobs and events past their retention; returns the counts.

        Works in chunks, each its own write, so live writes are never held up
        for long; at most ``_PRUNE_CHUNKS`` chunks of each per call.
        """
        now = time.time() if now is None else now
        keep_jobs, keep_events = self.settings.retain_jobs, self.settings.retain_events
        jobs = events = 0
        for _ in range(_PRUNE_CHUNKS):
            n_jobs = n_events = 0
            if keep_jobs is not None:
                n_jobs = await self._write(Writer.prune_jobs, (now - keep_jobs, _PRUNE_CHUNK))
            if keep_events is not None:
                n_events = await self._write(Writer.prune_events, (now - keep_events, _PRUNE_CHUNK))
            jobs, events = jobs + n_jobs, events + n_events
            if n_jobs < _PRUNE_CHUNK and n_events < _PRUNE_CHUNK:
                break
        return jobs, events

    # -- writes ------------------------------------------------------------------

    def _write(self, op: Callable[..., T], args: tuple[Any, ...]) -> asyncio.Future[T]:
        writer = self._writer
        if writer is None or self._closed or self._gone is not None:
            fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
            fut.set_exception(StoreError(self._gone or f"{self.url} is not open"))
            return fut
        return cast("asyncio.Future[T]", writer.submit(op, args))

    def add_job(
        self,
        *,
        job_id: str,
        session: str,
        handler: str,
        payload: Any,
        priority: int,
        idempotency_key: str | None,
    ) -> asyncio.Future[tuple[JobInfo, Event | None]]:
        payload, encoded = canonical(payload, "payload")
        args = (job_id, session, handler, payload, encoded, priority, idempotency_key)
        return self._write(Writer.add_job, args)

    def start_attempt(self, job_id: str, attempt: int) -> asyncio.Future[Event | None]:
        return self._write(Writer.start_attempt, (job_id, attempt))

    def append_event(
        self, session: str, job_id: str | None, kind: str, data: Any, *, attempt: int | None
    ) -> asyncio.Future[Event | None]:
        data, encoded = canonical(data, "event data")
        return self._write(Writer.append_event, (session, job_id, kind, data, encoded, attempt))

    def retry(
        self,
        job_id: str,
        attempt: int,
        *,
        error: str | None,
        reason: str,
        lost: bool,
        delay: float,
        counts_attempt: bool = True,
    ) -> asyncio.Future[Event | None]:
        args = (job_id, attempt, clean_text(error), reason, lost, delay, counts_attempt)
        return self._write(Writer.retry, args)

    def finish(
        self,
        job_id: str,
        attempt: int,
        state: JobState,
        *,
        result: Any,
        error: str | None,
        reason: str | None,
        lost: bool,
    ) -> asyncio.Future[Event | None]:
        result, encoded = canonical(result, "result")
        args = (job_id, attempt, state, result, encoded, clean_text(error), reason, lost)
        return self._write(Writer.finish, args)

    def requeue(self, job_id: str) -> asyncio.Future[tuple[JobInfo, Event] | None]:
        return self._write(Writer.requeue, (job_id,))

    # -- reads -------------------------------------------------------------------

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._writer is None or self._closed:
            raise StoreError(f"{self.url} is not open")
        return await asyncio.to_thread(self._read_sync, fn)

    def _read_sync(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        try:
            conn = self._readers.get_nowait()
        except queue.Empty:
            conn = None
        try:
            if conn is None:
                conn = self._connect_reader()
                conn.execute("PRAGMA query_only = 1")
            return fn(conn)
        except sqlite3.Error as exc:
            raise store_error(exc, f"reading {self.url} failed") from None
        finally:
            if conn is not None:
                if self._closed:
                    conn.close()
                else:
                    self._readers.put(conn)

    async def get_job(self, job_id: str) -> JobInfo | None:
        def read(conn: sqlite3.Connection) -> JobInfo | None:
            row = conn.execute(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
            return job_info(row) if row is not None else None

        return await self._read(read)

    async def list_jobs(
        self,
        *,
        state: JobState | None = None,
        session: str | None = None,
        prefix: str | None = None,
        before: str | None = None,
        limit: int = 100,
    ) -> list[JobInfo]:
        where: list[str] = []
        params: list[str | int] = []
        if state is not None:
            where.append("state = ?")
            params.append(JobState(state).value)
        if session is not None:
            where.append("session = ?")
            params.append(session)
        if prefix is not None and namespace_of(prefix) is not None:
            where.append(f"{_NAMESPACE} = ?")
            params.append(prefix)
        elif prefix is not None:
            where.append("substr(session, 1, ?) = ?")
            params.extend((len(prefix), prefix))
        if before is not None:
            where.append("num < (SELECT num FROM jobs WHERE id = ?)")
            params.append(before)
        sql = f"SELECT {JOB_COLUMNS} FROM jobs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY num DESC LIMIT ?"

        def read(conn: sqlite3.Connection) -> list[JobInfo]:
            return [job_info(row) for row in conn.execute(sql, (*params, max(0, limit)))]

        return await self._read(read)

    async def read_events(self, session: str, *, after: int = 0, limit: int = 1000) -> list[Event]:
        def read(conn: sqlite3.Connection) -> list[Event]:
            rows = conn.execute(
                f"SELECT {_EVENT_COLUMNS} FROM events WHERE session = ? AND seq > ?"
                " ORDER BY seq LIMIT ?",
                (session, after, max(0, limit)),
            ).fetchall()
            return [_event(row) for row in rows]

        return await self._read(read)

    async def history(self, session: str, *, before: int, limit: int) -> list[Event]:
        def read(conn: sqlite3.Connection) -> list[Event]:
            rows = conn.execute(
                f"SELECT {_EVENT_COLUMNS} FROM events WHERE session = ? AND seq < ?"
                " ORDER BY seq DESC LIMIT ?",
                (session, before, max(0, limit)),
            ).fetchall()
            return [_event(row) for row in reversed(rows)]

        return await self._read(read)


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _event(row: tuple[Any, ...]) -> Event:
    return Event(row[0], row[1], row[2], row[3], _decode(row[4]), row[5])
