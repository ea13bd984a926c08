"""Live event streams: Server-Sent Events and the WebSocket.

Both replay the session's log after a given ``seq`` and then follow it live,
so a client that reconnects with its last seen ``seq`` misses nothing and sees
nothing twice. Each stream has one reader task feeding a small queue: a slow
client stalls only its reader, whose runtime subscription then overflows and
re-reads the gap from the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Annotated, Any, cast

from fastapi import APIRouter, Header, Query, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError
from pydantic_core import to_json

from .._errors import LanewayError
from .._types import Event
from ._auth import Caller, Principal, bearer_secret, principal_for
from ._errors import ApiError, as_api_error, error_body
from ._gateway import Gateway
from ._routes import SessionKey, submit
from ._schemas import MessageIn

__all__ = ["stream_router"]

stream_router = APIRouter()


def event_dict(event: Event, who: Principal) -> dict[str, Any]:
    return {
        "seq": event.seq,
        "session": who.external(event.session),
        "job_id": event.job_id,
        "kind": event.kind,
        "data": event.data,
        "at": event.at,
    }


def _sse(event: Event, who: Principal) -> bytes:
    data = to_json(event_dict(event, who))  # compact; event data is JSON by contract
    kind = (
        event.kind
        if event.kind.isprintable()
        else "".join(c if c.isprintable() else "_" for c in event.kind)
    )  # a line break in a kind would end the SSE field early
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (event.seq, kind.encode(), data)


async def _sse_body(gw: Gateway, who: Principal, key: str, after: int) -> AsyncIterator[bytes]:
    """The stream: events as they commit, a ``: ping`` comment after each idle heartbeat.

    An idle wait is cut by the heartbeat timeout, which also ends the runtime's
    event iterator; the next one resumes after the last seq sent, so nothing is
    skipped or repeated (and a busy stream pays for no extra task or queue).
    """
    heartbeat = gw.settings.heartbeat
    last = after
    yield b"retry: 1000\n\n"
    while True:
        events = cast(AsyncGenerator[Event, None], gw.lw.events(key, after=last))
        try:
            while True:
                async with asyncio.timeout(heartbeat) as waiting:
                    gw.waits.add(waiting)  # shutdown expires it at once
                    try:
                        event = await anext(events)
                    finally:
                        gw.waits.discard(waiting)
                last = event.seq
                yield _sse(event, who)
        except TimeoutError:
            if gw.closing.is_set():
                return
            yield b": ping\n\n"
        except StopAsyncIteration:  # the runtime closed
            return
        finally:
            await events.aclose()


def _resume_point(after: int, last_event_id: str | None) -> int:
    if last_event_id is None or not last_event_id.strip():
        return after
    try:
        seq = int(last_event_id)
    except ValueError:
        seq = -1
    if seq < 0:
        raise ApiError(422, "invalid_last_event_id", "Last-Event-ID must be an event seq")
    return max(after, seq)


@stream_router.get(
    "/v1/sessions/{session}/events",
    tags=["sessions"],
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}, 401: {}, 422: {}},
)
async def session_events(
    request: Request,
    session: SessionKey,
    who: Caller,
    after: Annotated[int, Query(ge=0, description="replay events with seq > after")] = 0,
    last_event_id: Annotated[str | None, Header(max_length=32)] = None,
) -> StreamingResponse:
    """Server-Sent Events: the session's log after ``after`` (or ``Last-Event-ID``), then live.

    ``id:`` is the event's seq and ``event:`` its kind; idle streams get ``: ping`` comments.
    """
    gw: Gateway = request.app.state.gateway
    start = _resume_point(after, last_event_id)
    key = who.internal(session)
    if gw.closing.is_set() or not gw.lw.running:
        raise ApiError(503, "shutting_down", "the gateway is shutting down")
    return StreamingResponse(
        _sse_body(gw, who, key, start),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


class _WsConnection:
    """One WebSocket client: its subscriptions and a lock so frames never interleave."""

    def __init__(self, gw: Gateway, ws: WebSocket, who: Principal) -> None:
        self.gw = gw
        self.ws = ws
        self.who = who
        self.lock = asyncio.Lock()
        self.subs: dict[str, asyncio.Task[None]] = {}

    async def send(self, frame: dict[str, Any]) -> None:
        async with self.lock:
            await self.ws.send_text(json.dumps(frame, separators=(",", ":")))

    async def error(self, code: str, message: str, frame: Any = None) -> None:
        reply = {"type": "error", **error_body(code, message)}
        if isinstance(frame, dict) and "id" in frame:
            reply["id"] = frame["id"]
        await self.send(reply)

    async def handle(self, raw: str) -> None:
        try:
            frame = json.loads(raw)
        except ValueError:
            await self.error("invalid_json", "frames are JSON objects")
            return
        kind = frame.get("type") if isinstance(frame, dict) else None
        handler = {"subscribe": self.subscribe, "unsubscribe": self.unsubscribe}.get(str(kind))
        handler = handler or {"send": self.submit, "stop": self.stop}.get(str(kind))
        if handler is None:
            await self.error("invalid_frame", "type must be subscribe, unsubscribe, send or stop")
            return
        try:
            await handler(frame)
        except (ApiError, LanewayError, ValidationError, ValueError, TypeError) as exc:
            err = (
                ApiError(422, "invalid_frame", str(exc))
                if isinstance(exc, ValidationError | TypeError)
                or (isinstance(exc, ValueError) and not isinstance(exc, LanewayError))
                else as_api_error(exc)
            )
            await self.error(err.code, err.message, frame)

    def _session(self, frame: dict[str, Any]) -> tuple[str, str]:
        session = frame.get("session")
        if not isinstance(session, str):
            raise ApiError(422, "invalid_session", "frame needs a 'session' string")
        return session, self.who.internal(session)

    async def subscribe(self, frame: dict[str, Any]) -> None:
        session, key = self._session(frame)
        after = frame.get("after", 0)
        if isinstance(after, bool) or not isinstance(after, int) or after < 0:
            raise ApiError(422, "invalid_frame", "'after' must be an int >= 0")
        old = self.subs.pop(key, None)
        if old is not None:
            old.cancel()
        task = asyncio.get_running_loop().create_task(self._forward(session, key, after))
        self.subs[key] = task
        self.gw.streams.add(task)
        task.add_done_callback(self.gw.streams.discard)
        await self.send({"type": "subscribed", "session": session, "after": after})

    async def unsubscribe(self, frame: dict[str, Any]) -> None:
        session, key = self._session(frame)
        task = self.subs.pop(key, None)
        if task is not None:
            task.cancel()
        await self.send({"type": "unsubscribed", "session": session})

    async def _forward(self, session: str, key: str, after: int) -> None:
        with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
            async for event in self.gw.lw.events(key, after=after):
                await self.send({"type": "event", **event_dict(event, self.who)})

    async def submit(self, frame: dict[str, Any]) -> None:
        session, _key = self._session(frame)
        body = MessageIn.model_validate(
            {k: v for k, v in frame.items() if k not in ("type", "session", "id")}
        )
        accepted = await submit(self.gw, self.who, session, body)
        reply = {"type": "accepted", **accepted.model_dump(mode="json")}
        if "id" in frame:
            reply["id"] = frame["id"]
        await self.send(reply)

    async def stop(self, frame: dict[str, Any]) -> None:
        session, key = self._session(frame)
        result = await self.gw.lw.stop(key, drop_queued=bool(frame.get("drop_queued", False)))
        reply = {"type": "stopped", "session": session, "cancelled": result.cancelled}
        reply["dropped"] = result.dropped
        if "id" in frame:
            reply["id"] = frame["id"]
        await self.send(reply)

    def close(self) -> None:
        for task in self.subs.values():
            task.cancel()
        self.subs.clear()


def _ws_secret(ws: WebSocket) -> str | None:
    # Browsers cannot set headers on a WebSocket: they may pass ?token= instead.
    return bearer_secret(ws.headers.get("authorization")) or ws.query_params.get("token")


@stream_router.websocket("/v1/ws")
async def websocket(ws: WebSocket) -> None:
    """Frames in: subscribe {session, after?}, unsubscribe, send {session, text, ...},
    stop {session, drop_queued?}. Frames out: event (with seq), accepted, stopped, error."""
    gw: Gateway = ws.app.state.gateway
    try:
        who = principal_for(gw.secrets, _ws_secret(ws))
    except ApiError as exc:
        denial = JSONResponse(error_body(exc.code, exc.message), exc.status, headers=exc.headers)
        if "websocket.http.response" in ws.scope.get("extensions", {}):
            await ws.send_denial_response(denial)
        else:  # the server cannot answer the handshake with a body: refuse after accepting
            await ws.accept()
            await ws.close(code=1008, reason=exc.message)
        return
    await ws.accept()
    conn = _WsConnection(gw, ws, who)
    try:
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            raw = message.get("text")
            if raw is None:
                raw = (message.get("bytes") or b"").decode("utf-8", "replace")
            await conn.handle(raw)
    except (WebSocketDisconnect, RuntimeError):
        return
    finally:
        conn.close()
