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
from pydantic_core import to_json
from starlette.types import Receive, Scope, Send

from .._errors import LanewayError
from .._types import Event
from ._auth import Caller, Principal, bearer_secret, principal_for
from ._errors import ApiError, as_api_error, error_body
from ._frames import (
    SendFrame,
    StopFrame,
    SubscribeFrame,
    UnsubscribeFrame,
    frame_id,
    load,
    parse_frame,
)
from ._gateway import Gateway
from ._limits import FrameRate
from ._replay import replay
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
    async for event in replay(gw.lw, key, after):
        if gw.closing.is_set():
            return
        last = event.seq
        yield _sse(event, who)
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


#: Seqs are SQLite integers: anything larger cannot name an event.
MAX_SEQ = 2**63 - 1


def _resume_point(after: int, last_event_id: str | None) -> int:
    if last_event_id is None or not last_event_id.strip():
        return after
    try:
        seq = int(last_event_id)
    except ValueError:
        seq = -1
    if not 0 <= seq <= MAX_SEQ:
        raise ApiError(422, "invalid_last_event_id", "Last-Event-ID must be an event seq")
    return max(after, seq)


class _CountedStream(StreamingResponse):
    """A stream that gives its slot back however it ends (finished, cancelled, never started)."""

    def __init__(self, gw: Gateway, who: Principal, body: AsyncIterator[bytes]) -> None:
        super().__init__(
            body,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        self._slots, self._who = gw.stream_slots, who

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._slots.give_back(self._who)


@stream_router.get(
    "/v1/sessions/{session}/events",
    tags=["sessions"],
    response_class=StreamingResponse,
    responses={
        200: {"content": {"text/event-stream": {}}},
        401: {},
        422: {},
        429: {"description": "too many event streams open for this token"},
    },
)
async def session_events(
    request: Request,
    session: SessionKey,
    who: Caller,
    after: Annotated[
        int, Query(ge=0, le=MAX_SEQ, description="replay events with seq > after")
    ] = 0,
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
    gw.stream_slots.take(who)
    return _CountedStream(gw, who, _sse_body(gw, who, key, start))


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

    async def reply(self, frame: dict[str, Any], request_id: str | int | None) -> None:
        await self.send(frame if request_id is None else {**frame, "id": request_id})

    async def handle(self, raw: str) -> None:
        request_id = None
        try:
            data = load(raw)
            request_id = frame_id(data)
            frame = parse_frame(data)
            if isinstance(frame, SubscribeFrame):
                await self.subscribe(frame)
            elif isinstance(frame, UnsubscribeFrame):
                await self.unsubscribe(frame)
            elif isinstance(frame, SendFrame):
                await self.submit(frame)
            else:
                await self.stop(frame)
        except (ApiError, LanewayError) as exc:
            err = as_api_error(exc)
            await self.reply({"type": "error", **error_body(err.code, err.message)}, request_id)

    async def subscribe(self, frame: SubscribeFrame) -> None:
        key = self.who.internal(frame.session)
        old = self.subs.pop(key, None)
        if old is not None:
            old.cancel()
        elif len(self.subs) >= self.gw.settings.max_subscriptions:
            raise ApiError(
                429,
                "too_many_subscriptions",
                f"a socket may hold {self.gw.settings.max_subscriptions} subscriptions "
                "(LANEWAY_MAX_SUBSCRIPTIONS); unsubscribe first",
            )
        task = asyncio.get_running_loop().create_task(self._forward(key, frame.after))
        self.subs[key] = task
        self.gw.streams.add(task)
        task.add_done_callback(self.gw.streams.discard)
        reply = {"type": "subscribed", "session": frame.session, "after": frame.after}
        await self.reply(reply, frame.id)

    async def unsubscribe(self, frame: UnsubscribeFrame) -> None:
        task = self.subs.pop(self.who.internal(frame.session), None)
        if task is not None:
            task.cancel()
        await self.reply({"type": "unsubscribed", "session": frame.session}, frame.id)

    async def _forward(self, key: str, after: int) -> None:
        with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
            async for event in replay(self.gw.lw, key, after):
                after = event.seq
                await self.send({"type": "event", **event_dict(event, self.who)})
            async for event in self.gw.lw.events(key, after=after):
                await self.send({"type": "event", **event_dict(event, self.who)})

    async def submit(self, frame: SendFrame) -> None:
        body = MessageIn.model_validate(frame.model_dump(include=set(MessageIn.model_fields)))
        accepted = await submit(self.gw, self.who, frame.session, body)
        await self.reply({"type": "accepted", **accepted.model_dump(mode="json")}, frame.id)

    async def stop(self, frame: StopFrame) -> None:
        key = self.who.internal(frame.session)
        result = await self.gw.lw.stop(key, drop_queued=frame.drop_queued)
        reply = {"type": "stopped", "session": frame.session, "cancelled": result.cancelled}
        reply["dropped"] = result.dropped
        await self.reply(reply, frame.id)

    def close(self) -> None:
        for task in self.subs.values():
            task.cancel()
        self.subs.clear()


#: Browsers cannot set headers on a WebSocket; they may offer the subprotocols
#: ``laneway`` and ``bearer.<secret>`` instead (or, worse, since URLs travel
#: further than headers, pass ``?token=<secret>``).
SUBPROTOCOL = "laneway"
_BEARER_PROTOCOL = "bearer."


def _ws_secret(ws: WebSocket) -> str | None:
    offered = [p for p in ws.scope.get("subprotocols", ()) if p.startswith(_BEARER_PROTOCOL)]
    return (
        bearer_secret(ws.headers.get("authorization"))
        or (offered[0][len(_BEARER_PROTOCOL) :] if offered else None)
        or ws.query_params.get("token")
    )


def _subprotocol(ws: WebSocket) -> str | None:
    """``laneway`` if the client offered it: the secret's protocol is never echoed back."""
    return SUBPROTOCOL if SUBPROTOCOL in ws.scope.get("subprotocols", ()) else None


@stream_router.websocket("/v1/ws")
async def websocket(ws: WebSocket) -> None:
    """Frames in: subscribe {session, after?}, unsubscribe, send {session, text, ...},
    stop {session, drop_queued?}. Frames out: event (with seq), accepted, stopped, error."""
    gw: Gateway = ws.app.state.gateway
    try:
        who = principal_for(gw.secrets, _ws_secret(ws))
        gw.stream_slots.take(who)
    except ApiError as exc:
        await _deny(ws, exc)
        return
    try:
        await ws.accept(subprotocol=_subprotocol(ws))
        await _serve_socket(_WsConnection(gw, ws, who))
    finally:
        gw.stream_slots.give_back(who)


async def _serve_socket(conn: _WsConnection) -> None:
    rate = FrameRate(conn.gw.settings.ws_frames_per_second)
    try:
        while True:
            await rate.wait()  # a flood is not read faster than this: TCP holds it back
            message = await conn.ws.receive()
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


async def _deny(ws: WebSocket, exc: ApiError) -> None:
    denial = JSONResponse(error_body(exc.code, exc.message), exc.status, headers=exc.headers)
    if "websocket.http.response" in ws.scope.get("extensions", {}):
        await ws.send_denial_response(denial)
    else:  # the server cannot answer the handshake with a body: refuse after accepting
        await ws.accept()
        await ws.close(code=1008, reason=exc.message)
