"""Live fan-out of committed events to per-session subscribers.

A subscriber that falls behind is not allowed to grow without bound: past
``maxsize`` buffered events it is marked ``overflowed`` and its buffer is
dropped; the reader then re-reads the gap from the store, so nothing is lost.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Iterable

from .._types import Event

__all__ = ["EventBus", "Subscription"]

log = logging.getLogger("laneway.events")


class Subscription:
    __slots__ = ("_bus", "_waiter", "buffer", "closed", "maxsize", "overflowed", "session")

    def __init__(self, bus: EventBus, session: str, maxsize: int) -> None:
        self._bus = bus
        self.session = session
        self.maxsize = maxsize
        self.buffer: deque[Event] = deque()
        self.overflowed = False
        self.closed = False
        self._waiter: asyncio.Future[None] | None = None

    def push(self, event: Event) -> None:
        if self.overflowed:
            return
        if len(self.buffer) >= self.maxsize:
            self.overflowed = True
            self.buffer.clear()
        else:
            self.buffer.append(event)
        self._wake()

    def close(self) -> None:
        self.closed = True
        self._wake()

    async def wait(self) -> None:
        """Until there is something to read, an overflow, or the bus closed."""
        if self.buffer or self.overflowed or self.closed:
            return
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def reread(self) -> None:
        """Events may have been written where this bus cannot see (another node):
        the follower goes back to the store, as after an overflow."""
        self.overflowed = True
        self.buffer.clear()
        self._wake()

    def unsubscribe(self) -> None:
        self._bus.discard(self)

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)


class EventBus:
    def __init__(self, maxsize: int = 10_000) -> None:
        self.maxsize = maxsize
        self._subs: dict[str, set[Subscription]] = {}
        self.listeners: list[Callable[[Event], None]] = []
        #: Anyone listening or subscribed: publishers skip ``publish()`` when not.
        self.watched = False

    def add_listener(self, fn: Callable[[Event], None]) -> Callable[[], None]:
        self.listeners.append(fn)
        self.watched = True

        def remove() -> None:
            self.listeners.remove(fn)
            self._rewatch()

        return remove

    def subscribe(self, session: str) -> Subscription:
        sub = Subscription(self, session, self.maxsize)
        self._subs.setdefault(session, set()).add(sub)
        self.watched = True
        return sub

    def discard(self, sub: Subscription) -> None:
        subs = self._subs.get(sub.session)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subs[sub.session]
                self._rewatch()

    def _rewatch(self) -> None:
        self.watched = bool(self.listeners or self._subs)

    def publish(self, event: Event) -> None:
        for listener in self.listeners:
            try:
                listener(event)
            except Exception:
                log.exception("events.listener_failed")
        subs = self._subs.get(event.session)
        if subs:
            for sub in tuple(subs):
                sub.push(event)

    def written_elsewhere(self, sessions: Iterable[str] | None) -> None:
        """Followers of these sessions (all if None) re-read the store."""
        keys = list(self._subs) if sessions is None else sessions
        for key in keys:
            for sub in tuple(self._subs.get(key, ())):
                sub.reread()

    def subscribers(self) -> int:
        return sum(len(s) for s in self._subs.values())

    def close(self) -> None:
        for subs in list(self._subs.values()):
            for sub in list(subs):
                sub.close()
        self._subs.clear()
        self._rewatch()
