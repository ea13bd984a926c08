"""The PostgreSQL store itself: its URL, clear errors, migrations, leases and
what ``open()`` hands a node, with two nodes (stores) on one database."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from pathlib import Path
from typing import Any

import pytest

import laneway
from laneway import ConfigError, JobState, StoreError
from laneway.stores import MemoryStore, Store, open_store
from laneway.stores._options import migration_files
from laneway.stores._postgres import PostgresStore
from laneway.stores._postgres_schema import migrate
from laneway.stores._postgres_settings import parse_url

from ..pgserver import PostgresServer
from ._db import connect, fetch, killed_node, wait_lapsed

SCHEMA_SQL = Path(laneway.__file__).parent / "stores" / "migrations" / "postgres" / "schema.sql"


async def add(store: PostgresStore, session: str, n: int = 0, key: str | None = None) -> str:
    info, _ = await store.add_job(
        job_id=f"{session}-{n}-{key}",
        session=session,
        handler="h",
        payload={"n": n},
        priority=0,
        idempotency_key=key,
    )
    return info.id


# -- the URL -------------------------------------------------------------------------


def test_url_options_are_parsed_and_taken_out_of_the_dsn() -> None:
    s = parse_url(
        "postgres://u:p@db:5433/app?lease=90s&poll=500ms&pool=4&schema=lw&sslmode=disable"
    )
    assert (s.lease, s.pool, s.schema, s.node) == (90.0, 4, "lw", None)
    assert s.dsn == "postgresql://u:p@db:5433/app?sslmode=disable"
    default = parse_url("postgresql://u@db/app")
    assert (default.lease, default.poll, default.pool, default.schema) == (30.0, 1.0, 10, "public")
    assert parse_url("postgresql://u@db/app?lease=2m&poll=0.25").lease == 120.0


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u@db/app?lease=soon",
        "postgresql://u@db/app?lease=0",
        "postgresql://u@db/app?pool=0",
        "postgresql://u@db/app?schema=Bad-Name",
        "postgresql:///app",
    ],
)
def test_bad_url_options_are_config_errors(url: str) -> None:
    with pytest.raises(ConfigError):
        parse_url(url)


def test_without_the_driver_the_error_names_the_extra(tmp_path: Path) -> None:
    blocker = tmp_path / "asyncpg"
    blocker.mkdir()
    (blocker / "__init__.py").write_text("raise ImportError('no asyncpg here')\n")
    code = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "from laneway.stores import MemoryStore, Store, open_store\n"
        "try:\n    open_store('postgresql://u@db/app')\n"
        "except Exception as exc:\n    print(type(exc).__name__, exc)\n"
    )
    import subprocess

    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True
    ).stdout
    assert out.startswith("ConfigError ")
    assert "laneway[postgres]" in out


def test_open_store_knows_both_schemes() -> None:
    assert isinstance(open_store("postgres://u@db/app"), PostgresStore)
    assert isinstance(open_store("postgresql://u@db/app"), PostgresStore)


# -- clear errors ----------------------------------------------------------------------


async def test_an_unreachable_server_is_a_store_error(postgres_server: PostgresServer) -> None:
    store = PostgresStore(f"postgresql://postgres:x@127.0.0.1:{_closed_port()}/postgres")
    with pytest.raises(StoreError, match="cannot reach PostgreSQL"):
        await store.open()


async def test_bad_credentials_are_a_store_error(postgres_server: PostgresServer) -> None:
    store = PostgresStore(postgres_server.dsn(password="wrong"))
    with pytest.raises(StoreError, match="refused the credentials"):
        await store.open()


async def test_a_missing_database_is_a_store_error(postgres_server: PostgresServer) -> None:
    store = PostgresStore(postgres_server.dsn("no_such_db"))
    with pytest.raises(StoreError, match="no_such_db"):
        await store.open()


async def test_a_role_that_may_not_create_the_schema_gets_a_store_error(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    await fetch(postgres_url, "DROP ROLE IF EXISTS visitor")
    await fetch(postgres_url, "CREATE ROLE visitor LOGIN PASSWORD 'visitor-secret'")
    try:
        url = postgres_server.dsn().replace(
            "postgres:laneway-test-secret", "visitor:visitor-secret"
        )
        store = PostgresStore(url + "?schema=not_allowed")
        with pytest.raises(StoreError, match="permission denied"):
            await store.open()
    finally:
        await fetch(postgres_url, "DROP ROLE visitor")


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- migrations -------------------------------------------------------------------------

_CATALOG = """
SELECT 'column', c.relname::text || '.' || a.attname::text,
       concat_ws(' ', format_type(a.atttypid, a.atttypmod), a.attnotnull, a.attidentity,
                 a.attgenerated, pg_get_expr(d.adbin, d.adrelid))
FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE n.nspname = $1 AND c.relkind = 'r' AND a.attnum > 0 AND NOT a.attisdropped
UNION ALL
SELECT 'index', indexname::text, replace(indexdef, $1 || '.', '')
FROM pg_indexes WHERE schemaname = $1
UNION ALL
SELECT 'constraint', c.conname::text, pg_get_constraintdef(c.oid)
FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace
WHERE n.nspname = $1
UNION ALL
SELECT 'sequence', sequencename::text, data_type::text FROM pg_sequences WHERE schemaname = $1
"""


async def _catalog(url: str, schema: str) -> set[tuple[str, str, str]]:
    return {(row[0], row[1], row[2]) for row in await fetch(url, _CATALOG, schema)}


async def test_the_migrations_add_up_to_schema_sql(postgres_url: str) -> None:
    conn = await connect(postgres_url)
    try:
        assert await migrate(conn, "migrated") == migration_files("postgres")[-1][0]
        await conn.execute("CREATE SCHEMA reference; SET search_path = reference")
        await conn.execute(SCHEMA_SQL.read_text())
    finally:
        await conn.close()
    migrated = await _catalog(postgres_url, "migrated")
    assert any(kind == "index" and name == "sessions_ready" for kind, name, _ in migrated)
    assert migrated == await _catalog(postgres_url, "reference")


async def test_migrations_run_once_and_a_newer_schema_is_refused(postgres_url: str) -> None:
    for _ in range(2):
        store = PostgresStore(postgres_url)
        await store.open()
        await store.close()
    rows = await fetch(postgres_url, "SELECT version FROM schema_version ORDER BY version")
    assert [r[0] for r in rows] == [number for number, _name, _sql in migration_files("postgres")]
    await fetch(postgres_url, "INSERT INTO schema_version VALUES (9999, '9999_future.sql', 0)")
    with pytest.raises(StoreError, match="newer than this laneway"):
        await PostgresStore(postgres_url).open()


async def test_nodes_starting_together_migrate_once(postgres_url: str) -> None:
    stores = [PostgresStore(postgres_url) for _ in range(3)]
    await asyncio.gather(*(s.open() for s in stores))
    try:
        rows = await fetch(postgres_url, "SELECT count(*) FROM schema_version")
        assert rows[0][0] == len(migration_files("postgres"))
    finally:
        for s in stores:
            await s.close()


# -- many nodes, one database ------------------------------------------------------------


async def test_two_nodes_open_together_and_each_has_a_lease(postgres_url: str) -> None:
    a, b = PostgresStore(postgres_url), PostgresStore(postgres_url)
    await a.open()
    await b.open()  # no exclusive ownership
    try:
        assert a.epoch != b.epoch
        rows = await fetch(postgres_url, "SELECT node, epoch FROM nodes ORDER BY epoch")
        assert [tuple(r) for r in rows] == [(a.node, a.epoch), (b.node, b.epoch)]
    finally:
        await a.close()
        await b.close()
    assert await fetch(postgres_url, "SELECT * FROM nodes") == []  # a clean close ends the lease


async def test_open_hands_over_only_queued_jobs_and_lapsed_attempts(postgres_url: str) -> None:
    live = PostgresStore(postgres_url)
    await live.open()
    try:
        queued = await add(live, "q")
        mine = await add(live, "m")
        assert await live.start_attempt(mine, 1) is not None
        lapsed, dying_epoch = await killed_node(postgres_url + "&lease=1s", "d")
        await wait_lapsed(postgres_url, dying_epoch)

        third = PostgresStore(postgres_url)
        unfinished = await third.open()
        try:
            assert [(j.id, j.state) for j in unfinished] == [
                (queued, JobState.QUEUED),
                (lapsed, JobState.RUNNING),
            ]
            assert unfinished[1].output
            # The adopted attempt is the new node's: its writes go through, the old owner's do not.
            again = await third.retry(lapsed, 1, error="lost", reason="lost", lost=True, delay=0)
            assert again is not None
        finally:
            await third.close()
    finally:
        await live.close()


async def test_a_node_restarted_by_name_frees_its_slots_at_once(postgres_url: str) -> None:
    named = postgres_url + "&node=pod-0"  # lease 30 s: still live when the node comes back
    job, _epoch = await killed_node(named, "s")
    slots = await fetch(postgres_url, "SELECT job_id FROM slots WHERE lane = 'llm'")
    assert [s[0] for s in slots] == [job]
    again = PostgresStore(named)
    try:
        [info] = await again.open()
        assert (info.id, info.state) == (job, JobState.RUNNING)
        slots = await fetch(postgres_url, "SELECT job_id FROM slots WHERE lane = 'llm'")
        assert [s[0] for s in slots] == [None]
    finally:
        await again.close()


async def test_a_second_process_under_the_same_name_takes_the_lease(postgres_url: str) -> None:
    named = postgres_url + "&node=pod-0"
    first, second = PostgresStore(named), PostgresStore(named)
    await first.open()
    lost: list[int] = []
    first.on_lease_lost.append(lambda: lost.append(first.epoch))
    try:
        await second.open()
        await second.maintain()
        await first.maintain()
        assert lost == [first.epoch]
        assert first.epoch > second.epoch
    finally:
        await first.close()
        await second.close()


async def test_idempotency_key_and_seq_hold_across_nodes(postgres_url: str) -> None:
    a, b = PostgresStore(postgres_url), PostgresStore(postgres_url)
    await a.open()
    await b.open()
    try:
        futures: list[asyncio.Future[Any]] = []
        for i in range(50):
            node = a if i % 2 else b
            futures.append(
                node.add_job(
                    job_id=f"k{i}",
                    session="s",
                    handler="h",
                    payload=i,
                    priority=0,
                    idempotency_key="same",
                )
            )
            futures.append(node.append_event("s", None, "note", i, attempt=None))
        results = await asyncio.gather(*futures)
        ids = {r[0].id for r in results[::2]}
        assert len(ids) == 1
        seqs = [e.seq for e in await a.read_events("s")]
        assert seqs == list(range(1, 52))  # one job.queued + 50 notes, no gap, no repeat
    finally:
        await a.close()
        await b.close()


async def test_submits_in_one_batch_answer_as_if_made_one_by_one(postgres_url: str) -> None:
    store = PostgresStore(postgres_url)
    await store.open()
    try:
        await store.add_job(
            job_id="old", session="a", handler="h", payload="old", priority=0,
            idempotency_key="kept",
        )  # fmt: skip
        calls = [  # (session, key) in call order, all in one batch
            ("a", None), ("b", "k"), ("a", "k"), ("b", "k"), ("a", "kept"), ("b", None),
            ("a", "k"),
        ]  # fmt: skip
        futures = [
            store.add_job(
                job_id=f"n{i}",
                session=session,
                handler="h",
                payload={"i": i},
                priority=i,
                idempotency_key=key,
            )
            for i, (session, key) in enumerate(calls)
        ]
        results = await asyncio.gather(*futures)
        assert store.transactions == 2
    finally:
        await store.close()
    ids = [info.id for info, _event in results]
    assert ids == ["n0", "n1", "n2", "n1", "old", "n5", "n2"]
    assert [event is None for _info, event in results] == [
        False,
        False,
        False,
        True,
        True,
        False,
        True,
    ]
    assert results[4][0].payload == "old"
    assert results[3][0].payload == {"i": 1}
    seqs = [(e.session, e.seq) for _info, e in results if e is not None]
    assert seqs == [("a", 2), ("b", 1), ("a", 3), ("b", 2)]
    events = await fetch(
        postgres_url, "SELECT session, seq, job_id FROM events ORDER BY session, seq"
    )
    assert [tuple(e) for e in events] == [
        ("a", 1, "old"), ("a", 2, "n0"), ("a", 3, "n2"), ("b", 1, "n1"), ("b", 2, "n5"),
    ]  # fmt: skip
    heads = await fetch(postgres_url, "SELECT session, head FROM sessions ORDER BY session")
    nums = await fetch(postgres_url, "SELECT id, num FROM jobs")
    num = {row[0]: row[1] for row in nums}
    assert [tuple(h) for h in heads] == [("a", num["old"]), ("b", num["n1"])]


async def _script(store: Store) -> list[Any]:
    """Writes made without awaiting (one batch each round), as the runtime makes them."""
    sessions = ["a", "b", "c", "a", "b", "c", "a"]
    adds = [
        store.add_job(
            job_id=f"m{i}", session=s, handler="h", payload=i, priority=0, idempotency_key=None
        )
        for i, s in enumerate(sessions)
    ]
    await asyncio.gather(*adds)
    starts = [store.start_attempt("m5", 2)]  # a wrong attempt inside a run of starts
    starts += [store.start_attempt(f"m{i}", 1) for i in (0, 1, 2, 3, 2)]

    ends = [
        store.finish(
            f"m{i}", attempt, JobState.SUCCEEDED, result=i, error=None, reason=None, lost=False
        )
        for i, attempt in ((0, 1), (1, 1), (1, 1), (2, 7), (4, 0), (3, 1), (6, 0))
    ]
    ends.append(store.start_attempt("nobody", 1))
    notes = [  # one batch: fenced and not, a wrong attempt, after a finish, several sessions
        store.append_event(s, job, "delta", {"n": n}, attempt=attempt)
        for n, (s, job, attempt) in enumerate(
            [("b", "m1", 1), ("c", "m2", 1), ("c", "m2", 2), ("a", None, None), ("b", "m1", 1),
             ("a", "m0", 1), ("c", "m5", 1), ("c", None, None)]
        )
    ]  # fmt: skip
    late = store.append_event("a", "m0", "delta", {"late": True}, attempt=1)  # m0 has ended
    answers = await asyncio.gather(*starts, *notes, *ends, late)
    log = [await store.read_events(s) for s in ("a", "b", "c")]
    jobs = [await store.get_job(f"m{i}") for i in range(len(sessions))]
    return [
        [None if e is None else (e.session, e.seq, e.kind, e.data) for e in answers],
        [[(e.seq, e.job_id, e.kind, e.data) for e in events] for events in log],
        [(j.state, j.attempts, j.result, j.output) for j in jobs if j is not None],
    ]


async def test_batched_starts_and_finishes_answer_as_the_memory_store_does(
    postgres_url: str,
) -> None:
    store = PostgresStore(postgres_url)
    await store.open()
    try:
        got = await _script(store)
        assert store.transactions == 2
    finally:
        await store.close()
    memory = MemoryStore()
    await memory.open()
    assert got == await _script(memory)


async def test_writes_are_group_committed(postgres_url: str) -> None:
    store = PostgresStore(postgres_url)
    await store.open()
    try:
        futures = [
            store.add_job(
                job_id=f"g{i}",
                session=f"s{i % 7}",
                handler="h",
                payload=i,
                priority=0,
                idempotency_key=None,
            )
            for i in range(500)
        ]
        await asyncio.gather(*futures)
        assert store.writes == 500
        assert store.transactions < 50
    finally:
        await store.close()


async def test_a_lost_lease_is_noticed_and_fences_the_old_attempts(postgres_url: str) -> None:
    a = PostgresStore(postgres_url + "&lease=1s")
    b = PostgresStore(postgres_url)
    await a.open()
    await b.open()
    lost: list[int] = []
    a.on_lease_lost.append(lambda: lost.append(a.epoch))
    try:
        job = await add(a, "s")
        assert await a.start_attempt(job, 1) is not None
        old = a.epoch
        await wait_lapsed(postgres_url, old)
        [reaped] = await b.reap()
        assert (reaped.job.id, reaped.in_flight) == (job, 1)
        await a.maintain()  # the heartbeat finds the lease gone
        assert lost == [a.epoch]
        assert a.epoch != old
        # The zombie's late writes are refused; the new owner's go through.
        assert await a.append_event("s", job, "delta", {}, attempt=1) is None
        assert await a.finish(job, 1, JobState.SUCCEEDED, result=1, error=None, reason=None,
                              lost=False) is None  # fmt: skip
        assert await b.finish(job, 1, JobState.FAILED, result=None, error="lost", reason="lost",
                              lost=True) is not None  # fmt: skip
    finally:
        await a.close()
        await b.close()


async def test_a_cut_write_connection_is_replaced_and_leaves_no_gap(postgres_url: str) -> None:
    store = PostgresStore(postgres_url)
    await store.open()
    try:
        await add(store, "s", 1)
        await fetch(
            postgres_url,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = 'laneway-writer'",
        )
        # The cut may be seen before this write (a reconnect first) or during it.
        [second] = await asyncio.gather(add(store, "s", 2), return_exceptions=True)
        made = 3
        if isinstance(second, BaseException):
            assert "outcome unknown" in str(second)
            made = 2
        await add(store, "s", 3)  # the writer is not wedged: a new connection commits
        assert [e.seq for e in await store.read_events("s")] == list(range(1, made + 1))
    finally:
        await store.close()


@pytest.mark.slow
async def test_a_database_restart_loses_nothing_committed_and_the_node_carries_on(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    store = PostgresStore(postgres_url)
    await store.open()
    try:
        first = await add(store, "s", 1)
        await asyncio.to_thread(postgres_server.restart)
        outcomes = []
        for n in range(2, 6):  # the first writes after the cut may fail; then they commit
            outcomes.append(await asyncio.gather(add(store, "s", n), return_exceptions=True))
        assert not isinstance(outcomes[-1][0], BaseException)
        failed = [o[0] for o in outcomes if isinstance(o[0], BaseException)]
        assert all(isinstance(f, StoreError) for f in failed)
        for _ in range(3):  # reads and the lease recover the same way
            with contextlib.suppress(StoreError):
                await store.ping()
                await store.maintain()
                break
        await store.ping()
        info = await store.get_job(first)
        assert info is not None
        assert info.state is JobState.QUEUED
        seqs = [e.seq for e in await store.read_events("s")]
        assert seqs == list(range(1, len(seqs) + 1))
        assert len(seqs) == 1 + len(outcomes) - len(failed)
    finally:
        await store.close()
