"""The SQLite store on real files: ownership, broken files and disks, migrations,
retention, group commit. Other processes are real processes."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import laneway
from laneway import ConfigError, JobState, StoreError
from laneway.stores import open_store
from laneway.stores._options import migration_files
from laneway.stores._sqlite import SQLiteStore
from laneway.stores._sqlite_checkpoint import COMMITS_PER_CHECKPOINT, COMMITS_PER_RESTART
from laneway.stores._sqlite_schema import migrate, parse_url

from .._helpers import SRC

# Every test in this module is async, even those that need no loop: the
# looptime plugin opens (and never closes) an event loop for each sync test,
# and warnings-as-errors turns the leak into a failure of a later test.

ENV = {**os.environ, "PYTHONPATH": SRC}
SCHEMA_SQL = Path(laneway.__file__).parent / "stores" / "migrations" / "sqlite" / "schema.sql"


def url_of(path: Path, query: str = "") -> str:
    return f"sqlite:///{path}{query}"


def run_child(code: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


async def add(store: SQLiteStore, job_id: str, session: str = "s", payload: object = None) -> None:
    await store.add_job(
        job_id=job_id,
        session=session,
        handler="h",
        payload=payload,
        priority=0,
        idempotency_key=None,
    )


# -- URL and settings -----------------------------------------------------------------


async def test_url_forms_and_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    store = open_store("sqlite:///data/lw.db?synchronous=full&retain_jobs=12h&retain_events=none")
    assert isinstance(store, SQLiteStore)
    assert store.path == tmp_path / "data" / "lw.db"
    assert store.settings.synchronous == "full"
    assert store.settings.retain_jobs == 12 * 3600
    assert store.settings.retain_events is None
    assert parse_url("sqlite:////var/lib/lw.db").path == "/var/lib/lw.db"
    assert SQLiteStore("sqlite:///x.db", retain_jobs="2d").settings.retain_jobs == 2 * 86400


@pytest.mark.parametrize(
    "url",
    [
        "sqlite://",
        "sqlite:///",
        "sqlite://host/x.db",
        "sqlite:///x.db?synchronous=sometimes",
        "sqlite:///x.db?retain_jobs=-1",
        "sqlite:///x.db?retain_jobs=soon",
        "sqlite:///x.db?unknown=1",
        "sqlite:///x.db?batch_max=0",
    ],
)
async def test_bad_urls_are_config_errors(url: str) -> None:
    with pytest.raises(ConfigError):
        SQLiteStore(url)


# -- ownership ----------------------------------------------------------------------------


OWNER = """
    import asyncio, sys
    from laneway.stores._sqlite import SQLiteStore
    async def main():
        store = SQLiteStore(sys.argv[1])
        await store.open()
        print("ready", flush=True)
        await asyncio.sleep(60)
    asyncio.run(main())
"""


@pytest.fixture
def owner(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process that owns ``tmp_path/owned.db``."""
    with subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(OWNER), url_of(tmp_path / "owned.db")],
        env=ENV,
        stdout=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        try:
            yield proc
        finally:
            proc.kill()


