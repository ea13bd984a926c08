"""No secret reaches the log, at any level: a real ``laneway serve`` with tokens,
used the ways clients pass them (header, WebSocket ``?token=``), then its output read."""

from __future__ import annotations

import json

import pytest
from websockets.asyncio.client import connect

from .conftest import TOKENS, session_name, start_server
from .test_gateway_ws import recv, ws_url


@pytest.mark.parametrize("level", ["info", "debug"])
async def test_no_secret_is_logged(level: str) -> None:
    srv = start_server(tokens=TOKENS, LANEWAY_LOG_LEVEL=level)
    try:
        s = session_name()
        with srv.client("alice") as alice:
            assert alice.post(f"/v1/sessions/{s}/messages", json={"text": "hi"}).status_code == 202
            assert alice.get("/v1/jobs").status_code == 200
            wrong = alice.get("/v1/lanes", headers={"Authorization": f"Bearer {TOKENS['bob']}x"})
            assert wrong.status_code == 401
        async with connect(ws_url(srv) + f"?token={TOKENS['bob']}") as ws:
            await ws.send(json.dumps({"type": "subscribe", "session": s}))
            assert (await recv(ws))["type"] == "subscribed"
        offered = ["laneway", f"bearer.{TOKENS['alice']}"]
        async with connect(ws_url(srv), subprotocols=offered) as ws:  # type: ignore[arg-type]
            await ws.send(json.dumps({"type": "subscribe", "session": s}))
            assert (await recv(ws))["type"] == "subscribed"
        header = {"Authorization": f"Bearer {TOKENS['alice']}"}
        async with connect(ws_url(srv), additional_headers=header) as ws:
            await ws.send(json.dumps({"type": "subscribe", "session": s}))
            assert (await recv(ws))["type"] == "subscribed"
    finally:
        srv.stop()
    logged = "".join(srv.output)
    for secret in TOKENS.values():
        assert secret not in logged
    assert "token=***" in logged  # the WebSocket's line is there, redacted
    if level == "debug":
        assert "Bearer ***" in logged or "authorization: ***" in logged.lower()
