"""What many nodes on one database need: leases, the reaper, shared-lane slots, claims.

Every function takes a connection; those that change more than one row run in
the caller's transaction (``claim`` is meant to run inside the writer's batch,
beside the finishes that freed the slots) or open their own (``reap``).

- **Leases.** ``register`` gives a node a new *epoch* (never reused) and a lease
  on the server's clock; ``heartbeat`` extends it and says False once the lease
  is gone (another node reaped it, or the node re-registered). A running
  attempt carries its owner's epoch and every write of it is fenced on that.
- **Reaping.** ``reap`` deletes lapsed leases and adopts every running attempt
  whose epoch has no lease: the attempt moves to the reaper's epoch (so the
  old owner's late writes are refused) and its shared-lane slots are freed.
  The caller then decides each one by the lost-attempt rules with ordinary
  fenced writes (``retry``/``finish``), exactly as after ``open()``.
- **Claims.** ``claim`` takes runnable session heads oldest first (one per
  session per call, so a batch never holds two jobs of one session), and for
  each the slots of every shared lane it needs, all of them or none; rows
  locked by another claimer are skipped, never waited for.
"""

from __future__ import annotations

import os
import socket
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import asyncpg

from .._types import Event, JobInfo
from ._postgres_rows import JOB_COLUMNS, job_info
from ._postgres_writes import Batch

__all__ = [
    "Claimed",
    "Reaped",
    "claim",
    "heartbeat",
    "register",
    "release",
    "reap",
    "set_lanes",
]

_NOW = "extract(epoch FROM clock_timestamp())"


@dataclass(frozen=True, slots=True)
class Claimed:
    """A job this node now runs: its new attempt, the ``job.started`` event, its slots."""

    job: JobInfo
    attempt: int
    event: Event
    slots: tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True)
class Reaped:
    """A running attempt taken over from a node whose lease lapsed.

    ``in_flight`` is how many attempts that node had running when it was
    reaped: 1 means this job was alone, so the crash may be its own.
    """

    job: JobInfo
    in_flight: int
    place: int  # the job's place in line (acceptance order)


# -- leases ----------------------------------------------------------------------------


async def register(conn: asyncpg.Connection, *, node: str, lease: float) -> int:
    """Start (or restart) ``node``'s lease; returns its new epoch."""
    epoch: int = await conn.fetchval(
        "INSERT INTO nodes (node, epoch, host, pid, started_at, expires_at)"
        f" VALUES ($1, nextval('epochs'), $2, $3, {_NOW}, {_NOW} + $4)"
        " ON CONFLICT (node) DO UPDATE SET epoch = excluded.epoch, host = excluded.host,"
        " pid = excluded.pid, started_at = excluded.started_at, expires_at = excluded.expires_at"
        " RETURNING epoch",
        node,
        socket.gethostname(),
        os.getpid(),
        lease,
    )
    return epoch


async def heartbeat(conn: asyncpg.Connection, *, node: str, epoch: int, lease: float) -> bool:
    """Extend the lease; False if it is no longer this node's (the node must stop its work)."""
    done = await conn.fetchval(
        f"UPDATE nodes SET expires_at = {_NOW} + $3 WHERE node = $1 AND epoch = $2 RETURNING 1",
        node,
        epoch,
        lease,
    )
    return done is not None


async def release(conn: asyncpg.Connection, *, node: str, epoch: int) -> None:
    """End the lease now (a clean stop): what is still running may be reaped at once."""
    await conn.execute("DELETE FROM nodes WHERE node = $1 AND epoch = $2", node, epoch)


# -- the reaper --------------------------------------------------------------------------

_EXPIRE = f"""
DELETE FROM nodes WHERE node IN (
    SELECT node FROM nodes WHERE expires_at < {_NOW} FOR UPDATE SKIP LOCKED)
"""

_ORPHANS = """
SELECT num, epoch FROM jobs j
WHERE state = 'running' AND NOT EXISTS (SELECT 1 FROM nodes n WHERE n.epoch = j.epoch)
FOR UPDATE SKIP LOCKED
"""

_ADOPT = f"""
UPDATE jobs SET epoch = $2, updated_at = $3 WHERE num = ANY($1::bigint[])
RETURNING {JOB_COLUMNS}, num
"""