def kill(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait()


async def test_a_second_process_gets_a_store_error_naming_the_owner(
    tmp_path: Path, owner: subprocess.Popen[str]
) -> None:
    store = SQLiteStore(url_of(tmp_path / "owned.db"))
    with pytest.raises(StoreError) as err:
        await store.open()
    message = str(err.value)
    assert f"pid {owner.pid}" in message
    assert socket.gethostname() in message
    assert re.search(r"since \d{4}-\d\d-\d\dT", message)


async def test_ownership_passes_on_when_the_owner_is_killed(
    tmp_path: Path, owner: subprocess.Popen[str]
) -> None:
    kill(owner)
    store = SQLiteStore(url_of(tmp_path / "owned.db"))
    assert await store.open() == []
    await store.close()


async def test_the_same_process_cannot_open_a_database_twice(tmp_path: Path) -> None:
    first = SQLiteStore(url_of(tmp_path / "x.db"))
    await first.open()
    try:
        with pytest.raises(StoreError, match=f"pid {os.getpid()}"):
            await SQLiteStore(url_of(tmp_path / "x.db")).open()
    finally:
        await first.close()
    second = SQLiteStore(url_of(tmp_path / "x.db"))
    await second.open()  # released on close
    await second.close()


# -- broken files and disks ------------------------------------------------------------


async def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        await SQLiteStore(url_of(tmp_path / "nope" / "x.db")).open()
    assert not (tmp_path / "nope").exists()


async def test_a_file_that_is_not_a_database_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "junk.db"
    junk = os.urandom(16_384)
    path.write_bytes(junk)
    started = time.monotonic()
    with pytest.raises(StoreError, match="corrupt or not a laneway database"):
        await SQLiteStore(url_of(path)).open()
    assert time.monotonic() - started < 5
    assert path.read_bytes() == junk
    assert sorted(os.listdir(tmp_path)) == ["junk.db", "junk.db.lock"]


async def test_a_database_with_damaged_pages_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "damaged.db"
    store = SQLiteStore(url_of(path))
    await store.open()
    for i in range(200):
        await add(store, f"j{i}", payload={"pad": "x" * 200})
    await store.close()
    data = bytearray(path.read_bytes())
    data[4096:] = os.urandom(len(data) - 4096)  # keep the header, wreck every page after it
    path.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="cannot open"):
        await SQLiteStore(url_of(path)).open()


READ_ONLY = """
    import asyncio, sys
    from laneway import StoreError
    from laneway.stores._sqlite import SQLiteStore
    async def main():
        try:
            await SQLiteStore(sys.argv[1]).open()
        except StoreError as exc:
            print("StoreError:", exc)
        else:
            print("opened")
    asyncio.run(main())
"""


def run_read_only(folder: Path, url: str) -> str:
    """Open ``url`` in a process that sees ``folder`` read-only.

    Root ignores file modes, so as root the folder is bind-mounted read-only
    in a private mount namespace (a real read-only file system)."""
    argv = [sys.executable, "-c", textwrap.dedent(READ_ONLY), url]
    if os.getuid() == 0:
        if shutil.which("unshare") is None:
            pytest.skip("needs unshare(1) to make a read-only mount as root")
        script = (
            f'mount --bind "{folder}" "{folder}" && '
            f'mount -o remount,ro,bind "{folder}" && exec "$@"'
        )
        argv = ["unshare", "-m", "sh", "-c", script, "sh", *argv]
    else:
        for p in folder.iterdir():
            p.chmod(0o444)
        folder.chmod(0o555)
    proc = subprocess.run(argv, env=ENV, capture_output=True, text=True, timeout=30, check=False)
    if os.getuid() == 0 and "mount" in proc.stderr:
        pytest.skip(f"cannot make a read-only mount here: {proc.stderr.strip()}")
    return (proc.stdout + proc.stderr).strip()


async def test_read_only_path_is_a_clear_store_error(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    path = folder / "ro.db"
    store = SQLiteStore(url_of(path))
    await store.open()
    await add(store, "kept")
    await store.close()
    before = path.read_bytes()
    try:
        out = run_read_only(folder, url_of(path))
    finally:
        folder.chmod(0o755)
        for p in folder.iterdir():
            p.chmod(0o644)
    assert out.startswith("StoreError:"), out
    assert "read-only" in out
    assert path.read_bytes() == before


FULL_DISK = """
    import asyncio, resource, signal, sys
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
    limit = int(sys.argv[2])
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    from laneway import StoreError
    from laneway.stores._sqlite import SQLiteStore
    async def main():
        store = SQLiteStore(sys.argv[1])
        try:
            await store.open()
        except StoreError as exc:
            print("open: StoreError:", exc, flush=True)
            return
        for i in range(100_000):
            try:
                await store.add_job(job_id=f"j{i}", session="s", handler="h",
                                    payload="x" * 2000, priority=0, idempotency_key=None)
            except StoreError as exc:
                print("write: StoreError:", exc, flush=True)
                break
            print("ok", f"j{i}", flush=True)
        # The store still answers (and fails cleanly) after the failed write.
        try:
            await store.add_job(job_id="after", session="s", handler="h", payload="x" * 2000,
                                priority=0, idempotency_key=None)
        except StoreError:
            print("still failing cleanly", flush=True)
        await store.close()
    asyncio.run(main())
"""


def run_full_disk(url: str, limit: int) -> list[str]:
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(FULL_DISK), url, str(limit)],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


