"""Bounds a client cannot talk the server out of: streams per token, subscriptions,
frame size and rate, body read time, event size. A real ``laneway serve`` each."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from .conftest import TOKENS, LiveServer, read_events, session_name, start_server, wait_state
from .test_gateway_ws import recv, ws_url

ALICE = {"Authorization": f"Bearer {TOKENS['alice']}"}
BOB = {"Authorization": f"Bearer {TOKENS['bob']}"}


@pytest.fixture(scope="module")
def bounded() -> Iterator[LiveServer]:
    srv = start_server(
        tokens=TOKENS,
        LANEWAY_MAX_STREAMS_PER_TOKEN="3",
        LANEWAY_MAX_SUBSCRIPTIONS="3",
        LANEWAY_WS_FRAMES_PER_SECOND="20",
        LANEWAY_BODY_TIMEOUT="0.5",
    )
    yield srv
    srv.stop()


def test_sse_streams_past_the_cap_get_429_and_a_closed_one_frees_its_slot(
    bounded: LiveServer,
) -> None:
    with ExitStack() as stack:
        alice = stack.enter_context(bounded.client("alice"))
        bob = stack.enter_context(bounded.client("bob"))
        streams = [
            stack.enter_context(alice.stream("GET", f"/v1/sessions/{session_name()}/events"))
            for _ in range(3)
        ]
        assert all(s.status_code == 200 for s in streams)
        refused = alice.get(f"/v1/sessions/{session_name()}/events")
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "too_many_streams"
        assert refused.headers["Retry-After"] == "1"
        with bob.stream("GET", f"/v1/sessions/{session_name()}/events") as other:
            assert other.status_code == 200  # the cap is per token
        streams[0].close()
        assert reopened_within(alice, 5.0)


def reopened_within(client: httpx.Client, seconds: float) -> bool:
    """Whether a new stream is accepted (once the server has seen a closed one go)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with client.stream("GET", f"/v1/sessions/{session_name()}/events") as resp:
            if resp.status_code == 200:
                return True
            assert resp.status_code == 429
        time.sleep(0.05)
    return False


async def test_websockets_count_as_streams(bounded: LiveServer) -> None:
    url = ws_url(bounded)
    async with (
        connect(url, additional_headers=ALICE),
        connect(url, additional_headers=ALICE),
        connect(url, additional_headers=ALICE),
    ):
        with pytest.raises(InvalidStatus) as refused:
            async with connect(url, additional_headers=ALICE):
                pass
        assert refused.value.response.status_code == 429
        assert json.loads(refused.value.response.body)["error"]["code"] == "too_many_streams"
    assert await ws_reopened_within(url, 5.0)


async def ws_reopened_within(url: str, seconds: float) -> bool:
    """Whether a new socket is accepted (once the server has seen closed ones go)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        refused: InvalidStatus | None = None
        try:
            async with connect(url, additional_headers=ALICE) as ws:
                await ws.send(json.dumps({"type": "subscribe", "session": session_name()}))
                return bool((await recv(ws))["type"] == "subscribed")
        except InvalidStatus as exc:
            refused = exc
        assert refused.response.status_code == 429
        await asyncio.sleep(0.05)
    return False


async def test_a_socket_holds_at_most_max_subscriptions(bounded: LiveServer) -> None:
    sessions = [session_name() for _ in range(4)]
    async with connect(ws_url(bounded), additional_headers=ALICE) as ws:
        for s in sessions:
            await ws.send(json.dumps({"type": "subscribe", "session": s, "id": s}))
        replies = [await recv(ws) for _ in sessions]
        assert [r["type"] for r in replies] == ["subscribed"] * 3 + ["error"]
        assert replies[3]["error"]["code"] == "too_many_subscriptions"
        assert replies[3]["id"] == sessions[3]
        # Resubscribing one it holds is not one more; unsubscribing makes room.
        await ws.send(json.dumps({"type": "subscribe", "session": sessions[0], "after": 0}))
        assert (await recv(ws))["type"] == "subscribed"
        await ws.send(json.dumps({"type": "unsubscribe", "session": sessions[1]}))
        assert (await recv(ws))["type"] == "unsubscribed"
        await ws.send(json.dumps({"type": "subscribe", "session": sessions[3]}))
        assert (await recv(ws))["type"] == "subscribed"


async def test_a_frame_larger_than_a_body_closes_the_socket(bounded: LiveServer) -> None:
    async with connect(ws_url(bounded), additional_headers=ALICE, max_size=None) as ws:
        await ws.send(json.dumps({"type": "send", "session": "s", "text": "x" * 5000}))
        with pytest.raises(ConnectionClosed) as closed:
            await recv(ws)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1009  # message too big


async def test_a_flood_of_frames_is_read_at_the_frame_rate(bounded: LiveServer) -> None:
    async with connect(ws_url(bounded), additional_headers=ALICE) as ws:
        started = time.monotonic()
        for _ in range(60):  # a burst of 40 (2 s at 20/s), then 20 more at 20/s
            await ws.send(json.dumps({"type": "unsubscribe", "session": "s"}))
        for _ in range(60):
            assert (await recv(ws))["type"] == "unsubscribed"
        elapsed = time.monotonic() - started
    assert elapsed >= 0.8


def test_a_stalled_body_gets_408_and_frees_the_connection(bounded: LiveServer) -> None:
    host, port = bounded.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/sessions/s/messages HTTP/1.1\r\nHost: t\r\n"
            b"Authorization: Bearer " + TOKENS["alice"].encode() + b"\r\n"
            b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n" + b'{"text": "twe'
        )
        started = time.monotonic()
        answer = b""
        while chunk := sock.recv(4096):  # until the server closes the connection
            answer += chunk
        waited = time.monotonic() - started
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 ")
    assert json.loads(body)["error"]["code"] == "body_timeout"
    assert 0.4 <= waited < 5.0


@pytest.fixture(scope="module")
def echo() -> Iterator[LiveServer]:
    srv = start_server(LANEWAY_MODEL="echo", LANEWAY_MAX_EVENT_BYTES="150")
    yield srv
    srv.stop()


def test_an_event_over_max_event_bytes_fails_the_turn_and_is_not_logged(echo: LiveServer) -> None:
    s = session_name()
    with echo.client() as client:
        small = client.post(f"/v1/sessions/{s}/messages", json={"text": "fits"}).json()
        big = client.post(f"/v1/sessions/{s}/messages", json={"text": "x" * 150}).json()
        assert wait_state(client, small["job_id"], "succeeded")["result"] == "fits"
        failed = wait_state(client, big["job_id"], "failed")
        events = read_events(client, s, until_job=big["job_id"])
    assert failed["reason"] == "InvalidPayload"
    assert "max_event_bytes (150)" in failed["error"]
    assert [e["kind"] for e in events if e["job_id"] == big["job_id"]] == [
        "job.queued",
        "job.started",
        "job.failed",
    ]
