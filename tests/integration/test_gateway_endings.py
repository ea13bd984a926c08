"""``laneway serve`` ending honestly, on a real SQLite file: SIGTERM drains
(readiness fails and submits are refused at once, running turns finish or end
``shutdown`` without a replay), a deleted database stops acknowledging, a
removed lock file does not let a second server in, and a server that cannot
start says so in one line with exit code 1 or 2."""

from __future__ import annotations

import signal
import socket
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from .conftest import LiveServer, laneway_env, run_cli, start_server

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]


def _post(server: LiveServer, session: str, text: str) -> httpx.Response:
    with server.client() as client:
        return client.post(f"/v1/sessions/{session}/messages", json={"text": text})


def _until(check: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)


def _events(db: Path, job_id: str) -> list[str]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT kind FROM events WHERE job_id = ? ORDER BY id", (job_id,))
        return [r[0] for r in rows]


def _job(db: Path, job_id: str) -> tuple[str, str | None]:
    with sqlite3.connect(db) as conn:
        row = conn.execute("SELECT state, reason FROM jobs WHERE id = ?", (job_id,)).fetchone()
    return row[0], row[1]


def _streaming(db: Path, job_id: str) -> Callable[[], bool]:
    return lambda: "delta" in _events(db, job_id)


def _serve(db: Path, grace: str = "") -> LiveServer:
    """A server on ``db`` (``grace``: LANEWAY_SHUTDOWN_GRACE, default 30 s)."""
    return start_server(LANEWAY_STORE=f"sqlite:///{db}", LANEWAY_SHUTDOWN_GRACE=grace)


def _sigterm(server: LiveServer) -> float:
    """SIGTERM; returns the seconds until the process exited."""
    t0 = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    server.proc.wait(timeout=60)
    return time.monotonic() - t0


def test_sigterm_with_nothing_running_exits_at_once(tmp_path: Path) -> None:
    server = _serve(tmp_path / "idle.db")
    try:
        took = _sigterm(server)
    finally:
        server.stop()
    assert server.proc.returncode == 0
    assert took < 5
    print(f"idle: {took:.2f}s from SIGTERM to exit")


def test_sigterm_lets_the_running_turn_finish_and_refuses_new_work(tmp_path: Path) -> None:
    db = tmp_path / "drain.db"
    server = _serve(db)
    try:
        job_id = _post(server, "rs", "/slow 3").json()["job_id"]
        _until(_streaming(db, job_id))
        t0 = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        with server.client() as client:
            _until(lambda: client.get("/readyz").status_code == 503, timeout=5)
            refused = client.post("/v1/sessions/other/messages", json={"text": "hi"})
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "shutting_down"
        server.proc.wait(timeout=30)
        took = time.monotonic() - t0
    finally:
        server.stop()
    assert server.proc.returncode == 0
    assert _job(db, job_id) == ("succeeded", None)
    assert _events(db, job_id).count("job.started") == 1
    print(f"busy, default grace: {took:.2f}s from SIGTERM to exit")


def test_past_a_short_grace_the_turn_ends_shutdown_and_the_next_message_runs_after_restart(
    tmp_path: Path,
) -> None:
    db = tmp_path / "grace.db"
    server = _serve(db, grace="1")
    try:
        slow = _post(server, "rs", "/slow 30").json()["job_id"]
        after = _post(server, "rs", "hello").json()["job_id"]
        _until(_streaming(db, slow))
        took = _sigterm(server)
    finally:
        server.stop()
    assert server.proc.returncode == 0
    assert took < 1 + 5
    assert _job(db, slow) == ("failed", "shutdown")
    assert _job(db, after)[0] == "queued"

    again = _serve(db)
    try:
        _until(lambda: _job(db, after)[0] == "succeeded")
    finally:
        again.stop()
    assert _events(db, slow).count("job.started") == 1  # never replayed
    print(f"busy, 1 s grace: {took:.2f}s from SIGTERM to exit")


