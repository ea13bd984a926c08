"""The FastAPI application: one Laneway per app, started and closed by the lifespan."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi_offline import FastAPIOffline
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import __version__
from ._console import install_console
from ._errors import error_body, install_error_handlers
from ._gateway import Gateway
from ._paths import EncodedSlashes
from ._routes import router
from ._stream import stream_router
from .settings import Settings

__all__ = ["create_app"]


class BodyLimit:
    """Refuse request bodies over ``limit`` bytes with 413 before the app reads them,
    and bodies that stall (no chunk for ``timeout`` seconds) with 408."""

    def __init__(self, app: ASGIApp, limit: int, timeout: float = 10.0) -> None:
        self.app = app
        self.limit = limit
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await self._refuse(send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            try:
                async with asyncio.timeout(self.timeout):
                    message = await receive()
            except TimeoutError:  # a client that stops sending must not hold its connection
                await self._refuse(send, 408, "body_timeout", f"no body for {self.timeout:g} s")
                return
            if message["type"] != "http.request":
                await self.app(scope, _replay([message]), send)
                return
            size += len(message.get("body", b""))
            if size > self.limit:
                await self._refuse(send)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body: Message = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        await self.app(scope, _replay([body], receive), send)

    async def _refuse(
        self, send: Send, status: int = 413, code: str = "body_too_large", text: str = ""
    ) -> None:
        import json

        text = text or f"request bodies are limited to {self.limit} bytes"
        payload = json.dumps(error_body(code, text)).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", b"%d" % len(payload)),
            (b"connection", b"close"),
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})


def _replay(messages: list[Message], then: Receive | None = None) -> Receive:
    pending = list(messages)

    async def receive() -> Message:
        if pending:
            return pending.pop(0)
        if then is not None:
            return await then()
        return {"type": "http.disconnect"}

    return receive


def create_app(settings: Settings) -> FastAPI:
    """The gateway as an ASGI app; its lifespan starts and closes the Laneway."""
    gateway = Gateway(settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        try:
            await gateway.start()
        except Exception as exc:
            gateway.startup_error = exc
            raise
        try:
            yield
        finally:
            await gateway.close()

    # Swagger UI and ReDoc from files shipped in a package, not a CDN: /docs works offline.
    app = FastAPIOffline(
        title="laneway",
        version=__version__,
        description="Per-session FIFO lanes for LLM-agent turns that never wedge.",
        lifespan=lifespan,
    )
    app.state.gateway = gateway
    install_error_handlers(app)
    app.include_router(router)
    app.include_router(stream_router)
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes, timeout=settings.body_timeout)
    install_console(app, gateway.activity)
    app.add_middleware(EncodedSlashes)
    _allow_origins(app, settings.cors_origins)
    return app


def _allow_origins(app: FastAPI, origins: list[str]) -> None:
    """CORS for browser clients on other origins. Credentials travel only in the
    Authorization header (never cookies), so credentialed CORS stays off."""
    if not origins:
        return
    app.add_middleware(
        CORSMiddleware,
        allow_origins=origins,
        allow_methods=["GET", "POST"],
        allow_headers=["Authorization", "Content-Type", "Last-Event-ID"],
        expose_headers=["Retry-After"],
        allow_credentials=False,
        max_age=600,
    )
