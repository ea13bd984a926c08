"""Every state change of the PostgreSQL store, run inside the writer's transaction
(see ``_postgres_writer``). Submits, starts and finishes are written as one
statement for many calls (``BULK``); a single call is that statement with one row.

The transition rules are the rulebook's (``_rules``, shared by every store); this
module enforces them in the database, as SQL ``WHERE`` clauses, so a write from
any node is checked in the transaction that makes it:

- start: ``state = 'queued' AND attempts = attempt - 1``;
- any write of a running attempt (event, retry, finish): ``state = 'running'
  AND attempts = attempt AND epoch = <this node's epoch>``; the epoch fences
  out a zombie, and a node whose attempts another node took over;
- finish of a job that is not running: ``state = 'queued' AND attempts = attempt``;
- requeue: ``state IN REQUEUEABLE``.

Every function that touches a session expects the writer to hold that
session's row lock already (taken for the whole batch, in sorted order), and
each keeps ``sessions.head``/``running`` in step so claims see the truth.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from .._types import Event, JobInfo, JobState
from . import _rules as rules
from ._postgres_rows import JOB_COLUMNS, encode, job_info
from ._rules import terminal_data

__all__ = [
    "BULK",
    "REQUEUEABLE",
    "Batch",
    "add_job",
    "append_event",
    "finish",
    "requeue",
    "retry",
    "start_attempt",
]

REQUEUEABLE = ("failed", "timed_out", "dead")


@dataclass(slots=True)
class Batch:
    """What one transaction's writes share: the writer's epoch, and what to announce."""

    epoch: int
    session_limit: int = 1
    events: set[str] = field(default_factory=set)  # sessions that got events
    runnable: bool = False  # work became runnable or slots were freed

    def event(
        self, session: str, seq: int, job_id: str | None, kind: str, data: Any, at: float
    ) -> Event:
        self.events.add(session)
        return Event(seq, session, job_id, kind, data, at)


async def add_job(
    conn: asyncpg.Connection,
    batch: Batch,
    job_id: str,
    session: str,
    handler: str,
    payload: Any,
    priority: int,
    key: str | None,
) -> tuple[JobInfo, Event | None]:
    [answer] = await add_jobs(conn, batch, [(job_id, session, handler, payload, priority, key)])
    return answer


# Many submits in one statement: per session, seq rises by one per job in call order.
_ADD_MANY = """
WITH v AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int[], $6::text[],
                         $7::text[])
    WITH ORDINALITY AS v(id, session, handler, payload, priority, key, data, ord)),
j AS (
    INSERT INTO jobs (id, session, handler, payload, priority, idempotency_key, state,
                      created_at, updated_at)
    SELECT id, session, handler, payload, priority, key, 'queued', $8, $8 FROM v ORDER BY ord
    RETURNING num, session),
c AS (SELECT session, count(*) AS n, min(num) AS first FROM j GROUP BY session),
s AS (
    UPDATE sessions SET seq = seq + c.n, head = least(head, c.first),
        not_before = CASE WHEN head IS NULL THEN 0 ELSE not_before END
    FROM c WHERE sessions.session = c.session
    RETURNING sessions.session, sessions.seq - c.n AS base)
INSERT INTO events (session, seq, job_id, kind, data, at)
SELECT v.session, s.base + row_number() OVER (PARTITION BY v.session ORDER BY v.ord), v.id,
       'job.queued', v.data, $8
