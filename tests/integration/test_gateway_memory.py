"""Bounded load on a real ``laneway serve``: what one stream, one socket or one emit
may make the server hold. Peak RSS (``VmHWM``) is read from ``/proc`` before and
after; the figures are printed (``pytest -s``) and bounded per stream or socket."""

from __future__ import annotations

import json
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

from .conftest import LiveServer, start_server, wait_state
from .test_gateway_ws import ws_url

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc"),
]

TEXT = 60_000  # an echo turn logs the text twice: its `message` and its result
MB = 1024 * 1024


def rss(srv: LiveServer, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{srv.proc.pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise LookupError(field)


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    db = tmp_path_factory.mktemp("memory") / "lw.db"
    srv = start_server(
        LANEWAY_MODEL="echo",
        LANEWAY_STORE=f"sqlite:///{db}",  # every read decodes its own copy of the log
        LANEWAY_MAX_TEXT_CHARS=str(TEXT),
        LANEWAY_MAX_BODY_BYTES=str(TEXT + 4096),
        LANEWAY_MAX_QUEUED_PER_SESSION="1000",
        LANEWAY_WS_FRAMES_PER_SECOND="2000",
    )
    yield srv
    srv.stop()


def test_stalled_sse_replays_hold_a_page_each_not_the_log(big: LiveServer) -> None:
    jobs, streams = 100, 20  # a 12 MB log, replayed by 20 clients that never read
    with big.client() as client:
        for i in range(jobs):
            text = f"{i:06d}" + "x" * (TEXT - 6)
            last = client.post("/v1/sessions/big/messages", json={"text": text}).json()
        wait_state(client, last["job_id"], "succeeded", timeout=60)
    idle = rss(big)
    host, port = big.url.removeprefix("http://").split(":")
    socks = []
    for _ in range(streams):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect((host, int(port)))
        sock.sendall(b"GET /v1/sessions/big/events?after=0 HTTP/1.1\r\nHost: t\r\n\r\n")
        socks.append(sock)
    try:
        assert all(s.recv(12) == b"HTTP/1.1 200" for s in socks)
        time.sleep(3)  # each stream reads its first page and blocks on the full socket
        peak = rss(big, "VmHWM")
    finally:
        for sock in socks:
            sock.close()
    per_stream = (peak - idle) / streams
    print(f"SSE: idle {idle / MB:.1f} MB, peak {peak / MB:.1f} MB, {per_stream / MB:.2f} MB/stream")
    assert per_stream < 4 * MB  # a page is about 2 MB; the log is 12 MB


async def test_a_subscribe_flood_holds_max_subscriptions(big: LiveServer) -> None:
    frames = 3000
    idle = rss(big)
    async with connect(ws_url(big)) as ws:
        for i in range(frames):
            await ws.send(json.dumps({"type": "subscribe", "session": f"flood{i}"}))
        kinds = [json.loads(await ws.recv())["type"] for _ in range(frames)]
        peak = rss(big)
        with big.client() as client:
            assert client.get("/healthz").json()["status"] == "ok"
    print(f"WS: idle {idle / MB:.1f} MB, with {frames} frames {peak / MB:.1f} MB")
    assert kinds.count("subscribed") == 100
    assert kinds.count("error") == frames - 100
    assert peak - idle < 20 * MB


@pytest.fixture(scope="module")
def capped() -> Iterator[LiveServer]:
    srv = start_server(
        LANEWAY_MODEL="echo",
        LANEWAY_MAX_TEXT_CHARS=str(TEXT),
        LANEWAY_MAX_BODY_BYTES=str(TEXT + 4096),
        LANEWAY_MAX_EVENT_BYTES="10000",
    )
    yield srv
    srv.stop()


def test_oversized_emits_leave_nothing_in_the_log(capped: LiveServer) -> None:
    with capped.client() as client:
        idle = rss(capped)
        for _ in range(5):  # echo's `message` is text plus its envelope: over the cap
            job = client.post("/v1/sessions/emit/messages", json={"text": "x" * TEXT}).json()
            wait_state(client, job["job_id"], "failed")
        grown = rss(capped) - idle
        with client.stream("GET", "/v1/sessions/emit/events") as resp:
            kinds = []
            for line in resp.iter_lines():
                if line.startswith("event: "):
                    kinds.append(line[7:])
                if kinds.count("job.failed") == 5:
                    break
    print(f"emit: 5 refused emits of {TEXT} bytes grew RSS by {grown / MB:.2f} MB")
    assert "message" not in kinds
    assert grown < 10 * MB
