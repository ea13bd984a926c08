"""Run the gateway under uvicorn: settings checked and the port bound first; signals drain."""

from __future__ import annotations

import gc
import logging
import socket
from types import FrameType
from typing import Any

import uvicorn

from ._app import create_app
from ._drain import Drain
from ._gateway import Gateway
from ._logging import configure_logging
from ._redaction import install_redaction
from ._startup import EXIT_BAD_SETTINGS, EXIT_NOT_STARTED, QuietStartup, bind, fail
from .settings import Settings

__all__ = ["serve"]

EXIT_BAD_CONFIG = EXIT_BAD_SETTINGS


class _Server(uvicorn.Server):
    """uvicorn's server, telling where it listens and ending event streams on shutdown."""

    def __init__(self, config: uvicorn.Config, gateway: Gateway, settings: Settings) -> None:
        super().__init__(config)
        self.gateway = gateway
        self.settings = settings
        gateway.drain = Drain(self._drained)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Not uvicorn's: it would close the listeners first, so nobody could be told
        # "shutting down"; the drain stops the server when it is over.
        drain = self.gateway.drain
        if drain is None or not self.started:
            super().handle_exit(sig, frame)
            return
        drain.on_signal(sig)

    def _drained(self) -> None:
        self.should_exit = True

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if not self.started:
            return
        # Everything loaded so far lives as long as the process: keep it out of
        # the collector so full collections stay short under load (p99 latency).
        gc.collect()
        gc.freeze()
        host, port = self._bound()
        print(
            f"laneway listening on http://{host}:{port} "
            f"(model {self.settings.model}, store {self.settings.store}"
            f"{', tokens required' if self.settings.tokens else ''})",
            flush=True,
        )

    def _bound(self) -> tuple[str, int]:
        for server in self.servers:
            for sock in server.sockets:
                addr: Any = sock.getsockname()
                return self.settings.host, int(addr[1])
        return self.settings.host, self.settings.port

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.gateway.begin_shutdown()
        await super().shutdown(sockets)


def serve(settings: Settings) -> int:
    """Serve until interrupted and drained; returns the process exit code."""
    debug = settings.log_level == "debug"
    configure_logging(settings.log_level, settings.log_format)
    install_redaction(settings.secret_of())
    try:
        sock = bind(settings.host, settings.port)
    except OSError as exc:
        return fail(f"cannot listen on {settings.host}:{settings.port}: {exc}", EXIT_NOT_STARTED)
    app = create_app(settings)
    gateway: Gateway = app.state.gateway
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_config=None,  # uvicorn's records go through the handler above, in the same format
        access_log=debug,
        lifespan="on",
        timeout_graceful_shutdown=5,
        server_header=False,
        ws_max_size=settings.max_body_bytes,  # a frame is a body: the same bound
    )
    quiet = QuietStartup()
    if not debug:
        logging.getLogger("uvicorn.error").addFilter(quiet)
    server = _Server(config, gateway, settings)
    try:
        server.run(sockets=[sock])
    except SystemExit:  # uvicorn exits 3 when the application cannot start
        if server.started:
            raise
    finally:
        sock.close()
    if not server.started:
        why = gateway.startup_error
        if why is not None and debug:
            logging.getLogger("laneway.gateway").error("startup failed", exc_info=why)
        detail = str(why) if why is not None else "see the log above"
        return fail(f"could not start: {detail}", EXIT_NOT_STARTED)
    return 0
