"""LISTEN/NOTIFY as a hint: one notification per transaction that made work
runnable or appended events, none for a write that changed nothing, and a
killed LISTEN connection is opened again while the poll keeps things moving."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from laneway.stores._postgres import PostgresStore
from laneway.stores._postgres_listen import Listener, Wakeup

from ._db import connect, fetch


@pytest.fixture
async def pair(postgres_url: str) -> AsyncIterator[tuple[PostgresStore, PostgresStore]]:
    a = PostgresStore(postgres_url + "&poll=300ms")
    b = PostgresStore(postgres_url + "&poll=300ms")
    await a.open()
    await b.open()
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()


async def hints(listener: Listener, session: str, until: float = 5.0) -> Wakeup:
    """The first wake-up that was a notification naming ``session``."""
    deadline = time.monotonic() + until
    while time.monotonic() < deadline:
        got = await listener.wait()
        if not got.polled and session in got.sessions:
            return got
    raise AssertionError(f"no notification for {session!r} came")


async def test_another_nodes_writes_wake_the_listener_with_their_sessions(
    pair: tuple[PostgresStore, PostgresStore],
) -> None:
    a, b = pair
    listener = await b.listen()
    await a.add_job(
        job_id="j1", session="alice", handler="h", payload=None, priority=0, idempotency_key=None
    )
    got = await hints(listener, "alice")
    assert (got.work, got.sessions) == (True, {"alice"})
    note = await a.append_event("bob", None, "note", 1, attempt=None)
    assert note is not None
    got = await hints(listener, "bob")
    assert (got.work, got.sessions) == (False, {"bob"})


async def test_one_notification_per_transaction_and_none_for_a_refused_write(
    pair: tuple[PostgresStore, PostgresStore], postgres_url: str
) -> None:
    a, _b = pair
    conn_rows: list[str] = []
    conn = await connect(postgres_url)
    await conn.add_listener(a.channel, lambda *args: conn_rows.append(str(args[3])))
    try:
        before = a.transactions
        await asyncio.gather(
            *(
                a.add_job(
                    job_id=f"g{i}",
                    session=f"s{i % 5}",
                    handler="h",
                    payload=i,
                    priority=0,
                    idempotency_key=None,
                )
                for i in range(300)
            )
        )
        assert await a.start_attempt("g0", 7) is None  # refused: nothing changed
        committed = a.transactions - before
        await fetch(postgres_url, "SELECT pg_notify($1, 'marker')", a.channel)
        for _ in range(100):
            if conn_rows and conn_rows[-1] == "marker":
                break
            await asyncio.sleep(0.02)
        notes = conn_rows[:-1]
        assert len(notes) == committed - 1  # the refused write's transaction sent nothing
        assert all(n.startswith("work ") for n in notes)
    finally:
        await conn.close()


@pytest.mark.slow
async def test_a_killed_listen_connection_comes_back_and_polling_covers_the_gap(
    pair: tuple[PostgresStore, PostgresStore], postgres_url: str
) -> None:
    a, b = pair
    listener = await b.listen()
    assert listener.conn is not None
    old = listener.conn.get_server_pid()
    await fetch(postgres_url, "SELECT pg_terminate_backend($1)", old)
    start = time.monotonic()
    await listener.wait()  # returns within the poll, notification or not
    assert time.monotonic() - start < 2.0
    for _ in range(100):
        if listener.conn is not None and listener.conn.get_server_pid() != old:
            break
        await listener.wait()
    assert listener.reconnects == 1
    await a.add_job(
        job_id="after", session="carol", handler="h", payload=None, priority=0,
        idempotency_key=None,
    )  # fmt: skip
    got = await hints(listener, "carol")
    assert got.work
