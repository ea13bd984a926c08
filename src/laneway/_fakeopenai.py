"""A fake OpenAI-compatible endpoint on loopback, for tests.

``FakeOpenAI`` serves ``POST /v1/chat/completions`` (streaming and not) over
real HTTP on ``127.0.0.1`` with an ephemeral port, from uvicorn in a
background thread with its own event loop, so the ``openai`` SDK under test
talks to it exactly as to a real provider, and a test that blocks or
fast-forwards its own loop does not stall the server.

Each request takes the next scripted scenario (or, with none queued, echoes
the last user message)::

    async with FakeOpenAI() as fake:
        fake.error(status=500)           # the first request fails
        fake.reply("Hello there")         # the retry streams this
        fake.hang_after(2)                # then: two chunks, then silence
        fake.hang()                       # then: no response headers, ever
        ... AsyncOpenAI(base_url=fake.base_url, api_key="k") ...
        assert fake.requests[0].messages[-1]["content"] == "hi"
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import json
import re
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["FakeOpenAI", "FakeRequest"]

Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_START_TIMEOUT = 10.0
_STOP_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class FakeRequest:
    """One request the fake received."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any

    @property
    def messages(self) -> list[dict[str, Any]]:
        """The chat messages of a chat-completions request (empty otherwise)."""
        msgs = self.body.get("messages") if isinstance(self.body, dict) else None
        return list(msgs) if isinstance(msgs, list) else []


@dataclass(frozen=True, slots=True)
class _Scenario:
    kind: Literal["reply", "error", "hang", "hang_after"]
    chunks: Sequence[str] = ()
    chunk_delay: float = 0.0
    status: int = 500
    message: str = ""


def split_chunks(text: str) -> list[str]:
    """``text`` as streamed pieces: one word with its trailing whitespace each."""
    return re.findall(r"\s+|\S+\s*", text) if text else []


