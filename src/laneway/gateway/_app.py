"""The FastAPI application: one Laneway per app, started and closed by the lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi_offline import FastAPIOffline
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import __version__
from .._core._runtime import Laneway
from .._types import Retry
from ._activity import Activity
from ._errors import error_body, install_error_handlers
from ._metrics import Metrics
from ._models import register_model
from .settings import Settings

__all__ = ["Gateway", "create_app"]


class Gateway:
    """What the routes share: settings, the runtime, metrics, open streams."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.secrets = settings.secret_of()
        self.metrics = Metrics()
        self.activity = Activity()  # running turns and loop blocks, for the console
        self.handler = ""
        self.closing = asyncio.Event()
        self.streams: set[asyncio.Task[None]] = set()  # WebSocket subscriptions
        self.waits: set[asyncio.Timeout] = set()  # SSE streams waiting for an event
        self._lw: Laneway | None = None
        self._seen_blocks = 0
        self._last_block = -1e18
        self._monitor: asyncio.Task[None] | None = None
        self.startup_error: BaseException | None = None

    @property
    def lw(self) -> Laneway:
        assert self._lw is not None, "the gateway is not started"
        return self._lw

    async def start(self) -> None:
        s = self.settings
        lw = Laneway(
            s.store,
            lanes={"llm": s.llm_lane},
            session_limit=s.session_limit,
            limits=s.limits(),
            retry=Retry(max_attempts=s.max_attempts),
            max_queued=s.max_queued,
            max_queued_per_session=s.max_queued_per_session,
            watchdog_threshold=s.watchdog_threshold,
        )
        self.handler = register_model(lw, s)
        self.metrics.watch(lw)
        self.activity.watch(lw)
        if _tracing_requested():
            _trace(lw)
        await lw.start()
        self._lw = lw
        self._monitor = asyncio.get_running_loop().create_task(self._watch_blocks())

    def begin_shutdown(self) -> None:
        """End open event streams so the server can drain (clients reconnect and replay)."""
        self.closing.set()
        for task in list(self.streams):
            task.cancel()
        loop = asyncio.get_running_loop()
        for waiting in list(self.waits):
            waiting.reschedule(loop.time())

    async def close(self) -> None:
        self.begin_shutdown()
        if self._monitor is not None:
            self._monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._monitor
        self.activity.close()
        if self._lw is not None:
            await self._lw.close()

    def recently_blocked(self) -> bool:
        """True while the loop is lagging or was blocked within ``unhealthy_after_block``."""
        loop_lag, loop_blocks = self.lw.loop_health()
        now = time.monotonic()
        if loop_blocks > self._seen_blocks:
            self._seen_blocks = loop_blocks
            self._last_block = now
        if loop_lag >= self.settings.watchdog_threshold:
            return True
        return now - self._last_block < self.settings.unhealthy_after_block

    async def _watch_blocks(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            self.recently_blocked()


def _tracing_requested() -> bool:
    """Any standard ``OTEL_*`` variable asks for traces (unless the SDK is disabled)."""
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    return any(name.startswith("OTEL_") for name in os.environ)


def _trace(lw: Laneway) -> None:
    from .._extras import require

    require("otel", "tracing (an OTEL_* variable is set)")
    from ..otel import configure_from_env, instrument

    configure_from_env()
    instrument(lw)


class BodyLimit:
    """Refuse request bodies over ``limit`` bytes with 413 before the app reads them."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

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
            message = await receive()
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

    async def _refuse(self, send: Send) -> None:
        import json

        payload = json.dumps(
            error_body("body_too_large", f"request bodies are limited to {self.limit} bytes")
        ).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", b"%d" % len(payload)),
        ]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
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
    from ._console import install_console
    from ._routes import router
    from ._stream import stream_router

    app.include_router(router)
    app.include_router(stream_router)
    install_console(app, gateway.activity)
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
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
