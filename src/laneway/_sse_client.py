"""Follow a session's Server-Sent Events from the gateway, through restarts.

The CLI's ``send --follow`` and ``tail`` use it: when the stream breaks (the
server restarts, the network drops, the loop is blocked past the read timeout)
it reconnects with ``Last-Event-ID`` set to the last event seen, so nothing is
missed or printed twice, honouring the server's ``retry:`` hint.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

__all__ = ["GaveUp", "HttpError", "follow", "url_part"]

#: statuses that mean "come back later" rather than "you asked wrong"
_TRANSIENT = frozenset({502, 503, 504})


class GaveUp(Exception):
    """The gateway stayed unreachable for longer than the caller would wait."""


@dataclass
class HttpError(Exception):
    """The gateway refused the stream for good (bad session, bad token, ...)."""

    response: httpx.Response


def url_part(value: str) -> str:
    """A session key or job id as one URL path segment."""
    return quote(value, safe="")


@dataclass
class _Cursor:
    last: int
    retry_s: float = 1.0
    connected: bool = False  # since the last failure


def _parse(lines: Iterator[str], cursor: _Cursor) -> Iterator[dict[str, Any]]:
    data: list[str] = []
    seq: int | None = None
    for line in lines:
        if line.startswith("data:"):
            data.append(line[5:].strip())
        elif line.startswith("id:"):
            seq = int(line[3:].strip())
        elif line.startswith("retry:"):
            cursor.retry_s = int(line[6:].strip()) / 1000
        elif not line and data:
            event = json.loads("\n".join(data))
            yield event
            if seq is not None:
                cursor.last = seq  # only once the caller has taken the event
            data.clear()
            seq = None


def _stream_once(client: httpx.Client, session: str, cursor: _Cursor) -> Iterator[dict[str, Any]]:
    headers = {"Last-Event-ID": str(cursor.last)} if cursor.last else {}
    path = f"/v1/sessions/{url_part(session)}/events"
    with client.stream("GET", path, params={"after": cursor.last}, headers=headers) as resp:
        if resp.status_code in _TRANSIENT:
            raise httpx.RemoteProtocolError(f"HTTP {resp.status_code}")
        if not resp.is_success:
            resp.read()
            raise HttpError(resp)
        cursor.connected = True
        yield from _parse(resp.iter_lines(), cursor)


def follow(
    client: httpx.Client,
    session: str,
    after: int,
    *,
    on_reconnect: Callable[[str], None],
    give_up_after: float = 120.0,
) -> Iterator[dict[str, Any]]:
    """The session's events after ``after``, then live, reconnecting as needed.

    ``on_reconnect(reason)`` is called before each new attempt; ``GaveUp`` is
    raised once no connection succeeded for ``give_up_after`` seconds.
    """
    cursor = _Cursor(after)
    down_since: float | None = None
    while True:
        try:
            yield from _stream_once(client, session, cursor)
            reason = "the stream ended"
        except httpx.TransportError as exc:
            reason = str(exc) or type(exc).__name__
        now = time.monotonic()
        if cursor.connected or down_since is None:
            down_since, cursor.connected = now, False
        if now - down_since > give_up_after:
            raise GaveUp(reason)
        on_reconnect(reason)
        time.sleep(cursor.retry_s)