async def test_full_disk_at_open_is_a_clear_store_error(tmp_path: Path) -> None:
    lines = run_full_disk(url_of(tmp_path / "full.db"), 8_192)
    assert len(lines) == 1
    assert lines[0].startswith("open: StoreError:")
    assert "disk is full" in lines[0] or "disk I/O" in lines[0]


async def test_full_disk_while_running_fails_writes_and_keeps_committed_ones(
    tmp_path: Path,
) -> None:
    path = tmp_path / "filling.db"
    lines = run_full_disk(url_of(path), 600_000)
    acknowledged = {line.split()[1] for line in lines if line.startswith("ok ")}
    assert acknowledged, lines[:3]
    assert any(line.startswith("write: StoreError:") for line in lines), lines[-3:]
    assert "still failing cleanly" in lines
    store = SQLiteStore(url_of(path))
    unfinished = await store.open()
    await store.close()
    # Exactly the acknowledged jobs exist: nothing lost, nothing half-written.
    assert {j.id for j in unfinished} == acknowledged


# -- migrations ----------------------------------------------------------------------


def _schema(conn: sqlite3.Connection) -> set[tuple[str, str, str]]:
    rows = conn.execute(
        "SELECT type, name, sql FROM sqlite_master WHERE sql IS NOT NULL"
    ).fetchall()
    return {(kind, name, _normalise(sql)) for kind, name, sql in rows}


def _normalise(sql: str) -> str:
    sql = re.sub(r"--[^\n]*", "", sql)
    sql = re.sub(r"\s+", " ", sql)
    sql = re.sub(r"\s*([(),])\s*", r"\1", sql)
    return sql.strip()


async def test_the_migrations_add_up_to_schema_sql() -> None:
    migrated = sqlite3.connect(":memory:", isolation_level=None)
    assert migrate(migrated) == migration_files("sqlite")[-1][0]
    reference = sqlite3.connect(":memory:", isolation_level=None)
    reference.executescript(SCHEMA_SQL.read_text())
    assert _schema(migrated) == _schema(reference)


async def test_a_fresh_store_has_exactly_the_migrated_schema(tmp_path: Path) -> None:
    store = SQLiteStore(url_of(tmp_path / "fresh.db"))
    await store.open()
    await store.close()
    fresh = sqlite3.connect(tmp_path / "fresh.db")
    migrated = sqlite3.connect(":memory:", isolation_level=None)
    migrate(migrated)
    assert _schema(fresh) == _schema(migrated)
    versions = [row[0] for row in fresh.execute("SELECT version FROM schema_version")]
    assert versions == [number for number, _name, _sql in migration_files("sqlite")]
    fresh.close()


async def test_migrations_run_once_and_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "v.db"
    for _ in range(2):
        store = SQLiteStore(url_of(path))
        await store.open()
        await store.close()
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT count(*) FROM schema_version").fetchone()[0] == len(
        migration_files("sqlite")
    )
    conn.execute("INSERT INTO schema_version VALUES (9999, '9999_future.sql', 0)")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="newer than this laneway"):
        await SQLiteStore(url_of(path)).open()


@pytest.mark.parametrize(
    ("where", "index"),
    [
        ("", "jobs_namespace"),
        ("AND state = 'dead' AND num < 10", "jobs_namespace_state"),
    ],
)
def test_a_namespace_is_listed_from_its_index(where: str, index: str) -> None:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    migrate(conn)
    plan = " ".join(
        row[3]
        for row in conn.execute(
            "EXPLAIN QUERY PLAN SELECT id FROM jobs"
            f" WHERE substr(session, 1, instr(session, '/')) = 'alice/' {where}"
            " ORDER BY num DESC LIMIT 10"
        )
    )
    assert f"USING INDEX {index}" in plan
    assert "TEMP B-TREE" not in plan  # already in order: a page reads only its own rows


