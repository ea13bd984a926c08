"""Path decoding that keeps an encoded slash inside its segment.

The server decodes ``/v1/sessions/a%2Fb/messages`` to ``/v1/sessions/a/b/messages``
before routing, so a session key with a ``/`` (which keys may not contain)
would get a bare 404 ``not_found``. Re-decoding from the raw path with
``%2F`` left as it was routes the request, and the key is then refused as
what it is: ``invalid_session``.
"""

from __future__ import annotations

from urllib.parse import unquote

from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["EncodedSlashes"]


class EncodedSlashes:
    """ASGI middleware: ``%2F`` in a raw path stays ``%2F`` in ``scope["path"]``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw = scope.get("raw_path") if scope["type"] in ("http", "websocket") else None
        if raw and b"%2f" in raw.lower():
            scope = {**scope, "path": decode_keeping_slashes(raw)}
        await self.app(scope, receive, send)


def decode_keeping_slashes(raw: bytes) -> str:
    segments = raw.decode("latin-1").split("/")
    return "/".join(unquote(segment).replace("/", "%2F") for segment in segments)
