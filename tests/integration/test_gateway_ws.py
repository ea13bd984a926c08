"""The WebSocket API of a real ``laneway serve``: subscribe, send, stop, replay."""

from __future__ import annotations

import json
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from .conftest import TOKENS, LiveServer, session_name


def ws_url(server: LiveServer) -> str:
    return server.url.replace("http://", "ws://") + "/v1/ws"


async def recv(ws: ClientConnection) -> dict[str, Any]:
    frame: dict[str, Any] = json.loads(await ws.recv())
    return frame


async def until_terminal(ws: ClientConnection, job_id: str) -> list[dict[str, Any]]:
    frames: list[dict[str, Any]] = []
    while True:
        frame = await recv(ws)
        frames.append(frame)
        kind = frame.get("kind", "")
        if (
            frame.get("job_id") == job_id
            and kind.startswith("job.")
            and kind
            not in (
                "job.queued",
                "job.started",
                "job.retry",
            )
        ):
            return frames


async def test_subscribe_send_and_replay_after_reconnect(server: LiveServer) -> None:
    s = session_name()
    async with connect(ws_url(server)) as ws:
        await ws.send(json.dumps({"type": "subscribe", "session": s}))
        assert await recv(ws) == {"type": "subscribed", "session": s, "after": 0}
        await ws.send(
            json.dumps({"type": "send", "session": s, "text": "over the socket", "id": 7})
        )
        frames = await until_terminal(ws, job_id := (await recv(ws))["job_id"])
    events = [f for f in frames if f["type"] == "event"]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert events[-1]["kind"] == "job.succeeded"
    assert events[-1]["session"] == s
    assert events[-2] == {**events[-2], "kind": "message", "job_id": job_id}

    async with connect(ws_url(server)) as ws:  # reconnect: replay from the last seen seq
        await ws.send(json.dumps({"type": "subscribe", "session": s, "after": 2}))
        await recv(ws)
        replayed = await until_terminal(ws, job_id)
    assert [e["seq"] for e in replayed] == [e["seq"] for e in events[2:]]


async def test_accepted_frame_echoes_the_request_id(server: LiveServer) -> None:
    s = session_name()
    async with connect(ws_url(server)) as ws:
        await ws.send(json.dumps({"type": "send", "session": s, "text": "hi", "id": "req-1"}))
        accepted = await recv(ws)
    assert accepted["type"] == "accepted"
    assert accepted["id"] == "req-1"
    assert accepted["session"] == s


async def test_stop_frame_ends_a_hung_turn(server: LiveServer) -> None:
    s = session_name()
    async with connect(ws_url(server)) as ws:
        await ws.send(json.dumps({"type": "subscribe", "session": s}))
        await recv(ws)
        await ws.send(json.dumps({"type": "send", "session": s, "text": "/hang"}))
        job_id = (await recv(ws))["job_id"]
        while (await recv(ws)).get("kind") != "job.started":
            pass
        await ws.send(json.dumps({"type": "stop", "session": s}))
        frames = await until_terminal(ws, job_id)
        while not any(f["type"] == "stopped" for f in frames):
            frames.append(await recv(ws))
    stopped = next(f for f in frames if f["type"] == "stopped")
    assert stopped["cancelled"] == [job_id]
    assert next(f for f in frames if f.get("job_id") == job_id and f["kind"] == "job.cancelled")


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("not json", "invalid_json"),
        (json.dumps({"type": "dance"}), "invalid_frame"),
        (json.dumps({"type": "send", "session": "bad key", "text": "x"}), "invalid_session"),
        (json.dumps({"type": "send", "session": "ok", "text": ""}), "invalid_frame"),
        (json.dumps({"type": "subscribe", "session": "ok", "after": -1}), "invalid_frame"),
    ],
)
async def test_bad_frames_get_error_frames_and_the_socket_stays_open(
    server: LiveServer, frame: str, code: str
) -> None:
    async with connect(ws_url(server)) as ws:
        await ws.send(frame)
        reply = await recv(ws)
        assert reply["type"] == "error"
        assert reply["error"]["code"] == code
        await ws.send(json.dumps({"type": "send", "session": session_name(), "text": "still here"}))
        assert (await recv(ws))["type"] == "accepted"


async def test_token_is_required_and_scopes_the_socket(token_server: LiveServer) -> None:
    with pytest.raises(InvalidStatus) as refused:
        async with connect(ws_url(token_server)) as ws:
            await ws.recv()
    assert refused.value.response.status_code == 401
    assert json.loads(refused.value.response.body)["error"]["code"] == "unauthorized"

    s = session_name()
    alice = {"Authorization": f"Bearer {TOKENS['alice']}"}
    async with connect(ws_url(token_server), additional_headers=alice) as ws:
        await ws.send(json.dumps({"type": "send", "session": s, "text": "mine"}))
        job_id = (await recv(ws))["job_id"]
    async with connect(ws_url(token_server) + f"?token={TOKENS['bob']}") as ws:
        await ws.send(json.dumps({"type": "subscribe", "session": s}))
        await recv(ws)
        await ws.send(json.dumps({"type": "send", "session": s, "text": "bob's own"}))
        bob_job = (await recv(ws))["job_id"]
        frames = await until_terminal(ws, bob_job)
    assert job_id not in {f.get("job_id") for f in frames}
    assert frames[0]["seq"] == 1  # bob's session has its own log


async def test_a_browser_passes_its_token_as_a_subprotocol(token_server: LiveServer) -> None:
    s = session_name()
    offered = ["laneway", f"bearer.{TOKENS['alice']}"]
    async with connect(ws_url(token_server), subprotocols=offered) as ws:  # type: ignore[arg-type]
        assert ws.subprotocol == "laneway"  # the secret is not echoed
        await ws.send(json.dumps({"type": "send", "session": s, "text": "by subprotocol"}))
        job_id = (await recv(ws))["job_id"]
    with token_server.client("alice") as alice:
        assert alice.get(f"/v1/jobs/{job_id}").json()["session"] == s
    with pytest.raises(InvalidStatus) as refused:
        async with connect(ws_url(token_server), subprotocols=["laneway", "bearer.wrong-secret"]):  # type: ignore[list-item]
            pass
    assert refused.value.response.status_code == 401