# -- upkeep and batching --------------------------------------------------------------


async def test_retention_removes_old_finished_jobs_and_events_only(tmp_path: Path) -> None:
    store = SQLiteStore(url_of(tmp_path / "r.db"), retain_jobs="1h", retain_events="1h")
    await store.open()
    for name in ("done", "failed", "waiting"):
        await add(store, name)
    for name, state in (("done", JobState.SUCCEEDED), ("failed", JobState.FAILED)):
        await store.start_attempt(name, 1)
        await store.finish(name, 1, state, result=None, error=None, reason=None, lost=False)
    assert await store.retain() == (0, 0)  # nothing is old yet
    jobs, events = await store.retain(now=time.time() + 2 * 3600)
    assert (jobs, events) == (2, 7)
    assert [j.id for j in await store.list_jobs()] == ["waiting"]
    assert await store.read_events("s") == []
    # seq keeps rising after the old events are gone, also across a restart.
    await add(store, "later")
    await store.close()
    store = SQLiteStore(url_of(tmp_path / "r.db"))
    await store.open()
    await add(store, "latest")
    assert [e.seq for e in await store.read_events("s")] == [8, 9]
    await store.close()


async def test_maintain_renews_the_owner_heartbeat(tmp_path: Path) -> None:
    path = tmp_path / "hb.db"
    store = SQLiteStore(url_of(path))
    await store.open()
    conn = sqlite3.connect(path)
    first = conn.execute("SELECT pid, heartbeat_at FROM owner").fetchone()
    assert first[0] == os.getpid()
    time.sleep(0.02)
    await store.maintain()
    second = conn.execute("SELECT heartbeat_at FROM owner").fetchone()
    assert second[0] > first[1]
    conn.close()
    await store.ping()
    await store.close()
    with pytest.raises(StoreError):
        await store.ping()


async def test_concurrent_writes_share_transactions(tmp_path: Path) -> None:
    store = SQLiteStore(url_of(tmp_path / "g.db"))
    await store.open()
    futs = [
        store.add_job(
            job_id=f"j{i}",
            session=f"s{i % 7}",
            handler="h",
            payload=i,
            priority=0,
            idempotency_key=None,
        )
        for i in range(500)
    ]
    for fut in futs:
        await fut
    assert store.writes == 500
    assert store.transactions <= 50
    await store.close()


async def test_writes_after_close_fail_instead_of_hanging(tmp_path: Path) -> None:
    store = SQLiteStore(url_of(tmp_path / "c.db"))
    await store.open()
    await store.close()
    with pytest.raises(StoreError, match="not open"):
        await store.start_attempt("x", 1)
    with pytest.raises(StoreError, match="not open"):
        await store.get_job("x")


def _size(path: Path) -> int:
    return path.stat().st_size


async def test_the_wal_is_checkpointed_beside_the_writer(tmp_path: Path) -> None:
    """Commits never checkpoint (an fsync inside a submit), yet the WAL stays bounded."""
    path = tmp_path / "w.db"
    wal = Path(f"{path}-wal")
    store = SQLiteStore(url_of(path))
    await store.open()
    commits, text = 5 * COMMITS_PER_RESTART, "x" * 2_000
    first = COMMITS_PER_CHECKPOINT - 1  # before the first nudge: nothing checkpointed yet
    for i in range(commits):  # one transaction each: every await waits for its commit
        await add(store, f"j{i}", payload={"text": text})
        if i + 1 == first:
            early = _size(wal)
    final = _size(wal)
    assert store.transactions == commits
    await store.close()
    # Never restarted, the WAL would grow by the same amount every commit, to 40 times
    # its early size; restarted every COMMITS_PER_RESTART commits, it stays near 8 times.
    assert final < 20 * early
    again = SQLiteStore(url_of(path))
    await again.open()
    assert len(await again.list_jobs(limit=commits + 1)) == commits
    await again.close()
