"""Run the gateway under uvicorn: settings checked and the store opened before binding."""

from __future__ import annotations

import gc
import socket
import sys
from typing import Any

import uvicorn

from ._app import create_app
from ._gateway import Gateway
from ._logging import configure_logging
from ._redaction import install_redaction
from .settings import Settings

__all__ = ["serve"]

EXIT_BAD_CONFIG = 2


class _Server(uvicorn.Server):
    """uvicorn's server, telling where it listens and ending event streams on shutdown."""

    def __init__(self, config: uvicorn.Config, gateway: Gateway, settings: Settings) -> None:
        super().__init__(config)
        self.gateway = gateway
        self.settings = settings

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
    """Serve until interrupted; returns the process exit code."""
    configure_logging(settings.log_level, settings.log_format)
    install_redaction(settings.secret_of())
    app = create_app(settings)
    gateway: Gateway = app.state.gateway
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_config=None,  # uvicorn's records go through the handler above, in the same format
        access_log=settings.log_level == "debug",
        lifespan="on",
        timeout_graceful_shutdown=5,
        server_header=False,
        ws_max_size=settings.max_body_bytes,  # a frame is a body: the same bound
    )
    server = _Server(config, gateway, settings)
    server.run()
    if not server.started:
        why = gateway.startup_error
        detail = f"{type(why).__name__}: {why}" if why is not None else "see the log above"
        print(f"laneway: could not start: {detail}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    return 0
