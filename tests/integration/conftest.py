"""A real ``laneway serve`` process on a loopback port, for the gateway tests.

The server is started as ``python -m laneway serve --port 0``; it prints the
address it bound, which the fixture reads, then waits for ``/readyz``.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from .._helpers import SRC

# Fast limits so failure paths finish in well under a second of real time.
BASE_ENV = {
    "LANEWAY_STORE": "memory://",
    "LANEWAY_CANCEL_GRACE": "0.3",
    "LANEWAY_MAX_ATTEMPTS": "1",
    "LANEWAY_HEARTBEAT": "0.3",
    "LANEWAY_MAX_QUEUED_PER_SESSION": "3",
    "LANEWAY_MAX_TEXT_CHARS": "200",
    "LANEWAY_MAX_BODY_BYTES": "4096",
    "LANEWAY_LOG_LEVEL": "warning",
}


def laneway_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LANEWAY_")}
    env.pop("OPENAI_API_KEY", None)
    env.update(PYTHONPATH=SRC, **extra)
    return env


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 30.0) -> Any:
    """Run ``python -m laneway ARGS`` to completion."""
    return subprocess.run(
        [sys.executable, "-m", "laneway", *args],
        env=env or laneway_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@dataclass
class LiveServer:
    url: str
    proc: subprocess.Popen[str]
    tokens: dict[str, str] = field(default_factory=dict)
    output: list[str] = field(default_factory=list)
    reader: threading.Thread | None = None

    def client(self, token: str | None = None, **kwargs: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.tokens[token]}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=10.0, **kwargs)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=8)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        if self.reader is not None:
            self.reader.join(timeout=5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def start_server(
    *args: str, tokens: dict[str, str] | None = None, cwd: Path | None = None, **env: str
) -> LiveServer:
    """Start ``laneway serve`` and wait until it is ready (``NAME=""`` unsets a base setting)."""
    full_env = laneway_env(**{k: v for k, v in {**BASE_ENV, **env}.items() if v})
    if tokens:
        full_env["LANEWAY_TOKENS"] = ",".join(f"{k}:{v}" for k, v in tokens.items())
    proc = subprocess.Popen(
        [sys.executable, "-m", "laneway", "serve", "--port", "0", *args],
        env=full_env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    output: list[str] = []

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            output.append(line)
            lines.put(line)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        url = _wait_for_url(proc, lines, output)
    finally:
        if proc.poll() is not None:
            reader.join(timeout=5)
            assert proc.stdout is not None
            proc.stdout.close()
    server = LiveServer(url, proc, dict(tokens or {}), output, reader)
    _wait_ready(server)
    return server


def _wait_for_url(proc: subprocess.Popen[str], lines: queue.Queue[str], output: list[str]) -> str:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.2)
        except queue.Empty:
            if proc.poll() is not None:
                break
            continue
        if line.startswith("laneway listening on "):
            return line.split()[3]
    proc.kill()
    proc.wait(timeout=5)
    raise RuntimeError("laneway serve did not start:\n" + "".join(output))


def _wait_ready(server: LiveServer) -> None:
    deadline = time.monotonic() + 15
    with httpx.Client(base_url=server.url, timeout=2.0) as client:
        while time.monotonic() < deadline:
            try:
                if client.get("/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
    server.stop()
    raise RuntimeError("laneway serve never became ready")


@pytest.fixture(scope="session", autouse=True)
def _no_implicit_event_loop() -> None:
    """Mark the main thread's loop as explicitly unset.

    Otherwise the first async test after a sync one makes pytest-asyncio call
    ``asyncio.get_event_loop()``, which creates a loop nobody closes (a
    ResourceWarning, an error under ``filterwarnings = error``).
    """
    asyncio.set_event_loop(None)


@pytest.fixture(scope="session")
def server() -> Iterator[LiveServer]:
    """A tokenless gateway serving the demo model on memory://."""
    srv = start_server()
    yield srv
    srv.stop()


TOKENS = {"alice": "alice-secret-1", "bob": "bob-secret-22"}


@pytest.fixture(scope="session")
def token_server() -> Iterator[LiveServer]:
    srv = start_server(tokens=TOKENS)
    yield srv
    srv.stop()


def session_name() -> str:
    return f"s{time.monotonic_ns()}"


def read_events(
    client: httpx.Client,
    session: str,
    *,
    until_job: str | None = None,
    after: int = 0,
    headers: dict[str, str] | None = None,
    limit: int = 1000,
) -> list[dict[str, Any]]:
    """SSE events of ``session`` until ``until_job`` has its terminal event."""
    events: list[dict[str, Any]] = []
    with client.stream(
        "GET", f"/v1/sessions/{session}/events", params={"after": after}, headers=headers
    ) as resp:
        assert resp.status_code == 200, resp.read()
        record: dict[str, str] = {}
        for line in resp.iter_lines():
            if line:
                name, _, value = line.partition(":")
                record[name] = value.strip()
                continue
            if "data" not in record:
                record = {}
                continue
            event = json.loads(record["data"])
            event["sse_id"], event["sse_event"] = record.get("id"), record.get("event")
            events.append(event)
            record = {}
            if (is_terminal(event) and event["job_id"] == until_job) or len(events) >= limit:
                break
    return events


def is_terminal(event: dict[str, Any]) -> bool:
    return bool(event["kind"].startswith("job.")) and event["kind"] not in (
        "job.queued",
        "job.started",
        "job.retry",
        "job.requeued",
    )


def wait_state(client: httpx.Client, job_id: str, state: str, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        info = client.get(f"/v1/jobs/{job_id}").json()
        if info.get("state") == state:
            return info
        assert time.monotonic() < deadline, f"job {job_id} stayed {info}"
        time.sleep(0.02)
