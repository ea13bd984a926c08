"""Per-client bounds on event streams: streams per token, and a WebSocket's frame rate.

Without them one token could open streams (each holding a reader, a runtime
subscription and a page of replay) until the server runs out of memory, or
flood one socket with frames faster than the loop can answer them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

from ._auth import Principal
from ._errors import ApiError

__all__ = ["FrameRate", "StreamSlots"]


class StreamSlots:
    """How many event streams (SSE responses, WebSockets) each token has open."""

    def __init__(self, per_token: int) -> None:
        self.per_token = per_token
        self._open: dict[str | None, int] = {}

    def open_for(self, who: Principal) -> int:
        return self._open.get(who.name, 0)

    def take(self, who: Principal) -> None:
        """Count one more stream of ``who``; 429 ``too_many_streams`` past the cap."""
        held = self._open.get(who.name, 0)
        if held >= self.per_token:
            raise ApiError(
                429,
                "too_many_streams",
                f"{self.per_token} event streams are open for this token "
                "(LANEWAY_MAX_STREAMS_PER_TOKEN); close one first",
                {"Retry-After": "1"},
            )
        self._open[who.name] = held + 1

    def give_back(self, who: Principal) -> None:
        left = self._open[who.name] - 1
        if left:
            self._open[who.name] = left
        else:
            del self._open[who.name]

    @contextmanager
    def held(self, who: Principal) -> Iterator[None]:
        self.take(who)
        try:
            yield
        finally:
            self.give_back(who)


class FrameRate:
    """A token bucket: ``rate`` frames per second, in bursts of up to ``2 * rate``.

    ``await wait()`` before reading the next frame: a client sending faster is
    simply not read, so TCP's flow control slows it down (nothing is queued).
    """

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.burst = max(1.0, 2.0 * rate)
        self._tokens = self.burst
        self._at = asyncio.get_running_loop().time()

    async def wait(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens < 1.0:
            await asyncio.sleep((1.0 - self._tokens) / self.rate)
            self._tokens, self._at = 1.0, loop.time()
        self._tokens -= 1.0