async def reap(conn: asyncpg.Connection, *, epoch: int) -> list[Reaped]:
    """Take over the attempts of lapsed leases (in its own transaction); acceptance order."""
    async with conn.transaction():
        await conn.execute(_EXPIRE)
        orphans = await conn.fetch(_ORPHANS)
        if not orphans:
            return []
        per_owner = Counter(row[1] for row in orphans)
        owner = {row[0]: row[1] for row in orphans}
        rows = await conn.fetch(_ADOPT, list(owner), epoch, time.time())
        ids = [row[0] for row in rows]
        await conn.execute("UPDATE slots SET job_id = NULL WHERE job_id = ANY($1::text[])", ids)
    rows = sorted(rows, key=lambda row: int(row["num"]))
    return [Reaped(job_info(row), per_owner[owner[row["num"]]], int(row["num"])) for row in rows]


# -- shared lanes and claims ---------------------------------------------------------------


async def set_lanes(conn: asyncpg.Connection, caps: Mapping[str, int]) -> None:
    """Make each lane's slot rows match its cap (a busy surplus slot goes on its next call)."""
    async with conn.transaction():
        for lane, cap in sorted(caps.items()):
            await conn.execute(
                "INSERT INTO slots (lane, slot) SELECT $1, g FROM generate_series(1, $2) AS g"
                " ON CONFLICT DO NOTHING",
                lane,
                cap,
            )
            await conn.execute(
                "DELETE FROM slots WHERE lane = $1 AND slot > $2 AND job_id IS NULL", lane, cap
            )


# Only heads whose every lane has a free slot are worth locking: a thousand heads
# waiting on a full lane must not hide a younger head that could run now.
# The plan is fixed by its shape, not by statistics (a young table has none): walk
# sessions_ready in order and look each head up by its key (OFFSET 0 keeps the
# lookup a nested loop), stopping at the limit; never hash every queued job.
# Heads with a priority come first (as in one process), found through the partial
# index jobs_prioritized, which is empty while nobody uses priorities.
# $3: the reasons whose extra lane is full (a suspect waits, the heads behind it do not).
_HEADS = f"""
WITH p AS (
    SELECT s.head, j.handler, j.reason, j.priority, s.ready FROM jobs j
    JOIN sessions s ON s.session = j.session AND s.head = j.num
    WHERE j.state = 'queued' AND j.priority <> 0 AND j.handler = ANY($2::text[])
      AND NOT coalesce(j.reason, '') = ANY($3::text[])
      AND s.ready IS NOT NULL AND s.not_before <= {_NOW}
    ORDER BY j.priority DESC, s.ready LIMIT $1
    FOR UPDATE OF s SKIP LOCKED
), r AS (
    SELECT s.head, h.handler, h.reason, h.priority, s.ready FROM sessions s
    CROSS JOIN LATERAL (
        SELECT j.handler, j.reason, j.priority FROM jobs j
        WHERE j.num = s.head AND j.state = 'queued' AND j.handler = ANY($2::text[])
          AND NOT coalesce(j.reason, '') = ANY($3::text[]) OFFSET 0) h
    WHERE s.ready IS NOT NULL AND s.not_before <= {_NOW}
    ORDER BY s.ready LIMIT $1
    FOR UPDATE OF s SKIP LOCKED
)
SELECT * FROM p UNION ALL SELECT * FROM r
"""

# Per lane: free slots, the cap, the slots this node's attempts hold, and how many
# other live nodes want more of it than they got (see ``_fair``).
# $2: the lanes of this node's handlers; it claims, so it has room: it wants them
# (unchanged, the row is not written). One that fills up says so after (``_WANTS``).
_LANES = f"""
WITH w AS (UPDATE nodes SET wants = $2::text[] WHERE epoch = $1 AND wants <> $2::text[])
SELECT s.lane, count(*) FILTER (WHERE s.job_id IS NULL), count(*),
    count(*) FILTER (WHERE s.job_id IS NOT NULL
                     AND EXISTS (SELECT 1 FROM jobs j WHERE j.id = s.job_id AND j.epoch = $1)),
    (SELECT count(*) FROM nodes n
     WHERE n.epoch <> $1 AND s.lane = ANY(n.wants) AND n.expires_at > {_NOW})
FROM slots s GROUP BY s.lane
"""

