"""Careless and hostile input gets a clean 4xx (or an ``error`` frame) with a stable code,
and nothing in the server's log: a real ``laneway serve`` of its own, whose output
is checked for tracebacks after each test."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect

from .conftest import LiveServer, run_cli, session_name, start_server, wait_state
from .test_gateway_ws import ws_url

HUGE = 2**63


@pytest.fixture(scope="module")
def server_once() -> Iterator[LiveServer]:
    srv = start_server()
    yield srv
    srv.stop()


@pytest.fixture
def srv(server_once: LiveServer) -> Iterator[LiveServer]:
    """The module's server; the test fails if it logged a traceback meanwhile."""
    seen = len(server_once.output)
    yield server_once
    logged = "".join(server_once.output[seen:])
    assert "Traceback" not in logged
    assert "Error" not in logged


def strict_json(raw: str | bytes) -> Any:
    def refuse(name: str) -> None:
        raise AssertionError(f"{name} in {raw!r}")

    return json.loads(raw, parse_constant=refuse)


async def exchange(ws: ClientConnection, frame: str) -> dict[str, Any]:
    await ws.send(frame)
    reply: dict[str, Any] = strict_json(await ws.recv())
    return reply


def error_of(resp: httpx.Response, status: int) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == "application/json"
    error: dict[str, Any] = resp.json()["error"]
    return error


@pytest.mark.parametrize(
    ("params", "headers", "code"),
    [
        ({"after": HUGE}, {}, "invalid_request"),
        ({"after": 10**30}, {}, "invalid_request"),
        ({}, {"Last-Event-ID": str(HUGE)}, "invalid_last_event_id"),
    ],
)
def test_a_seq_past_any_event_is_422(
    srv: LiveServer, params: dict[str, int], headers: dict[str, str], code: str
) -> None:
    with srv.client() as client:
        resp = client.get(f"/v1/sessions/{session_name()}/events", params=params, headers=headers)
        assert error_of(resp, 422)["code"] == code
        at_the_edge = {"after": HUGE - 1}
        with client.stream("GET", "/v1/sessions/ok/events", params=at_the_edge) as fine:
            assert fine.status_code == 200


async def test_ws_frames_are_validated_like_http_bodies(srv: LiveServer) -> None:
    s = session_name()
    with srv.client() as client:
        http = error_of(client.post(f"/v1/sessions/{s}/messages", json={"text": ""}), 422)
    async with connect(ws_url(srv)) as ws:
        empty = await exchange(ws, json.dumps({"type": "send", "session": s, "text": ""}))
        huge = await exchange(ws, json.dumps({"type": "subscribe", "session": s, "after": HUGE}))
        extra = await exchange(ws, json.dumps({"type": "subscribe", "session": s, "x": 1}))
        assert (await exchange(ws, json.dumps({"type": "subscribe", "session": s})))["type"] == (
            "subscribed"
        )
    assert empty["error"] == {"code": "invalid_frame", "message": http["message"][5:]}
    assert http["message"] == "body.text: String should have at least 1 character"
    assert huge["error"]["code"] == "invalid_frame"
    assert huge["error"]["message"].startswith("after: ")
    assert extra["error"]["message"] == "x: Extra inputs are not permitted"
    for frame in (empty, huge, extra):
        assert "pydantic" not in frame["error"]["message"]
        assert "validation error" not in frame["error"]["message"]


@pytest.mark.parametrize("drop", ["false", "true", 0, 1, "yes", None])
async def test_drop_queued_is_a_json_boolean_on_ws_and_http(srv: LiveServer, drop: Any) -> None:
    s = session_name()
    with srv.client() as client:
        hung = client.post(f"/v1/sessions/{s}/messages", json={"text": "/hang"}).json()["job_id"]
        queued = client.post(f"/v1/sessions/{s}/messages", json={"text": "next"}).json()["job_id"]
        wait_state(client, hung, "running")
        refused = client.post(f"/v1/sessions/{s}/stop", json={"drop_queued": drop})
        assert error_of(refused, 422)["code"] == "invalid_request"
        async with connect(ws_url(srv)) as ws:
            frame = {"type": "stop", "session": s, "drop_queued": drop, "id": 3}
            reply = await exchange(ws, json.dumps(frame))
        assert reply["type"] == "error"
        assert reply["error"]["code"] == "invalid_frame"
        assert reply["id"] == 3
        assert client.get(f"/v1/jobs/{queued}").json()["state"] == "queued"  # nothing dropped
        stopped = client.post(f"/v1/sessions/{s}/stop", json={"drop_queued": True}).json()
    assert stopped["dropped"] == [queued]


