"""The gateway's shared state: settings, the runtime, metrics and open streams."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time

from .. import Laneway, Retry
from ._activity import Activity
from ._drain import Drain
from ._limits import StreamSlots
from ._metrics import Metrics
from ._models import register_model
from .settings import Settings

__all__ = ["Gateway"]


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
        self.stream_slots = StreamSlots(settings.max_streams_per_token)
        self._lw: Laneway | None = None
        self._seen_blocks = 0
        self._last_block = -1e18
        self._monitor: asyncio.Task[None] | None = None
        self.startup_error: BaseException | None = None
        #: Set by the server that runs this gateway: signals drain through it.
        self.drain: Drain | None = None

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
            max_event_bytes=s.max_event_bytes,
            shutdown_grace=s.shutdown_grace,
        )
        self.handler = register_model(lw, s)
        self.metrics.watch(lw)
        self.activity.watch(lw)
        if _tracing_requested():
            _trace(lw)
        await lw.start()
        self._lw = lw
        if self.drain is not None:
            self.drain.attach(lw)
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