_WANTS = "UPDATE nodes SET wants = '{}' WHERE epoch = $1"

_FREE_SLOTS = """
SELECT w.lane, s.slot FROM unnest($1::text[], $2::int[]) AS w(lane, n)
CROSS JOIN LATERAL (
    SELECT slot FROM slots WHERE slots.lane = w.lane AND job_id IS NULL
    ORDER BY slot LIMIT w.n FOR UPDATE SKIP LOCKED) s
"""

_TAKE_SLOTS = """
UPDATE slots SET job_id = v.job FROM unnest($1::text[], $2::int[], $3::text[]) AS v(lane, slot, job)
WHERE slots.lane = v.lane AND slots.slot = v.slot
"""

# The state test is a CASE so that it is a guard on the rows found by key, never a
# way in: as a plain qual, a planner without statistics scans every queued job
# (jobs_queued) for the 64 it wants. The same holds for the writes' lookups by id.
_START = f"""
UPDATE jobs SET state = 'running', attempts = attempts + 1, output = false, epoch = $2,
    updated_at = $3, stop_requested = false
WHERE num = ANY($1::bigint[]) AND CASE WHEN state = 'queued' THEN true END
  AND EXISTS (SELECT 1 FROM nodes WHERE epoch = $2)  -- a node whose lease is gone claims nothing
RETURNING {JOB_COLUMNS}, num
"""

_ADVANCE = """
UPDATE sessions s SET seq = s.seq + 1, running = s.running + 1,
    head = nx.num, not_before = coalesce(nx.run_after, 0)
FROM unnest($1::text[]) AS c(session)
LEFT JOIN LATERAL (
    SELECT q.num, q.run_after FROM jobs q WHERE q.session = c.session AND q.state = 'queued'
    ORDER BY q.num LIMIT 1) nx ON true
WHERE s.session = c.session
RETURNING s.session, s.seq
"""

_EVENTS = """
INSERT INTO events (session, seq, job_id, kind, data, at)
SELECT session, seq, job_id, 'job.started', data, $5
FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[]) AS e(session, seq, job_id, data)
"""


def _needs(
    handler: str,
    reason: str | None,
    handler_lanes: Mapping[str, Sequence[str]],
    reason_lanes: Mapping[str, str],
) -> tuple[str, ...]:
    """The lanes a head needs: its handler's, and its reason's (a crash suspect's)."""
    extra = reason_lanes.get(reason) if reason is not None else None
    lanes = (*handler_lanes[handler], *([extra] if extra is not None else []))
    return tuple(dict.fromkeys(lanes))


def _assign(
    heads: Sequence[tuple[int, tuple[str, ...]]],
    free: Mapping[str, list[int]],
    capacity: int,
) -> dict[int, tuple[tuple[str, int], ...]]:
    """Oldest first: each job gets one slot of every lane it needs, or nothing."""
    left = {lane: list(slots) for lane, slots in free.items()}
    chosen: dict[int, tuple[tuple[str, int], ...]] = {}
    for num, needs in heads:
        if len(chosen) >= capacity:
            break
        if all(left.get(lane) for lane in needs):
            chosen[num] = tuple((lane, left[lane].pop(0)) for lane in needs)
    return chosen


_SLACK = 8  # heads locked beyond the free slots, for heads whose other lanes are full


def _heads_wanted(
    capacity: int,
    runnable: Sequence[str],
    free_now: Mapping[str, int],
    handler_lanes: Mapping[str, Sequence[str]],
) -> int:
    """How many heads to lock: no more than the free slots could start.

    A locked head stays locked until the batch commits, and another node's writes
    to that session wait for it, so locking heads that cannot run costs the cluster.
    """
    bound = 0
    for handler in runnable:
        lanes = handler_lanes[handler]
        bound += min((free_now[lane] for lane in lanes), default=capacity)
    return min(capacity, bound) + _SLACK