FROM v JOIN s ON s.session = v.session
RETURNING job_id, seq
"""


async def _known_keys(
    conn: asyncpg.Connection, calls: list[tuple[Any, ...]]
) -> dict[tuple[str, str], JobInfo]:
    keyed = [(c[1], c[5]) for c in calls if c[5] is not None]
    if not keyed:
        return {}
    rows = await conn.fetch(
        f"SELECT {JOB_COLUMNS} FROM jobs WHERE (session, idempotency_key) IN"
        " (SELECT * FROM unnest($1::text[], $2::text[]))",
        [k[0] for k in keyed],
        [k[1] for k in keyed],
    )
    return {(row[1], row[11]): job_info(row) for row in rows}


async def add_jobs(
    conn: asyncpg.Connection, batch: Batch, calls: list[tuple[Any, ...]]
) -> list[tuple[JobInfo, Event | None]]:
    """``add_job`` for many calls at once, with the same answers in the same order."""
    known = await _known_keys(conn, calls)
    now = time.time()
    planned: list[tuple[JobInfo, bool]] = []  # (job, accepted by this call)
    rows: list[tuple[Any, ...]] = []
    for job_id, session, handler, payload, priority, key in calls:
        earlier = known.get((session, key)) if key is not None else None
        if earlier is not None:
            planned.append((earlier, False))
            continue
        info = _queued_info(job_id, session, handler, payload, priority, key, now)
        if key is not None:
            known[(session, key)] = info
        encoded = encode(payload)
        data = f'{{"handler":{encode(handler)},"payload":{encoded}}}'
        rows.append((job_id, session, handler, encoded, priority, key, data))
        planned.append((info, True))
    seqs: dict[str, int] = {}
    if rows:
        columns = [list(column) for column in zip(*rows, strict=True)]
        seqs = {row[0]: row[1] for row in await conn.fetch(_ADD_MANY, *columns, now)}
        batch.runnable = True
    return [
        (info, _queued_event(batch, info, seqs[info.id], now) if accepted else None)
        for info, accepted in planned
    ]


def _queued_event(batch: Batch, info: JobInfo, seq: int, now: float) -> Event:
    data = {"handler": info.handler, "payload": info.payload}
    return batch.event(info.session, seq, info.id, "job.queued", data, now)


def _queued_info(
    job_id: str, session: str, handler: str, payload: Any, priority: int, key: str | None,
    now: float,
) -> JobInfo:  # fmt: skip
    return JobInfo(
        id=job_id, session=session, handler=handler, state=JobState.QUEUED, attempts=0,
        error=None, result=None, reason=None, payload=payload, priority=priority, lost=0,
        idempotency_key=key, created_at=now, updated_at=now,
    )  # fmt: skip


async def start_attempt(
    conn: asyncpg.Connection, batch: Batch, job_id: str, attempt: int
) -> Event | None:
    [answer] = await start_attempts(conn, batch, [(job_id, attempt)])
    return answer


async def append_event(
    conn: asyncpg.Connection,
    batch: Batch,
    session: str,
    job_id: str | None,
    kind: str,
    data: Any,
    attempt: int | None,
) -> Event | None:
    [answer] = await append_events(conn, batch, [(session, job_id, kind, data, attempt)])
    return answer


# FOR SHARE holds the attempts against a takeover until this transaction ends.
_FENCE = """
SELECT id, attempts, output FROM jobs
WHERE state = 'running' AND epoch = $3
  AND (id, attempts) IN (SELECT * FROM unnest($1::text[], $2::int[]))
FOR SHARE
"""

_BUMP = """
UPDATE sessions SET seq = seq + c.n FROM unnest($1::text[], $2::int[]) AS c(session, n)
WHERE sessions.session = c.session RETURNING sessions.session, sessions.seq - c.n
"""

_INSERT_EVENTS = """
INSERT INTO events (session, seq, job_id, kind, data, at)
SELECT session, seq, job_id, kind, data, $6
FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[])
    AS e(session, seq, job_id, kind, data)
