"""``postgresql://``: the store many nodes share, on one PostgreSQL database.

Nothing here takes the database for itself: each node registers a lease row
(``nodes``) that ``maintain()`` heartbeats every ``lease / 3``, and ``open()``
returns the unfinished jobs this node may take: queued jobs, and running
attempts whose owner's lease lapsed (adopted by this node; the runtime then
treats them as lost attempts). Writes go through one writer task per node that
group-commits them in call order (``_postgres_writer``); reads use a pool; the
lease and the reaper have a connection of their own, so they never wait
behind writes or for a free slot. The multi-node pieces (claims, reaping,
lanes) are in ``_postgres_claim`` and exposed as methods here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar, cast

import asyncpg

from .._codec import canonical, clean_text
from .._errors import StoreError
from .._types import Event, JobInfo, JobState
from . import _postgres_claim as claims
from . import _postgres_control as control
from . import _postgres_writes as writes
from ._base import Store, namespace_of
from ._postgres_claim import Claimed, Reaped
from ._postgres_listen import Listener
from ._postgres_rows import EVENT_COLUMNS, JOB_COLUMNS, event, job_info
from ._postgres_schema import connect, migrate
from ._postgres_settings import PostgresSettings, parse_url
from ._postgres_writer import Writer

__all__ = ["PostgresStore"]

_NAMESPACE = "substr(session, 1, strpos(session, '/'))"  # as in the jobs_namespace indexes

log = logging.getLogger("laneway.store")
T = TypeVar("T")

_QUEUED = f"SELECT {JOB_COLUMNS}, num FROM jobs WHERE state = 'queued' ORDER BY num"
_READ_FAILED = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError)


class PostgresStore(Store):
    """Jobs, events, slots and leases in PostgreSQL, shared by every node."""

    def __init__(self, url: str, **settings: Any) -> None:
        self.url = url
        self.settings: PostgresSettings = parse_url(url, **settings)
        self.node = self.settings.node or f"node-{uuid.uuid4().hex[:12]}"
        self.maintain_interval = self.settings.lease / 3
        self.channel = f"laneway_{self.settings.schema}"[:63]
        self.epoch = 0
        self.session_limit = 1
        #: Called (no arguments) when this node finds its lease gone: its running
        #: attempts now belong to another node, and their writes will be refused.
        self.on_lease_lost: list[Callable[[], None]] = []
        self._writer: Writer | None = None
        self._keeper: asyncpg.Connection | None = None
        self._pool: asyncpg.Pool | None = None
        self._listeners: list[Listener] = []
        self._closed = False
        # The lease keeper's connection serves the heartbeat and the reaper: one at a time.
        self._keeper_lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"<PostgresStore {self.settings.dsn.split('@')[-1]} schema={self.settings.schema}>"

    @property
    def transactions(self) -> int:
        """Write transactions committed since open (group commit: fewer than writes)."""
        return self._writer.transactions if self._writer is not None else 0

    @property
    def writes(self) -> int:
        return self._writer.writes if self._writer is not None else 0

    # -- life ------------------------------------------------------------------

    async def _connect(self) -> asyncpg.Connection:
        return await connect(self.settings.dsn, self.settings.schema)

    async def _connect_writer(self) -> asyncpg.Connection:
        return await connect(self.settings.dsn, self.settings.schema, role="laneway-writer")

    async def open(self) -> list[JobInfo]:
        if self._writer is not None or self._closed:
            raise StoreError(f"{self.url} is already open (or was closed); make a new store")
        keeper = await self._connect()
        conn: asyncpg.Connection | None = None
        try:
            adopted, queued = await self._join(keeper)
            conn = await self._connect_writer()
            self._pool = await asyncpg.create_pool(
                self.settings.dsn,
                min_size=1,
                max_size=self.settings.pool,
                server_settings={"search_path": self.settings.schema},
            )
        except BaseException as exc:
            keeper.terminate()
            if conn is not None:
                conn.terminate()
            if isinstance(exc, _READ_FAILED):
                raise StoreError(f"cannot open {self!r}: {exc}") from None
            raise
        self._keeper = keeper
        self._writer = Writer(
            conn,
            self._connect_writer,
            epoch=self.epoch,
            channel=self.channel,
            batch_max=self.settings.batch_max,
            session_limit=self.session_limit,
        )
        self._writer.start()
        self._log_adopted(adopted)
        jobs = [(int(row["num"]), job_info(row)) for row in queued]
        jobs += [(r.place, r.job) for r in adopted]
        jobs.sort(key=lambda pair: pair[0])
        return [info for _place, info in jobs]

    async def _join(self, keeper: asyncpg.Connection) -> tuple[list[Reaped], list[Any]]:
        """Migrate, take a lease, adopt lapsed attempts; what this node may take."""
        await migrate(keeper, self.settings.schema)
        self.epoch = await claims.register(keeper, node=self.node, lease=self.settings.lease)
        adopted = await claims.reap(keeper, epoch=self.epoch)
        return adopted, await keeper.fetch(_QUEUED)

    @staticmethod
    def _log_adopted(adopted: list[Reaped]) -> None:
        for r in adopted:
            log.warning(
                "lease.reaped: attempt %d of %s was running on a node whose lease lapsed",
                r.job.attempts,
                r.job.id,
                extra={"job_id": r.job.id, "session": r.job.session, "in_flight": r.in_flight},
            )

    async def close(self) -> None:
        self._closed = True
        for listener in self._listeners:
            await listener.close()
        self._listeners.clear()
        writer, self._writer = self._writer, None
        if writer is not None:
            await writer.stop()
        keeper, self._keeper = self._keeper, None
        if keeper is not None:
            with contextlib.suppress(*_READ_FAILED):
                await claims.release(keeper, node=self.node, epoch=self.epoch)
            with contextlib.suppress(*_READ_FAILED):
                await keeper.close(timeout=5)
        pool, self._pool = self._pool, None
        if pool is not None:
            with contextlib.suppress(*_READ_FAILED):
                await asyncio.wait_for(pool.close(), 5)

    async def ping(self) -> None:
        await self._read(lambda conn: conn.fetchval("SELECT 1"))

    async def maintain(self) -> None:
        """Heartbeat the lease; if it is gone, say so and register again."""
        lease = self.settings.lease
        async with self._keeper_lock:
            keeper = await self._keeper_conn()
            if await claims.heartbeat(keeper, node=self.node, epoch=self.epoch, lease=lease):
                return
            old = self.epoch
            self.epoch = await claims.register(keeper, node=self.node, lease=lease)
        if self._writer is not None:
            self._writer.epoch = self.epoch
        log.error(
            "lease.lost: node %s lost its lease (epoch %d); its running attempts are another "
            "node's now",
            self.node,
            old,
            extra={"node": self.node, "epoch": old, "new_epoch": self.epoch},
        )
        for callback in list(self.on_lease_lost):
            try:
                callback()
            except Exception:
                log.exception("lease.callback_failed")

    async def _keeper_conn(self) -> asyncpg.Connection:
        if self._closed:
            raise StoreError(f"{self.url} is closed")
        keeper = self._keeper
        if keeper is None or keeper.is_closed():
            self._keeper = keeper = await self._connect()
        return keeper

    # -- the multi-node pieces -------------------------------------------------------

    async def set_lanes(self, caps: Mapping[str, int], *, session_limit: int = 1) -> None:
        """Make the shared lanes' slot rows match ``caps``; remember ``session_limit``."""
        self.session_limit = session_limit
        if self._writer is not None:
            self._writer.session_limit = session_limit
        await claims.set_lanes(await self._keeper_conn(), caps)

    def claim(
        self,
        capacity: int,
        handler_lanes: Mapping[str, Sequence[str]],
        reason_lanes: Mapping[str, str] | None = None,
    ) -> asyncio.Future[list[Claimed]]:
        """Start up to ``capacity`` runnable jobs of these handlers, in the next batch;
        a job queued with a reason in ``reason_lanes`` also takes a slot of that lane."""
        args = (capacity, dict(handler_lanes), dict(reason_lanes or {}))
        return self._write(claims.claim, args)

    async def listen(self) -> Listener:
        """A started ``Listener`` for this store's wake-ups (closed with the store)."""
        if self._writer is None or self._closed:
            raise StoreError(f"{self.url} is not open")
        listener = Listener(self._connect, self.channel, self.settings.poll)
        await listener.start()
        self._listeners.append(listener)
        return listener

    async def reap(self) -> list[Reaped]:
        """Adopt the running attempts of lapsed leases (on the lease's own connection)."""
        async with self._keeper_lock:
            adopted = await claims.reap(await self._keeper_conn(), epoch=self.epoch)
        self._log_adopted(adopted)
        return adopted

    # -- what the claiming slot source needs (see ``_claiming.ClaimingStore``) -------

    @property
    def poll(self) -> float:
        return self.settings.poll

    @property
    def capacity(self) -> int:
        return self.settings.capacity

    async def jobs_by_id(self, ids: Sequence[str], *, moved: bool = False) -> list[JobInfo]:
        """The jobs with these ids, as committed (one query); with ``moved`` only those
        no longer queued, so following a long queue reads (and decodes) what changed."""
        sql = f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ANY($1::text[])"
        if moved:
            sql += " AND state <> 'queued'"
        rows = await self._read(lambda conn: conn.fetch(sql, list(ids)))
        return [job_info(row) for row in rows]

    def stop_jobs(
        self, session: str | None, job_id: str | None, *, drop_queued: bool
    ) -> asyncio.Future[control.Stopped]:
        """End the queued jobs of ``session`` (all, with ``drop_queued``; else a retry
        waiting out its backoff) or the job ``job_id``, and flag their running attempts
        for their owner nodes to cancel (see ``_postgres_control``)."""
        args = (session, job_id, drop_queued)
        sessions = (session,) if session is not None else ()
        return self._write(control.stop_jobs, args, sessions=sessions, job_id=job_id)

    def add_job_counted(
        self,
        *,
        job_id: str,
        session: str,
        handler: str,
        payload: Any,
        priority: int,
        idempotency_key: str | None,
        max_per_session: int,
        max_total: int | None,
    ) -> asyncio.Future[tuple[str | None, int, tuple[JobInfo, Event | None] | None]]:
        """``add_job`` if the session (and, given ``max_total``, the cluster) has room,
        counted in the database under the session's lock (see
        ``_postgres_control.add_job_counted``)."""
        payload, _ = canonical(payload, "payload")
        args = (job_id, session, handler, payload, priority, idempotency_key)
        return self._write(
            control.add_job_counted,
            (*args, max_per_session, max_total),
            sessions=(session,),
            new_job=(job_id, session),
        )

    async def queued_counts(self, at_least: int | None) -> tuple[int, dict[str, int], int]:
        """Queued jobs in the cluster, the sessions with ``at_least`` of them, live nodes."""
        result: tuple[int, dict[str, int], int] = await self._read(
            lambda conn: control.queued_counts(conn, at_least)
        )
        return result

    async def running_jobs(self, limit: int) -> list[tuple[str, str, str, int, str, float]]:
        """(job id, session, handler, attempt, node, started at) of the turns other nodes
        run, oldest first, at most ``limit``."""
        rows = await self._read(
            lambda conn: conn.fetch(
                "SELECT j.id, j.session, j.handler, j.attempts, n.node, j.updated_at"
                " FROM jobs j JOIN nodes n ON n.epoch = j.epoch"
                " WHERE j.state = 'running' AND j.epoch <> $1 ORDER BY j.updated_at LIMIT $2",
                self.epoch,
                limit,
            )
        )
        return [(r[0], r[1], r[2], int(r[3]), r[4], float(r[5])) for r in rows]

    async def stop_requests(self) -> list[str]:
        """Ids of this node's running attempts that another node asked to stop."""
        rows = await self._read(
            lambda conn: conn.fetch(
                "SELECT id FROM jobs WHERE state = 'running' AND epoch = $1 AND stop_requested",
                self.epoch,
            )
        )
        return [row[0] for row in rows]

    async def lane_counts(self) -> list[tuple[str, int, int]]:
        """(lane, cap, slots busy with other nodes' attempts) of every shared lane.

        This node's own are left out: it knows them better than a read racing its
        finishes (a slot it freed stays taken here until the finish commits)."""
        rows = await self._read(
            lambda conn: conn.fetch(
                "SELECT s.lane, count(*), count(s.job_id) FILTER (WHERE j.epoch IS DISTINCT"
                " FROM $1) FROM slots s LEFT JOIN jobs j ON j.id = s.job_id"
                " GROUP BY s.lane ORDER BY s.lane",
                self.epoch,
            )
        )
        return [(row[0], int(row[1]), int(row[2])) for row in rows]

    # -- writes ------------------------------------------------------------------

    def _write(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        *,
        sessions: tuple[str, ...] = (),
        job_id: str | None = None,
        new_job: tuple[str, str] | None = None,
    ) -> asyncio.Future[Any]:
        writer = self._writer
        if writer is None or self._closed:
            fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            fut.set_exception(StoreError(f"{self.url} is not open"))
            return fut
        return writer.submit(fn, args, sessions=sessions, job_id=job_id, new_job=new_job)

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
        payload, _ = canonical(payload, "payload")  # refused at the call, as in every store
        args = (job_id, session, handler, payload, priority, idempotency_key)
        return self._write(writes.add_job, args, sessions=(session,), new_job=(job_id, session))

    def start_attempt(self, job_id: str, attempt: int) -> asyncio.Future[Event | None]:
        return self._write(writes.start_attempt, (job_id, attempt), job_id=job_id)

    def append_event(
        self, session: str, job_id: str | None, kind: str, data: Any, *, attempt: int | None
    ) -> asyncio.Future[Event | None]:
        data, _ = canonical(data, "event data")
        args = (session, job_id, kind, data, attempt)
        return self._write(writes.append_event, args, sessions=(session,))

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
        return self._write(writes.retry, args, job_id=job_id)

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
        result, _ = canonical(result, "result")
        args = (job_id, attempt, state, result, clean_text(error), reason, lost)
        return self._write(writes.finish, args, job_id=job_id)

    def requeue(self, job_id: str) -> asyncio.Future[tuple[JobInfo, Event] | None]:
        return self._write(writes.requeue, (job_id,), job_id=job_id)

    # -- reads -------------------------------------------------------------------

    async def _read(self, fn: Callable[[asyncpg.Connection], Any]) -> Any:
        pool = self._pool
        if pool is None or self._closed:
            raise StoreError(f"{self.url} is not open")
        try:
            async with pool.acquire() as conn:
                return await fn(cast(asyncpg.Connection, conn))
        except _READ_FAILED as exc:
            raise StoreError(f"reading {self!r} failed: {exc}") from None

    async def get_job(self, job_id: str) -> JobInfo | None:
        row = await self._read(
            lambda conn: conn.fetchrow(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1", job_id)
        )
        return job_info(row) if row is not None else None

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
        params: list[Any] = []

        def param(value: Any) -> str:
            params.append(value)
            return f"${len(params)}"

        if state is not None:
            where.append(f"state = {param(JobState(state).value)}")
        if session is not None:
            where.append(f"session = {param(session)}")
        if prefix is not None and namespace_of(prefix) is not None:
            where.append(f"{_NAMESPACE} = {param(prefix)}")  # read from jobs_namespace
        elif prefix is not None:
            where.append(f"starts_with(session, {param(prefix)})")
        if before is not None:
            where.append(f"num < (SELECT num FROM jobs WHERE id = {param(before)})")
        sql = f"SELECT {JOB_COLUMNS} FROM jobs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += f" ORDER BY num DESC LIMIT {param(max(0, limit))}"
        rows = await self._read(lambda conn: conn.fetch(sql, *params))
        return [job_info(row) for row in rows]

    async def read_events(self, session: str, *, after: int = 0, limit: int = 1000) -> list[Event]:
        rows = await self._read(
            lambda conn: conn.fetch(
                f"SELECT {EVENT_COLUMNS} FROM events WHERE session = $1 AND seq > $2"
                " ORDER BY seq LIMIT $3",
                session,
                after,
                max(0, limit),
            )
        )
        return [event(row) for row in rows]

    async def history(self, session: str, *, before: int, limit: int) -> list[Event]:
        rows = await self._read(
            lambda conn: conn.fetch(
                f"SELECT {EVENT_COLUMNS} FROM events WHERE session = $1 AND seq < $2"
                " ORDER BY seq DESC LIMIT $3",
                session,
                before,
                max(0, limit),
            )
        )
        return [event(row) for row in reversed(rows)]
