"""Control across nodes: stopping and cancelling, and the queue bounds, counted in
the database.

``stop_jobs`` ends a session's (or one job's) queued jobs ``cancelled`` (reason
``stopped``) with their terminal events, and flags its running attempts for
their owner nodes, which poll for the flag and cancel them.

Why one write, and why it cannot race a claim: the writer takes the rows of
every session its batch touches before anything else, and a claim takes the
same row (``FOR UPDATE OF s SKIP LOCKED``) in the transaction that starts the
session's head. So while this write runs no claim of the session is in
flight: a claim that got there first has committed (its job is ``running``
and is flagged here), and one that comes later finds the job already ended.
Either the job never starts, or it started and its owner cancels it.

``add_job_counted`` is the submit of a node that cannot tell on its own that a
queue bound has room (see ``_core._claimed``): it counts under the same row lock.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any

import asyncpg

from .._types import Event, JobInfo, JobState
from . import _postgres_writes as writes
from ._postgres_rows import JOB_COLUMNS, encode, job_info
from ._postgres_writes import Batch
from ._rules import terminal_data

__all__ = [
    "Counted",
    "Stopped",
    "add_job_counted",
    "add_jobs_counted",
    "queued_counts",
    "stop_jobs",
]

_STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class Stopped:
    """What a stop did: queued jobs it ended (with their committed events), in
    acceptance order, and the running jobs it flagged for their owners."""

    ended: list[tuple[JobInfo, Event]]
    flagged: list[str]


# ``$3`` (drop every queued job) or a retried job waiting out its backoff: the
# session's turn, which a stop ends even when it keeps the queue.
_QUEUED = f"""
SELECT {JOB_COLUMNS}, num FROM jobs
WHERE state = 'queued' AND (session = $1 OR id = $2) AND ($3 OR attempts > 0 OR id = $2)
ORDER BY num FOR UPDATE
"""

_END = """
UPDATE jobs SET state = 'cancelled', reason = 'stopped', error = NULL, result = 'null',
    epoch = NULL, updated_at = $2
WHERE num = ANY($1::bigint[])
"""

# The session's next head is its oldest job still queued (or none).
_ADVANCE = """
UPDATE sessions s SET seq = s.seq + c.n, head = nx.num,
    not_before = CASE WHEN nx.num IS DISTINCT FROM s.head THEN coalesce(nx.run_after, 0)
                      ELSE s.not_before END
FROM unnest($1::text[], $2::int[]) AS c(session, n)
LEFT JOIN LATERAL (
    SELECT q.num, q.run_after FROM jobs q WHERE q.session = c.session AND q.state = 'queued'
    ORDER BY q.num LIMIT 1) nx ON true
WHERE s.session = c.session
RETURNING s.session, s.seq - c.n
"""

_EVENTS = """
INSERT INTO events (session, seq, job_id, kind, data, at)
SELECT session, seq, job_id, 'job.cancelled', data, $5
FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[]) AS e(session, seq, job_id, data)
"""

# A session stop leaves this node's own turns to it: it has ended them already, and
# a flag would also catch the session's next turn, started here while the stop ran.
_FLAG = """
UPDATE jobs SET stop_requested = true
WHERE state = 'running' AND (id = $2 OR (session = $1 AND epoch IS DISTINCT FROM $3))
RETURNING id
"""


async def stop_jobs(
    conn: asyncpg.Connection,
    batch: Batch,
    session: str | None,
    job_id: str | None,
    drop_queued: bool,
) -> Stopped:
    """End the queued jobs of ``session`` (all of them with ``drop_queued``, else only
    a retry waiting out its backoff) or the job ``job_id``; flag the running ones."""
    rows = await conn.fetch(_QUEUED, session, job_id, drop_queued)
    ended: list[tuple[JobInfo, Event]] = []
    if rows:
        now = time.time()
        await conn.execute(_END, [row["num"] for row in rows], now)
        per_session: dict[str, int] = {}
        for row in rows:
            per_session[row[1]] = per_session.get(row[1], 0) + 1
        bases = {
            row[0]: row[1]
            for row in await conn.fetch(_ADVANCE, list(per_session), list(per_session.values()))
        }
        made: list[tuple[JobInfo, Event, str]] = []
        for row in rows:
            info = job_info(row)
            bases[info.session] += 1
            data = terminal_data(
                JobState.CANCELLED, attempts=info.attempts, result=None, error=None,
                reason=_STOPPED,
            )  # fmt: skip
            info = replace(info, state=JobState.CANCELLED, reason=_STOPPED, updated_at=now)
            ev = batch.event(info.session, bases[info.session], info.id, "job.cancelled", data, now)
            made.append((info, ev, encode(data)))
        await conn.execute(
            _EVENTS,
            [ev.session for _i, ev, _d in made],
            [ev.seq for _i, ev, _d in made],
            [ev.job_id for _i, ev, _d in made],
            [text for _i, _e, text in made],
            now,
        )
        batch.runnable = True  # the session's next job may run now
        ended = [(info, ev) for info, ev, _d in made]
    flagged = [row[0] for row in await conn.fetch(_FLAG, session, job_id, batch.epoch)]
    return Stopped(ended, flagged)


# -- bounds counted in the database --------------------------------------------------

# The queued jobs of each session (read from ``jobs_queued``) and, when asked, of
# the cluster: one statement for a batch's counted submits.
_COUNTS = """
SELECT c.session, (SELECT count(*) FROM jobs WHERE session = c.session AND state = 'queued'),
       CASE WHEN $2 THEN (SELECT count(*) FROM jobs WHERE state = 'queued') END