"""


async def append_events(
    conn: asyncpg.Connection, batch: Batch, calls: list[tuple[Any, ...]]
) -> list[Event | None]:
    """``append_event`` for many calls (one session or many), in call order."""
    now = time.time()
    encoded = [encode(c[3]) for c in calls]  # before any write: a bad value fails alone
    fenced = [(c[1], c[4]) for c in calls if c[4] is not None]
    live: dict[tuple[str, int], bool] = {}
    if fenced:
        rows = await conn.fetch(_FENCE, [f[0] for f in fenced], [f[1] for f in fenced], batch.epoch)
        live = {(row[0], row[1]): row[2] for row in rows}
    taken = [i for i, c in enumerate(calls) if c[4] is None or (c[1], c[4]) in live]
    if not taken:
        return [None] * len(calls)
    quiet = sorted({calls[i][1] for i in taken if calls[i][4] is not None}
                   - {job for (job, _a), output in live.items() if output})  # fmt: skip
    if quiet:
        await conn.execute("UPDATE jobs SET output = true WHERE id = ANY($1::text[])", quiet)
    counts = Counter(calls[i][0] for i in taken)
    rows = await conn.fetch(_BUMP, list(counts), list(counts.values()))
    seq = {row[0]: row[1] for row in rows}
    answers: list[Event | None] = [None] * len(calls)
    for i in taken:
        session, job_id, kind, data, _attempt = calls[i]
        seq[session] += 1
        answers[i] = batch.event(session, seq[session], job_id, kind, data, now)
    made = [answers[i] for i in taken]
    await conn.execute(
        _INSERT_EVENTS,
        [e.session for e in made if e is not None],
        [e.seq for e in made if e is not None],
        [e.job_id for e in made if e is not None],
        [e.kind for e in made if e is not None],
        [encoded[i] for i in taken],
        now,
    )
    return answers


_RETRY = """
WITH j AS (
    UPDATE jobs SET state = 'queued', error = $4, reason = $5, lost = lost + $6, epoch = NULL,
        run_after = extract(epoch FROM clock_timestamp()) + $7, updated_at = $8, attempts = $10
    WHERE id = $1 AND state = 'running' AND attempts = $2 AND epoch = $3
    RETURNING session, num, run_after),
f AS (UPDATE slots SET job_id = NULL WHERE job_id = $1 AND EXISTS (SELECT 1 FROM j)),
s AS (
    UPDATE sessions SET seq = seq + 1, running = greatest(running - 1, 0),
        head = least(head, j.num),
        not_before = CASE WHEN head IS NULL OR j.num < head THEN j.run_after ELSE not_before END
    FROM j WHERE sessions.session = j.session RETURNING sessions.session, seq)
INSERT INTO events (session, seq, job_id, kind, data, at)
SELECT s.session, s.seq, $1, 'job.retry', $9, $8 FROM s RETURNING session, seq
"""


async def retry(
    conn: asyncpg.Connection,
    batch: Batch,
    job_id: str,
    attempt: int,
    error: str | None,
    reason: str,
    lost: bool,
    delay: float,
    counts_attempt: bool = True,
) -> Event | None:
    now = time.time()
    data = rules.retry_data(attempt, reason, error, delay, counts_attempt)
    attempts = rules.retried_attempts(attempt, counts_attempt)
    row = await conn.fetchrow(
        _RETRY, job_id, attempt, batch.epoch, error, reason, int(lost), delay, now, encode(data),
        attempts,
    )  # fmt: skip
    if row is None:
        return None
    batch.runnable = True
    return batch.event(row[0], row[1], job_id, "job.retry", data, now)


async def finish(
    conn: asyncpg.Connection,
    batch: Batch,
    job_id: str,
    attempt: int,
    state: JobState,
    result: Any,
    error: str | None,
    reason: str | None,
    lost: bool,
) -> Event | None:
    [answer] = await finishes(conn, batch, [(job_id, attempt, state, result, error, reason, lost)])
    return answer


def _terminal_text(
    state: JobState, attempt: int, result: str, error: str | None, reason: str | None
) -> str:
    return (
        f'{{"state":"{state.value}","reason":{encode(reason)},"error":{encode(error)},'
        f'"result":{result},"attempts":{attempt}}}'
    )


_REQUEUE = f"""
WITH j AS (
    UPDATE jobs SET state = 'queued', attempts = 0, lost = 0, output = false, result = 'null',
        error = NULL, reason = NULL, epoch = NULL, run_after = 0, num = DEFAULT, updated_at = $2
    WHERE id = $1 AND state = $3 RETURNING {JOB_COLUMNS}, num),
