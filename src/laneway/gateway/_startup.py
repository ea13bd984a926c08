"""How ``laneway serve`` fails to start: one line on stderr and an exit code.

``laneway: error: ...`` and exit 2 for bad settings, 1 for a server that
could not start (the port is taken, the store is owned by another server or
cannot be opened, a model cannot be set up). The traceback is logged only at
``--log-level debug``; otherwise uvicorn's copy of it is dropped.
"""

from __future__ import annotations

import logging
import socket
import sys

__all__ = ["EXIT_BAD_SETTINGS", "EXIT_NOT_STARTED", "QuietStartup", "bind", "fail"]

EXIT_BAD_SETTINGS = 2
EXIT_NOT_STARTED = 1


def fail(message: str, code: int) -> int:
    """Print ``message`` as the one error line; returns ``code``."""
    line = "; ".join(part.strip() for part in message.splitlines() if part.strip())
    line = line.replace(":;", ":")
    print(f"laneway: error: {line}", file=sys.stderr, flush=True)
    return code


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before anything else starts (``OSError`` if taken)."""
    family, kind, proto, _name, addr = socket.getaddrinfo(
        host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


# uvicorn logs a failed lifespan's traceback as the message text itself.
_DROPPED = ("Traceback", "Application startup failed")


class QuietStartup(logging.Filter):
    """Drops uvicorn's report of a failed application startup: ``serve`` says it
    in one line instead (the traceback stays at debug level)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info is not None:
            return False
        return not record.getMessage().startswith(_DROPPED)