@pytest.mark.parametrize(
    "frame",
    [
        '{"type": "send", "session": "ok", "text": "x", "id": NaN}',
        '{"type": "stop", "session": "ok", "id": Infinity}',
        '{"type": "subscribe", "session": "ok", "after": -Infinity}',
        "[" * 2000 + "]" * 2000,  # nested deeper than the parser goes, within the frame size
        '{"type": "subscribe", "session": "ok", "x": ' + "[" * 1500 + "]" * 1500 + "}",
    ],
)
async def test_frames_that_are_not_json_get_an_error_frame(srv: LiveServer, frame: str) -> None:
    async with connect(ws_url(srv)) as ws:
        reply = await exchange(ws, frame)
        assert reply == {
            "type": "error",
            "error": {"code": "invalid_json", "message": "frames are JSON objects"},
        }
        still = await exchange(ws, json.dumps({"type": "subscribe", "session": "ok", "id": 1.5}))
    assert still["error"]["code"] == "invalid_frame"
    assert "id" not in still  # an id that is not a plain string or int is not echoed


def test_stop_reads_its_body_whatever_the_content_type(srv: LiveServer) -> None:
    s = session_name()
    with srv.client() as client:
        hung = client.post(f"/v1/sessions/{s}/messages", content=b'{"text": "/hang"}')
        assert hung.status_code == 202  # messages never needed a Content-Type
        queued = client.post(f"/v1/sessions/{s}/messages", content=b'{"text": "x"}').json()
        wait_state(client, hung.json()["job_id"], "running")
        stopped = client.post(f"/v1/sessions/{s}/stop", content=b'{"drop_queued": true}')
        bare = client.post(f"/v1/sessions/{s}/stop", content=b"")
    assert stopped.status_code == 200, stopped.text
    assert stopped.json()["dropped"] == [queued["job_id"]]
    assert bare.status_code == 200, bare.text


def test_an_idempotency_key_reused_for_another_text_is_409(srv: LiveServer) -> None:
    s = session_name()
    with srv.client() as client:
        first = client.post(
            f"/v1/sessions/{s}/messages", json={"text": "a", "idempotency_key": "k"}
        )
        again = client.post(
            f"/v1/sessions/{s}/messages", json={"text": "a", "idempotency_key": "k"}
        )
        other = client.post(
            f"/v1/sessions/{s}/messages", json={"text": "b", "idempotency_key": "k"}
        )
    assert again.json()["job_id"] == first.json()["job_id"]
    error = error_of(other, 409)
    assert error["code"] == "idempotency_conflict"
    assert first.json()["job_id"] in error["message"]


def test_a_retry_of_an_accepted_job_is_answered_when_the_queue_is_full(srv: LiveServer) -> None:
    s = session_name()
    url = f"/v1/sessions/{s}/messages"
    with srv.client() as client:
        hung = client.post(url, json={"text": "/hang"}).json()["job_id"]
        wait_state(client, hung, "running")
        keyed = client.post(url, json={"text": "once", "idempotency_key": "r1"}).json()
        for i in range(2):  # the session's queue (3 in these tests) is now full
            assert client.post(url, json={"text": f"m{i}"}).status_code == 202
        retry = client.post(url, json={"text": "once", "idempotency_key": "r1"})
        new = client.post(url, json={"text": "new", "idempotency_key": "r2"})
        client.post(f"/v1/sessions/{s}/stop")
    assert retry.status_code == 202, retry.text
    assert retry.json() == keyed
    assert error_of(new, 429)["code"] == "overloaded"


@pytest.mark.parametrize("key", ["a/b", "a?b", "a#b", "a b"])
def test_the_cli_sends_a_session_key_as_one_path_segment(srv: LiveServer, key: str) -> None:
    done = run_cli("send", key, "hi", "--url", srv.url)
    assert done.returncode == 1
    assert "invalid_session" in done.stderr