s AS (
    UPDATE sessions SET seq = seq + 1, head = least(head, j.num),
        not_before = CASE WHEN head IS NULL THEN 0 ELSE not_before END
    FROM j WHERE sessions.session = j.session RETURNING seq)
SELECT j.*, s.seq FROM j, s
"""


async def requeue(
    conn: asyncpg.Connection, batch: Batch, job_id: str
) -> tuple[JobInfo, Event] | None:
    old = await conn.fetchrow(
        "SELECT state, attempts, lost FROM jobs WHERE id = $1 FOR UPDATE", job_id
    )
    if old is None or not rules.may_requeue(old["state"]):
        return None
    previous = old["state"]
    now = time.time()
    row = await conn.fetchrow(_REQUEUE, job_id, now, previous)
    assert row is not None  # the row is locked and requeueable
    info = job_info(row)
    data = rules.requeued_data(info.handler, info.payload, previous, old["attempts"], old["lost"])
    seq = row["seq"]
    await conn.execute(
        "INSERT INTO events (session, seq, job_id, kind, data, at)"
        " VALUES ($1, $2, $3, $4, $5, $6)",
        info.session, seq, job_id, rules.REQUEUED_KIND, encode(data), now,
    )  # fmt: skip
    batch.runnable = True
    return info, batch.event(info.session, seq, job_id, rules.REQUEUED_KIND, data, now)


_START_MANY = """
WITH v AS (SELECT * FROM unnest($1::text[], $2::int[], $3::text[]) AS v(id, attempt, data)),
j AS (
    UPDATE jobs SET state = 'running', attempts = v.attempt, output = false, epoch = $4,
        updated_at = $5
    FROM v WHERE jobs.id = v.id AND jobs.attempts = v.attempt - 1
      AND CASE WHEN jobs.state = 'queued' THEN true END  -- a guard, not a way in: see _FINISH_MANY
    RETURNING jobs.id, jobs.session, jobs.num),
s AS (
    UPDATE sessions SET seq = seq + 1, running = running + 1,
        head = nx.num, not_before = coalesce(nx.run_after, 0)
    FROM j LEFT JOIN LATERAL (
        SELECT q.num, q.run_after FROM jobs q
        WHERE q.session = j.session AND q.state = 'queued' AND q.num <> j.num
        ORDER BY q.num LIMIT 1) nx ON true
    WHERE sessions.session = j.session RETURNING sessions.session, seq, j.id)
INSERT INTO events (session, seq, job_id, kind, data, at)
SELECT s.session, s.seq, s.id, 'job.started', v.data, $5 FROM s JOIN v ON v.id = s.id
RETURNING job_id, session, seq
"""


async def start_attempts(
    conn: asyncpg.Connection, batch: Batch, calls: list[tuple[Any, ...]]
) -> list[Event | None]:
    """``start_attempt`` for jobs of distinct sessions, in one statement."""
    now = time.time()
    ids = [c[0] for c in calls]
    attempts = [c[1] for c in calls]
    datas = [f'{{"attempt":{a}}}' for a in attempts]
    rows = await conn.fetch(_START_MANY, ids, attempts, datas, batch.epoch, now)
    got = {row[0]: (row[1], row[2]) for row in rows}
    return [
        batch.event(got[i][0], got[i][1], i, "job.started", {"attempt": a}, now)
        if i in got
        else None
        for i, a in zip(ids, attempts, strict=True)
    ]


# The jobs are found by id; the state tests are a CASE so that no planner (a young
# table has no statistics) takes them as a way in and scans every queued job
# through jobs_queued, which it took for a few rows.
_FINISH_MANY = """
WITH v AS (
    SELECT * FROM unnest($1::text[], $2::int[], $3::text[], $4::text[], $5::text[], $6::text[],
                         $7::int[], $8::text[], $9::text[])
    AS v(id, attempt, state, result, error, reason, lost, kind, data)),