def test_a_second_sigterm_ends_the_drain_at_once(tmp_path: Path) -> None:
    db = tmp_path / "twice.db"
    server = _serve(db)
    try:
        slow = _post(server, "rs", "/slow 30").json()["job_id"]
        _until(_streaming(db, slow))
        server.proc.send_signal(signal.SIGTERM)
        with server.client() as client:
            _until(lambda: client.get("/readyz").status_code == 503, timeout=5)
        took = _sigterm(server)
    finally:
        server.stop()
    assert server.proc.returncode == 0
    assert took < 5
    assert _job(db, slow) == ("failed", "shutdown")


def test_a_database_deleted_while_serving_stops_acknowledging(tmp_path: Path) -> None:
    db = tmp_path / "gone.db"
    server = start_server(LANEWAY_STORE=f"sqlite:///{db}?maintain_interval=0.2s")
    try:
        assert _post(server, "s", "before").status_code == 202
        for path in tmp_path.glob("gone.db*"):
            if not path.name.endswith(".lock"):
                path.unlink()
        with server.client() as client:
            _until(lambda: client.get("/readyz").status_code == 503, timeout=5)
        late = _post(server, "s", "after")
        assert late.status_code == 503, late.text
        assert not db.exists()  # no reader made a new, empty database
    finally:
        server.stop()


def test_a_removed_lock_file_does_not_let_a_second_server_in(tmp_path: Path) -> None:
    db = tmp_path / "owned.db"
    first = _serve(db)
    try:
        job_id = _post(first, "s", "/slow 2").json()["job_id"]
        _until(_streaming(db, job_id))
        Path(f"{db}.lock").unlink()
        second = run_cli("serve", "--port", "0", env=laneway_env(LANEWAY_STORE=f"sqlite:///{db}"))
        assert second.returncode == 1
        assert _one_error_line(second.stderr).startswith("laneway: error: could not start:")
        assert "owned by another process" in second.stderr
        _until(lambda: _job(db, job_id)[0] == "succeeded")
    finally:
        first.stop()
    assert _events(db, job_id).count("job.started") == 1


def _one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.startswith("laneway: error:")]
    assert len(lines) == 1, stderr
    return lines[0]


def test_startup_failures_are_one_line_with_exit_code_1_or_2(tmp_path: Path) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = str(taken.getsockname()[1])
    cases = {
        "port in use": (["--port", port], {"LANEWAY_STORE": "memory://"}, 1, "cannot listen"),
        "unsupported store": (
            [],
            {"LANEWAY_STORE": "redis://u@localhost/db"},
            2,
            "must be a URL such as",
        ),
        "openai without key": (
            [],
            {"LANEWAY_STORE": "memory://", "LANEWAY_MODEL": "openai", "LANEWAY_OPENAI_MODEL": "m"},
            1,
            "API key",
        ),
        "bad settings": ([], {"LANEWAY_PORT": "many"}, 2, "invalid settings"),
    }
    try:
        for name, (args, env, code, says) in cases.items():
            if "--port" not in args and name != "bad settings":
                args = ["--port", "0", *args]
            done = run_cli("serve", *args, env=laneway_env(**env))
            assert done.returncode == code, (name, done.stderr)
            assert says in _one_error_line(done.stderr), (name, done.stderr)
        debug = run_cli(
            "serve", "--port", "0", "--log-level", "debug",
            env=laneway_env(
                LANEWAY_STORE="memory://", LANEWAY_MODEL="openai", LANEWAY_OPENAI_MODEL="m"
            ),
        )  # fmt: skip
        assert debug.returncode == 1
        assert "Traceback" in debug.stderr
    finally:
        taken.close()


def test_a_database_owned_by_another_server_is_refused_in_one_line(tmp_path: Path) -> None:
    db = tmp_path / "busy.db"
    first = _serve(db)
    try:
        second = run_cli("serve", "--port", "0", env=laneway_env(LANEWAY_STORE=f"sqlite:///{db}"))
    finally:
        first.stop()
    assert second.returncode == 1
    assert "owned by another process" in _one_error_line(second.stderr)