FROM unnest($1::text[]) AS c(session)
"""

_KEYS = """
SELECT session, idempotency_key FROM jobs WHERE (session, idempotency_key) IN
    (SELECT * FROM unnest($1::text[], $2::text[]))
"""

Counted = tuple[str | None, int, tuple[JobInfo, Event | None] | None]


async def add_job_counted(
    conn: asyncpg.Connection,
    batch: Batch,
    job_id: str,
    session: str,
    handler: str,
    payload: Any,
    priority: int,
    key: str | None,
    max_per_session: int,
    max_total: int | None,
) -> Counted:
    """``add_job`` unless the session has ``max_per_session`` jobs queued (or the
    cluster ``max_total``). Returns (the bound's name if refused, else None; the
    session's queued jobs before this call; ``add_job``'s answer if written).

    Exact for the session: the writer holds its row, which every node's submit to
    it takes first. A retried submit with a used key gets its earlier job."""
    call = (job_id, session, handler, payload, priority, key, max_per_session, max_total)
    [answer] = await add_jobs_counted(conn, batch, [call])
    return answer


async def add_jobs_counted(
    conn: asyncpg.Connection, batch: Batch, calls: list[tuple[Any, ...]]
) -> list[Counted]:
    """``add_job_counted`` for many calls: one count, then one ``add_jobs``; each call
    sees the ones before it."""
    sessions = sorted({c[1] for c in calls})
    rows = await conn.fetch(_COUNTS, sessions, any(c[7] is not None for c in calls))
    queued = {row[0]: int(row[1]) for row in rows}
    total = int(rows[0][2] or 0)
    keyed = [(c[1], c[5]) for c in calls if c[5] is not None]
    used: set[tuple[str, str]] = set()
    if keyed:
        found = await conn.fetch(_KEYS, [k[0] for k in keyed], [k[1] for k in keyed])
        used = {(row[0], row[1]) for row in found}
    verdicts: list[tuple[str | None, int]] = []
    accepted: list[tuple[Any, ...]] = []
    for job_id, session, handler, payload, priority, key, per_session, max_total in calls:
        before = queued[session]
        refused = None
        if key is None or (session, key) not in used:
            if before >= per_session:
                refused = "max_queued_per_session"
            elif max_total is not None and total >= max_total:
                refused = "max_queued"
            else:
                queued[session] += 1
                total += 1
                if key is not None:
                    used.add((session, key))
        if refused is None:
            accepted.append((job_id, session, handler, payload, priority, key))
        verdicts.append((refused, before))
    answers = iter(await writes.add_jobs(conn, batch, accepted) if accepted else [])
    return [
        (refused, before, None if refused is not None else next(answers))
        for refused, before in verdicts
    ]


# Submits counted in the same wave go to the server as one count and one insert.
writes.BULK[add_job_counted] = writes.Bulk(add_jobs_counted, same_session=True)


async def queued_counts(
    conn: asyncpg.Connection, at_least: int | None
) -> tuple[int, dict[str, int], int]:
    """Queued jobs in the cluster, the sessions with ``at_least`` queued, live nodes."""
    row = await conn.fetchrow(
        "SELECT (SELECT count(*) FROM jobs WHERE state = 'queued'), (SELECT count(*) FROM nodes)"
    )
    assert row is not None
    total, nodes = int(row[0]), int(row[1])
    if at_least is None or total < at_least:
        return total, {}, nodes
    rows = await conn.fetch(
        "SELECT session, count(*) FROM jobs WHERE state = 'queued'"
        " GROUP BY session HAVING count(*) >= $1",
        at_least,
    )
    return total, {row[0]: int(row[1]) for row in rows}, nodes