old AS (
    SELECT jobs.id, jobs.session, jobs.num, jobs.state FROM jobs JOIN v ON jobs.id = v.id
    WHERE jobs.attempts = v.attempt
      AND CASE jobs.state WHEN 'queued' THEN true WHEN 'running' THEN jobs.epoch = $10 END
    FOR UPDATE OF jobs),
j AS (
    UPDATE jobs SET state = v.state, result = v.result, error = v.error, reason = v.reason,
        lost = jobs.lost + v.lost, epoch = NULL, updated_at = $11
    FROM old JOIN v ON v.id = old.id WHERE jobs.id = old.id
    RETURNING old.id, old.session, old.num, old.state AS was),
f AS (UPDATE slots SET job_id = NULL WHERE job_id IN (SELECT id FROM j WHERE was = 'running')),
s AS (
    UPDATE sessions SET seq = seq + 1,
        running = greatest(running - (j.was = 'running')::int, 0),
        head = CASE WHEN j.was = 'queued' AND head = j.num THEN nx.num ELSE head END,
        not_before = CASE WHEN j.was = 'queued' AND head = j.num
                          THEN coalesce(nx.run_after, 0) ELSE not_before END
    FROM j LEFT JOIN LATERAL (
        SELECT q.num, q.run_after FROM jobs q
        WHERE q.session = j.session AND q.state = 'queued' AND q.num <> j.num
        ORDER BY q.num LIMIT 1) nx ON true
    WHERE sessions.session = j.session RETURNING sessions.session, seq, j.id)
INSERT INTO events (session, seq, job_id, kind, data, at)
SELECT s.session, s.seq, s.id, v.kind, v.data, $11 FROM s JOIN v ON v.id = s.id
RETURNING job_id, session, seq
"""


async def finishes(
    conn: asyncpg.Connection, batch: Batch, calls: list[tuple[Any, ...]]
) -> list[Event | None]:
    """``finish`` for jobs of distinct sessions, in one statement."""
    now = time.time()
    columns: list[list[Any]] = [[] for _ in range(9)]
    datas = []
    for job_id, attempt, state, result, error, reason, lost in calls:
        encoded = encode(result)
        kind = f"job.{state.value}"
        data = terminal_data(state, attempts=attempt, result=result, error=error, reason=reason)
        datas.append((kind, data))
        text = _terminal_text(state, attempt, encoded, error, reason)
        row = (job_id, attempt, state.value, encoded, error, reason, int(lost), kind, text)
        for column, value in zip(columns, row, strict=True):
            column.append(value)
    rows = await conn.fetch(_FINISH_MANY, *columns, batch.epoch, now)
    got = {row[0]: (row[1], row[2]) for row in rows}
    if got:
        batch.runnable = True
    return [
        batch.event(got[c[0]][0], got[c[0]][1], c[0], kind, data, now) if c[0] in got else None
        for c, (kind, data) in zip(calls, datas, strict=True)
    ]


@dataclass(frozen=True, slots=True)
class Bulk:
    """The form of a write that applies many calls in one statement (the single
    call is the same statement with one row).

    ``same_session``: whether the run may hold two calls on one session (else the
    writer cuts the run there, so each call still sees the one before it).
    """

    fn: Any
    same_session: bool


BULK: dict[Any, Bulk] = {
    add_job: Bulk(add_jobs, same_session=True),
    start_attempt: Bulk(start_attempts, same_session=False),
    append_event: Bulk(append_events, same_session=True),
    finish: Bulk(finishes, same_session=False),
}
