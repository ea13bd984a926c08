"""The ``laneway`` client commands that watch keep going through a blocked
loop, a slow answer and a server restart; the rest answer in JSON or in
columns that fit 80 characters."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from laneway import __version__

from .conftest import LiveServer, laneway_env, run_cli, session_name, start_server, wait_state
from .test_cors import free_port


class Running:
    """A ``laneway`` client running in the background; its output as it comes."""

    def __init__(self, *args: str, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "laneway", *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._pump, daemon=True)
        self._reader.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def wait_for(self, found: Callable[[list[str]], bool], timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while not found(list(self.lines)):
            assert self.proc.poll() is None or found(list(self.lines)), "".join(self.lines)
            assert time.monotonic() < deadline, "".join(self.lines)
            time.sleep(0.05)

    def finish(self, timeout: float = 15.0) -> int:
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=5)
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        return code

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.finish()


@contextmanager
def running(*args: str, env: dict[str, str]) -> Iterator[Running]:
    client = Running(*args, env=env)
    try:
        yield client
    finally:
        client.stop()


def after_last(lines: list[str], marker: str, then: str) -> bool:
    """``then`` appears in a line after the last line containing ``marker``."""
    marks = [i for i, line in enumerate(lines) if marker in line]
    return bool(marks) and any(then in line for line in lines[marks[-1] + 1 :])


def wait_until_queued(client: httpx.Client, session: str) -> None:
    deadline = time.monotonic() + 10
    params = {"session": session, "state": "queued"}
    while not client.get("/v1/jobs", params=params).json()["jobs"]:
        assert time.monotonic() < deadline, f"nothing queued in {session}"
        time.sleep(0.05)


def _sqlite_server(port: int, db: Path) -> LiveServer:
    # No drain: a restart here cuts the running turn at once (it goes back to its head).
    return start_server(
        "--port", str(port), LANEWAY_STORE=f"sqlite:///{db}", LANEWAY_SHUTDOWN_GRACE="0"
    )


@pytest.mark.slow
def test_top_rides_out_a_blocked_loop_and_a_restart(tmp_path: Path) -> None:
    port, db = free_port(), tmp_path / "top.db"
    server = _sqlite_server(port, db)
    env = laneway_env(LANEWAY_URL=server.url)
    try:
        with running("top", "--interval", "0.2", "--timeout", "1", env=env) as top:
            top.wait_for(lambda lines: any("jobs queued" in line for line in lines))
            with server.client() as client:
                client.post(f"/v1/sessions/{session_name()}/messages", json={"text": "/block 3"})
            top.wait_for(lambda lines: any("reconnecting: " in line for line in lines))
            top.wait_for(lambda lines: after_last(lines, "reconnecting: ", "jobs queued"))
            server.stop()
            top.wait_for(lambda lines: sum("reconnecting: " in line for line in lines) >= 2)
            server = _sqlite_server(port, db)
            top.wait_for(lambda lines: after_last(lines, "reconnecting: ", "jobs queued"))
            top.proc.send_signal(signal.SIGINT)
            assert top.finish() == 0
    finally:
        server.stop()


@pytest.mark.slow
def test_send_follow_resumes_after_a_restart_and_prints_the_reply_once(tmp_path: Path) -> None:
    port, db, s = free_port(), tmp_path / "follow.db", session_name()
    server = _sqlite_server(port, db)
    env = laneway_env(LANEWAY_URL=server.url)
    try:
        with server.client() as client:
            hung = client.post(f"/v1/sessions/{s}/messages", json={"text": "/hang"})
            wait_state(client, hung.json()["job_id"], "running")
        with running("send", s, "said before the restart", "--follow", env=env) as send:
            with server.client() as client:
                wait_until_queued(client, s)  # the reply waits behind the hung turn
            server.stop()
            send.wait_for(lambda lines: any("reconnecting" in line for line in lines))
            server = _sqlite_server(port, db)
            with server.client() as client:  # the recovered /hang runs again: end it
                client.post(f"/v1/sessions/{s}/stop")
            assert send.finish() == 0, "".join(send.lines)
        printed = "".join(send.lines)
        assert printed.count("said before the restart") == 1
    finally:
        server.stop()


def test_send_json_idempotency_key_job_and_tail(server: LiveServer) -> None:
    s = session_name()
    env = laneway_env(LANEWAY_URL=server.url)
    first = run_cli("send", s, "hello", "--idempotency-key", "k-1", "--json", env=env)
    again = run_cli("send", s, "hello", "--idempotency-key", "k-1", "--json", env=env)
    accepted = json.loads(first.stdout)
    assert json.loads(again.stdout)["job_id"] == accepted["job_id"]
    assert accepted["session"] == s
    with server.client() as client:
        wait_state(client, accepted["job_id"], "succeeded")
    job = run_cli("job", accepted["job_id"], "--json", env=env)
    assert json.loads(job.stdout)["state"] == "succeeded"
    shown = run_cli("job", accepted["job_id"], env=env)
    assert "succeeded" in shown.stdout
    with running("tail", s, env=env) as tail:
        tail.wait_for(lambda lines: any("job.succeeded" in line for line in lines))
    kinds = [line.split()[1] for line in tail.lines if line.strip()]
    assert kinds[0] == "job.queued"
    assert "delta" in kinds
    status = json.loads(run_cli("status", "--json", env=env).stdout)
    assert {lane["name"] for lane in status["lanes"]} >= {"llm"}
    listed = json.loads(run_cli("jobs", "--session", s, "--json", env=env).stdout)
    assert [j["id"] for j in listed["jobs"]] == [accepted["job_id"]]


def test_jobs_fit_80_columns_with_a_time_column(server: LiveServer) -> None:
    s = "a-rather-long-session-name-for-the-table"
    env = laneway_env(LANEWAY_URL=server.url, COLUMNS="80")
    with server.client() as client:
        resp = client.post(f"/v1/sessions/{s}/messages", json={"text": "/crash"})
        job = resp.json()["job_id"]
        wait_state(client, job, "failed")
    listed = run_cli("jobs", "--session", s, env=env)
    lines = listed.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    row = next(line for line in lines if job in line)  # the id is never cut
    assert "failed" in row
    assert " ago" in row
    assert "DemoCrash" in row
    assert len([line for line in lines if line.strip()]) == 3  # header, rule, one row


def test_version_and_completion() -> None:
    done = run_cli("--version")
    assert done.stdout.strip() == f"laneway {__version__}"
    helped = run_cli("--help")
    assert "--install-completion" in helped.stdout


@pytest.mark.slow
def test_fake_openai_serves_a_model_the_gateway_can_use() -> None:
    port = free_port()
    with running("fake-openai", "--port", str(port), env=laneway_env()) as fake:
        fake.wait_for(lambda lines: any("LANEWAY_MODEL=openai" in line for line in lines))
        assert f"http://127.0.0.1:{port}/v1" in fake.lines[0]
        settings = dict(
            pair.split("=", 1) for pair in fake.lines[1].split() if pair.startswith("LANEWAY_")
        )
        server = start_server(
            LANEWAY_MODEL=settings["LANEWAY_MODEL"],
            LANEWAY_OPENAI_BASE_URL=settings["LANEWAY_OPENAI_BASE_URL"],
            LANEWAY_OPENAI_MODEL=settings["LANEWAY_OPENAI_MODEL"],
            LANEWAY_OPENAI_API_KEY=settings["LANEWAY_OPENAI_API_KEY"],
        )
        try:
            env = laneway_env(LANEWAY_URL=server.url)
            done = run_cli("send", session_name(), "echo me back", "--follow", env=env)
            assert done.returncode == 0, done.stderr
            assert "echo me back" in done.stdout
            with httpx.Client(base_url=server.url) as client:
                assert client.get("/readyz").status_code == 200
        finally:
            server.stop()