def _fair(free: int, cap: int, mine: int, others: int) -> int:
    """The slots of a lane this claim may take.

    A node claims in the batch that holds its finishes, so it would take back every
    slot it just freed and another node with room could starve. While ``others``
    live nodes want this lane too, a node tops up to ``ceil(cap / wanting nodes)``
    and leaves the rest to them (this batch's NOTIFY wakes them).
    """
    if others == 0:
        return free
    share = -(-cap // (others + 1))
    return max(0, min(free, share - mine))


async def claim(
    conn: asyncpg.Connection,
    batch: Batch,
    capacity: int,
    handler_lanes: Mapping[str, Sequence[str]],
    reason_lanes: Mapping[str, str] | None = None,
) -> list[Claimed]:
    """Start up to ``capacity`` runnable jobs whose handler is in ``handler_lanes``.

    Runs inside the caller's transaction (the writer's batch); the ``job.started``
    events and slots commit with it. Oldest session head first, across sessions;
    a lane's slots shared fairly among the nodes that want work (``_fair``). A job
    queued with a reason in ``reason_lanes`` also needs that lane (crash suspects
    take the one slot of theirs, so two never run at once anywhere).
    """
    if capacity < 1:
        return []
    started = await _claim(conn, batch, capacity, handler_lanes, reason_lanes or {})
    if len(started) == capacity:  # full now: it wants nothing more
        await conn.execute(_WANTS, batch.epoch)
    return started


async def _claim(
    conn: asyncpg.Connection,
    batch: Batch,
    capacity: int,
    handler_lanes: Mapping[str, Sequence[str]],
    reason_lanes: Mapping[str, str],
) -> list[Claimed]:
    wants = sorted({lane for lanes in handler_lanes.values() for lane in lanes})
    lanes_now = await conn.fetch(_LANES, batch.epoch, wants)
    free_now = {row[0]: _fair(row[1], row[2], row[3], row[4]) for row in lanes_now}
    runnable = [
        handler
        for handler, lanes in handler_lanes.items()
        if all(free_now.get(lane, 0) > 0 for lane in lanes)
    ]
    if not runnable:
        return []
    wanted_heads = _heads_wanted(capacity, runnable, free_now, handler_lanes)
    waiting = sorted(r for r, lane in reason_lanes.items() if free_now.get(lane, 0) < 1)
    rows = await conn.fetch(_HEADS, wanted_heads, runnable, waiting)
    found = {row[0]: row for row in rows}  # a head with a priority comes in both parts
    ordered = sorted(found.values(), key=lambda row: (-row[3], row[4]))[:wanted_heads]
    heads = [(row[0], _needs(row[1], row[2], handler_lanes, reason_lanes)) for row in ordered]
    if not heads:
        return []
    wanted = Counter(lane for _num, needs in heads for lane in needs)
    free: dict[str, list[int]] = {}
    if wanted:
        lanes = sorted(wanted)
        counts = [min(wanted[lane], free_now.get(lane, 0)) for lane in lanes]
        for row in await conn.fetch(_FREE_SLOTS, lanes, counts):
            free.setdefault(row[0], []).append(row[1])
    chosen = _assign(heads, free, capacity)
    if not chosen:
        return []
    return await _start(conn, batch, chosen)


async def _start(
    conn: asyncpg.Connection, batch: Batch, chosen: dict[int, tuple[tuple[str, int], ...]]
) -> list[Claimed]:
    now = time.time()
    started = await conn.fetch(_START, list(chosen), batch.epoch, now)
    started = sorted(started, key=lambda row: (-int(row["priority"]), int(row["num"])))
    taken = [(lane, slot, row[0]) for row in started for lane, slot in chosen[row["num"]]]
    if taken:
        await conn.execute(_TAKE_SLOTS, *(list(column) for column in zip(*taken, strict=True)))
    advanced = await conn.fetch(_ADVANCE, [row[1] for row in started])
    seqs: dict[str, int] = {row[0]: row[1] for row in advanced}
    datas = [f'{{"attempt":{row[4]}}}' for row in started]
    await conn.execute(
        _EVENTS,
        [row[1] for row in started],
        [seqs[row[1]] for row in started],
        [row[0] for row in started],
        datas,
        now,
    )
    batch.events.update(row[1] for row in started)
    return [
        Claimed(
            job=job_info(row),
            attempt=row[4],
            event=Event(seqs[row[1]], row[1], row[0], "job.started", {"attempt": row[4]}, now),
            slots=chosen[row["num"]],
        )
        for row in started
    ]