class FakeOpenAI:
    """A scriptable OpenAI-compatible chat-completions server on loopback."""

    def __init__(self, *, model: str = "fake-model", port: int = 0) -> None:
        self.model = model
        self._want_port = port  # 0: any free port
        self.requests: list[FakeRequest] = []
        self._scenarios: collections.deque[_Scenario] = collections.deque()
        self._ids = itertools.count(1)
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._server: Any = None
        self._server_loop: asyncio.AbstractEventLoop | None = None
        self._release: asyncio.Event | None = None
        self._failure: BaseException | None = None
        self.port = 0

    # -- scripting ---------------------------------------------------------------

    def reply(
        self, text: str, *, chunk_delay: float = 0.0, chunks: Sequence[str] | None = None
    ) -> None:
        """The next request gets ``text``, streamed a word per chunk (or ``chunks``)
        with ``chunk_delay`` seconds before each chunk."""
        pieces = list(chunks) if chunks is not None else split_chunks(text)
        self._scenarios.append(_Scenario("reply", pieces, chunk_delay))

    def error(self, status: int = 500, message: str = "the fake server failed") -> None:
        """The next request gets an HTTP error with an OpenAI-style JSON body."""
        self._scenarios.append(_Scenario("error", status=status, message=message))

    def hang_after(
        self, n_chunks: int, text: str = "a reply that never finishes", chunk_delay: float = 0.0
    ) -> None:
        """The next request streams ``n_chunks`` content chunks of ``text``, then goes
        silent with the connection open (a non-streaming request just hangs)."""
        pieces = split_chunks(text)
        while len(pieces) < n_chunks:
            pieces.append("more ")
        self._scenarios.append(_Scenario("hang_after", pieces[:n_chunks], chunk_delay))

    def hang(self) -> None:
        """The next request never gets response headers."""
        self._scenarios.append(_Scenario("hang"))

    @property
    def base_url(self) -> str:
        """The URL to give the SDK: ``http://127.0.0.1:<port>/v1``."""
        if not self.port:
            raise RuntimeError("FakeOpenAI is not started: use `async with FakeOpenAI() as fake:`")
        return f"http://127.0.0.1:{self.port}/v1"

    async def wait_for_requests(self, n: int) -> list[FakeRequest]:
        """Wait until at least ``n`` requests arrived; returns them all.

        Bound it with ``asyncio.timeout()``: it waits as long as it takes."""
        # Requests arrive on the server's thread: poll rather than share an Event across loops.
        while len(self.requests) < n:  # noqa: ASYNC110
            await asyncio.sleep(0.005)
        return list(self.requests)

    # -- life --------------------------------------------------------------------

    async def __aenter__(self) -> FakeOpenAI:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Bind an ephemeral loopback port and serve from a background thread."""
        if self._thread is not None:
            raise RuntimeError("FakeOpenAI can be started once")
        from ._extras import require

        require("server", "FakeOpenAI")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self._want_port))
        self._sock = sock
        self.port = sock.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, name="fake-openai", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + _START_TIMEOUT
        while not (self._server is not None and self._server.started):
            if self._failure is not None or not self._thread.is_alive():
                await self.close()
                raise RuntimeError(f"FakeOpenAI failed to start: {self._failure!r}")
            if time.monotonic() > deadline:
                await self.close()
                raise RuntimeError("FakeOpenAI did not start in time")
            await asyncio.sleep(0.005)

    async def close(self) -> None:
        """Release hung requests, stop the server and join its thread."""
        loop, release = self._server_loop, self._release
        if loop is not None and release is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop just closed
                loop.call_soon_threadsafe(release.set)
        if self._server is not None:
            self._server.should_exit = True
        thread = self._thread
        if thread is not None:
            deadline = time.monotonic() + _STOP_TIMEOUT
            while thread.is_alive() and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.01)  # joining the thread would block this loop
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _serve(self) -> None:
        import uvicorn  # imported here: only tests that start a fake pay for it

        try:
            config = uvicorn.Config(
                self._asgi,
                interface="asgi3",
                lifespan="off",
                loop="asyncio",
                http="h11",
                ws="none",
                log_config=None,
                log_level=None,
                access_log=False,
                timeout_graceful_shutdown=1,
            )
            self._server = uvicorn.Server(config)
            assert self._sock is not None
            asyncio.run(self._run(self._server, self._sock))
        except BaseException as exc:  # reported to start(); a daemon thread must not raise
            self._failure = exc

    async def _run(self, server: Any, sock: socket.socket) -> None:
        self._server_loop = asyncio.get_running_loop()
        self._release = asyncio.Event()
        await server.serve(sockets=[sock])

    # -- the ASGI app ------------------------------------------------------------

    async def _asgi(self, scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        raw = await _read_body(receive)
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = None
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        request = FakeRequest(scope["method"], scope["path"], headers, body)
        self.requests.append(request)
        if scope["method"] == "GET" and scope["path"] == "/v1/models":
            await _json(send, 200, {"object": "list", "data": [{"id": self.model}]})
        elif scope["method"] == "POST" and scope["path"] == "/v1/chat/completions":
            await self._completion(request, receive, send)
        else:
            await _json(send, 404, _error_body(f"no route {scope['path']}", "not_found"))

    async def _completion(self, request: FakeRequest, receive: Receive, send: Send) -> None:
        body = request.body if isinstance(request.body, dict) else {}
        if not isinstance(body.get("messages"), list):
            await _json(send, 400, _error_body("'messages' is required", "invalid_request_error"))
            return
        scenario = self._next(request)
        if scenario.kind == "error":
            await _json(send, scenario.status, _error_body(scenario.message, "server_error"))
        elif scenario.kind == "hang" or (scenario.kind == "hang_after" and not body.get("stream")):
            await self._silence(receive)
            await _json(send, 503, _error_body("the fake server is closing", "server_error"))
        elif body.get("stream"):
            await self._stream(scenario, receive, send)
        else:
            await self._whole(scenario, send)

    def _next(self, request: FakeRequest) -> _Scenario:
        try:
            return self._scenarios.popleft()
        except IndexError:
            users = [m for m in request.messages if isinstance(m, dict) and m.get("role") == "user"]
            last: dict[str, Any] = users[-1] if users else {}
            return _Scenario("reply", split_chunks(f"echo: {last.get('content', '')}"))

    async def _silence(self, receive: Receive) -> None:
        """Say nothing until the client goes away or the fake closes."""
        assert self._release is not None
        gone = asyncio.ensure_future(_disconnected(receive))
        released = asyncio.ensure_future(self._release.wait())
        try:
            await asyncio.wait({gone, released}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for fut in (gone, released):
                fut.cancel()

    async def _stream(self, scenario: _Scenario, receive: Receive, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream"),
                    (b"cache-control", b"no-cache"),
                ],
            }
        )
        cid = f"chatcmpl-fake-{next(self._ids)}"
        await self._sse(send, self._chunk(cid, {"role": "assistant", "content": ""}))
        for piece in scenario.chunks:
            if scenario.chunk_delay:
                await asyncio.sleep(scenario.chunk_delay)
            await self._sse(send, self._chunk(cid, {"content": piece}))
        if scenario.kind == "hang_after":
            await self._silence(receive)
        else:
            await self._sse(send, self._chunk(cid, {}, finish="stop"))
            await send(
                {"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": True}
            )
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    @staticmethod
    async def _sse(send: Send, data: Message) -> None:
        payload = b"data: " + json.dumps(data).encode() + b"\n\n"
        await send({"type": "http.response.body", "body": payload, "more_body": True})

    def _chunk(self, cid: str, delta: Message, finish: str | None = None) -> Message:
        return {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }

    async def _whole(self, scenario: _Scenario, send: Send) -> None:
        if scenario.chunk_delay:
            await asyncio.sleep(scenario.chunk_delay * len(scenario.chunks))
        text = "".join(scenario.chunks)
        await _json(
            send,
            200,
            {
                "id": f"chatcmpl-fake-{next(self._ids)}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": self.model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
            },
        )


async def _read_body(receive: Receive) -> bytes:
    parts: list[bytes] = []
    while True:
        msg = await receive()
        if msg["type"] != "http.request":
            break
        parts.append(msg.get("body", b""))
        if not msg.get("more_body"):
            break
    return b"".join(parts)


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _json(send: Send, status: int, data: Any) -> None:
    body = json.dumps(data).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _error_body(message: str, kind: str) -> Message:
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}
